"""Issue 13, items 1, 2 and 9: checkpoints across processes, a dead peer, corrupted or
abandoned checkpoints, and a resume with other settings.

The multi-process tests start two processes on localhost (``jax.distributed`` over gloo CPU
collectives, as ``tests/test_multihost.py`` does); each has a hard timeout and both processes
are killed whatever happens, so they cannot hang the suite.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from xla import child_env

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
from evojax_nets.ops import PopulationOp

# 4,100 weights: enough that orbax writes the arrays to a data file of their own.
IN_FEATURES = 1024


def _fitness(key: jax.Array, model: nnx.Module) -> jax.Array:
    return jnp.sum(model(jnp.ones((1, IN_FEATURES))) ** 2)


def _evolution(**kwargs) -> Evolution:
    return Evolution(
        nnx.Linear(IN_FEATURES, 4, rngs=nnx.Rngs(0)),
        _fitness,
        "open_es",
        8,
        maximize=False,
        **kwargs,
    )


def _run(evo: Evolution, directory: Path, generations: int, state=None, keep: int = 3):
    state = evo.init(jax.random.key(0)) if state is None else state
    ckpt = Checkpointer(directory, every=2, keep=keep)
    return evo.run(state, generations, chunk_size=2, callbacks=[ckpt])


def _orbax_arrays(step_dir: Path) -> list[np.ndarray] | None:
    """The step's arrays as orbax alone reads them, or None if it refuses."""
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as reader:
            return [np.asarray(x) for x in jax.tree.leaves(reader.restore(step_dir / "state"))]
    except Exception:
        return None


def _flip_one_bit(step_dir: Path) -> None:
    """Flip one bit of the largest data file of a step where orbax itself notices nothing:
    it reads back other numbers without an error (large arrays are stored compressed
    without a checksum; only the small index files carry one)."""
    clean = _orbax_arrays(step_dir)
    assert clean is not None
    largest = max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=os.path.getsize)
    original = largest.read_bytes()
    for where in np.linspace(0.5, 0.95, 10):
        data = bytearray(original)
        data[int(len(data) * where)] ^= 0x40
        largest.write_bytes(bytes(data))
        read = _orbax_arrays(step_dir)
        if read is not None and any(
            not np.array_equal(a, b) for a, b in zip(read, clean, strict=True)
        ):
            return
    raise AssertionError(f"every bit flip in {largest} was caught by orbax itself")


# -- item 9 ------------------------------------------------------------------------------------


def test_item9_bitflip_detected(tmp_path: Path) -> None:
    evo = _evolution()
    _run(evo, tmp_path, 4)
    assert available_steps(tmp_path) == [2, 4]
    _flip_one_bit(tmp_path / "4")
    with pytest.raises(CheckpointError, match=r"checkpoint 4 .*checksum.*other checkpoints: \[2\]"):
        restore(tmp_path, evo, step=4)
    with pytest.warns(CheckpointWarning, match=r"resuming from checkpoint 2 .*checkpoint 4"):
        earlier, history = resume(evo, tmp_path)
    assert int(earlier.generation) == 2 and len(history.rows) == 2


def test_item9_empty_step_folder_not_complete(tmp_path: Path) -> None:
    evo = _evolution()
    state, _ = _run(evo, tmp_path, 4)
    (tmp_path / "6").mkdir()
    assert available_steps(tmp_path) == [2, 4]
    with pytest.warns(CheckpointWarning, match=r"checkpoint 6 \(incomplete"):
        restored, history = resume(evo, tmp_path)
    assert tree_equal(restored, state) and len(history.rows) == 4
    # Checkpointing on from 4 replaces the empty folder with a real checkpoint.
    with pytest.warns(CheckpointWarning, match=r"holds checkpoints \[6\]"):
        _run(evo, tmp_path, 2, state=restored)
    assert available_steps(tmp_path) == [2, 4, 6]


def test_item9_fallback_then_checkpoint_again(tmp_path: Path) -> None:
    evo = _evolution()
    full, _ = evo.run(evo.init(jax.random.key(0)), 8, chunk_size=2)
    _run(evo, tmp_path, 6)
    assert available_steps(tmp_path) == [2, 4, 6]
    _flip_one_bit(tmp_path / "6")
    # The newest checkpoint is corrupted: fall back to 4, and checkpoint again into the
    # same folder (orbax used to raise StepAlreadyExistsError at 6).
    with pytest.warns(CheckpointWarning, match=r"resuming from checkpoint 4 .*checkpoint 6"):
        state, _ = resume(evo, tmp_path)
    assert int(state.generation) == 4
    with pytest.warns(CheckpointWarning, match=r"newer than step 4"):
        state, _ = _run(evo, tmp_path, 4, state=state)
    assert available_steps(tmp_path) == [4, 6, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 was rewritten: nothing is skipped any more
        state, history = resume(evo, tmp_path)
        six, _ = restore(tmp_path, evo, step=6)
    assert tree_equal(state, full)
    assert int(six.generation) == 6
    assert [r["generation"] for r in history.rows] == list(range(1, 9))
    # An explicit older step, then a new run from it: the newer steps are replaced too.
    four, _ = restore(tmp_path, evo, step=4)
    with pytest.warns(CheckpointWarning, match=r"holds checkpoints \[6, 8\]"):
        _run(evo, tmp_path, 2, state=four)
    assert available_steps(tmp_path) == [4, 6]


class _WithLearningRate(Evolution):
    """An owner that reports its full configuration (the contract of ``fingerprint()``)."""

    def __init__(self, learning_rate: float):
        super().__init__(
            nnx.Linear(IN_FEATURES, 4, rngs=nnx.Rngs(0)),
            _fitness,
            "open_es",
            8,
            maximize=False,
            learning_rate=learning_rate,
        )
        self._lr = learning_rate

    def fingerprint(self) -> dict:
        return {"strategy": self.strategy.name, "learning_rate": self._lr, "std": self.std}


def _counter_op() -> PopulationOp:
    return PopulationOp(
        init=lambda key, population: jnp.int32(0),
        apply=lambda key, members, calls, ctx: (members, calls + 1),
    )


def test_item9_resume_with_different_settings_names_them(tmp_path: Path) -> None:
    _run(_evolution(std=0.05), tmp_path / "a", 2)
    with pytest.raises(CheckpointError, match="different run") as err:
        resume(_evolution(std=0.1, eval_batch_size=4), tmp_path / "a")
    message = str(err.value)
    # (0.05 may read back as float32's 0.05000000074505806)
    assert re.search(r"\bstd: checkpoint has 0\.05\d*, this run has 0\.1\d*", message), message
    assert "eval_batch_size" in message, message
    # Adding ops is a different run, not a corrupted checkpoint.
    with pytest.raises(CheckpointError, match=r"different run|another layout") as err:
        resume(_evolution(std=0.05, ops=[_counter_op()]), tmp_path / "a")
    assert "corrupted" not in str(err.value), str(err.value)
    # Whatever the owner's fingerprint() holds is compared, each key by name.
    _run(_WithLearningRate(0.01), tmp_path / "b", 2)
    with pytest.raises(CheckpointError, match=r"learning_rate: checkpoint has 0\.01"):
        resume(_WithLearningRate(0.02), tmp_path / "b")
    state, _ = resume(_WithLearningRate(0.01), tmp_path / "b")
    assert int(state.generation) == 2


# -- items 1 and 2: two processes --------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    mode, rank, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from evojax_nets.sharding import initialize_distributed
    initialize_distributed(f"localhost:{port}", 2, rank, cpu_collectives="gloo")
    import jax, numpy as np
    from flax import nnx
    from evojax_nets import Callback, Evolution, Supervised, load_digits
    from evojax_nets.checkpoint import Checkpointer, _to_storable, resume
    from evojax_nets.models import MLP

    evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(load_digits(), 64),
                    "open_es", 16, mesh=True)

    class Stall(Callback):  # after the checkpoint at 4, wait to be killed
        def on_chunk(self, owner, state, rows):
            if int(state.generation) >= 4:
                print("STALLED", rank, flush=True)
                time.sleep(600)

    class Die(Callback):  # process `victim` dies after the second generation
        def __init__(self, victim):
            self.victim = victim
        def on_chunk(self, owner, state, rows):
            if int(state.generation) == 2 and rank == self.victim:
                print("DYING", rank, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    if mode == "train":
        ckpt = Checkpointer(directory, every=2)
        evo.run(evo.init(jax.random.key(3)), 8, chunk_size=2, callbacks=[ckpt, Stall()])
    elif mode == "resume":
        state, history = resume(evo, directory)
        print("RESUMED", rank, int(state.generation), flush=True)
        ckpt = Checkpointer(directory, every=2)
        state, _ = evo.run(state, 8 - int(state.generation), chunk_size=2, callbacks=[ckpt])
        if rank == 0:
            leaves = jax.tree.leaves(_to_storable(state)[0])
            np.savez(os.path.join(directory, "final.npz"), *[np.asarray(x) for x in leaves])
        _, history = resume(evo, directory)  # every process again
        print("GENERATIONS", [r["generation"] for r in history.rows], flush=True)
        print("DONE", rank, flush=True)
    else:
        evo.run(evo.init(jax.random.key(3)), 40, chunk_size=1, callbacks=[Die(int(mode[4:]))])
        print("FINISHED", rank, flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(tmp_path: Path, mode: str, directory: Path) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = child_env()
    return [
        subprocess.Popen(
            [sys.executable, str(script), mode, str(rank), port, str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for rank in range(2)
    ]


def _kill(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """SIGKILL every process still running; their (stdout, stderr)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    return [p.communicate(timeout=30) for p in procs]


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    deadline = time.time() + timeout
    try:
        return [p.communicate(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        _kill(procs)


def test_item1_multihost_checkpoint_does_not_deadlock(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    procs = _start_pair(tmp_path, "train", ckpt)
    deadline = time.time() + 150
    try:
        while time.time() < deadline and 4 not in available_steps(ckpt):
            assert all(p.poll() is None for p in procs), "a process ended early"
            time.sleep(0.2)
    finally:
        outputs = _kill(procs)  # both processes die together, as a lost job would
    assert 4 in available_steps(ckpt), f"no checkpoint at 4 within 150 s: {outputs[0][1][-2000:]}"
    assert 8 not in available_steps(ckpt)

    procs = _start_pair(tmp_path, "resume", ckpt)
    outputs = _wait(procs, 150)
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "RESUMED" in out and "DONE" in out, out
    assert available_steps(ckpt)[-1] == 8

    evo = Evolution(
        MLP(64, (8,), 10, rngs=nnx.Rngs(0)),
        Supervised.from_dataset(load_digits(), 64),
        "open_es",
        16,
    )
    full, _ = evo.run(evo.init(jax.random.key(3)), 8, chunk_size=2)
    expected = [np.asarray(x) for x in jax.tree.leaves(_to_storable(full)[0])]
    got = np.load(ckpt / "final.npz")
    assert len(got.files) == len(expected)
    for i, ref in enumerate(expected):
        leaf = got[f"arr_{i}"]
        assert leaf.dtype == ref.dtype and leaf.shape == ref.shape
        np.testing.assert_allclose(leaf, ref, rtol=1e-4, atol=1e-6)
    for out, _ in outputs:  # the history the processes read back holds each generation once
        assert f"GENERATIONS {list(range(1, 9))}" in out, out


def test_item2_dead_peer_exits_promptly(tmp_path: Path) -> None:
    # Process 1 dies; process 0, which also hosts the coordination service, survives. (When
    # process 0 dies instead, XLA ends the others at once: the service is gone.)
    victim = 1
    procs = _start_pair(tmp_path, f"kill{victim}", tmp_path)
    survivor = procs[1 - victim]
    try:
        procs[victim].wait(timeout=150)
        died = time.time()
        survivor.wait(timeout=60)
        took = time.time() - died
    except subprocess.TimeoutExpired:
        took = None
    outputs = _kill(procs)
    out, err = outputs[1 - victim]
    assert "DYING" in outputs[victim][0], outputs[victim][1][-2000:]
    assert took is not None, (
        f"the survivor was still running 60 s after its peer died: {err[-2000:]}"
    )
    assert survivor.returncode != 0 and "FINISHED" not in out
    assert re.search(r"lost a peer|another task died", err), err[-3000:]
