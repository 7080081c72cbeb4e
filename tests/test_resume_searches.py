"""PBT and architecture search checkpoint and resume through the same Checkpointer as
evolution: a run killed with SIGKILL mid-way resumes to the uninterrupted final state, bit for
bit (issue "One engine for every search")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import kill_after_checkpoints

from evojax_nets.checkpoint import available_steps

ROUNDS = 12
READY = 3

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp, numpy as np, optax
    from evojax_nets import Callback
    from evojax_nets.checkpoint import Checkpointer, resume, _to_storable

    kind, mode, directory, out = sys.argv[1:5]
    ROUNDS, READY = int(sys.argv[5]), int(sys.argv[6])

    if kind == "pbt":
        from evojax_nets.search import LogUniform, PBT, sample_batches
        x = jax.random.normal(jax.random.key(1), (64, 3))
        y = x @ jnp.array([1.0, -2.0, 0.5])
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

        def loss(w, xb, yb):
            return jnp.mean((xb @ w - yb) ** 2)

        def train_step(state, batch, hp):
            w, opt = state
            g = jax.grad(loss)(w, *batch)
            upd, opt = tx.update(g, opt, w)
            return optax.apply_updates(w, upd), opt

        owner = PBT(train_step, lambda s: -loss(s[0], x, y),
                    {"learning_rate": LogUniform(1e-3, 0.3)}, 8, ready=READY,
                    batch_fn=sample_batches(x, y, batch_size=16))
        init = lambda key: (jax.random.normal(key, (3,)), tx.init(jnp.zeros(3)))
        start = lambda: owner.init(jax.random.key(7), init)
        run = lambda state, n, cbs: owner.run(state, n, chunk_size=1, callbacks=cbs)
        done = lambda state: int(state.step)
    else:
        from evojax_nets.search import ArchSearch, MLPSpace
        k1, k2 = jax.random.split(jax.random.key(1))
        x = jax.random.normal(k1, (96, 6))
        y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
        space = MLPSpace(6, 2, max_depth=2, widths=(4, 8))
        owner = ArchSearch(space, x[:64], y[:64], x[64:], y[64:], population_size=4,
                           ready=READY, batch_size=16)
        start = lambda: owner.init(jax.random.key(7))
        run = lambda state, n, cbs: owner.run(state, n, chunk_size=1, callbacks=cbs)
        done = lambda state: int(state.step)

    class Slow(Callback):
        def on_chunk(self, o, state, rows):
            time.sleep(0.4)

    total = ROUNDS * READY
    ckpt = Checkpointer(directory, every=2, keep=2)
    if mode == "train":
        run(start(), total, [ckpt, Slow()])
    else:
        if mode == "resume":
            if kind == "pbt":  # a PBT learns its members' shapes from their init
                owner.abstract_state(init)
            state, history = resume(owner, directory)
            state, _ = run(state, total - done(state), [ckpt])
        else:  # uninterrupted
            state, _ = run(start(), total, [])
        leaves = jax.tree.leaves(_to_storable(state)[0])
        np.savez(out, *[np.asarray(v) for v in leaves])
    """
)


@pytest.mark.parametrize("kind", ["pbt", "arch"])
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [str(ROUNDS), str(READY)]
    kill_after_checkpoints([str(script), kind, "train", str(ckpt), "", *args], ckpt, ROUNDS)

    outs = {}
    for mode in ("resume", "full"):
        outs[mode] = tmp_path / f"{mode}.npz"
        done = subprocess.run(
            [sys.executable, str(script), kind, mode, str(ckpt), str(outs[mode]), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    resumed, full = np.load(outs["resume"]), np.load(outs["full"])
    assert len(resumed.files) == len(full.files)
    for name in full.files:
        assert resumed[name].dtype == full[name].dtype
        np.testing.assert_array_equal(resumed[name], full[name])
    assert available_steps(ckpt)[-1] == ROUNDS  # the resumed run kept checkpointing
