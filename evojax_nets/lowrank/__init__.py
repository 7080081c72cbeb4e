"""Low-rank evolution strategies (EGGROLL, Sarkar et al. 2025, "Evolution Strategies at the
Hyperscale", https://arxiv.org/abs/2511.16652) on the user's own Flax model.

* :mod:`~evojax_nets.lowrank.layout` — which evolved leaves are matrices or convolution
  kernels (:func:`layout_of`), and where they lie in the genome.
* :mod:`~evojax_nets.lowrank.forward` — the population forward pass: the model's jaxpr
  evaluated with shared, batched and low-rank values, so ``x W`` is one product for the whole
  population and each member adds ``(x A_i) B_i^T``.
* :mod:`~evojax_nets.lowrank.fullrank` — the same interpreter for full-rank members: the
  population forward any model gets (``Network.population_apply``), with features-major
  activations, so a user's own MLP runs as fast as the library's.
* :mod:`~evojax_nets.lowrank.strategy` — :class:`LowRankES` (``"lowrank_es"`` in the
  registry) and its :class:`LowRankPopulation`.
* :mod:`~evojax_nets.lowrank.evaluate` — how the engine evaluates a low-rank population.

Example:
  >>> import jax
  >>> from flax import nnx
  >>> from evojax_nets import Evolution
  >>> from evojax_nets.tasks import Supervised, load_digits
  >>> model = nnx.Sequential(nnx.Linear(64, 16, rngs=nnx.Rngs(0)), nnx.relu,
  ...                        nnx.Linear(16, 10, rngs=nnx.Rngs(1)))
  >>> evo = Evolution(model, Supervised.from_dataset(load_digits()), "lowrank_es", 16,
  ...                 strategy_kwargs={"rank": 2})
  >>> state, history = evo.run(evo.init(jax.random.key(0)), 3)
  >>> len(history.rows)
  3
"""

from evojax_nets.lowrank.evaluate import evaluate_lowrank
from evojax_nets.lowrank.forward import (
    Batched,
    LowRank,
    PopulationGenome,
    Shared,
    evaluate_jaxpr,
    lowrank_call,
    lowrank_forward,
    lowrank_scale,
)
from evojax_nets.lowrank.layout import Layout, LeafSpec, layout_for_task, layout_of
from evojax_nets.lowrank.strategy import (
    LowRankES,
    LowRankParams,
    LowRankPopulation,
    LowRankState,
)

__all__ = [
    "Batched",
    "PopulationGenome",
    "Layout",
    "LeafSpec",
    "LowRank",
    "LowRankES",
    "LowRankParams",
    "LowRankPopulation",
    "LowRankState",
    "Shared",
    "evaluate_jaxpr",
    "evaluate_lowrank",
    "layout_for_task",
    "layout_of",
    "lowrank_call",
    "lowrank_forward",
    "lowrank_scale",
]
