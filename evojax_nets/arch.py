"""Architecture evolution by masking: the code now lives in the :mod:`evojax_nets.search`
package (split for module size, contents unchanged); this module re-exports every name it
held, so ``from evojax_nets.arch import ...`` keeps working.

- :data:`ACTIVATIONS`, the shared argument checks and the exported (unmasked) modules
  :class:`ArchMLP` and :class:`ArchCNN`: :mod:`evojax_nets.search.arch_modules`
- the spaces :class:`MLPSpace` and :class:`CNNSpace`: :mod:`evojax_nets.search.arch_spaces`
- :func:`estimate_bytes`, :func:`check_memory`, :class:`ArchResult`, :class:`ArchSearch`:
  :mod:`evojax_nets.search.arch`
"""

from evojax_nets.search.arch import ArchResult, ArchSearch, check_memory, estimate_bytes
from evojax_nets.search.arch_modules import ACTIVATIONS, ArchCNN, ArchMLP, Genes
from evojax_nets.search.arch_modules import _check_activations as _check_activations
from evojax_nets.search.arch_modules import _check_int as _check_int
from evojax_nets.search.arch_modules import _check_sizes as _check_sizes
from evojax_nets.search.arch_modules import _concrete_genes as _concrete_genes
from evojax_nets.search.arch_modules import _select_activation as _select_activation
from evojax_nets.search.arch_spaces import ArchSpace, CNNSpace, MLPSpace
from evojax_nets.search.arch_spaces import _LayerSpace as _LayerSpace
from evojax_nets.search.arch_spaces import _lecun as _lecun
from evojax_nets.search.arch_spaces import _where as _where

# names the old module imported from evojax_nets.pbt (reachable as evojax_nets.arch.<name>)
from evojax_nets.search.history import PBTCallback as PBTCallback
from evojax_nets.search.history import PBTHistory as PBTHistory
from evojax_nets.search.history import PBTResult as PBTResult
from evojax_nets.search.history import PBTState as PBTState
from evojax_nets.search.pbt import PBT as PBT
from evojax_nets.search.spaces import Choice as Choice
from evojax_nets.search.spaces import Space as Space
from evojax_nets.search.spaces import inject_hparams as inject_hparams
from evojax_nets.search.spaces import sample_batches as sample_batches

__all__ = [
    "ACTIVATIONS",
    "ArchCNN",
    "ArchMLP",
    "ArchResult",
    "ArchSearch",
    "ArchSpace",
    "CNNSpace",
    "Genes",
    "MLPSpace",
    "check_memory",
    "estimate_bytes",
]
