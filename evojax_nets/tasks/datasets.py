"""In-memory datasets: scikit-learn's digits (shipped), and MNIST / Fashion-MNIST read from
their standard IDX files in a local folder."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays. Images are float32 in [0, 1], flattened unless ``flatten=False``
    was asked for; labels are int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package), as
    64 features in [0, 1], split into train and test with stratification.

    Example:
      >>> ds = load_digits()
      >>> ds.x_train.shape[1], ds.num_classes
      (64, 10)
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = _load()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10, name="digits")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its stored shape.

    Example:
      >>> import tempfile
      >>> images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     write_idx(f"{d}/images-idx3-ubyte.gz", images)
      ...     back = read_idx(f"{d}/images-idx3-ubyte.gz")
      >>> back.shape, back.dtype, bool((back == images).all())
      ((2, 3, 3), dtype('uint8'), True)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(shape)) if shape else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says shape {shape}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)


def _find(folder: Path, stem: str, name: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    wanted = ", ".join(f"{s}[.gz]" for s in IDX_FILES.values())
    raise FileNotFoundError(
        f"{name}: {stem} (or {stem}.gz) is missing from {folder}. Put the four standard IDX "
        f"files of {name} in that folder: {wanted}"
    )


def load_idx_dataset(
    folder: str | os.PathLike, name: str = "mnist", flatten: bool = True
) -> Dataset:
    """MNIST or Fashion-MNIST from the four standard IDX files in ``folder``.

    Both datasets use the same file names (``train-images-idx3-ubyte`` and so on, optionally
    gzipped); ``name`` only labels the result. Nothing is downloaded.

    Example:
      >>> import tempfile
      >>> rng = np.random.default_rng(0)
      >>> with tempfile.TemporaryDirectory() as d:  # a tiny stand-in for the MNIST files
      ...     for stem, n in (("train", 6), ("t10k", 4)):
      ...         images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
      ...         write_idx(f"{d}/{stem}-images-idx3-ubyte", images)
      ...         write_idx(f"{d}/{stem}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
      ...     ds = load_idx_dataset(d, "mnist")
      >>> ds.x_train.shape, ds.x_train.dtype, ds.y_test.tolist(), ds.num_classes
      ((6, 784), dtype('float32'), [0, 1, 2, 3], 10)
      >>> bool(0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0)
      True
    """
    folder = Path(folder)
    if name not in ("mnist", "fashion_mnist"):
        raise ValueError(f"name must be 'mnist' or 'fashion_mnist', got {name!r}")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name}: folder {folder} does not exist; create it and put the four IDX files "
            f"there: {', '.join(IDX_FILES.values())} (each may be gzipped)"
        )
    arrays = {k: read_idx(_find(folder, stem, name)) for k, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"{name} {split}: {n_img} images but {n_lab} labels")

    def images(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32) / 255.0
        return a.reshape(len(a), -1) if flatten else a[..., None]

    return Dataset(
        images(arrays["train_images"]),
        arrays["train_labels"].astype(np.int32),
        images(arrays["test_images"]),
        arrays["test_labels"].astype(np.int32),
        num_classes=10,
        name=name,
    )


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when the name ends in ``.gz``).

    Example:
      >>> import tempfile
      >>> labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     write_idx(f"{d}/labels-idx1-ubyte", labels)
      ...     print(read_idx(f"{d}/labels-idx1-ubyte").tolist())
      [3, 1, 4, 1, 5]
    """
    codes = {np.dtype(v): k for k, v in _IDX_DTYPES.items()}
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(dtype).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
