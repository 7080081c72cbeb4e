"""evojax_nets: evolve Flax networks with any evosax strategy, at accelerator speed.

Names are imported lazily (PEP 562), so ``from evojax_nets.sharding import
initialize_distributed`` can run before anything touches a JAX backend (evosax creates
arrays when it is imported, and ``jax.distributed.initialize`` must come first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Callback": "evojax_nets.engine",
    "Evolution": "evojax_nets.engine",
    "EvolutionState": "evojax_nets.engine",
    "History": "evojax_nets.engine",
    "Result": "evojax_nets.engine",
    "evolve": "evojax_nets.engine",
    "Network": "evojax_nets.nets",
    "as_network": "evojax_nets.nets",
    "from_linen": "evojax_nets.nets",
    "from_nnx": "evojax_nets.nets",
    "from_train_state": "evojax_nets.nets",
    "Members": "evojax_nets.ops",
    "OpContext": "evojax_nets.ops",
    "PopulationOp": "evojax_nets.ops",
    "chain": "evojax_nets.ops",
    "identity": "evojax_nets.ops",
    "DeepGA": "evojax_nets.strategies",
    "Strategy": "evojax_nets.strategies",
    "make_strategy": "evojax_nets.strategies",
    "strategy_names": "evojax_nets.strategies",
    "FunctionTask": "evojax_nets.tasks",
    "Supervised": "evojax_nets.tasks",
    "RLTask": "evojax_nets.tasks.rl",
    "load_digits": "evojax_nets.tasks",
    "load_idx_dataset": "evojax_nets.tasks",
    "population_mesh": "evojax_nets.sharding",
    "PBT": "evojax_nets.pbt",
    "Choice": "evojax_nets.pbt",
    "LogUniform": "evojax_nets.pbt",
    "Uniform": "evojax_nets.pbt",
    "ArchSearch": "evojax_nets.arch",
    "MLPSpace": "evojax_nets.arch",
    "CNNSpace": "evojax_nets.arch",
    "gradient_steps": "evojax_nets.hybrids",
    "esgd": "evojax_nets.hybrids",
    "evolve_starting_point": "evojax_nets.warmstart",
    "initialize_distributed": "evojax_nets.sharding",
}

__all__ = [
    "ArchSearch",
    "CNNSpace",
    "Callback",
    "Choice",
    "DeepGA",
    "Evolution",
    "EvolutionState",
    "FunctionTask",
    "History",
    "LogUniform",
    "MLPSpace",
    "Members",
    "Network",
    "OpContext",
    "PBT",
    "PopulationOp",
    "RLTask",
    "Result",
    "Strategy",
    "Supervised",
    "Uniform",
    "as_network",
    "chain",
    "esgd",
    "evolve",
    "evolve_starting_point",
    "from_linen",
    "from_nnx",
    "from_train_state",
    "gradient_steps",
    "identity",
    "initialize_distributed",
    "load_digits",
    "load_idx_dataset",
    "make_strategy",
    "population_mesh",
    "strategy_names",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evojax_nets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # pragma: no cover
    from evojax_nets.arch import ArchSearch, CNNSpace, MLPSpace
    from evojax_nets.engine import Callback, Evolution, EvolutionState, History, Result, evolve
    from evojax_nets.hybrids import esgd, gradient_steps
    from evojax_nets.nets import Network, as_network, from_linen, from_nnx, from_train_state
    from evojax_nets.ops import Members, OpContext, PopulationOp, chain, identity
    from evojax_nets.pbt import PBT, Choice, LogUniform, Uniform
    from evojax_nets.sharding import initialize_distributed, population_mesh
    from evojax_nets.strategies import DeepGA, Strategy, make_strategy, strategy_names
    from evojax_nets.tasks import FunctionTask, Supervised, load_digits, load_idx_dataset
    from evojax_nets.warmstart import evolve_starting_point
