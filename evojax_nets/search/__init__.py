"""Population-based training and architecture search, each as one XLA program.

- :mod:`evojax_nets.search.spaces`: hyperparameter search spaces (:class:`Uniform`,
  :class:`LogUniform`, :class:`Choice`), :func:`sample_hparams`, :func:`inject_hparams`,
  :func:`sample_batches`.
- :mod:`evojax_nets.search.history`: :class:`PBTState`, :class:`PBTHistory`,
  :class:`PBTResult`, :class:`PBTCallback`, :class:`PBTProgressBar`, :func:`plot_schedules`.
- :mod:`evojax_nets.search.pbt`: :class:`PBT`, population-based training of the user's own
  training step (Jaderberg et al. 2017).
- :mod:`evojax_nets.search.arch_modules`: the activations and the exported (unmasked) modules
  :class:`ArchMLP` and :class:`ArchCNN`.
- :mod:`evojax_nets.search.arch_spaces`: the architecture spaces :class:`MLPSpace` and
  :class:`CNNSpace`.
- :mod:`evojax_nets.search.arch`: :class:`ArchSearch`, architecture evolution by masking, and
  its memory check.

:mod:`evojax_nets.pbt` and :mod:`evojax_nets.arch` re-export the same names.
"""

from evojax_nets.search.arch import ArchResult, ArchSearch, check_memory, estimate_bytes
from evojax_nets.search.arch_modules import ACTIVATIONS, ArchCNN, ArchMLP, Genes
from evojax_nets.search.arch_spaces import ArchSpace, CNNSpace, MLPSpace
from evojax_nets.search.history import (
    PBTCallback,
    PBTHistory,
    PBTProgressBar,
    PBTResult,
    PBTState,
    plot_schedules,
)
from evojax_nets.search.pbt import PBT
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

__all__ = [
    "ACTIVATIONS",
    "PBT",
    "ArchCNN",
    "ArchMLP",
    "ArchResult",
    "ArchSearch",
    "ArchSpace",
    "CNNSpace",
    "Choice",
    "Genes",
    "HParams",
    "LogUniform",
    "MLPSpace",
    "PBTCallback",
    "PBTHistory",
    "PBTProgressBar",
    "PBTResult",
    "PBTState",
    "SearchSpace",
    "Space",
    "State",
    "Uniform",
    "check_memory",
    "check_space",
    "estimate_bytes",
    "inject_hparams",
    "plot_schedules",
    "sample_batches",
    "sample_hparams",
]
