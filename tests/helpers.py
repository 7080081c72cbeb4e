"""Plain helper functions shared by the tests."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def _host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same structure and bit-identical leaves (typed PRNG keys compared by their data)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        x, y = _host(x), _host(y)
        assert x.dtype == y.dtype and x.shape == y.shape, (
            f"leaf {i}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        )
        assert np.array_equal(x, y, equal_nan=np.issubdtype(x.dtype, np.inexact)), (
            f"leaf {i} differs"
        )


def flat_by_path(tree: Any) -> dict[str, np.ndarray]:
    """``{"a/b/c": leaf}`` for any pytree (NNX state, dicts, TrainState params)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(
            str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path
        )
        out[name] = _host(leaf)
    return out
