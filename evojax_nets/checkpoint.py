"""Checkpoint and resume with orbax: the whole run state, atomically, keeping the last k.

A checkpoint holds a run's state (for :class:`~evojax_nets.engine.Evolution`: the strategy
state, operator states, PRNG key stored as raw key data, generation counter, best member,
counters) and, as JSON, the metrics history so far, the run's full configuration (its
fingerprint), the layout of the state (path, shape and dtype of every array) and a SHA-256
checksum of the arrays and of the JSON. orbax writes each step to a temporary folder and
renames it when complete, so a run killed mid-write leaves the previous checkpoints intact and
loses at most the steps since the last complete one.

On restore:

* a step counts only once orbax finished writing it (its ``commit_success.txt``): an empty or
  half-copied step folder is not a checkpoint;
* the arrays and the JSON must match their checksums; :func:`resume` skips a corrupted or
  unreadable step to the newest readable one, with a :class:`CheckpointWarning` naming it;
* every setting of the fingerprint must equal this run's, else :class:`CheckpointError` names
  each one that differs (resuming with another ``std`` or learning rate is another run).

Saving again after falling back to an older step replaces the newer ones.

A fed task's data-loader position (``owner.feed_state()``) is saved with the state it
belongs to and restored with it (``owner.set_feed_state``), so a resumed run continues its
data stream where the saved state left it.

**Owners.** The functions take the object whose run it is (an ``Evolution``, a ``PBT``, an
``ArchSearch``), duck-typed: ``owner.fingerprint() -> dict`` (JSON values: the full
configuration), ``owner.abstract_state()`` (the state as ``jax.ShapeDtypeStruct``, the template
for restore) and ``owner.step_count(state) -> int`` (the checkpoint's step number).

**Several processes** (``jax.distributed``): every process calls the same functions with the
same arguments, and takes part in what orbax synchronises; process 0 writes, every process
reads. The directory must be one file system that every process sees.

Example:
  >>> ckpt = Checkpointer("runs/ckpt", every=50, keep=3)      # doctest: +SKIP
  >>> state, history = evo.run(state, 500, callbacks=[ckpt])  # doctest: +SKIP
  >>> state, history = resume(evo, "runs/ckpt")               # in a fresh process  # doctest: +SKIP
  >>> state, more = evo.run(state, 500 - int(state.generation))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp  # noqa: F401  (the examples use it)
import numpy as np

from evojax_nets._checkpoint_store import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointWarning,
    _candidates,
    _count,
    _is_complete,
    _load,
    _manager,
    _read_meta,
    _to_storable,
    _Unreadable,
    _write,
    fingerprint,
)

# Re-exported for the tests of fed runs, which import them from here.
from evojax_nets._checkpoint_store import _feed_position as _feed_position
from evojax_nets._checkpoint_store import _set_feed_position as _set_feed_position

try:  # the shared host loop, where it exists
    from evojax_nets.runner import Callback, History
except ImportError:  # pragma: no cover
    from evojax_nets.engine import Callback, History

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWarning",
    "Checkpointer",
    "available_steps",
    "fingerprint",
    "restore",
    "resume",
    "save",
    "tree_equal",
]


def save(
    directory: str | os.PathLike,
    owner: Any,
    state: Any,
    history: History | None = None,
    keep: int | None = 3,
) -> int:
    """Save ``state`` (and the history) as step ``owner.step_count(state)``; returns the step.

    A checkpoint already at that step is replaced, and newer ones are deleted (with a
    :class:`CheckpointWarning`): they belong to the future this state abandoned. With several
    processes every process must call it.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 3)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(save(d, evo, state, history), available_steps(d))
      3 [3]
    """
    step = _count(owner, state)
    with _manager(directory, keep, create=True) as mngr:
        drop = [s for s in mngr.all_steps() if s >= step]
        if newer := [s for s in drop if s > step]:
            warnings.warn(
                f"deleting checkpoints {newer} in {directory}: they are newer than step "
                f"{step}, which is being saved",
                CheckpointWarning,
                stacklevel=2,
            )
        return _write(mngr, owner, state, [] if history is None else history.rows, drop)


def available_steps(directory: str | os.PathLike) -> list[int]:
    """The steps at which complete checkpoints exist in ``directory`` (a folder that orbax
    did not finish writing, or an empty one, is not counted). Needs no other process.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state = evo.init(jax.random.key(0))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     empty = available_steps(d)
      ...     _ = evo.run(state, 4, chunk_size=2, callbacks=[Checkpointer(d, every=2)])
      ...     os.mkdir(os.path.join(d, "6"))  # not a checkpoint
      ...     print(empty, available_steps(d))
      [] [2, 4]
    """
    directory = Path(directory).absolute()
    return [s for s in _candidates(directory) if _is_complete(directory, s)]


def restore(
    directory: str | os.PathLike, owner: Any, step: int | None = None
) -> tuple[Any, History]:
    """Load the checkpoint at ``step`` for ``owner``; by default the newest readable one.

    Without ``step``, a corrupted or incomplete newer checkpoint is skipped with a
    :class:`CheckpointWarning` naming it. Raises :class:`CheckpointError` when there is no
    readable checkpoint, when the one at ``step`` is corrupted (naming the other steps still
    available), or when it was saved with different settings (naming each).

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 2)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = save(d, evo, state, history)
      ...     restored, old = restore(d, evo)
      >>> tree_equal(restored, state), len(old.rows)
      (True, 2)
    """
    directory = Path(directory).absolute()
    candidates = _candidates(directory)
    if not candidates:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    with _manager(directory, None, create=False) as mngr:
        if step is not None:
            if step not in candidates:
                raise CheckpointError(
                    f"no checkpoint for step {step} in {directory}; have "
                    f"{available_steps(directory)}"
                )
            try:
                return _load(mngr, directory, step, owner)
            except _Unreadable as err:
                others = [s for s in available_steps(directory) if s != step]
                raise CheckpointError(
                    f"checkpoint {step} in {directory} is unreadable: {err}; other "
                    f"checkpoints: {others}"
                ) from err
        skipped: list[str] = []
        for s in reversed(candidates):
            try:
                out = _load(mngr, directory, s, owner)
            except _Unreadable as err:
                skipped.append(f"checkpoint {s} ({err})")
                continue
            if skipped:
                warnings.warn(
                    f"resuming from checkpoint {s} in {directory}; skipped the newer "
                    + ", ".join(skipped),
                    CheckpointWarning,
                    stacklevel=3,
                )
            return out
    raise CheckpointError(f"no readable checkpoint in {directory}: " + "; ".join(skipped))


def resume(
    owner: Any, directory: str | os.PathLike, step: int | None = None
) -> tuple[Any, History]:
    """``restore`` for the usual case: continue ``owner``'s run from its newest readable
    checkpoint.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = evo.run(evo.init(jax.random.key(0)), 2, callbacks=[Checkpointer(d, every=2)])
      ...     state, history = resume(evo, d)
      >>> state, more = evo.run(state, 2)  # generations 3 and 4
      >>> int(state.generation), len(history.rows) + len(more.rows)
      (4, 4)
    """
    return restore(directory, owner, step)


class Checkpointer(Callback):
    """Save every ``every`` steps (at the first chunk end at or past each multiple) and at the
    end of the run, keeping the last ``keep`` checkpoints. Holds one orbax
    ``CheckpointManager`` (opened at the first run, :meth:`close` to release it).

    ``every`` should be a multiple of the run's ``chunk_size``: checkpoints are taken between
    chunks, never inside the jitted scan. A run that starts from an older step than the
    directory's newest (after a fallback, or from ``restore(..., step=...)``) replaces the
    newer checkpoints at its first save (a :class:`CheckpointWarning` says so at the start).
    With several processes, give every process the same ``Checkpointer``: they all take part
    in each save, and process 0 writes.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with Checkpointer(d, every=2, keep=2) as ckpt:
      ...         _ = evo.run(evo.init(jax.random.key(0)), 6, chunk_size=2, callbacks=[ckpt])
      ...     print(available_steps(d))
      [4, 6]
    """

    def __init__(self, directory: str | os.PathLike, every: int = 50, keep: int | None = 3):
        whole = lambda n: isinstance(n, int | np.integer) and not isinstance(n, bool)
        if not whole(every) or every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        if keep is not None and (not whole(keep) or keep < 1):
            raise ValueError(f"keep must be a positive number of checkpoints or None, got {keep!r}")
        self.directory = Path(directory).absolute()
        self.every = int(every)
        self.keep = None if keep is None else int(keep)
        self._rows: list[dict] = []
        self._last_saved = -1
        self._mngr: Any = None

    def _open(self) -> Any:
        if self._mngr is None:
            self._mngr = _manager(self.directory, self.keep, create=True)
        else:
            self._mngr.reload()  # the directory may have changed since the last run
        return self._mngr

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        mngr = self._open()
        start = _count(owner, state)
        self._last_saved = start
        self._rows = []
        if start in available_steps(self.directory):
            # Resuming from one of our checkpoints: carry its history forward.
            try:
                self._rows = list(_read_meta(mngr, self.directory, start).get("history", []))
            except _Unreadable as err:
                warnings.warn(
                    f"the history saved with checkpoint {start} in {self.directory} is "
                    f"unreadable ({err}); the checkpoints of this run hold only its own rows",
                    CheckpointWarning,
                    stacklevel=2,
                )
        if newer := [s for s in mngr.all_steps() if s > start]:
            warnings.warn(
                f"{self.directory} holds checkpoints {newer}, newer than step {start} where "
                "this run starts; they will be deleted at this run's first checkpoint",
                CheckpointWarning,
                stacklevel=2,
            )

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if _count(owner, state) // self.every > self._last_saved // self.every:
            self._save(owner, state)

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        if _count(owner, state) != self._last_saved:
            self._save(owner, state)

    def _save(self, owner: Any, state: Any) -> None:
        mngr = self._mngr if self._mngr is not None else self._open()
        # Steps past the one this run last saved (or started from) are an abandoned future.
        drop = [s for s in mngr.all_steps() if s > self._last_saved]
        self._last_saved = _write(mngr, owner, state, self._rows, drop)

    def close(self) -> None:
        """Release the ``CheckpointManager`` (a later run opens a new one)."""
        if self._mngr is not None:
            self._mngr.close()
            self._mngr = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tree_equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two states: same structure, shapes and dtypes, equal values
    (NaN equal to NaN), keys compared by their raw data.

    Example:
      >>> a = {"key": jax.random.key(0), "x": jnp.arange(3.0)}
      >>> tree_equal(a, {"key": jax.random.key(0), "x": jnp.arange(3.0)})
      True
      >>> tree_equal(a, {"key": jax.random.key(1), "x": jnp.arange(3.0)})
      False
    """
    host = lambda t: jax.tree.map(np.asarray, _to_storable(t)[0])
    try:
        chex.assert_trees_all_equal(host(a), host(b), strict=True)
    except (AssertionError, ValueError, TypeError):
        return False
    return True
