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

import base64
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

try:  # the shared host loop, where it exists
    from evojax_nets.runner import Callback, History
except ImportError:  # pragma: no cover
    from evojax_nets.engine import Callback, History

FORMAT_VERSION = 2
_JSON_FIELDS = ("format", "fingerprint", "layout", "key_impls", "history")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or belongs to a different run."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupted, incomplete) or is about to be replaced."""


class _Unreadable(CheckpointError):
    """This step cannot be used; an older one may."""


# -- what an owner provides ------------------------------------------------------------------


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{what} must hold JSON values (str, numbers, lists, dicts): {err}"
        ) from err


def fingerprint(owner: Any) -> dict[str, Any]:
    """The settings that must match between the run that saved a checkpoint and the one
    restoring it: ``owner.fingerprint()``, or for an ``Evolution`` without one, its network,
    strategy (with its evosax params), population size, objective sense, ``std`` and
    evaluation batch size.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> fp = fingerprint(evo)
      >>> fp["strategy"], fp["population_size"], fp["num_params"]
      ('SNES', 4, 3)
    """
    own = getattr(owner, "fingerprint", None)
    if callable(own):
        return _jsonable(dict(own()), f"{type(owner).__name__}.fingerprint()")
    net, strategy = owner.network, owner.strategy
    fp: dict[str, Any] = {
        "network_kind": net.kind,
        "num_params": net.num_params,
        "param_paths": list(net.paths),
        "strategy": strategy.name,
        "population_size": owner.population_size,
        "maximize": owner.maximize,
    }
    for name in ("std", "learning_rate", "strategy_kwargs", "eval_batch_size"):
        if hasattr(owner, name):
            fp[name] = getattr(owner, name)
    params = getattr(strategy, "params", None)
    if params is not None:
        fp["strategy_params"] = {
            jax.tree_util.keystr(path): np.asarray(leaf).tolist()
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
    return _jsonable(fp, "the run's fingerprint")


def _abstract(owner: Any) -> Any:
    own = getattr(owner, "abstract_state", None)
    if callable(own):
        return own()
    return jax.eval_shape(owner.init, jax.random.key(0))


def _count(owner: Any, state: Any) -> int:
    own = getattr(owner, "step_count", None)
    if callable(own):
        return int(own(state))
    return int(state.generation)


# -- the state as arrays on the host -----------------------------------------------------------


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _to_storable(state: Any) -> tuple[Any, list[str | None]]:
    """Typed keys become their raw key data; the implementations are kept separately."""
    leaves, treedef = jax.tree.flatten(state)
    impls = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
    data = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    return jax.tree.unflatten(treedef, data), impls


def _from_storable(tree: Any, impls: list[str | None]) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [
        jax.random.wrap_key_data(jnp.asarray(x), impl=impl) if impl else jnp.asarray(x)
        for x, impl in zip(leaves, impls, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def _host(x: Any) -> np.ndarray:
    """One array on this host; a sharded array that spans other processes is gathered (every
    process calls this in the same order, so the gather is collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _layout(tree: Any) -> list[list[Any]]:
    """Path, shape and dtype of every leaf (keys by their key dtype, e.g. ``key<fry>``)."""
    return [
        [jax.tree_util.keystr(path), list(np.shape(x)), str(x.dtype)]
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _checksum(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in leaves:
        x = np.ascontiguousarray(x)
        h.update(f"{x.dtype.str}{x.shape};".encode())
        h.update(x.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _json_checksum(meta: dict[str, Any]) -> str:
    fields = (*_JSON_FIELDS, "feed") if "feed" in meta else _JSON_FIELDS  # fed runs only
    text = json.dumps({k: meta.get(k) for k in fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- orbax -------------------------------------------------------------------------------------


def _manager(directory: str | os.PathLike, keep: int | None, create: bool = False):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=False,
        create=create,
        cleanup_tmp_directories=create,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _is_complete(directory: Path, step: int) -> bool:
    import orbax.checkpoint as ocp

    return (directory / str(step) / ocp.path.atomicity.COMMIT_SUCCESS_FILE).is_file()


def _feed_position(owner: Any) -> dict[str, Any] | None:
    """A fed run's data position, ``owner.feed_state()``, as JSON (bytes in base64). It is
    read when the state is saved: the runner pulls a chunk's batches before the chunk and the
    Checkpointer saves after it, so it is the position of the saved state's next step."""
    get = getattr(owner, "feed_state", None)
    position = get() if callable(get) else None
    if position is None:
        return None
    if isinstance(position, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(position)).decode("ascii")}
    return {"json": _jsonable(position, f"{type(owner).__name__}.feed_state()")}


def _set_feed_position(owner: Any, saved: dict[str, Any] | None, where: str) -> None:
    if saved is None:
        return
    put = getattr(owner, "set_feed_state", None)
    if not callable(put):
        raise CheckpointError(
            f"{where} holds a data-iterator position, but {type(owner).__name__} has no "
            "set_feed_state to continue its data stream from it"
        )
    put(base64.b64decode(saved["base64"]) if "base64" in saved else saved["json"])


def _write(mngr: Any, owner: Any, state: Any, rows: list[dict], drop: list[int]) -> int:
    """Save ``state`` as its step count, after deleting the steps ``drop``."""
    import orbax.checkpoint as ocp

    step = _count(owner, state)
    for s in drop:
        mngr.delete(s)
    tree, impls = _to_storable(state)
    leaves, treedef = jax.tree.flatten(tree)
    host = [_host(x) for x in leaves]
    meta: dict[str, Any] = _jsonable(
        {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint(owner),
            "layout": _layout(state),
            "key_impls": impls,
            "history": list(rows),
        },
        "the checkpoint's metadata (history rows, fingerprint)",
    )
    if (feed := _feed_position(owner)) is not None:
        meta["feed"] = feed
    meta["checksum"] = {"algorithm": "sha256", "state": _checksum(host), "json": ""}
    meta["checksum"]["json"] = _json_checksum(meta)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.tree.unflatten(treedef, host)),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    mngr.wait_until_finished()
    return step


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _settings_diff(have: dict[str, Any], want: dict[str, Any], same_format: bool) -> list[str]:
    """One phrase per setting that differs (keys missing on one side too, same format)."""
    keys = list(want) + [k for k in have if k not in want]
    if not same_format:  # an older checkpoint recorded fewer settings: compare those it has
        keys = [k for k in keys if k in have and k in want and k != "format"]
    out = []
    for k in keys:
        a, b = have.get(k, "<not recorded>"), want.get(k, "<not recorded>")
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{k}: checkpoint has {_show(a)}, this run has {_show(b)}")
    return out


def _layout_diff(have: list[list[Any]], want: list[list[Any]]) -> list[str]:
    h = {p: (tuple(s), d) for p, s, d in have}
    w = {p: (tuple(s), d) for p, s, d in want}
    out = []
    if only := [p for p in h if p not in w]:
        out.append(f"only in the checkpoint: {_show(only)}")
    if only := [p for p in w if p not in h]:
        out.append(f"only in this run: {_show(only)}")
    out += [
        f"{p}: checkpoint {h[p][0]} {h[p][1]}, this run {w[p][0]} {w[p][1]}"
        for p in w
        if p in h and h[p] != w[p]
    ]
    return out


def _read_meta(mngr: Any, directory: Path, step: int) -> dict[str, Any]:
    """The JSON of ``step``, checked against its checksum; :class:`_Unreadable` if not."""
    import orbax.checkpoint as ocp

    if not _is_complete(directory, step):
        raise _Unreadable("incomplete: orbax never finished writing it")
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:
        raise _Unreadable(f"its metadata cannot be read ({_brief(err)})") from err
    if not isinstance(meta, dict) or "key_impls" not in meta:
        raise _Unreadable("its metadata is not an evojax_nets checkpoint's")
    check = meta.get("checksum")
    if isinstance(check, dict) and check.get("json") != _json_checksum(meta):
        raise _Unreadable("corrupted: its metadata does not match the checksum saved with it")
    return meta


def _load(mngr: Any, directory: Path, step: int, owner: Any) -> tuple[Any, History]:
    """Restore and verify ``step``. Raises :class:`_Unreadable` when this step cannot be
    used, and :class:`CheckpointError` when it belongs to a different run."""
    import orbax.checkpoint as ocp

    meta = _read_meta(mngr, directory, step)
    where = f"checkpoint {step} in {directory}"
    have_format = meta.get("format", meta.get("fingerprint", {}).get("format"))
    diffs = _settings_diff(
        meta.get("fingerprint", {}), fingerprint(owner), have_format == FORMAT_VERSION
    )
    if diffs:
        raise CheckpointError(
            f"{where} belongs to a different run: {'; '.join(diffs)}. Resume with the "
            "checkpoint's settings, or start this run in another directory."
        )
    expected = _abstract(owner)
    if "layout" in meta and (diffs := _layout_diff(meta["layout"], _layout(expected))):
        raise CheckpointError(
            f"{where} holds a state of another layout than this run's (were the ops, the "
            f"strategy or the network changed?): {'; '.join(diffs)}"
        )
    # Host arrays as the template: every process reads the whole (replicated) state.
    template = jax.tree.map(
        lambda x: np.empty(x.shape, x.dtype),
        jax.tree.map(
            lambda x: jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x, expected
        ),
    )
    try:
        tree = mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))
        )["state"]
    except Exception as err:
        raise _Unreadable(f"corrupted or incomplete ({_brief(err)})") from err
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    check = meta.get("checksum")
    if isinstance(check, dict) and check.get("state") != _checksum(leaves):
        raise _Unreadable("corrupted: its arrays do not match the checksum saved with them")
    state = _from_storable(tree, meta["key_impls"])
    for got, ref in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(
                f"{where} holds an array of shape {got.shape} {got.dtype} where this run "
                f"expects {ref.shape} {ref.dtype}"
            )
    _set_feed_position(owner, meta.get("feed"), where)  # a fed run continues its data stream
    return state, History(rows=list(meta.get("history", [])))


def _candidates(directory: Path) -> list[int]:
    """Every step folder orbax would list, finished or not."""
    import orbax.checkpoint as ocp

    if not directory.is_dir():
        return []
    return sorted(ocp.path.step.checkpoint_steps(directory))


# -- public API --------------------------------------------------------------------------------


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
