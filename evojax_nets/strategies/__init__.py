"""Strategies: every evosax 0.3 algorithm by name or instance, with network-sized defaults,
and the library's own (the elitist Deep-GA, the low-memory OpenAI-ES), all on evosax's
``init / ask / tell`` protocol with :class:`StrategyParams` as their params.

* :mod:`~evojax_nets.strategies.registry` — names, defaults, :func:`make_strategy`,
  :class:`Strategy` (see its docstring for the defaults and why).
* :mod:`~evojax_nets.strategies.deep_ga` — :class:`DeepGA` (Such et al. 2017).
* :mod:`~evojax_nets.strategies.lowmem` — :class:`LowMemoryOpenES` (noise regenerated from
  keys; the population is never held in memory).
* :mod:`evojax_nets.lowrank` — :class:`~evojax_nets.lowrank.LowRankES` (``"lowrank_es"``:
  rank-r matrix perturbations, the population forward at inference cost).
* :mod:`~evojax_nets.strategies.fixes` — evosax classes whose initial scale ignores ``std``,
  or that compute the same thing faster.
* :mod:`~evojax_nets.strategies.memory` — the state memory guard.

A new non-evosax strategy is a class with evosax's ``init/ask/tell`` signatures, added to
``registry._registry``.
"""

from evojax_nets.strategies.deep_ga import DeepGA, DeepGAParams, DeepGAState
from evojax_nets.strategies.fixes import Open_ES, iAMaLGaM_Full, iAMaLGaM_Univariate, xNES
from evojax_nets.strategies.lowmem import LazyPopulation, LowMemoryOpenES
from evojax_nets.strategies.memory import check_memory, state_bytes
from evojax_nets.strategies.registry import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_STD,
    DIAGONAL_ALTERNATIVES,
    FULL_COVARIANCE,
    Strategy,
    StrategyParams,
    make_strategy,
    resolve_name,
    strategy_names,
)

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_STD",
    "DIAGONAL_ALTERNATIVES",
    "FULL_COVARIANCE",
    "DeepGA",
    "DeepGAParams",
    "DeepGAState",
    "LazyPopulation",
    "LowMemoryOpenES",
    "Open_ES",
    "Strategy",
    "StrategyParams",
    "check_memory",
    "iAMaLGaM_Full",
    "iAMaLGaM_Univariate",
    "make_strategy",
    "resolve_name",
    "state_bytes",
    "strategy_names",
    "xNES",
]
