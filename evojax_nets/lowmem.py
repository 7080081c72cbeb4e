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

from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn
from flax import struct

from evojax_nets.types import Fitness, Genome


@struct.dataclass
class LowMemoryState:
    mean: jax.Array
    std: jax.Array
    opt_state: Any
    noise_key: jax.Array
    generation_counter: jax.Array


class LowMemoryOpenES:
    """OpenAI-ES with regenerated noise (see the module docstring).

    Args:
      population_size: members per generation (even: antithetic pairs).
      num_dims: genome length ``D``.
      std: perturbation scale.
      optimizer: the optax optimizer of the mean (ascends the fitness estimate; minimises).
      batch_size: members evaluated at once, and noise vectors regenerated at once in the
        update; the knob that bounds memory.

    Example:
      >>> es = LowMemoryOpenES(8, 5, std=0.1, optimizer=optax.adam(0.01), batch_size=4)
      >>> state = es.init(jax.random.key(0), jnp.zeros(5))
      >>> es.member(es.ask(jax.random.key(1), state), 3).shape
      (5,)
    """

    name = "LowMemoryOpenES"

    def __init__(
        self,
        population_size: int,
        num_dims: int,
        std: float,
        optimizer: optax.GradientTransformation,
        batch_size: int = 32,
    ):
        if population_size < 2 or population_size % 2:
            raise ValueError(
                f"population_size={population_size} is invalid for LowMemoryOpenES: it samples "
                f"antithetic pairs; use an even number such as {population_size + 1}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size}")
        self.population_size = population_size
        self.num_dims = num_dims
        self.std = std
        self.optimizer = optimizer
        self.batch_size = min(batch_size, population_size)

    def init(self, key: jax.Array, mean: Genome, params: Any = None) -> LowMemoryState:
        mean = jnp.asarray(mean, jnp.float32)
        return LowMemoryState(
            mean=mean,
            std=jnp.float32(self.std),
            opt_state=self.optimizer.init(mean),
            noise_key=key,
            generation_counter=jnp.int32(0),
        )

    def ask(self, key: jax.Array, state: LowMemoryState) -> LowMemoryState:
        """Fix this generation's noise key; no member is materialised."""
        return state.replace(noise_key=key)

    def _noise(self, state: LowMemoryState, pair: jax.Array) -> jax.Array:
        key = jax.random.fold_in(state.noise_key, pair)
        return jax.random.normal(key, (self.num_dims,), state.mean.dtype)

    def member(self, state: LowMemoryState, index: jax.Array) -> Genome:
        """Member ``index`` of the current generation, regenerated from its pair's key."""
        half = self.population_size // 2
        sign = jnp.where(index < half, 1.0, -1.0).astype(state.mean.dtype)
        return state.mean + sign * state.std * self._noise(state, index % half)

    def map_members(self, fn, state: LowMemoryState) -> jax.Array:
        """``fn(theta)`` for every member, ``batch_size`` members at a time."""
        indices = jnp.arange(self.population_size)
        return jax.lax.map(lambda i: fn(self.member(state, i)), indices, batch_size=self.batch_size)

    def tell(self, fitness: Fitness, state: LowMemoryState) -> LowMemoryState:
        """Update the mean from the (minimised, finite) fitness of the current generation."""
        half = self.population_size // 2
        shaped = centered_rank_fitness_shaping_fn(None, fitness, state, None)
        weights = shaped[:half] - shaped[half:]

        def accumulate(grad: jax.Array, chunk: tuple[jax.Array, jax.Array]):
            pairs, w = chunk
            eps = jax.vmap(lambda j: self._noise(state, j))(pairs)
            return grad + w @ eps, None

        step = min(self.batch_size, half)
        n_chunks = -(-half // step)
        pad = n_chunks * step - half
        pairs = jnp.pad(jnp.arange(half), (0, pad)).reshape(n_chunks, step)
        w = jnp.pad(weights, (0, pad)).reshape(n_chunks, step)
        grad, _ = jax.lax.scan(accumulate, jnp.zeros_like(state.mean), (pairs, w))
        grad = grad / (self.population_size * state.std)
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.mean)
        return state.replace(
            mean=optax.apply_updates(state.mean, updates),
            opt_state=opt_state,
            generation_counter=state.generation_counter + 1,
        )
