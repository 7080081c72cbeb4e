"""Checkpoint and resume: a SIGKILLed run resumes bit-identically; bad checkpoints are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import kill_after_checkpoints

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWarning,
    _to_storable,
    available_steps,
    restore,
    resume,
    tree_equal,
)
from evojax_nets.models import MLP

GENERATIONS = 30

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax, numpy as np
    from flax import nnx
    from evojax_nets import Callback, Evolution, Supervised, load_digits
    from evojax_nets.checkpoint import Checkpointer, resume, _to_storable
    from evojax_nets.models import MLP

    mode, directory, out = sys.argv[1], sys.argv[2], sys.argv[3]
    evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)),
                    Supervised.from_dataset(load_digits(), 64), "open_es", 16)

    class Slow(Callback):
        def on_chunk(self, evolution, state, rows):
            time.sleep(0.3)

    ckpt = Checkpointer(directory, every=3, keep=2)
    if mode == "train":
        state = evo.init(jax.random.key(7))
        evo.run(state, GENERATIONS, chunk_size=3, callbacks=[ckpt, Slow()])
    else:
        state, history = resume(evo, directory)
        left = GENERATIONS - int(state.generation)
        state, _ = evo.run(state, left, chunk_size=3, callbacks=[ckpt])
        leaves = jax.tree.leaves(_to_storable(state)[0])
        np.savez(out, *[np.asarray(x) for x in leaves])
    """
).replace("GENERATIONS", str(GENERATIONS))


def _evolution(strategy: str = "open_es") -> Evolution:
    return Evolution(
        MLP(64, (8,), 10, rngs=nnx.Rngs(0)),
        Supervised.from_dataset(load_digits(), 64),
        strategy,
        16,
    )


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt"
    kill_after_checkpoints([str(script), "train", str(ckpt), ""], ckpt, GENERATIONS)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    out = tmp_path / "resumed.npz"
    subprocess.run(
        [sys.executable, str(script), "resume", str(ckpt), str(out)], env=env, check=True
    )
    resumed = np.load(out)
    evo = _evolution()
    full, _ = evo.run(evo.init(jax.random.key(7)), GENERATIONS, chunk_size=3)
    expected = jax.tree.leaves(_to_storable(full)[0])
    assert len(resumed.files) == len(expected)
    for i, ref in enumerate(expected):
        got = resumed[f"arr_{i}"]
        assert got.dtype == np.asarray(ref).dtype
        np.testing.assert_array_equal(got, np.asarray(ref))
    # The resumed run kept checkpointing, and the history covers every generation once.
    assert available_steps(ckpt)[-1] == GENERATIONS
    _, history = resume(evo, ckpt)
    assert [r["generation"] for r in history.rows] == list(range(1, GENERATIONS + 1))


def test_resume_in_process_equals_uninterrupted(tmp_path: Path) -> None:
    evo = _evolution()
    full, _ = evo.run(evo.init(jax.random.key(1)), 12, chunk_size=4)
    part, _ = evo.run(
        evo.init(jax.random.key(1)), 8, chunk_size=4, callbacks=[Checkpointer(tmp_path, every=4)]
    )
    state, history = resume(_evolution(), tmp_path)
    assert int(state.generation) == 8 and len(history.rows) == 8
    assert tree_equal(state, part)
    state, _ = evo.run(state, 4, chunk_size=4)
    assert tree_equal(state, full)
    assert not tree_equal(state, part)


def test_keep_last_k(tmp_path: Path) -> None:
    evo = _evolution()
    evo.run(evo.init(jax.random.key(0)), 10, chunk_size=2, callbacks=[Checkpointer(tmp_path, 2, 2)])
    assert available_steps(tmp_path) == [8, 10]


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    evo = _evolution()
    evo.run(evo.init(jax.random.key(0)), 4, chunk_size=2, callbacks=[Checkpointer(tmp_path, 2)])
    with pytest.raises(CheckpointError, match="different run: strategy"):
        resume(_evolution("snes"), tmp_path)
    other_net = Evolution(
        MLP(64, (9,), 10, rngs=nnx.Rngs(0)),
        Supervised.from_dataset(load_digits(), 64),
        "open_es",
        16,
    )
    with pytest.raises(CheckpointError, match="num_params"):
        resume(other_net, tmp_path)


def test_corrupted_checkpoint_is_refused_and_earlier_ones_survive(tmp_path: Path) -> None:
    evo = _evolution()
    evo.run(evo.init(jax.random.key(0)), 4, chunk_size=2, callbacks=[Checkpointer(tmp_path, 2)])
    assert available_steps(tmp_path) == [2, 4]
    latest = tmp_path / "4" / "state"
    assert latest.is_dir()
    for path in latest.rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint 4 .* other checkpoints: \[2\]"):
        restore(tmp_path, evo, step=4)
    # Without a step, resume falls back to the newest readable checkpoint and says so.
    with pytest.warns(CheckpointWarning, match=r"resuming from checkpoint 2 .* checkpoint 4"):
        earlier, history = resume(evo, tmp_path)
    assert int(earlier.generation) == 2 and len(history.rows) == 2


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resume(_evolution(), tmp_path / "nothing")
    shutil.rmtree(tmp_path, ignore_errors=True)
