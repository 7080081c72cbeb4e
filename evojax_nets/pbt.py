"""Population-based training: the code now lives in the :mod:`evojax_nets.search` package
(split for module size, contents unchanged); this module re-exports every name it held, so
``from evojax_nets.pbt import ...`` keeps working.

- search spaces (:class:`Space`, :class:`Uniform`, :class:`LogUniform`, :class:`Choice`),
  :func:`check_space`, :func:`sample_hparams`, :func:`inject_hparams`,
  :func:`sample_batches`: :mod:`evojax_nets.search.spaces`
- :class:`PBTState`, :class:`PBTHistory`, :class:`PBTResult`, :class:`PBTCallback`,
  :class:`PBTProgressBar`, :func:`plot_schedules`: :mod:`evojax_nets.search.history`
- :class:`PBT` and its private helpers: :mod:`evojax_nets.search.pbt`
"""

from evojax_nets.search.history import (
    PBTCallback,
    PBTHistory,
    PBTProgressBar,
    PBTResult,
    PBTState,
    plot_schedules,
)
from evojax_nets.search.pbt import PBT
from evojax_nets.search.pbt import _same_dtype as _same_dtype
from evojax_nets.search.pbt import _take as _take
from evojax_nets.search.pbt import _tree_take as _tree_take
from evojax_nets.search.spaces import (
    Choice,
    HParams,
    LogUniform,
    SearchSpace,
    Space,
    State,
    Uniform,
    check_space,
    inject_hparams,
    sample_batches,
    sample_hparams,
)
from evojax_nets.search.spaces import _finite_number as _finite_number

__all__ = [
    "PBT",
    "Choice",
    "HParams",
    "LogUniform",
    "PBTCallback",
    "PBTHistory",
    "PBTProgressBar",
    "PBTResult",
    "PBTState",
    "SearchSpace",
    "Space",
    "State",
    "Uniform",
    "check_space",
    "inject_hparams",
    "plot_schedules",
    "sample_batches",
    "sample_hparams",
]
