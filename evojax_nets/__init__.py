"""evojax_nets: evolve Flax networks with any evosax strategy, at accelerator speed."""

from evojax_nets.engine import (
    Callback,
    Evolution,
    EvolutionState,
    History,
    Result,
    evolve,
)
from evojax_nets.nets import Network, as_network, from_linen, from_nnx, from_train_state
from evojax_nets.ops import Members, OpContext, PopulationOp, chain, identity
from evojax_nets.strategies import DeepGA, Strategy, make_strategy, strategy_names
from evojax_nets.tasks import FunctionTask, Supervised, load_digits, load_idx_dataset

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "DeepGA",
    "Evolution",
    "EvolutionState",
    "FunctionTask",
    "History",
    "Members",
    "Network",
    "OpContext",
    "PopulationOp",
    "Result",
    "Strategy",
    "Supervised",
    "as_network",
    "chain",
    "evolve",
    "from_linen",
    "from_nnx",
    "from_train_state",
    "identity",
    "load_digits",
    "load_idx_dataset",
    "make_strategy",
    "strategy_names",
]
