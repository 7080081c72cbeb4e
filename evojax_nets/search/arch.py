"""Architecture evolution by masking: a population of different networks as one XLA program.

Depth, the width of every layer (channels for a CNN) and the activation of every layer are
genes. Every member holds the weights of the *largest* network of the search space; its genes
mask them: units beyond a layer's width output zero, layers beyond the depth pass their input
through unchanged, and a per-layer activation index selects the nonlinearity. Members with
different architectures therefore have the same array shapes and train, evaluate and copy as
one ``vmap``ped program. The masked member computes exactly what the dense network of its
chosen sizes computes with the corresponding slices of its weights, which is how
:meth:`MLPSpace.export` hands back a real, unmasked NNX module.

The genes evolve with population-based training (:mod:`evojax_nets.pbt`, Jaderberg et al.
2017, https://arxiv.org/abs/1711.09846) while the weights train by gradient steps in the same
compiled loop: every ``ready`` steps the bottom quantile copies a top member's weights,
optimizer state and genes *together* (a copied architecture always arrives with the weights
trained under it), then mutates a few genes (depth +-1, a width to its neighbouring size, a
new activation). This is the Lamarckian weight inheritance of Real et al. (2017), "Large-Scale
Evolution of Image Classifiers", https://arxiv.org/abs/1703.01041, with truncation selection
as in the Deep-GA of Such et al. (2017), https://arxiv.org/abs/1712.06567, run synchronously.
Units a mutation switches on start from their (never trained) initial weights. An optional size
penalty (parameters or FLOPs, relative to the largest network) trades accuracy for size.

Example::

    space = MLPSpace(64, 10, max_depth=3, widths=(8, 16, 32, 64, 128))
    search = ArchSearch(space, x_train, y_train, x_val, y_val, population_size=16,
                        ready=100, size_penalty=0.01)
    result = search.fit(jax.random.key(0), num_steps=3000)
    result.module          # an nnx.Module of the chosen sizes, with its trained weights
    result.architecture    # {'widths': [32], 'activations': ['relu']}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_nets.losses import accuracy as label_accuracy
from evojax_nets.losses import cross_entropy, sample_batches
from evojax_nets.runner import device_memory_bytes
from evojax_nets.search.arch_modules import Genes, _check_int
from evojax_nets.search.arch_spaces import ArchSpace, CNNSpace, MLPSpace
from evojax_nets.search.history import PBTCallback, PBTHistory, PBTResult, PBTState
from evojax_nets.search.pbt import PBT
from evojax_nets.search.spaces import Space, inject_hparams

# -- memory ---------------------------------------------------------------------------------


def estimate_bytes(space: ArchSpace, population_size: int, batch_size: int, num_val: int) -> int:
    """Memory a search needs, from shapes alone: for every member the largest network's
    weights, gradients, two optimizer moments and the copy made by exploit, plus activations
    of one training batch and of the validation set.

    Example:
      >>> estimate_bytes(MLPSpace(64, 10), 16, 64, 360) > 0
      True
    """
    weights = 5 * 4 * space.max_num_params
    acts = space.activation_bytes(batch_size) + space.activation_bytes(num_val) // 2
    return population_size * (weights + acts)


def check_memory(
    space: ArchSpace,
    population_size: int,
    batch_size: int,
    num_val: int,
    max_bytes: int | None = None,
) -> int:
    """Refuse, before anything is allocated, a maximum architecture too large for memory.
    ``max_bytes`` defaults to half of the device's memory (an accelerator's own, else the
    host's). Returns the estimate."""
    need = estimate_bytes(space, population_size, batch_size, num_val)
    limit = device_memory_bytes() // 2 if max_bytes is None else int(max_bytes)
    if need > limit:
        if isinstance(space, MLPSpace):
            knobs = f"max_depth={space.max_depth}, widths up to {space.max_width}"
        else:
            knobs = f"max_depth={space.max_depth}, channels up to {space.max_channels}"
        raise MemoryError(
            f"the maximum architecture of the search space ({knobs}: "
            f"{space.max_num_params:,} parameters) needs about {need / 2**30:.2f} GiB for "
            f"population_size={population_size} (weights, gradients, optimizer state and "
            f"activations of batch_size={batch_size} and {num_val} validation examples, for "
            f"every member), more than the {limit / 2**30:.2f} GiB allowed (max_bytes). "
            "Lower max_depth, the largest width/channels, population_size or batch_size."
        )
    return need


# -- the search -----------------------------------------------------------------------------


@dataclass
class ArchResult:
    """What an architecture search hands back.

    Attributes:
      module: the chosen network as a real, unmasked NNX module with its trained weights.
      genes: its genes.
      architecture: its expressed sizes and activations.
      description: the same, as one line.
      num_params: the exported module's parameter count.
      flops: its forward FLOPs per example.
      score: its final validation score (accuracy or minus the loss, minus the size penalty).
      val_accuracy: its validation accuracy.
      params: its masked (maximum-size) weights, for :meth:`masked_apply`.
      pbt: the PBT result (schedule of its genes and learning rate, lineage, history).
    """

    module: nnx.Module
    genes: dict[str, int]
    architecture: dict[str, list]
    description: str
    num_params: int
    flops: int
    score: float
    val_accuracy: float
    params: Any
    space: ArchSpace
    pbt: PBTResult

    def masked_apply(self, x: jax.Array) -> jax.Array:
        """The masked member's outputs (what :attr:`module` must reproduce)."""
        return jax.jit(self.space.apply)(self.params, self.genes, jnp.asarray(x, jnp.float32))


class ArchSearch:
    """Evolve architectures (masked, one vmapped program) while their weights train.

    Args:
      space: an :class:`MLPSpace` or :class:`CNNSpace`.
      x_train, y_train: training data (integer class labels).
      x_val, y_val: validation data; the selection score is its accuracy (never the test set).
      population_size: members trained in parallel.
      ready: gradient steps between two selections.
      batch_size: examples per gradient step (each member draws its own).
      learning_rate: a float, or a :class:`~evojax_nets.pbt.Space` to evolve it too.
      optimizer: an optax optimizer factory taking ``learning_rate`` (``optax.adam``).
      size_penalty: the score is ``accuracy - size_penalty * size / max_size``: 0.01 costs the
        largest network one accuracy point (with ``score="loss"``, 0.01 nats).
      size_measure: ``"params"`` or ``"flops"``.
      score: what ranks members: validation ``"accuracy"``, or ``"loss"`` (minus the
        validation cross-entropy: smoother, fewer ties on small validation sets).
      quantile, perturb_probability, resample_probability: see
        :class:`~evojax_nets.pbt.PBT`; each gene of a copied member mutates with probability
        ``perturb_probability``.
      max_bytes: memory allowed (default: half of the machine's memory).

    Example:
      >>> from evojax_nets.tasks import load_digits
      >>> ds = load_digits()
      >>> x, y = ds.x_train, ds.y_train
      >>> space = MLPSpace(64, 10, max_depth=2, widths=(16, 32))
      >>> search = ArchSearch(space, x[:1000], y[:1000], x[1000:], y[1000:], population_size=8,
      ...                     ready=50)
      >>> result = search.fit(jax.random.key(0), 100)
      >>> result.module(ds.x_test).shape
      (360, 10)
    """

    def __init__(
        self,
        space: ArchSpace,
        x_train: Any,
        y_train: Any,
        x_val: Any,
        y_val: Any,
        *,
        population_size: int = 16,
        ready: int = 100,
        batch_size: int = 64,
        learning_rate: float | Space = 3e-3,
        optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
        size_penalty: float = 0.0,
        size_measure: Literal["params", "flops"] = "params",
        score: Literal["accuracy", "loss"] = "accuracy",
        quantile: float = 0.25,
        perturb_probability: float = 0.25,
        resample_probability: float = 0.0,
        max_bytes: int | None = None,
    ):
        if not isinstance(space, MLPSpace | CNNSpace):
            raise TypeError(f"space must be an MLPSpace or a CNNSpace, got {type(space).__name__}")
        if score not in ("accuracy", "loss"):
            raise ValueError(f"score must be 'accuracy' or 'loss', got {score!r}")
        if size_measure not in ("params", "flops"):
            raise ValueError(f"size_measure must be 'params' or 'flops', got {size_measure!r}")
        if not (isinstance(size_penalty, int | float) and size_penalty >= 0):
            raise ValueError(f"size_penalty must be a number >= 0, got {size_penalty!r}")
        x_tr, y_tr = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train)
        x_va, y_va = jnp.asarray(x_val, jnp.float32), jnp.asarray(y_val)
        for xn, x, yn, y in (("x_train", x_tr, "y_train", y_tr), ("x_val", x_va, "y_val", y_va)):
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"{xn} has {x.shape[0]} rows and {yn} {y.shape[0]}; need n > 0")
            if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim != 1:
                raise ValueError(f"{yn} must be a vector of integer class labels")
        _check_int(batch_size, "batch_size")
        _check_int(population_size, "population_size", low=2)
        if isinstance(space, MLPSpace):
            want = (space.in_features,)
            ok = x_tr.shape[1:] == want and x_va.shape[1:] == want
        else:
            want = space.input_shape
            flat = (math.prod(want),)
            ok = all(x.shape[1:] in (want, flat) for x in (x_tr, x_va))
        if not ok:
            raise ValueError(
                f"x_train / x_val examples have shapes {x_tr.shape[1:]} / {x_va.shape[1:]}, but "
                f"the space takes {want}"
            )
        check_memory(space, int(population_size), batch_size, x_va.shape[0], max_bytes)
        self.space = space
        self.size_penalty = float(size_penalty)
        self.size_measure = size_measure
        self.score = score
        max_size = space.max_num_params if size_measure == "params" else space.max_flops
        size_fn = space.num_params if size_measure == "params" else space.flops

        pbt_space: dict[str, Space] = dict(space.genes())
        if isinstance(learning_rate, Space):
            pbt_space["learning_rate"] = learning_rate
            lr0 = 1e-3
        else:
            if not (isinstance(learning_rate, int | float) and learning_rate > 0):
                raise ValueError(
                    f"learning_rate must be a positive float or a Space, got {learning_rate!r}"
                )
            lr0 = float(learning_rate)
        self.tx = optax.inject_hyperparams(optimizer)(learning_rate=lr0)
        self._lr0 = lr0
        self._frozen: PBT | None = None
        tx = self.tx

        def loss(params: Any, genes: Genes, x: jax.Array, y: jax.Array) -> jax.Array:
            return cross_entropy(space.apply(params, genes, x), y)

        def train_step(state: dict, batch: tuple, hp: dict) -> dict:
            grads = jax.grad(loss)(state["params"], hp, *batch)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}

        def accuracy(params: Any, genes: Genes, x: jax.Array, y: jax.Array) -> jax.Array:
            return label_accuracy(space.apply(params, genes, x), y)

        def eval_fn(state: dict, hp: dict) -> jax.Array:
            if score == "loss":
                fit = -loss(state["params"], hp, x_va, y_va)
            else:
                fit = accuracy(state["params"], hp, x_va, y_va)
            return fit - self.size_penalty * size_fn(hp) / max_size

        self._val_accuracy = jax.jit(lambda p, g: accuracy(p, g, x_va, y_va))
        self.pbt = PBT(
            train_step,
            eval_fn,
            pbt_space,
            population_size,
            ready=ready,
            batch_fn=sample_batches(x_tr, y_tr, batch_size=batch_size),
            maximize=True,
            quantile=quantile,
            perturb_probability=perturb_probability,
            resample_probability=resample_probability,
        )
        self.pbt.fingerprint_extra = {
            "arch_space": repr(space),
            "size_penalty": self.size_penalty,
            "size_measure": size_measure,
            "score": score,
            "batch_size": batch_size,
            "data": [list(x_tr.shape), list(x_va.shape)],
        }
        self._x_val, self._y_val = x_va, y_va
        self._eval_all = jax.jit(
            jax.vmap(
                lambda p, g, x, y: (accuracy(p, g, x, y), size_fn(g)), in_axes=(0, 0, None, None)
            )
        )

    def abstract_state(self) -> Any:
        """The population state's shapes and dtypes, from shapes alone (for checkpoints)."""
        return self.pbt.abstract_state(self._init_member)

    def fingerprint(self) -> dict[str, Any]:
        """The configuration a checkpoint must match to be resumed."""
        return self.pbt.fingerprint()

    def step_count(self, state: PBTState) -> int:
        return self.pbt.step_count(state)

    def _init_member(self, key: jax.Array) -> dict:
        params = self.space.init_params(key)
        return {"params": params, "opt_state": self.tx.init(params)}

    def init(self, key: jax.Array, genes: Mapping[str, Any] | None = None) -> PBTState:
        """The initial population: independent weights, genes sampled from the space unless
        given (``{name: (P,)}``; include ``learning_rate`` when it evolves)."""
        return self.pbt.init(key, self._init_member, genes)

    def run(
        self,
        state: PBTState,
        num_steps: int,
        *,
        chunk_size: int | None = None,
        callbacks: Sequence[PBTCallback] = (),
        history: PBTHistory | None = None,
    ) -> tuple[PBTState, PBTHistory]:
        """Train ``num_steps`` more steps, selecting and mutating every ``ready`` steps."""
        return self.pbt.run(
            state, num_steps, chunk_size=chunk_size, callbacks=callbacks, history=history
        )

    def finetune(
        self,
        state: PBTState,
        num_steps: int,
        *,
        lr_scale: float = 0.1,
        chunk_size: int | None = None,
        callbacks: Sequence[PBTCallback] = (),
        history: PBTHistory | None = None,
    ) -> tuple[PBTState, PBTHistory]:
        """Train every member ``num_steps`` more with its genes frozen (no selection, no
        mutation) and its learning rate times ``lr_scale``: the members' last architecture
        changes get time to settle, and the final pick compares trained networks.

        Example:
          >>> state, history = search.run(state, 2400)  # doctest: +SKIP
          >>> state, history = search.finetune(state, 600, history=history)  # doctest: +SKIP
          >>> result = search.result(state, history)  # doctest: +SKIP
        """
        if not (isinstance(lr_scale, int | float) and lr_scale > 0):
            raise ValueError(f"lr_scale must be a positive number, got {lr_scale!r}")
        hparams = dict(state.hparams)
        if "learning_rate" in hparams:
            lr = hparams["learning_rate"] * lr_scale
            hparams["learning_rate"] = lr
        else:
            lr = jnp.full((self.pbt.population_size,), self._lr0 * lr_scale, jnp.float32)
        members = jax.vmap(inject_hparams)(state.members, {"learning_rate": lr})
        state = state.replace(members=members, hparams=hparams)
        return self._frozen_pbt().run(
            state, num_steps, chunk_size=chunk_size, callbacks=callbacks, history=history
        )

    def _frozen_pbt(self) -> PBT:
        """The search's program without exploit and explore (compiled once, then reused)."""
        if self._frozen is None:
            p = self.pbt
            self._frozen = PBT(
                p.train_step,
                p.eval_fn,
                p.space,
                p.population_size,
                ready=p.ready,
                batch_fn=p.batch_fn,
                exploit="none",
            )
        return self._frozen

    def retrain(
        self,
        state: PBTState,
        key: jax.Array,
        num_steps: int,
        *,
        repeats: int = 2,
        chunk_size: int | None = None,
        callbacks: Sequence[PBTCallback] = (),
    ) -> ArchResult:
        """Train the best candidates of a finished search again from fresh weights, and export
        the candidate whose fresh copies score best on average.

        The search's final scores reward weights that happen to fit the validation set, since
        the same set ranked the members at every selection (on a small set that is worth a
        point or more). Here each of the ``population_size // repeats`` best distinct
        candidates (genes and learning rate, by final score) fills ``repeats`` or more slots of
        a new population with new weights; all train ``num_steps`` steps with no selection;
        candidates are ranked by the mean score of their copies, and the best copy of the best
        candidate is exported. Same program shape as the search: nothing new to compile
        beyond :meth:`finetune`'s.

        Example:
          >>> state, history = search.run(state, 3000)  # doctest: +SKIP
          >>> result = search.retrain(state, jax.random.key(1), 3000, repeats=4)  # doctest: +SKIP
        """
        _check_int(num_steps, "num_steps")
        size = self.pbt.population_size
        if not (isinstance(repeats, int) and 1 <= repeats <= size):
            raise ValueError(
                f"repeats must be an int from 1 to population_size={size}, got {repeats!r}"
            )
        hp = {k: np.asarray(v) for k, v in jax.device_get(state.hparams).items()}
        scores = np.asarray(state.scores, np.float64)
        order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
        candidates: list[int] = []
        seen: set[tuple] = set()
        for i in order:
            signature = tuple(hp[k][i].item() for k in sorted(hp))
            if signature not in seen:
                seen.add(signature)
                candidates.append(int(i))
        candidates = candidates[: size // repeats]
        slot_of = np.array([j % len(candidates) for j in range(size)])  # candidate per slot
        source = np.array(candidates)[slot_of]
        fresh = self.init(key, {k: jnp.asarray(v[source]) for k, v in hp.items()})
        fresh, history = self._frozen_pbt().run(
            fresh, num_steps, chunk_size=chunk_size, callbacks=callbacks
        )
        new = np.asarray(fresh.scores, np.float64)
        new = np.where(np.isfinite(new), new, -np.inf)
        means = [new[slot_of == c].mean() for c in range(len(candidates))]
        best = int(np.argmax(means))
        slots = np.flatnonzero(slot_of == best)
        return self._export(fresh, history, int(slots[np.argmax(new[slots])]))

    def evaluate(
        self, state: PBTState, x: Any | None = None, y: Any | None = None
    ) -> dict[str, np.ndarray]:
        """Every member's accuracy on ``(x, y)`` (the validation set by default) and size."""
        x = self._x_val if x is None else jnp.asarray(x, jnp.float32)
        y = self._y_val if y is None else jnp.asarray(y)
        genes = {k: v for k, v in state.hparams.items() if k != "learning_rate"}
        acc, size = self._eval_all(state.members["params"], genes, x, y)
        return {"accuracy": np.asarray(acc), self.size_measure: np.asarray(size)}

    def result(self, state: PBTState, history: PBTHistory) -> ArchResult:
        """The best member by its final score, exported as an unmasked NNX module."""
        return self._export(state, history, self.pbt.best_index(state))

    def _export(self, state: PBTState, history: PBTHistory, index: int) -> ArchResult:
        res = self.pbt.result(state, history, index=index)
        genes = {k: int(v) for k, v in res.hparams.items() if k != "learning_rate"}
        params = res.state["params"]
        module = self.space.export(params, genes)
        n = sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
        val_acc = float(self._val_accuracy(params, genes))
        return ArchResult(
            module=module,
            genes=genes,
            architecture=self.space.architecture(genes),
            description=self.space.describe(genes),
            num_params=n,
            flops=int(self.space.flops(genes)),
            score=res.score,
            val_accuracy=val_acc,
            params=params,
            space=self.space,
            pbt=res,
        )

    def fit(
        self,
        key: jax.Array,
        num_steps: int,
        *,
        finetune_steps: int = 0,
        chunk_size: int | None = None,
        callbacks: Sequence[PBTCallback] = (),
    ) -> ArchResult:
        """``init``, ``run``, optionally ``finetune``, and ``result`` in one call."""
        state = self.init(key)
        state, history = self.run(state, num_steps, chunk_size=chunk_size, callbacks=callbacks)
        if finetune_steps:
            state, history = self.finetune(
                state, finetune_steps, chunk_size=chunk_size, callbacks=callbacks, history=history
            )
        return self.result(state, history)
