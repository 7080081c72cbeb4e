"""The digits split the PBT and architecture benchmarks share: the library's train/test split,
with a fixed fraction of the training set held out for validation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from evojax_nets import load_digits


def train_val_test(val_fraction: float) -> tuple[jnp.ndarray, ...]:
    """``(x_tr, y_tr, x_val, y_val, x_te, y_te)``; the validation rows are a fixed permutation's
    first ``val_fraction`` of the training set (seed 0)."""
    ds = load_digits()
    n_val = round(val_fraction * len(ds.x_train))
    perm = np.random.default_rng(0).permutation(len(ds.x_train))
    val, tr = perm[:n_val], perm[n_val:]
    return (
        jnp.asarray(ds.x_train[tr]),
        jnp.asarray(ds.y_train[tr]),
        jnp.asarray(ds.x_train[val]),
        jnp.asarray(ds.y_train[val]),
        jnp.asarray(ds.x_test),
        jnp.asarray(ds.y_test),
    )
