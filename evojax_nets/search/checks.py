"""Checks a PBT run makes once, from shapes alone, before anything compiles."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.program import first_line
from evojax_nets.search.spaces import HParams

if TYPE_CHECKING:
    from evojax_nets.search.pbt import PBT


def num_positional(fn: Callable) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


def check_member(pbt: PBT, member_shape: Any, hparams: HParams) -> None:
    """Check, from shapes alone, that one member's ``train_step`` and ``eval_fn`` run and keep
    the state's structure; raise a ``ValueError`` that says what is wrong."""
    hp1 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), hparams)
    key = jax.eval_shape(lambda: jax.random.key(0))
    batch = jax.eval_shape(pbt.batch_fn, key)
    try:
        out = jax.eval_shape(pbt.train_step, member_shape, batch, hp1)
    except Exception as err:
        raise ValueError(
            f"train_step(state, batch, hparams) failed on one member's state with hparams "
            f"{sorted(pbt.space)}: {first_line(err)}"
        ) from err
    if jax.tree.structure(out) != jax.tree.structure(member_shape):
        raise ValueError(
            "train_step must return the state in the structure it received; got "
            f"{jax.tree.structure(out)} for {jax.tree.structure(member_shape)}"
        )
    bad = [
        (a.shape, b.shape)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(member_shape), strict=True)
        if a.shape != b.shape
    ]
    if bad:
        raise ValueError(f"train_step changed leaf shapes (returned, received): {bad[:3]}")
    score = jax.eval_shape(pbt._member_eval, member_shape, hp1)
    if score.shape != ():
        raise ValueError(f"eval_fn must return a scalar score, got shape {score.shape}")


def check_hparams(pbt: PBT, hparams: Any) -> HParams:
    """Validate initial hyperparameters ``{name: (P,)}`` against the space."""
    if not isinstance(hparams, Mapping) or set(hparams) != set(pbt.space):
        got = sorted(hparams) if isinstance(hparams, Mapping) else type(hparams).__name__
        raise ValueError(f"hparams must have the keys {sorted(pbt.space)}, got {got}")
    out = {}
    for name, s in pbt.space.items():
        v = jnp.asarray(hparams[name], s.dtype)
        if v.shape != (pbt.population_size,):
            raise ValueError(
                f"hparams[{name!r}] must have shape ({pbt.population_size},), got {v.shape}"
            )
        if not bool(np.all(s.contains(np.asarray(v)))):
            raise ValueError(f"hparams[{name!r}] has values outside its space {s}")
        out[name] = v
    return out
