"""The elitist genetic algorithm of Such et al. (2017).

"Deep Neuroevolution: Genetic Algorithms Are a Competitive Alternative for Training Deep Neural
Networks for Reinforcement Learning", https://arxiv.org/abs/1712.06567: truncation selection,
Gaussian mutation only, and unmutated elites carried over. evosax's ``SimpleGA`` is not elitist.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from evosax.algorithms.population_based.base import Params as _PopParams
from evosax.algorithms.population_based.base import PopulationBasedAlgorithm
from evosax.algorithms.population_based.base import State as _PopState
from evosax.algorithms.population_based.base import metrics_fn as _pop_metrics_fn
from evosax.core.fitness_shaping import identity_fitness_shaping_fn
from flax import struct

from evojax_nets.program import rank_finite, truncation_select

DEFAULT_STD = 0.05


@struct.dataclass
class DeepGAParams(_PopParams):
    std: jax.Array


@struct.dataclass
class DeepGAState(_PopState):
    pass


class DeepGA(PopulationBasedAlgorithm):
    """Elitist Deep-GA (Such et al. 2017): truncation selection and Gaussian mutation.

    Each generation the ``num_parents`` best members (by the last measured fitness) are the
    parents; the first ``num_elites`` children are the best parents copied unmutated (so they
    are re-evaluated, as in the paper), the rest are a uniformly chosen parent plus
    ``std * N(0, I)``. The mutation scale ``std`` is a params array, so it can be swept with
    ``vmap`` or scheduled without recompiling.

    Example:
      >>> ga = DeepGA(population_size=8, solution=jnp.zeros(3), num_parents=2, num_elites=1)
      >>> params = ga.default_params
      >>> population = jax.random.normal(jax.random.key(0), (8, 3))
      >>> fitness = jnp.sum(population**2, axis=1)  # minimised
      >>> state = ga.init(jax.random.key(1), population, fitness, params)
      >>> children, state = ga.ask(jax.random.key(2), state, params)
      >>> children.shape, bool((children[0] == population[jnp.argmin(fitness)]).all())
      ((8, 3), True)

      In the engine it is the strategy ``"ga"`` (or ``"deep_ga"``) of
      :class:`~evojax_nets.engine.Evolution`.
    """

    def __init__(
        self,
        population_size: int,
        solution: jax.Array,
        num_parents: int | None = None,
        num_elites: int = 1,
        std: float = DEFAULT_STD,
        fitness_shaping_fn: Callable = identity_fitness_shaping_fn,
        metrics_fn: Callable = _pop_metrics_fn,
    ):
        super().__init__(population_size, solution, fitness_shaping_fn, metrics_fn)
        num_parents = max(2, population_size // 8) if num_parents is None else num_parents
        if not 1 <= num_parents <= population_size:
            raise ValueError(
                f"num_parents must be in [1, population_size={population_size}], got {num_parents}"
            )
        if not 0 <= num_elites <= num_parents:
            raise ValueError(
                f"num_elites must be in [0, num_parents={num_parents}], got {num_elites}"
            )
        self.num_parents = num_parents
        self.num_elites_kept = num_elites
        self._std = std

    @property
    def _default_params(self) -> DeepGAParams:
        return DeepGAParams(std=jnp.asarray(self._std, jnp.float32))

    def _init(self, key: jax.Array, params: DeepGAParams) -> DeepGAState:
        return DeepGAState(
            population=jnp.full((self.population_size, self.num_dims), jnp.nan),
            fitness=jnp.full((self.population_size,), jnp.inf),
            best_solution=jnp.full((self.num_dims,), jnp.nan),
            best_fitness=jnp.inf,
            generation_counter=0,
        )

    def _ask(self, key: jax.Array, state: DeepGAState, params: DeepGAParams):
        key_pick, key_mut = jax.random.split(key)
        order, picks = truncation_select(
            key_pick, rank_finite(state.fitness, False), self.num_parents, self.population_size
        )
        is_elite = jnp.arange(self.population_size) < self.num_elites_kept
        picks = jnp.where(is_elite, order, picks)
        noise = jax.random.normal(key_mut, (self.population_size, self.num_dims))
        children = state.population[picks] + params.std * noise * (~is_elite)[:, None]
        return children, state

    def _tell(self, key, population, fitness, state: DeepGAState, params: DeepGAParams):
        return state.replace(population=population, fitness=fitness)
