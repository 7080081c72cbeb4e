"""How :mod:`evojax_nets.checkpoint` stores a run's state: what an owner provides (its
fingerprint, the state's template, its step count), the state as host arrays (typed PRNG keys
as raw key data, their layout, SHA-256 checksums of the arrays and of the JSON), a fed task's
data-loader position as JSON, and the orbax ``CheckpointManager`` that writes, reads and
verifies one step. The public names are re-exported by :mod:`evojax_nets.checkpoint`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # the shared host loop, where it exists
    from evojax_nets.runner import History
except ImportError:  # pragma: no cover
    from evojax_nets.engine import History

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
