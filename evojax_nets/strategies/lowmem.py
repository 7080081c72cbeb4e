"""OpenAI-ES whose population is never held in memory.

Salimans et al. (2017), "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning", https://arxiv.org/abs/1703.03864, note that a perturbation is fully described by
the seed that generated it. Here each antithetic pair ``j`` draws its noise from
``fold_in(generation_key, j)``; evaluation regenerates the members it is evaluating, a chunk
at a time, and the update regenerates the noise again to accumulate the gradient estimate. So
peak memory grows with the chunk (``batch_size x D``), never with ``P x D``: a network of 10
million parameters with population 1024 needs a few hundred MB instead of 40 GB.

The algorithm is evosax's ``Open_ES`` with antithetic sampling and centered-rank fitness
shaping: members ``j`` and ``j + P/2`` are ``mean +- std * eps_j`` and the gradient is
``sum_j (f_j - f_{j+P/2}) eps_j / (P std)``, stepped by an optax optimizer. Only the random
numbers differ (they come from per-pair keys instead of one ``(P/2, D)`` draw).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from evojax_nets.antithetic import (
    AntitheticOpenES,
    LowMemoryParams,
    LowMemoryState,
)
from evojax_nets.types import Genome


@struct.dataclass
class LazyPopulation:
    """A generation's members, never materialised: member ``i`` is regenerated from its
    antithetic pair's key when it is needed (see :class:`LowMemoryOpenES`).

    The engine evaluates it with :meth:`map` (``batch_size`` members at a time) instead of
    ``vmap`` over a ``(P, D)`` array.
    """

    mean: jax.Array
    std: jax.Array
    noise_key: jax.Array
    population_size: int = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)

    def noise(self, pair: jax.Array) -> jax.Array:
        key = jax.random.fold_in(self.noise_key, pair)
        return jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def member(self, index: jax.Array) -> Genome:
        """Member ``index``, regenerated from its pair's key."""
        half = self.population_size // 2
        sign = jnp.where(index < half, 1.0, -1.0).astype(self.mean.dtype)
        return self.mean + sign * self.std * self.noise(index % half)

    def map(self, fn: Callable[[Genome], Any]) -> Any:
        """``fn(theta)`` for every member, ``batch_size`` members at a time (outputs stacked)."""
        indices = jnp.arange(self.population_size)
        return jax.lax.map(lambda i: fn(self.member(i)), indices, batch_size=self.batch_size)

    def materialize(self) -> jax.Array:
        """The ``(P, D)`` array (for tests and small problems only)."""
        return jax.vmap(self.member)(jnp.arange(self.population_size))


class LowMemoryOpenES(AntitheticOpenES):
    """OpenAI-ES with regenerated noise (see the module docstring), on evosax's protocol:
    ``init(key, mean, params)``, ``ask(key, state, params) -> (LazyPopulation, state)``,
    ``tell(key, population, fitness, state, params) -> (state, metrics)``.

    Args:
      population_size: members per generation (even: antithetic pairs).
      solution: a flat ``(D,)`` array giving the genome's size.
      optimizer: the optax optimizer of the mean (minimises the fitness estimate).
      batch_size: members evaluated at once, and noise vectors regenerated at once in the
        update; the knob that bounds memory (``Evolution(eval_batch_size=...)`` sets it).

    Example:
      >>> import optax
      >>> es = LowMemoryOpenES(8, jnp.zeros(5), optimizer=optax.adam(0.01), batch_size=4)
      >>> params = es.default_params.replace(std_init=0.1)
      >>> state = es.init(jax.random.key(0), jnp.zeros(5), params)
      >>> population, state = es.ask(jax.random.key(1), state, params)
      >>> population.member(3).shape, population.materialize().shape
      ((5,), (8, 5))
    """

    name = "LowMemoryOpenES"

    def ask(
        self, key: jax.Array, state: LowMemoryState, params: LowMemoryParams
    ) -> tuple[LazyPopulation, LowMemoryState]:
        """Fix this generation's noise key; no member is materialised."""
        state = state.replace(noise_key=key, std=jnp.asarray(params.std_init, state.mean.dtype))
        population = LazyPopulation(
            state.mean, state.std, key, self.population_size, self.batch_size
        )
        return population, state

    def gradient(self, population: LazyPopulation, weights: jax.Array) -> Genome:
        """``sum_j weights[j] eps_j``, the noise regenerated ``batch_size`` pairs at a time."""
        half = self.population_size // 2

        def accumulate(grad: jax.Array, chunk: tuple[jax.Array, jax.Array]):
            pairs, w = chunk
            return grad + w @ jax.vmap(population.noise)(pairs), None

        step = min(self.batch_size, half)
        n_chunks = -(-half // step)
        pad = n_chunks * step - half
        pairs = jnp.pad(jnp.arange(half), (0, pad)).reshape(n_chunks, step)
        w = jnp.pad(weights, (0, pad)).reshape(n_chunks, step)
        grad, _ = jax.lax.scan(accumulate, jnp.zeros_like(population.mean), (pairs, w))
        return grad
