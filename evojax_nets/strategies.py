"""Every evosax 0.3 strategy by name or instance, with network-sized defaults.

evosax's defaults are tuned for benchmark functions whose optimum lies at distance ~1 from the
start: an initial search std of 1.0, and for gradient-style strategies an optimizer step of
1e-3. For network weights (initialised at scale ``1/sqrt(fan_in)``) a std of 1.0 destroys the
network in one step. :func:`make_strategy` therefore sets, unless told otherwise:

* the search scale to ``std`` (``DEFAULT_STD = 0.05``): ``std_init`` in the params,
  ``std_schedule`` in the constructor, or ``radius_max`` for gradientless descent;
* for strategies that follow an estimated gradient with an optax optimizer (OpenAI-ES, PGPE,
  ARS, ESMC, Guided ES, ASEBO, Persistent ES, Noise-Reuse ES, SV-OpenAI-ES):
  ``optax.adam(learning_rate)`` with ``DEFAULT_LEARNING_RATE = 0.02``; natural-gradient
  strategies (SNES, xNES, SimpleES, DES) keep their step of 1.0, which is part of the algorithm;
* xNES and iAMaLGaM, whose evosax initial shape / covariance matrix ignores ``std_init``,
  are subclassed so their first samples are at scale ~``std`` too (see :class:`xNES`);
* population-based strategies (GA, DE, PSO, ...) start from the network's own initialisation
  plus Gaussian noise of scale ``std`` (member 0 is the initialisation itself), or from the
  user's own initialiser (see :class:`evojax_nets.engine.Evolution`).

Anything can be overridden: ``strategy_kwargs`` go to the constructor and ``strategy_params``
replace fields of ``default_params``.

:class:`DeepGA` is the elitist genetic algorithm of Such et al. (2017), "Deep Neuroevolution:
Genetic Algorithms Are a Competitive Alternative for Training Deep Neural Networks for
Reinforcement Learning", https://arxiv.org/abs/1712.06567: truncation selection, Gaussian
mutation only, and unmutated elites carried over. evosax's ``SimpleGA`` is not elitist.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import algorithms as _EVOSAX_ALGORITHMS
from evosax.algorithms.base import EvolutionaryAlgorithm
from evosax.algorithms.distribution_based.iamalgam_full import iAMaLGaM_Full as _iAMaLGaM_Full
from evosax.algorithms.distribution_based.iamalgam_univariate import (
    iAMaLGaM_Univariate as _iAMaLGaM_Univariate,
)
from evosax.algorithms.distribution_based.open_es import Open_ES as _Open_ES
from evosax.algorithms.distribution_based.xnes import xNES as _xNES
from evosax.algorithms.population_based.base import Params as _PopParams
from evosax.algorithms.population_based.base import PopulationBasedAlgorithm
from evosax.algorithms.population_based.base import State as _PopState
from evosax.algorithms.population_based.base import metrics_fn as _pop_metrics_fn
from evosax.core.fitness_shaping import identity_fitness_shaping_fn
from flax import struct

DEFAULT_STD = 0.05
DEFAULT_LEARNING_RATE = 0.02

# Strategies that step along an estimated gradient with an optax optimizer whose evosax
# default (lr 1e-3) is sized for toy problems; natural-gradient ones (SNES, xNES, ...) use a
# step of 1.0 by design and are left alone.
_GRADIENT_STYLE = {
    "Open_ES",
    "PGPE",
    "ARS",
    "ESMC",
    "GuidedES",
    "ASEBO",
    "PersistentES",
    "NoiseReuseES",
    "SV_Open_ES",
}
# Strategies whose state holds a D x D matrix.
FULL_COVARIANCE = ("CMA_ES", "xNES", "MA_ES", "iAMaLGaM_Full", "ASEBO", "SV_CMA_ES")
DIAGONAL_ALTERNATIVES = ("sep_cma_es", "snes", "open_es", "pgpe", "lm_ma_es")


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
        order = jnp.argsort(jnp.where(jnp.isnan(state.fitness), jnp.inf, state.fitness))
        parents = state.population[order[: self.num_parents]]
        key_pick, key_mut = jax.random.split(key)
        pick = jax.random.randint(key_pick, (self.population_size,), 0, self.num_parents)
        is_elite = jnp.arange(self.population_size) < self.num_elites_kept
        pick = jnp.where(is_elite, jnp.arange(self.population_size), pick)
        noise = jax.random.normal(key_mut, (self.population_size, self.num_dims))
        children = parents[pick] + params.std * noise * (~is_elite)[:, None]
        return children, state

    def _tell(self, key, population, fitness, state: DeepGAState, params: DeepGAParams):
        return state.replace(population=population, fitness=fitness)


class xNES(_xNES):
    """evosax's xNES with the shape matrix ``B`` starting at ``I``.

    evosax 0.3.2 starts ``B`` at ``std_init * I`` and samples ``mean + std * z @ B``, so the
    initial search scale is ``std_init**2`` (0.0025 for ``std=0.05``) rather than
    ``std_init``. Glasmachers et al. (2010), "Exponential Natural Evolution Strategies",
    https://arxiv.org/abs/1106.4487, split ``A = sigma * B`` with ``det(B) = 1``.
    """

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(B=jnp.eye(self.num_dims))


class iAMaLGaM_Full(_iAMaLGaM_Full):
    """evosax's iAMaLGaM (full covariance) with the covariance starting at ``std**2 * I``.

    evosax 0.3.2 starts the learned covariance ``C`` at ``I`` and samples from
    ``C + std**2 I``, so the initial search scale is about 1 whatever ``std`` says, which
    destroys network weights in one step. Starting ``C`` at the ``std_schedule``'s initial
    scale keeps it invertible (the standard-deviation ratio needs ``C^-1``) and puts the first
    samples at scale ``~sqrt(2) * std``.
    """

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(C=state.C * jnp.square(self.std_schedule(0)))


class iAMaLGaM_Univariate(_iAMaLGaM_Univariate):
    """evosax's univariate iAMaLGaM with the variances starting at ``std**2`` (see
    :class:`iAMaLGaM_Full`; it samples with scale ``std + sqrt(C)``, so ``~2 * std``)."""

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(C=state.C * jnp.square(self.std_schedule(0)))


class Open_ES(_Open_ES):
    """evosax's OpenAI-ES (Salimans et al. 2017, https://arxiv.org/abs/1703.03864), drawing
    each antithetic pair's Gaussian noise once and taking the gradient without a second copy
    of the noise.

    evosax builds the population as ``mean + std * concatenate([z, -z])``. XLA fuses the draw
    of ``z`` (hash, uniform, inverse error function) into both halves of the concatenation and
    so computes it twice. Drawn inside a conditional (whose predicate is always true), ``z``
    becomes a buffer of its own: the draw runs once, and the population is bit-for-bit
    evosax's. (``lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.)
    """

    def _ask(self, key: jax.Array, state: Any, params: Any) -> tuple[jax.Array, Any]:
        if not self.use_antithetic_sampling:
            return super()._ask(key, state, params)
        shape = (self.population_size // 2, self.num_dims)
        z_plus = jax.lax.cond(
            state.generation_counter >= 0,
            lambda k: jax.random.normal(k, shape),
            lambda k: jnp.zeros(shape),
            key,
        )
        # ``mean - std * z`` is bit-for-bit ``mean + std * (-z)`` (negation is exact), and
        # writes the population in one pass instead of materialising ``[z, -z]`` first.
        step = state.std * z_plus
        return jnp.concatenate([state.mean + step, state.mean - step]), state

    def _tell(
        self, key: jax.Array, population: jax.Array, fitness: jax.Array, state: Any, params: Any
    ) -> Any:
        # evosax's gradient is ``fitness @ ((population - mean) / std) / (P * std)``, which
        # writes the (P, D) matrix of normalised noise to memory and reads it back for the
        # product: a third of an MLP generation's non-evaluation time on CPU. By linearity the
        # product is ``(fitness @ population - sum(fitness) * mean) / std``, computed straight
        # from the population; it agrees with evosax's to float32 rounding.
        centred = jnp.dot(fitness, population) - jnp.sum(fitness) * state.mean
        grad = centred / state.std / (self.population_size * state.std)
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.mean)
        return state.replace(
            mean=optax.apply_updates(state.mean, updates),
            std=self.std_schedule(state.generation_counter),
            opt_state=opt_state,
        )


# evosax classes replaced by name: the initial search scale ignores ``std`` (xNES, iAMaLGaM),
# or the same computation runs faster (Open_ES); see each class.
_SCALE_FIXED = {
    "Open_ES": Open_ES,
    "xNES": xNES,
    "iAMaLGaM_Full": iAMaLGaM_Full,
    "iAMaLGaM_Univariate": iAMaLGaM_Univariate,
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


_ALIASES = {
    "de": "DifferentialEvolution",
    "openaies": "Open_ES",
    "es": "Open_ES",
    "ga": "DeepGA",
    "elitistga": "DeepGA",
    "learnedes": "LES",
    "learnedga": "LGA",
    "discoveredes": "DES",
    "diffusion": "DiffusionEvolution",
}


def _registry() -> dict[str, type]:
    reg: dict[str, type] = {}
    for key, cls in _EVOSAX_ALGORITHMS.items():
        reg[key] = _SCALE_FIXED.get(key, cls)
    reg["DeepGA"] = DeepGA
    return reg


def strategy_names() -> list[str]:
    """The canonical names :func:`make_strategy` accepts (case and ``_``/``-`` are ignored;
    class names and aliases such as ``de`` and ``ga`` work too).

    Example:
      >>> names = strategy_names()
      >>> "Open_ES" in names, "CMA_ES" in names, "DeepGA" in names
      (True, True, True)
    """
    return sorted(_registry(), key=str.lower)


def resolve_name(name: str) -> tuple[str, type]:
    """Canonical name and class for a strategy name, or a ``ValueError`` listing the names.

    Example:
      >>> resolve_name("open-es")[0], resolve_name("SNES")[0]
      ('Open_ES', 'SNES')
      >>> name, cls = resolve_name("ga")
      >>> name, cls is DeepGA
      ('DeepGA', True)
    """
    reg = _registry()
    lookup: dict[str, str] = {}
    for key, cls in reg.items():
        lookup[_norm(key)] = key
        lookup[_norm(cls.__name__)] = key
    for alias, key in _ALIASES.items():
        lookup[alias] = key
    canonical = lookup.get(_norm(name))
    if canonical is None:
        raise ValueError(
            f"unknown strategy {name!r}; valid names (case-insensitive): "
            + ", ".join(strategy_names())
            + "; aliases: "
            + ", ".join(sorted(_ALIASES))
        )
    return canonical, reg[canonical]


@dataclass(frozen=True, eq=False)
class Strategy:
    """An evosax algorithm built on a flat genome of length ``num_dims``, with its params.

    Attributes:
      name: canonical name (``"Open_ES"``, ``"DeepGA"``, ...).
      algorithm: the evosax instance; its solution is a flat ``(D,)`` vector, so ``ask`` and
        ``tell`` see ``(P, D)`` arrays with no ravel/unravel copies.
      params: the evosax params (arrays: sweepable and schedulable without recompiling).
      population_based: whether ``init`` needs an evaluated initial population.
      num_means: the number of distribution means (``num_populations`` of the SV strategies).

    Example:
      >>> s = make_strategy("snes", 8, 10)  # how Evolution builds one
      >>> s.name, s.population_size, s.population_based, s.num_means
      ('SNES', 8, False, 1)
      >>> make_strategy("de", 8, 10).population_based
      True
    """

    name: str
    algorithm: EvolutionaryAlgorithm
    params: Any
    population_based: bool
    num_means: int = 1

    @property
    def population_size(self) -> int:
        """Members evaluated per generation (all sub-populations together)."""
        return int(getattr(self.algorithm, "total_population_size", self.algorithm.population_size))


def _available_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def state_bytes(strategy: Strategy) -> int:
    """Bytes of the strategy state, computed from shapes alone (nothing is allocated).

    Example:
      >>> diagonal = state_bytes(make_strategy("snes", 8, 100))
      >>> full = state_bytes(make_strategy("cma_es", 8, 100))  # holds 100 x 100 matrices
      >>> diagonal < 100 * 100 * 4 < full
      True
    """
    algo, num_dims = strategy.algorithm, strategy.algorithm.num_dims
    key = jax.random.key(0)
    if strategy.population_based:
        pop = jax.ShapeDtypeStruct((algo.population_size, num_dims), jnp.float32)
        fit = jax.ShapeDtypeStruct((algo.population_size,), jnp.float32)
        shapes = jax.eval_shape(algo.init, key, pop, fit, strategy.params)
    else:
        shape = (strategy.num_means, num_dims) if strategy.num_means > 1 else (num_dims,)
        mean = jax.ShapeDtypeStruct(shape, jnp.float32)
        shapes = jax.eval_shape(algo.init, key, mean, strategy.params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def check_memory(strategy: Strategy, max_bytes: int | None = None) -> int:
    """Refuse, before anything is allocated, a strategy whose state cannot fit.

    The state of a full-covariance strategy holds ``D x D`` matrices, and its update needs a
    few more of that size (eigendecomposition), so the estimate is four times the state.
    ``max_bytes`` defaults to half of the machine's physical memory. Returns the estimate.

    Example:
      >>> s = make_strategy("snes", 8, 100)
      >>> check_memory(s) == 4 * state_bytes(s)
      True
      >>> try:
      ...     check_memory(make_strategy("cma_es", 8, 1000), max_bytes=2**20)
      ... except MemoryError:
      ...     print("refused: use a diagonal strategy")
      refused: use a diagonal strategy
    """
    need = 4 * state_bytes(strategy)
    limit = _available_memory_bytes() // 2 if max_bytes is None else max_bytes
    if need > limit:
        d = strategy.algorithm.num_dims
        raise MemoryError(
            f"strategy {strategy.name!r} on a network of {d:,} parameters needs about "
            f"{need / 2**30:.1f} GiB for its state and update (its state holds {d:,} x {d:,} "
            f"matrices), more than the {limit / 2**30:.1f} GiB allowed (max_state_bytes). "
            f"Use a diagonal or low-rank strategy instead: {', '.join(DIAGONAL_ALTERNATIVES)}"
        )
    return need


def make_strategy(
    strategy: str | EvolutionaryAlgorithm,
    population_size: int,
    num_dims: int,
    *,
    std: float = DEFAULT_STD,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    strategy_kwargs: Mapping[str, Any] | None = None,
    strategy_params: Mapping[str, Any] | None = None,
) -> Strategy:
    """Build an evosax strategy, by name or from an instance, on a flat genome of size D.

    Args:
      strategy: a name (``"open_es"``, ``"cma_es"``, ``"de"``, ``"ga"`` ...; see
        :func:`strategy_names`) or an evosax instance already built on a flat solution of
        shape ``(num_dims,)`` (its own defaults are then used as they are).
      population_size: members evaluated per generation.
      num_dims: genome length ``D``.
      std: initial search scale (see the module docstring).
      learning_rate: Adam step for gradient-style strategies.
      strategy_kwargs: constructor arguments that override the defaults here.
      strategy_params: fields of ``default_params`` to replace.

    Example:
      >>> s = make_strategy("open_es", 8, 10)
      >>> s.name, s.algorithm.population_size
      ('Open_ES', 8)
    """
    if not isinstance(population_size, int) or isinstance(population_size, bool):
        raise TypeError(f"population_size must be an int, got {population_size!r}")
    if population_size < 2:
        raise ValueError(f"population_size must be at least 2, got {population_size}")
    if not float(std) > 0:
        raise ValueError(f"std must be positive, got {std}")
    solution = jnp.zeros((num_dims,), jnp.float32)

    if isinstance(strategy, EvolutionaryAlgorithm):
        algo = strategy
        sol = algo.solution
        if not (hasattr(sol, "shape") and tuple(sol.shape) == (num_dims,)):
            raise ValueError(
                "a strategy instance must be built on a flat solution of the genome's size: "
                f"{type(algo).__name__}(population_size=..., solution=jnp.zeros({num_dims})); "
                "or pass the strategy by name"
            )
        params = algo.default_params
        name = type(algo).__name__
    elif isinstance(strategy, str):
        name, cls = resolve_name(strategy)
        sig = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        if "std_schedule" in sig:
            kwargs["std_schedule"] = optax.constant_schedule(std)
        if "optimizer" in sig and name in _GRADIENT_STYLE:
            kwargs["optimizer"] = optax.adam(learning_rate)
        if name == "DeepGA":
            kwargs["std"] = std
        if "sampling_fn" in sig:  # RandomSearch: isotropic Gaussian around the origin
            kwargs["sampling_fn"] = lambda key: std * jax.random.normal(key, (num_dims,))
        num_means = 1
        if "num_populations" in sig:
            num_means = int((strategy_kwargs or {}).get("num_populations", 2))
            if population_size % num_means:
                raise ValueError(
                    f"{name} splits population_size={population_size} into num_populations="
                    f"{num_means} equal groups; choose a multiple of {num_means}"
                )
            kwargs["num_populations"] = num_means
            population_size = population_size // num_means
        kwargs.update(strategy_kwargs or {})
        unknown = set(kwargs) - set(sig)
        if unknown:
            raise ValueError(
                f"strategy_kwargs {sorted(unknown)} are not arguments of {name}; valid: "
                f"{sorted(k for k in sig if k not in ('self', 'population_size', 'solution'))}"
            )
        try:
            algo = cls(population_size=population_size, solution=solution, **kwargs)
        except AssertionError as err:
            # Name the population_size the user passed (SV strategies split it into groups).
            total = population_size * num_means
            groups = f" ({num_means} groups of {population_size})" if num_means > 1 else ""
            hint = (
                f" ({name} samples antithetic pairs: use {total - num_means} or "
                f"{total + num_means})"
                if "even" in str(err)
                else ""
            )
            raise ValueError(
                f"population_size={total} is invalid for {name}{groups}: {err}{hint}"
            ) from None
        params = algo.default_params
        fields = getattr(params, "__dataclass_fields__", {})
        if "std_init" in fields:
            params = params.replace(std_init=std)
        if name == "GradientlessDescent":
            params = params.replace(radius_max=std, radius_min=min(params.radius_min, std / 10))
    else:
        raise TypeError(
            "strategy must be a name or an evosax algorithm instance, got "
            f"{type(strategy).__name__}"
        )

    if strategy_params:
        fields = getattr(params, "__dataclass_fields__", {})
        unknown = set(strategy_params) - set(fields)
        if unknown:
            raise ValueError(
                f"strategy_params {sorted(unknown)} are not params of {name}; "
                f"valid: {sorted(fields)}"
            )
        params = params.replace(**strategy_params)
    num_means = getattr(algo, "num_populations", 1)
    return Strategy(
        name=name,
        algorithm=algo,
        params=params,
        population_based=isinstance(algo, PopulationBasedAlgorithm),
        num_means=int(num_means),
    )
