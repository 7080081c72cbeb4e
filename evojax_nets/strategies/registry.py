"""Every evosax 0.3 strategy by name or instance, with network-sized defaults.

evosax's defaults are tuned for benchmark functions whose optimum lies at distance ~1 from the
start: an initial search std of 1.0, and for gradient-style strategies an optimizer step of
1e-3. For network weights (initialised at scale ``1/sqrt(fan_in)``) a std of 1.0 destroys the
network in one step. :func:`make_strategy` therefore sets, unless told otherwise:

* the search scale to ``std`` (``DEFAULT_STD = 0.05``): ``std_init`` in the params,
  ``std_schedule`` in the constructor, or ``radius_max`` for gradientless descent;
* for strategies that follow an estimated gradient with an optax optimizer (OpenAI-ES, PGPE,
  ARS, ESMC, Guided ES, ASEBO, Persistent ES, Noise-Reuse ES, SV-OpenAI-ES):
  Adam (``optax.inject_hyperparams(optax.adam)``) with ``DEFAULT_LEARNING_RATE = 0.02``;
  natural-gradient strategies (SNES, xNES, SimpleES, DES) keep their step of 1.0, which is
  part of the algorithm;
* the search scale and the learning rate are :class:`StrategyParams` arrays, not constants:
  ``Strategy.init/ask/tell`` write them where each algorithm reads them, so a sweep or a
  schedule changes them without recompiling;
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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import algorithms as _EVOSAX_ALGORITHMS
from evosax.algorithms.base import EvolutionaryAlgorithm
from evosax.algorithms.population_based.base import PopulationBasedAlgorithm
from flax import struct

from evojax_nets.lowrank.strategy import LowRankES
from evojax_nets.strategies.deep_ga import DeepGA
from evojax_nets.strategies.fixes import Open_ES, iAMaLGaM_Full, iAMaLGaM_Univariate, xNES
from evojax_nets.strategies.lowmem import LowMemoryOpenES

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
    "LowMemoryOpenES",
    "LowRankES",
}
# Strategies whose state holds a D x D matrix.
FULL_COVARIANCE = ("CMA_ES", "xNES", "MA_ES", "iAMaLGaM_Full", "ASEBO", "SV_CMA_ES")
DIAGONAL_ALTERNATIVES = ("sep_cma_es", "snes", "open_es", "pgpe", "lm_ma_es")


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
    "lowmemopenes": "LowMemoryOpenES",
    "lowrank": "LowRankES",
    "eggroll": "LowRankES",
}


def _registry() -> dict[str, type]:
    reg: dict[str, type] = {}
    for key, cls in _EVOSAX_ALGORITHMS.items():
        reg[key] = _SCALE_FIXED.get(key, cls)
    reg["DeepGA"] = DeepGA
    reg["LowMemoryOpenES"] = LowMemoryOpenES
    reg["LowRankES"] = LowRankES
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


@struct.dataclass
class StrategyParams:
    """A strategy's hyperparameters, as arrays: sweep them with ``vmap``, set them per run,
    schedule them, without recompiling.

    Attributes:
      inner: the evosax algorithm's own params (``default_params``, with ``strategy_params``
        applied).
      std: the search scale. Written into ``inner.std_init`` (or ``inner.std``) where the
        algorithm has one, and into the state's ``std`` every generation for strategies whose
        constant std schedule the library built (OpenAI-ES, ARS, ...).
      learning_rate: the optimizer step of gradient-style strategies whose optimizer the
        library built (``optax.inject_hyperparams(optax.adam)``); unused by the others.
    """

    inner: Any
    std: jax.Array
    learning_rate: jax.Array


@dataclass(frozen=True, eq=False)
class Strategy:
    """An evosax-protocol algorithm on a flat genome of length ``num_dims``, with its params.

    ``init``, ``ask`` and ``tell`` follow evosax's signatures with :class:`StrategyParams` as
    the params; they write ``params.std`` and ``params.learning_rate`` where the algorithm reads
    them (see :class:`StrategyParams`), so every strategy, evosax's and ours, sweeps the same way.

    Attributes:
      name: canonical name (``"Open_ES"``, ``"DeepGA"``, ...).
      algorithm: the instance; its solution is a flat ``(D,)`` vector, so ``ask`` and ``tell``
        see ``(P, D)`` arrays with no ravel/unravel copies.
      params: the default :class:`StrategyParams`.
      population_based: whether ``init`` needs an evaluated initial population.
      num_means: the number of distribution means (``num_populations`` of the SV strategies).
      std_in_state: ``params.std`` is written into the state's ``std`` (a constant schedule).
      learning_rate_in_state: ``params.learning_rate`` is written into the optimizer state.

    Example:
      >>> s = make_strategy("snes", 8, 10)  # how Evolution builds one
      >>> s.name, s.population_size, s.population_based, s.num_means
      ('SNES', 8, False, 1)
      >>> make_strategy("de", 8, 10).population_based
      True
      >>> es = make_strategy("open_es", 8, 10)
      >>> state = es.init(jax.random.key(0), jnp.zeros(10), None, es.params)
      >>> population, state = es.ask(jax.random.key(1), state, es.params.replace(std=0.5))
      >>> bool(0.4 < float(jnp.std(population)) < 0.7)  # 80 draws at std 0.5
      True
    """

    name: str
    algorithm: Any
    params: StrategyParams
    population_based: bool
    num_means: int = 1
    std_in_state: bool = False
    learning_rate_in_state: bool = False

    @property
    def population_size(self) -> int:
        """Members evaluated per generation (all sub-populations together)."""
        return int(getattr(self.algorithm, "total_population_size", self.algorithm.population_size))

    @property
    def num_dims(self) -> int:
        return int(self.algorithm.num_dims)

    @property
    def lazy(self) -> bool:
        """Whether ``ask`` hands back a :class:`LazyPopulation` (members regenerated on
        demand) rather than a ``(P, D)`` array."""
        return isinstance(self.algorithm, LowMemoryOpenES)

    @property
    def lowrank(self) -> bool:
        """Whether ``ask`` hands back a :class:`~evojax_nets.lowrank.LowRankPopulation`
        (low-rank perturbations regenerated from keys; ``"lowrank_es"``)."""
        return isinstance(self.algorithm, LowRankES)

    def inner_params(self, params: StrategyParams) -> Any:
        """The algorithm's own params with ``params.std`` written in."""
        inner = params.inner
        fields = getattr(inner, "__dataclass_fields__", {})
        for name in ("std_init", "std"):
            if name in fields:
                old = getattr(inner, name)
                std = jnp.broadcast_to(params.std, jnp.shape(old)).astype(jnp.result_type(old))
                inner = inner.replace(**{name: std})
        return inner

    def _sync(self, state: Any, params: StrategyParams) -> Any:
        if self.std_in_state:
            std = jnp.broadcast_to(params.std, state.std.shape).astype(state.std.dtype)
            state = state.replace(std=std)
        if self.learning_rate_in_state:
            opt = state.opt_state
            hyper = dict(opt.hyperparams)
            old = hyper["learning_rate"]
            lr = jnp.broadcast_to(params.learning_rate, jnp.shape(old))
            hyper["learning_rate"] = lr.astype(jnp.result_type(old))
            state = state.replace(opt_state=opt._replace(hyperparams=hyper))
        return state

    def init(self, key: jax.Array, x: jax.Array, fitness: Any, params: StrategyParams) -> Any:
        """The initial state: ``x`` is the mean (or means), or for a population-based
        strategy the evaluated initial population with its ``fitness``."""
        inner = self.inner_params(params)
        if self.population_based:
            state = self.algorithm.init(key, x, fitness, inner)
        else:
            state = self.algorithm.init(key, x, inner)
        return self._sync(state, params)

    def ask(self, key: jax.Array, state: Any, params: StrategyParams) -> tuple[Any, Any]:
        """``(population, state)``: a ``(P, D)`` array, or a :class:`LazyPopulation`."""
        return self.algorithm.ask(key, self._sync(state, params), self.inner_params(params))

    def tell(
        self,
        key: jax.Array,
        population: Any,
        fitness: jax.Array,
        state: Any,
        params: StrategyParams,
    ) -> tuple[Any, Any]:
        """``(state, metrics)`` after the (minimised, finite) fitness of ``population``."""
        inner = self.inner_params(params)
        state, metrics = self.algorithm.tell(
            key, population, fitness, self._sync(state, params), inner
        )
        return self._sync(state, params), metrics


def _check_setting(value: Any, name: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def make_strategy(
    strategy: str | EvolutionaryAlgorithm,
    population_size: int,
    num_dims: int,
    *,
    std: float | None = None,
    learning_rate: float | None = None,
    strategy_kwargs: Mapping[str, Any] | None = None,
    strategy_params: Mapping[str, Any] | None = None,
) -> Strategy:
    """Build a strategy, by name or from an evosax instance, on a flat genome of size D.

    Args:
      strategy: a name (``"open_es"``, ``"cma_es"``, ``"de"``, ``"ga"``,
        ``"low_memory_open_es"`` ...; see :func:`strategy_names`) or an evosax instance
        already built on a flat solution of shape ``(num_dims,)`` (its own settings are then
        used as they are: ``std`` and ``learning_rate`` must not be given with it).
      population_size: members evaluated per generation.
      num_dims: genome length ``D``.
      std: initial search scale (see the module docstring); default ``DEFAULT_STD``.
      learning_rate: Adam step for gradient-style strategies; default
        ``DEFAULT_LEARNING_RATE``.
      strategy_kwargs: constructor arguments that override the defaults here.
      strategy_params: fields of ``default_params`` to replace.

    Example:
      >>> s = make_strategy("open_es", 8, 10)
      >>> s.name, s.algorithm.population_size, round(float(s.params.std), 6)
      ('Open_ES', 8, 0.05)
    """
    if not isinstance(population_size, int) or isinstance(population_size, bool):
        raise TypeError(f"population_size must be an int, got {population_size!r}")
    if population_size < 2:
        raise ValueError(f"population_size must be at least 2, got {population_size}")
    given = {k: v for k, v in (("std", std), ("learning_rate", learning_rate)) if v is not None}
    std = DEFAULT_STD if std is None else _check_setting(std, "std")
    learning_rate = (
        DEFAULT_LEARNING_RATE
        if learning_rate is None
        else _check_setting(learning_rate, "learning_rate")
    )
    strategy_kwargs = dict(strategy_kwargs or {})
    solution = jnp.zeros((num_dims,), jnp.float32)
    std_in_state = lr_in_state = False

    if isinstance(strategy, EvolutionaryAlgorithm):
        algo = strategy
        sol = algo.solution
        if not (hasattr(sol, "shape") and tuple(sol.shape) == (num_dims,)):
            raise ValueError(
                "a strategy instance must be built on a flat solution of the genome's size: "
                f"{type(algo).__name__}(population_size=..., solution=jnp.zeros({num_dims})); "
                "or pass the strategy by name"
            )
        size = int(getattr(algo, "total_population_size", algo.population_size))
        if size != population_size:
            raise ValueError(
                f"population_size={population_size} disagrees with the strategy instance, "
                f"built with population_size={size}: pass population_size={size} or rebuild "
                "the instance"
            )
        params = algo.default_params
        name = type(algo).__name__
        fields = getattr(params, "__dataclass_fields__", {})
        own = next((f for f in ("std_init", "std") if f in fields), None)
        if own is not None:
            value = float(getattr(params, own))
            if "std" in given and abs(given["std"] - value) > 1e-6 * value:
                raise ValueError(
                    f"std={given['std']} disagrees with the strategy instance, whose params have "
                    f"{own}={value}: drop std=, or build the instance with the std you want"
                )
            std = value
        elif "std" in given and not isinstance(algo, PopulationBasedAlgorithm):
            raise ValueError(
                f"std= would be ignored: the {name} instance fixes its search scale when it "
                "is built (std_schedule=...); set it there, or pass the strategy by name"
            )
        ignored = [k for k in ("learning_rate",) if k in given]
        ignored += ["strategy_kwargs"] if strategy_kwargs else []
        if ignored:
            raise ValueError(
                f"{ignored} would be ignored: a strategy instance fixes its optimizer and "
                "constructor arguments when it is built; set them on the instance, or pass "
                "the strategy by name"
            )
    elif isinstance(strategy, str):
        name, cls = resolve_name(strategy)
        sig = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        if "std_schedule" in sig and "std_schedule" not in strategy_kwargs:
            kwargs["std_schedule"] = optax.constant_schedule(std)
            std_in_state = True
        if "optimizer" in sig and name in _GRADIENT_STYLE and "optimizer" not in strategy_kwargs:
            # Hyperparameters in float32 whatever the genome's dtype (b2 = 0.999 is 1.0 in bf16).
            adam = optax.inject_hyperparams(optax.adam, hyperparam_dtype=jnp.float32)
            kwargs["optimizer"] = adam(learning_rate=learning_rate)
            lr_in_state = True
        if "sampling_fn" in sig:  # RandomSearch: isotropic Gaussian around the origin
            kwargs["sampling_fn"] = lambda key: std * jax.random.normal(key, (num_dims,))
        num_means = 1
        if "num_populations" in sig:
            num_means = int(strategy_kwargs.get("num_populations", 2))
            if population_size % num_means:
                raise ValueError(
                    f"{name} splits population_size={population_size} into num_populations="
                    f"{num_means} equal groups; choose a multiple of {num_means}"
                )
            kwargs["num_populations"] = num_means
            population_size = population_size // num_means
        kwargs.update(strategy_kwargs)
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
        for field_name in ("std_init", "std"):  # an explicit std field is the search scale
            if field_name in strategy_params:
                std = float(strategy_params[field_name])
    num_means = getattr(algo, "num_populations", 1)
    hyper = StrategyParams(
        inner=params, std=jnp.float32(std), learning_rate=jnp.float32(learning_rate)
    )
    return Strategy(
        name=name,
        algorithm=algo,
        params=hyper,
        population_based=isinstance(algo, PopulationBasedAlgorithm),
        num_means=int(num_means),
        std_in_state=std_in_state,
        learning_rate_in_state=lr_in_state,
    )
