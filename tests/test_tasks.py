"""Supervised tasks (classification on digits, regression) and the IDX dataset reader."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.models import MLP
from evojax_nets.tasks import load_digits, load_idx_dataset, read_idx, write_idx
from evojax_nets.tasks.datasets import IDX_FILES


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_load_digits(digits):
    assert digits.x_train.shape[1] == 64 and digits.x_train.dtype == np.float32
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10)) and digits.y_train.dtype == np.int32


def test_classification_on_digits_improves_the_loss(digits):
    model = MLP(64, (8,), 10, rngs=nnx.Rngs(0))
    task = Supervised.from_dataset(digits, batch_size=128)
    evo = Evolution(model, task, "open_es", 16, learning_rate=0.05)
    state = evo.init(jax.random.key(0))
    before = evo.test_metrics(state)
    state, history = evo.run(state, 6)
    after = history.last
    assert set(before) == {
        "test_accuracy_best",
        "test_accuracy_mean",
        "test_loss_best",
        "test_loss_mean",
    }
    assert after["test_loss_mean"] < before["test_loss_mean"] - 0.02
    assert 0.0 <= after["test_accuracy_mean"] <= 1.0
    best = history.column("best_so_far")
    assert best[-1] < best[0]
    assert all(0.0 <= v <= 1.0 for k, v in after.items() if "accuracy" in k)


@pytest.mark.parametrize("target_shape", ["vector", "column"])
def test_regression_improves_the_mse(target_shape):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3
    y = y if target_shape == "vector" else y[:, None]
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    task = Supervised(x[:48], y[:48], x[48:], y[48:], kind="regression", batch_size=None)
    evo = Evolution(model, task, "snes", 8, std=0.1)
    state = evo.init(jax.random.key(0))
    before = evo.test_metrics(state)["test_mse_mean"]
    state, history = evo.run(state, 5)
    assert history.last["test_mse_mean"] < 0.9 * before
    np.testing.assert_allclose(
        float(evo.task.fitness(jax.random.key(0), state.best_theta)),
        history.last["best_so_far"],
        rtol=1e-5,
    )


def test_regression_target_shape_must_match_the_output():
    x = np.ones((8, 3), np.float32)
    with pytest.raises(ValueError, match=r"y_train targets have shape \(2,\)"):
        Evolution(
            nnx.Linear(3, 1, rngs=nnx.Rngs(0)),
            Supervised(x, np.ones((8, 2), np.float32), kind="regression"),
            "snes",
            8,
        )


# -- IDX files -----------------------------------------------------------------------------


def write_tiny_mnist(folder, gz: bool, skip: str | None = None):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, (6,), dtype=np.uint8),
        "test_images": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, (3,), dtype=np.uint8),
    }
    for key, stem in IDX_FILES.items():
        if key != skip:
            write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_idx_dataset(tmp_path, gz):
    arrays = write_tiny_mnist(tmp_path, gz)
    ds = load_idx_dataset(tmp_path, name="fashion_mnist")
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 16) and ds.x_test.shape == (3, 16)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(
        ds.x_train, arrays["train_images"].reshape(6, 16).astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    images = load_idx_dataset(tmp_path, flatten=False)
    assert images.x_test.shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(
        images.x_test[..., 0], arrays["test_images"].astype(np.float32) / np.float32(255)
    )


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5,
        np.linspace(-1, 1, 7, dtype=np.float32),
        np.array([[1.5, -2.25]], np.float64),
        np.array([-3, 4], np.int8),
    ],
    ids=["int32", "float32", "float64", "int8"],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_missing_idx_file_names_the_file_and_the_folder(tmp_path, gz):
    write_tiny_mnist(tmp_path, gz, skip="test_labels")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte") as err:
        load_idx_dataset(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_idx_folder_names_the_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"folder .*nowhere does not exist"):
        load_idx_dataset(folder)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(ValueError, match=r"junk is not an IDX file"):
        read_idx(path)
