"""Supervised learning on a dataset stored on disk, streamed by a grain pipeline.

The training arrays are two ``.npy`` files opened as memory maps (``np.load(path,
mmap_mode="r")``), so the dataset may be larger than memory: only the rows of the batches being
read are paged in. A grain pipeline (shuffle every epoch, repeat forever, fixed-size batches)
reads them on the host; the runner pulls one batch per generation before each chunk and the
fitness of a member is its loss on its generation's batch (every member of a generation sees
the same batch). The pipeline's iterator has ``get_state``/``set_state``, and a
:class:`~evojax_nets.checkpoint.Checkpointer` saves its position with the run's state, so a
resumed run reads the same batches an uninterrupted one would.

grain is an optional dependency (``pip install "evojax_nets[data]"``); it is imported when a
pipeline is built, not when this module is.

Example:
  >>> import tempfile
  >>> import numpy as np
  >>> from flax import nnx
  >>> from evojax_nets import Evolution
  >>> from evojax_nets.models import MLP
  >>> from evojax_nets.tasks import load_digits
  >>> ds = load_digits()
  >>> with tempfile.TemporaryDirectory() as folder:
  ...     _ = write_memmap_dataset(folder, ds.x_train, ds.y_train)
  ...     task = StreamedSupervised.from_folder(folder, ds.x_test, ds.y_test, batch_size=64)
  ...     evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), task, "open_es", 16)
  ...     state, history = evo.run(evo.init(jax.random.key(0)), 4, chunk_size=2)
  ...     position = evo.feed_state()
  >>> int(state.generation), position
  (4, {'next_index': 4})
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.nets import Network
from evojax_nets.tasks.base import BoundTask
from evojax_nets.tasks.supervised import Supervised

X_FILE = "x.npy"
Y_FILE = "y.npy"


def write_memmap_dataset(
    folder: str | os.PathLike,
    x: Any,
    y: Any,
    *,
    rows_per_write: int = 65536,
) -> tuple[Path, Path]:
    """Write inputs ``x`` and integer labels ``y`` as ``x.npy`` and ``y.npy`` in ``folder``
    (created if missing), for :class:`StreamedSupervised`. Returns the two paths.

    The files are written through memory maps ``rows_per_write`` rows at a time, so ``x`` may
    itself be larger than memory: anything with ``shape``, ``dtype`` and row slicing (another
    memory map, an HDF5 dataset) is copied piece by piece. ``x`` keeps its dtype (``uint8``
    images stay a quarter of their float32 size on disk; batches are float32); labels are
    stored as ``int32``.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     xp, yp = write_memmap_dataset(d, np.zeros((5, 3), np.uint8), np.arange(5))
      ...     x = np.load(xp, mmap_mode="r")
      ...     print(xp.name, type(x).__name__, x.shape, x.dtype, np.load(yp).dtype)
      x.npy memmap (5, 3) uint8 int32
    """
    x_shape, y_shape = tuple(np.shape(x)), tuple(np.shape(y))
    if len(x_shape) < 1 or x_shape[0] == 0:
        raise ValueError(f"x must hold at least one example, got shape {x_shape}")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise ValueError(
            f"y must be a vector of {x_shape[0]:,} labels (one per row of x), got shape {y_shape}"
        )
    y_dtype = np.asarray(y[:1]).dtype
    if not np.issubdtype(y_dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y_dtype}")
    if not (isinstance(rows_per_write, int) and rows_per_write > 0):
        raise ValueError(f"rows_per_write must be a positive int, got {rows_per_write!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / X_FILE, folder / Y_FILE
    x_dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x[:1]).dtype
    for path, src, shape, dtype in ((paths[0], x, x_shape, x_dtype), (paths[1], y, y_shape, "i4")):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, shape[0], rows_per_write):
            out[start : start + rows_per_write] = np.asarray(src[start : start + rows_per_write])
        out.flush()
        del out
    return paths


class _Gather:
    """A grain map step: a batch of example indices to the rows of the memory-mapped arrays
    (read in increasing index order, which keeps the reads of one batch sequential on disk; the
    loss is a mean, so the order within a batch does not matter)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.sort(np.asarray(indices, np.int64))
        return {
            "x": np.asarray(self.x[rows], np.float32),
            "y": np.asarray(self.y[rows], np.int32),
        }


@dataclass(frozen=True, eq=False)
class StreamedSupervised:
    """A classification task whose minibatches stream from memory-mapped arrays on disk.

    Each generation's batch is the next element of a grain pipeline over the training set
    (``grain.MapDataset.range(n).shuffle(seed).repeat().batch(batch_size)``, each batch of
    indices gathered from the memory maps): an epoch is a fresh permutation of the examples,
    batches run on across epoch boundaries, every batch has ``batch_size`` examples. The
    fitness is the batch's cross-entropy (minimised), the same loss as :class:`Supervised`;
    test metrics (``accuracy``, ``loss``) are computed on the in-memory held-out arrays.

    Args:
      x_path, y_path: ``.npy`` files of the training inputs ``(n, ...)`` and integer labels
        ``(n,)`` (see :func:`write_memmap_dataset`), opened with ``mmap_mode="r"``.
      x_test, y_test: held-out inputs and labels, in memory, for the test metrics.
      batch_size: examples per generation.
      seed: the shuffle seed (an int in ``[0, 2**32)``); the stream is a function of it.
      num_classes: inferred from the network's output width if omitted.
      compute_dtype: dtype of the fitness forward pass (as in :class:`Supervised`).
      num_threads, prefetch_buffer_size: grain's ``ReadOptions``: threads reading batches and
        how many batches are read ahead (host memory: about ``prefetch_buffer_size *
        batch_size`` rows as float32). ``num_threads=0`` reads on the caller's thread.

    The task is *fed* (``BoundTask.feed``): it is its own feed, and :meth:`iterator` starts the
    stream at its beginning. Strategies that evaluate a first population in ``init``
    (population-based ones: GA, DE, PSO) have no batch there and are refused with a clear
    error; use a distribution-based one (OpenAI-ES, SNES, CMA-ES, ...). The training labels are
    checked against the number of classes when the task is bound; the training inputs are not
    scanned for NaN (that would read the whole dataset): clean them when writing.

    Example:
      >>> import tempfile
      >>> from evojax_nets.tasks import load_digits
      >>> ds = load_digits()
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = write_memmap_dataset(d, ds.x_train, ds.y_train)
      ...     task = StreamedSupervised.from_folder(d, ds.x_test, ds.y_test, batch_size=32)
      ...     it = task.iterator()
      ...     first, second = next(it), next(it)
      ...     state = it.get_state()
      >>> first["x"].shape, first["y"].dtype, state
      ((32, 64), dtype('int32'), {'next_index': 2})
      >>> task.spec()["x"]
      ShapeDtypeStruct(shape=(32, 64), dtype=float32)
    """

    x_path: str | os.PathLike
    y_path: str | os.PathLike
    x_test: Any
    y_test: Any
    batch_size: int = 256
    seed: int = 0
    num_classes: int | None = None
    compute_dtype: Any = None
    num_threads: int = 2
    prefetch_buffer_size: int = 32
    maximize: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        whole = lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool)
        if not whole(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not whole(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        for name in ("num_threads", "prefetch_buffer_size"):
            value = getattr(self, name)
            if not whole(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        x, y = self._arrays
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{self.x_path} holds no examples (shape {x.shape})")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self.y_path} must hold one label per example of {self.x_path} "
                f"({x.shape[0]:,}), got shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{self.y_path} must hold integer class labels, got {y.dtype}")
        if np.shape(self.x_test)[1:] != x.shape[1:]:
            raise ValueError(
                f"x_test examples have shape {np.shape(self.x_test)[1:]}, the training "
                f"examples in {self.x_path} {x.shape[1:]}"
            )

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, x_test: Any, y_test: Any, **kwargs: Any
    ) -> StreamedSupervised:
        """The task over ``folder/x.npy`` and ``folder/y.npy`` (as written by
        :func:`write_memmap_dataset`); ``kwargs`` as in the constructor."""
        folder = Path(folder)
        return cls(folder / X_FILE, folder / Y_FILE, x_test, y_test, **kwargs)

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The training arrays as read-only memory maps (opened once)."""
        arrays = []
        for path in (self.x_path, self.y_path):
            try:
                arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"no {path}: write the dataset first, for example with "
                    "evojax_nets.tasks.write_memmap_dataset(folder, x, y)"
                ) from None
        return arrays[0], arrays[1]

    @property
    def num_examples(self) -> int:
        """Training examples on disk."""
        return int(self._arrays[0].shape[0])

    # -- the feed ------------------------------------------------------------------------------

    def dataset(self) -> Any:
        """The grain ``MapDataset`` of training batches (infinite, indexable: element ``i`` is
        generation ``i``'s batch of a run that starts the stream)."""
        try:
            import grain
        except ImportError as err:
            raise ImportError(
                "StreamedSupervised needs grain: pip install 'evojax_nets[data]' (or grain)"
            ) from err
        return (
            grain.MapDataset.range(self.num_examples)
            .shuffle(seed=int(self.seed))
            .repeat()
            .batch(int(self.batch_size), drop_remainder=True)
            .map(_Gather(*self._arrays))
        )

    def iterator(self) -> Any:
        """A new host iterator over the batches, from the start of the stream: one batch (a
        dict of ``x`` float32 ``(batch_size, ...)`` and ``y`` int32 ``(batch_size,)``) per
        ``next``, with ``get_state()`` (a JSON-serialisable dict) and ``set_state(state)``."""
        import grain

        options = grain.ReadOptions(
            num_threads=int(self.num_threads), prefetch_buffer_size=int(self.prefetch_buffer_size)
        )
        return iter(self.dataset().to_iter_dataset(options))

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint of a run on this stream must match (the data and its order)."""
        x, _ = self._arrays
        return {
            "x_path": str(Path(self.x_path).resolve()),
            "y_path": str(Path(self.y_path).resolve()),
            "shape": list(x.shape),
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
        }

    def spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of one batch."""
        b = int(self.batch_size)
        return {
            "x": jax.ShapeDtypeStruct((b, *self._arrays[0].shape[1:]), jnp.float32),
            "y": jax.ShapeDtypeStruct((b,), jnp.int32),
        }

    # -- binding -------------------------------------------------------------------------------

    def bind(self, network: Network) -> BoundTask:
        # The held-out arrays as an in-memory Supervised task: its checks, its loss, its test
        # metrics (the same functions as every supervised run).
        held_out = Supervised(
            self.x_test,
            self.y_test,
            kind="classification",
            batch_size=None,
            num_classes=self.num_classes,
            compute_dtype=self.compute_dtype,
            population_forward=False,
        ).bind(network)
        self._check_labels(network)
        loss_on = held_out.extra["loss_on"]

        def fitness(key: jax.Array, theta: jax.Array, batch: Any) -> jax.Array:
            del key  # the generation's batch is the sample; nothing else is random
            if batch is None:
                raise TypeError(
                    "this fed task was evaluated without a batch: population-based strategies "
                    "(GA, DE, PSO) evaluate a first population in init, before any batch is "
                    "fed; use a distribution-based strategy (for example 'open_es' or 'snes') "
                    "with StreamedSupervised"
                )
            return loss_on(theta, batch["x"], batch["y"])

        return BoundTask(
            fitness=fitness,
            maximize=False,
            loss=None,  # a gradient op would need the generation's batch, which it is not given
            test_metrics=held_out.test_metrics,
            metric="accuracy",
            metric_maximize=True,
            extra={"loss_on": loss_on},
            feed=self,
        )

    def _check_labels(self, network: Network) -> None:
        """Training labels within the network's classes (reads the label file, not ``x``)."""
        width = jax.eval_shape(network.apply, network.theta0, self.spec()["x"]).shape[-1]
        num_classes = width if self.num_classes is None else self.num_classes
        y = self._arrays[1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{self.y_path} holds labels in [{lo}, {hi}], but valid labels are 0 to "
                f"{num_classes - 1} (the network has {width} outputs)"
            )
