"""Plain helper functions shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from evojax_nets.checkpoint import available_steps


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


def kill_after_checkpoints(
    args: list[str], ckpt: Path, last_step: int, *, count: int = 2, timeout: float = 180
) -> list[int]:
    """Run ``python *args`` in a child, SIGKILL it once ``count`` checkpoints exist in
    ``ckpt`` (or it exits, or ``timeout`` passes), and return the steps it left, checking
    that it was killed after a checkpoint and before ``last_step``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + timeout
    while time.time() < deadline and len(available_steps(ckpt)) < count and child.poll() is None:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    steps = available_steps(ckpt)
    assert steps, f"the run was killed before its first checkpoint: {err.decode()[-2000:]}"
    assert steps[-1] < last_step, "the run finished before it could be killed"
    return steps
