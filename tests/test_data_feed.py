"""A fed task streamed from disk (issue 12, item 6): a grain pipeline over memory-mapped .npy
files feeds one batch per generation; the loader's position is saved in the checkpoint, so a
run killed with SIGKILL resumes to the uninterrupted final state, bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import kill_after_checkpoints

from evojax_nets import Evolution
from evojax_nets.checkpoint import (
    Checkpointer,
    _feed_position,
    _set_feed_position,
    _to_storable,
    available_steps,
    restore,
    resume,
    tree_equal,
)
from evojax_nets.models import MLP
from evojax_nets.tasks import StreamedSupervised, Supervised, load_digits, write_memmap_dataset

GENERATIONS = 16
BATCH = 32
SEED = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits as memory-mapped x.npy / y.npy (training) and an in-memory test split."""
    folder = tmp_path_factory.mktemp("digits")
    ds = load_digits()
    write_memmap_dataset(folder, ds.x_train, ds.y_train, rows_per_write=500)
    np.savez(folder / "test.npz", x=ds.x_test, y=ds.y_test)
    return folder


def _task(data: Path, batch_size: int = BATCH) -> StreamedSupervised:
    test = np.load(data / "test.npz")
    return StreamedSupervised.from_folder(
        data, test["x"], test["y"], batch_size=batch_size, seed=SEED, num_threads=1
    )


def _evolution(task: Any, strategy: str = "open_es", population: int = 16) -> Evolution:
    return Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), task, strategy, population)


def test_memmap_files_and_task_shapes(data: Path) -> None:
    x = np.load(data / "x.npy", mmap_mode="r")
    assert isinstance(x, np.memmap) and x.dtype == np.float32
    np.testing.assert_array_equal(x, load_digits().x_train)
    task = _task(data)
    assert task.num_examples == x.shape[0]
    assert task.spec() == {
        "x": jax.ShapeDtypeStruct((BATCH, 64), jnp.float32),
        "y": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    }
    batch = next(task.iterator())
    assert batch["x"].shape == (BATCH, 64) and batch["y"].dtype == np.int32
    with pytest.raises(FileNotFoundError, match="write_memmap_dataset"):
        StreamedSupervised.from_folder(data / "missing", x[:2], np.zeros(2, np.int32))


def test_fed_task_learns_with_the_supervised_loss(data: Path) -> None:
    task = _task(data, batch_size=64)
    evo = _evolution(task, population=32)
    bound = task.bind(evo.network)
    assert bound.fed and bound.feed is task and bound.metric == "accuracy"
    # The fitness is Supervised's loss on the fed batch.
    batch = next(task.iterator())
    theta = evo.network.theta0
    same = Supervised(batch["x"], batch["y"], batch_size=None, population_forward=False)
    key = jax.random.key(0)
    np.testing.assert_allclose(
        bound.fitness(key, theta, batch), same.bind(evo.network).loss(key, theta), rtol=1e-6
    )

    _, history = evo.run(evo.init(jax.random.key(0)), 60, chunk_size=20)
    loss = [r["mean_fitness"] for r in history.rows]
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.3, loss
    first, last = history.rows[19], history.rows[-1]
    assert last["test_accuracy_mean"] > first["test_accuracy_mean"]
    assert last["test_accuracy_mean"] > 0.4
    assert evo.feed_state() == {"next_index": 60}


class _Recording:
    """A feed that records every batch the runner pulls, around the task's own iterator."""

    def __init__(self, feed: StreamedSupervised) -> None:
        self.feed, self.pulled = feed, []

    def spec(self) -> Any:
        return self.feed.spec()

    def iterator(self) -> Any:
        inner, pulled = self.feed.iterator(), self.pulled

        class _It:
            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                pulled.append(next(inner))
                return pulled[-1]

            def get_state(self) -> Any:
                return inner.get_state()

            def set_state(self, state: Any) -> None:
                inner.set_state(state)

        return _It()


@dataclasses.dataclass
class _LabelSum:
    """The streamed task with a fitness that identifies its batch: the sum of its labels."""

    inner: StreamedSupervised
    feed: _Recording

    def bind(self, network: Any) -> Any:
        fitness = lambda key, theta, batch: jnp.sum(batch["y"]).astype(jnp.float32) + 0 * theta[0]
        return dataclasses.replace(self.inner.bind(network), fitness=fitness, feed=self.feed)


def test_each_generation_gets_the_next_batch_in_grain_order(data: Path) -> None:
    task = _task(data)
    recording = _Recording(task)
    evo = _evolution(_LabelSum(task, recording))
    # 7 generations in chunks of 3: a shorter last chunk pulls only what it runs.
    state, history = evo.run(evo.init(jax.random.key(0)), 7, chunk_size=3)
    assert len(recording.pulled) == 7 and evo.feed_state() == {"next_index": 7}
    # A second run continues the stream.
    state, more = evo.run(state, 2, chunk_size=3)
    rows = history.rows + more.rows
    assert len(recording.pulled) == 9 and evo.feed_state() == {"next_index": 9}

    fresh = task.iterator()
    dataset = task.dataset()
    for g, (got, row) in enumerate(zip(recording.pulled, rows, strict=True)):
        want = next(fresh)
        for name in ("x", "y"):
            np.testing.assert_array_equal(got[name], want[name])
            np.testing.assert_array_equal(got[name], dataset[g][name])
        # Generation g+1 evaluated its members on batch g, and on nothing else.
        assert row["generation"] == g + 1
        assert row["mean_fitness"] == float(np.sum(got["y"]))
    # Every generation saw a different batch.
    assert len({b["x"].tobytes() for b in recording.pulled}) == 9


def test_checkpoint_saves_the_position_of_the_saved_state(data: Path, tmp_path: Path) -> None:
    evo = _evolution(_task(data))
    with Checkpointer(tmp_path, every=2, keep=None) as ckpt:
        part, _ = evo.run(evo.init(jax.random.key(1)), 4, chunk_size=2, callbacks=[ckpt])
    full, _ = evo.run(part, 4, chunk_size=2)
    assert available_steps(tmp_path) == [2, 4]

    other = _evolution(_task(data))
    state, _ = restore(tmp_path, other, step=2)
    assert int(state.generation) == 2 and other.feed_state() == {"next_index": 2}
    state, _ = resume(other, tmp_path)
    assert tree_equal(state, part) and other.feed_state() == {"next_index": 4}
    resumed, _ = other.run(state, 4, chunk_size=2)
    assert tree_equal(resumed, full)
    # Without the saved position the stream restarts, and the run is another run.
    state, _ = resume(other, tmp_path)
    other.set_feed_state({"next_index": 0})
    restarted, _ = other.run(state, 4, chunk_size=2)
    assert not tree_equal(restarted, full)


def test_feed_position_in_json_and_bytes() -> None:
    class Owner:
        def __init__(self, position: Any) -> None:
            self.position, self.got = position, None

        def feed_state(self) -> Any:
            return self.position

        def set_feed_state(self, position: Any) -> None:
            self.got = position

    for position in ({"next_index": 5}, b'{"a": 1}\x00\xff'):
        owner = Owner(position)
        saved = _feed_position(owner)
        assert saved is not None
        _set_feed_position(owner, saved, "here")
        assert owner.got == position
    assert _feed_position(Owner(None)) is None and _feed_position(object()) is None


def test_population_based_strategy_is_refused_clearly(data: Path) -> None:
    evo = _evolution(_task(data), strategy="de")
    with pytest.raises(TypeError, match="population-based"):
        evo.init(jax.random.key(0))


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import jax, numpy as np
    from flax import nnx
    from evojax_nets import Callback, Evolution
    from evojax_nets.checkpoint import Checkpointer, resume, _to_storable
    from evojax_nets.models import MLP
    from evojax_nets.tasks import StreamedSupervised

    mode, data, directory, out = sys.argv[1:5]
    test = np.load(data + "/test.npz")
    task = StreamedSupervised.from_folder(
        data, test["x"], test["y"], batch_size=BATCH, seed=SEED, num_threads=1
    )
    evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), task, "open_es", 16)

    class Slow(Callback):
        def on_chunk(self, evolution, state, rows):
            time.sleep(0.4)

    ckpt = Checkpointer(directory, every=2, keep=2)
    if mode == "train":
        evo.run(evo.init(jax.random.key(7)), GENERATIONS, chunk_size=2, callbacks=[ckpt, Slow()])
    else:
        state, history = resume(evo, directory)
        left = GENERATIONS - int(state.generation)
        state, _ = evo.run(state, left, chunk_size=2, callbacks=[ckpt])
        leaves = jax.tree.leaves(_to_storable(state)[0])
        np.savez(out, *[np.asarray(x) for x in leaves])
        with open(out + ".json", "w") as f:
            json.dump(evo.feed_state(), f)
    """
)
for _name, _value in (("GENERATIONS", GENERATIONS), ("BATCH", BATCH), ("SEED", SEED)):
    SCRIPT = SCRIPT.replace(_name, str(_value))


def test_sigkill_then_resume_is_bit_identical(data: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, str(script)]
    kill_after_checkpoints([str(script), "train", str(data), str(ckpt), ""], ckpt, GENERATIONS)

    # The killed run's newest checkpoint holds the position of its own state's next batch.
    evo = _evolution(_task(data))
    state, _ = resume(evo, ckpt)
    assert evo.feed_state() == {"next_index": int(state.generation)}

    out = tmp_path / "resumed.npz"
    subprocess.run([*args, "resume", str(data), str(ckpt), str(out)], env=env, check=True)
    resumed = np.load(out)
    fresh = _evolution(_task(data))
    full, history = fresh.run(fresh.init(jax.random.key(7)), GENERATIONS, chunk_size=2)
    expected = jax.tree.leaves(_to_storable(full)[0])
    assert len(resumed.files) == len(expected)
    for i, ref in enumerate(expected):
        got = resumed[f"arr_{i}"]
        assert got.dtype == np.asarray(ref).dtype
        np.testing.assert_array_equal(got, np.asarray(ref))
    assert json.loads(Path(f"{out}.json").read_text()) == {"next_index": GENERATIONS}
    # The resumed run kept checkpointing, and the history covers every generation once.
    assert available_steps(ckpt)[-1] == GENERATIONS
    _, saved = resume(evo, ckpt)
    assert [r["generation"] for r in saved.rows] == list(range(1, GENERATIONS + 1))
    assert [r["mean_fitness"] for r in saved.rows] == [r["mean_fitness"] for r in history.rows]
