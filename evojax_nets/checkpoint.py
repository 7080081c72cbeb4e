"""Checkpoint and resume with orbax: the whole engine state, atomically, keeping the last k.

A checkpoint holds the :class:`~evojax_nets.engine.EvolutionState` (strategy state, operator
states, PRNG key stored as raw key data, generation counter, best member, counters) and, as
JSON, the metrics history so far and a fingerprint of the run (network kind and parameter
paths, genome size, strategy, population size). orbax writes each step to a temporary folder
and renames it when complete, so a run killed mid-write leaves the previous checkpoints intact
and loses at most the generations since the last complete one.

Example:
  >>> ckpt = Checkpointer("runs/ckpt", every=50, keep=3)      # doctest: +SKIP
  >>> state, history = evo.run(state, 500, callbacks=[ckpt])  # doctest: +SKIP
  >>> state, history = resume(evo, "runs/ckpt")               # in a fresh process  # doctest: +SKIP
  >>> state, more = evo.run(state, 500 - int(state.generation))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.engine import Callback, Evolution, EvolutionState, History

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or belongs to a different run."""


def fingerprint(evolution: Evolution) -> dict[str, Any]:
    """What must match between the run that saved a checkpoint and the one restoring it."""
    net = evolution.network
    return {
        "format": FORMAT_VERSION,
        "network_kind": net.kind,
        "num_params": net.num_params,
        "param_paths": list(net.paths),
        "strategy": evolution.strategy.name,
        "population_size": evolution.population_size,
        "maximize": evolution.maximize,
    }


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(state: EvolutionState) -> tuple[Any, list[str | None]]:
    """Typed keys become their raw key data; the implementations are kept separately."""
    leaves, treedef = jax.tree.flatten(state)
    impls = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
    data = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    return jax.tree.unflatten(treedef, data), impls


def _from_storable(tree: Any, impls: list[str | None]) -> EvolutionState:
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [
        jax.random.wrap_key_data(jnp.asarray(x), impl=impl) if impl else jnp.asarray(x)
        for x, impl in zip(leaves, impls, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def _manager(directory: str | os.PathLike, keep: int | None, create: bool = False):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=False,
        create=create,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(
    directory: str | os.PathLike,
    evolution: Evolution,
    state: EvolutionState,
    history: History | None = None,
    keep: int | None = 3,
) -> int:
    """Save ``state`` (and the history) as step ``state.generation``; returns the step.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 3)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(save(d, evo, state, history), available_steps(d))
      3 [3]
    """
    import orbax.checkpoint as ocp

    if jax.process_index() != 0:
        return int(state.generation)
    tree, impls = _to_storable(state)
    meta = {
        "fingerprint": fingerprint(evolution),
        "key_impls": impls,
        "history": [] if history is None else history.rows,
    }
    step = int(state.generation)
    with _manager(directory, keep, create=True) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()
    return step


def available_steps(directory: str | os.PathLike) -> list[int]:
    """The generations at which complete checkpoints exist in ``directory``.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state = evo.init(jax.random.key(0))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     empty = available_steps(d)
      ...     _ = evo.run(state, 4, chunk_size=2, callbacks=[Checkpointer(d, every=2)])
      ...     print(empty, available_steps(d))
      [] [2, 4]
    """
    if not Path(directory).is_dir():
        return []
    with _manager(directory, None, create=False) as mngr:
        return sorted(mngr.all_steps())


def _read_meta(
    directory: str | os.PathLike, step: int, others: list[int] | None = None
) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    with _manager(directory, None, create=False) as mngr:
        try:
            return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {step} in {directory} is unreadable ({type(err).__name__}); "
                f"other checkpoints: {others if others is not None else 'unknown'}"
            ) from err


def restore(
    directory: str | os.PathLike, evolution: Evolution, step: int | None = None
) -> tuple[EvolutionState, History]:
    """Load the checkpoint at ``step`` (the latest by default) for ``evolution``.

    Raises :class:`CheckpointError` when there is none, when it is corrupted (naming the other
    steps still available), or when it was saved by a different network or strategy.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 2)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = save(d, evo, state, history)
      ...     restored, old = restore(d, evo)
      >>> tree_equal(restored, state), len(old.rows)
      (True, 2)
    """
    import orbax.checkpoint as ocp

    steps = available_steps(directory)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise CheckpointError(f"no checkpoint for generation {step} in {directory}; have {steps}")
    others = [s for s in steps if s != step]
    meta = _read_meta(directory, step, others)
    with _manager(directory, None, create=False) as mngr:
        want, have = fingerprint(evolution), meta.get("fingerprint", {})
        diffs = [k for k in want if want[k] != have.get(k)]
        if diffs:
            details = "; ".join(
                f"{k}: checkpoint has {have.get(k)!r}, this run has {want[k]!r}"
                for k in diffs
                if k != "param_paths"
            )
            if "param_paths" in diffs:
                details += ("; " if details else "") + "the parameter paths differ"
            raise CheckpointError(
                f"checkpoint {step} in {directory} belongs to a different run: {details}"
            )
        expected = jax.eval_shape(evolution.init, jax.random.key(0))
        template, _ = _to_storable(expected)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
        try:
            tree = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {step} in {directory} is corrupted or incomplete "
                f"({type(err).__name__}: {str(err)[:200]}); other checkpoints: {others}"
            ) from err
    state = _from_storable(tree, meta["key_impls"])
    for got, ref in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(
                f"checkpoint {step} in {directory} holds an array of shape {got.shape} "
                f"{got.dtype} where this run expects {ref.shape} {ref.dtype}"
            )
    return state, History(rows=list(meta.get("history", [])))


def resume(
    evolution: Evolution, directory: str | os.PathLike, step: int | None = None
) -> tuple[EvolutionState, History]:
    """``restore`` for the usual case: continue ``evolution`` from its latest checkpoint.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = evo.run(evo.init(jax.random.key(0)), 2, callbacks=[Checkpointer(d, every=2)])
      ...     state, history = resume(evo, d)
      >>> state, more = evo.run(state, 2)  # generations 3 and 4
      >>> int(state.generation), len(history.rows) + len(more.rows)
      (4, 4)
    """
    return restore(directory, evolution, step)


class Checkpointer(Callback):
    """Save every ``every`` generations (at the first chunk end at or past each multiple) and
    at the end of the run, keeping the last ``keep`` checkpoints. Only process 0 writes.

    ``every`` should be a multiple of the run's ``chunk_size``: checkpoints are taken between
    chunks, never inside the jitted scan.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     ckpt = Checkpointer(d, every=2, keep=2)
      ...     _ = evo.run(evo.init(jax.random.key(0)), 6, chunk_size=2, callbacks=[ckpt])
      ...     print(available_steps(d))
      [4, 6]
    """

    def __init__(self, directory: str | os.PathLike, every: int = 50, keep: int | None = 3):
        if every < 1:
            raise ValueError(f"every must be a positive number of generations, got {every}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be a positive number of checkpoints or None, got {keep}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self._rows: list[dict] = []
        self._last_saved = -1

    def on_start(self, evolution: Evolution, state: EvolutionState, num_generations: int) -> None:
        self._last_saved = int(state.generation)
        self._rows = []
        steps = available_steps(self.directory)
        if steps and steps[-1] == self._last_saved:
            # Resuming from our own latest checkpoint: carry its history forward.
            self._rows = list(_read_meta(self.directory, steps[-1]).get("history", []))

    def on_chunk(self, evolution: Evolution, state: EvolutionState, rows: list[dict]) -> None:
        self._rows.extend(rows)
        gen = int(state.generation)
        if gen // self.every > self._last_saved // self.every:
            self._save(evolution, state)

    def on_end(self, evolution: Evolution, state: EvolutionState, history: History) -> None:
        if int(state.generation) != self._last_saved:
            self._save(evolution, state)

    def _save(self, evolution: Evolution, state: EvolutionState) -> None:
        save(self.directory, evolution, state, History(rows=list(self._rows)), keep=self.keep)
        self._last_saved = int(state.generation)


def tree_equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two states (keys compared by their raw data).

    Example:
      >>> a = {"key": jax.random.key(0), "x": jnp.arange(3.0)}
      >>> tree_equal(a, {"key": jax.random.key(0), "x": jnp.arange(3.0)})
      True
      >>> tree_equal(a, {"key": jax.random.key(1), "x": jnp.arange(3.0)})
      False
    """
    la, lb = jax.tree.leaves(_to_storable(a)[0]), jax.tree.leaves(_to_storable(b)[0])
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )
