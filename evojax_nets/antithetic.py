"""The part every OpenAI-ES whose noise is regenerated from keys shares (Salimans et al. 2017,
https://arxiv.org/abs/1703.03864): antithetic pairs, the state, ``init``, and the centred-rank
``tell``. :class:`~evojax_nets.strategies.LowMemoryOpenES` and
:class:`~evojax_nets.lowrank.LowRankES` differ only in how they hand out a generation and
regenerate its noise."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn
from flax import struct

from evojax_nets.types import Fitness, Genome

__all__ = ["DEFAULT_STD", "AntitheticOpenES", "LowMemoryParams", "LowMemoryState"]

DEFAULT_STD = 0.05


@struct.dataclass
class LowMemoryParams:
    std_init: jax.Array


@struct.dataclass
class LowMemoryState:
    mean: jax.Array
    std: jax.Array
    opt_state: Any
    noise_key: jax.Array
    generation_counter: jax.Array


class AntitheticOpenES:
    """What every OpenAI-ES whose noise is regenerated from keys shares: antithetic pairs
    ``mean +- std * eps_j``, the state, ``init``, and a ``tell`` that shapes the fitness by
    centred ranks and steps the mean by the optax optimizer along
    ``sum_j (f_j - f_{j+P/2}) eps_j / (P std)``. A subclass says how a generation's members
    are handed out (``ask``) and how ``sum_j w_j eps_j`` is regenerated (``gradient``):
    :class:`~evojax_nets.strategies.LowMemoryOpenES` (full-rank noise, in chunks) and
    :class:`~evojax_nets.lowrank.LowRankES` (low-rank matrix noise).
    """

    name = "OpenAI-ES"

    def __init__(
        self,
        population_size: int,
        solution: jax.Array,
        optimizer: optax.GradientTransformation | None = None,
        batch_size: int = 32,
    ):
        if population_size < 2 or population_size % 2:
            raise ValueError(
                f"population_size={population_size} is invalid for {self.name}: it samples "
                f"antithetic pairs; use an even number such as {population_size + 1}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.population_size = population_size
        self.solution = solution
        self.num_dims = int(jnp.shape(solution)[0])
        self.optimizer = optax.adam(0.02) if optimizer is None else optimizer
        self.batch_size = min(batch_size, population_size)

    @property
    def default_params(self) -> LowMemoryParams:
        return LowMemoryParams(std_init=jnp.float32(DEFAULT_STD))

    def init(self, key: jax.Array, mean: Genome, params: LowMemoryParams) -> LowMemoryState:
        mean = jnp.asarray(mean)
        return LowMemoryState(
            mean=mean,
            std=jnp.asarray(params.std_init, mean.dtype),
            opt_state=self.optimizer.init(mean),
            noise_key=key,
            generation_counter=jnp.int32(0),
        )

    def gradient(self, population: Any, weights: jax.Array) -> Genome:
        """``sum_j weights[j] eps_j`` over the ``P/2`` pairs of ``population``."""
        raise NotImplementedError

    def tell(
        self,
        key: jax.Array,
        population: Any,
        fitness: Fitness,
        state: LowMemoryState,
        params: LowMemoryParams,
    ) -> tuple[LowMemoryState, dict]:
        """Update the mean from the (minimised, finite) fitness of ``population``."""
        half = self.population_size // 2
        shaped = centered_rank_fitness_shaping_fn(None, fitness, state, None)
        weights = (shaped[:half] - shaped[half:]).astype(state.mean.dtype)
        grad = self.gradient(population, weights) / (self.population_size * state.std)
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.mean)
        state = state.replace(
            mean=optax.apply_updates(state.mean, updates),
            opt_state=opt_state,
            generation_counter=state.generation_counter + 1,
        )
        return state, {}
