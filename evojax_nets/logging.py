"""Host-side callbacks run between scanned chunks: progress, metric files, plots, TensorBoard,
Weights & Biases.

Each is a :class:`~evojax_nets.engine.Callback`, called as ``on_start(owner, state, num_steps)``,
``on_chunk(owner, state, rows)`` and ``on_end(owner, state, history)``. ``owner`` is whatever
runs the search (an :class:`~evojax_nets.engine.Evolution`, PBT, an architecture search), and a
row is a dict of one step's metrics keyed by ``generation`` (or ``round``); these callbacks
assume nothing more of either.

Nothing heavy is imported with this module: tqdm, matplotlib, tensorboardX and wandb are
imported by the callback that uses them, when it starts.

The progress bar and the one definition of generations per second live in
:mod:`evojax_nets.progress` and are importable from here too.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from evojax_nets.engine import Callback, Evolution, History  # noqa: F401  (Evolution: doctests)
from evojax_nets.progress import ProgressBar, RateClock, _step_of


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricWriter(Callback):
    """Append every generation's metrics to a JSONL (``.jsonl``) or CSV (``.csv``) file.

    Rows are flushed at every chunk, so a crashed run keeps what it logged. JSON has no NaN:
    missing values are written as ``null``, infinities as the strings ``"inf"``/``"-inf"``.
    ``append=True`` continues an existing file (a resumed run); the command line instead
    rewrites the file from the checkpoint's history on ``--resume``, so that rows logged after
    the checkpoint are not written twice.

    Example:
      >>> import json, tempfile
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     writer = MetricWriter(f"{d}/metrics.jsonl")
      ...     _ = evo.run(evo.init(jax.random.key(0)), 3, callbacks=[writer])
      ...     rows = [json.loads(line) for line in open(f"{d}/metrics.jsonl")]
      >>> [row["generation"] for row in rows], "best_fitness" in rows[0]
      ([1, 2, 3], True)
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        if self.path.suffix not in (".jsonl", ".csv"):
            raise ValueError(f"path must end in .jsonl or .csv, got {self.path.name!r}")
        self._columns: list[str] | None = None

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns = None
        if not (self.append and self.path.exists()):
            self.path.write_text("")
        elif self.path.suffix == ".csv":
            with self.path.open(newline="") as f:
                self._columns = next(csv.reader(f), None)

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        with self.path.open("a", newline="") as f:
            if self.path.suffix == ".jsonl":
                for row in rows:
                    f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
                return
            if self._columns is None:
                keys = dict.fromkeys(k for row in rows for k in row)
                self._columns = list(keys)
                csv.writer(f).writerow(self._columns)
            writer = csv.writer(f)
            for row in rows:
                writer.writerow(
                    ["" if row.get(c) is None else row.get(c, "") for c in self._columns]
                )


def plot_history(
    history: History, path: str | os.PathLike | None = None, metric: str | None = None
):
    """Learning curves: fitness (best of generation, best so far, mean) against generations,
    and the test metric of the best member and of the mean against wall time.

    Writes a PNG when ``path`` is given; returns the matplotlib figure (shown inline in
    notebooks).

    Example:
      >>> import os, tempfile
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> _, history = evo.run(evo.init(jax.random.key(0)), 3)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     fig = plot_history(history, f"{d}/curves.png")
      ...     written = os.path.exists(f"{d}/curves.png")
      >>> type(fig).__name__, len(fig.axes), written
      ('Figure', 2, True)
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    gens = history.column("generation")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(gens, history.column("mean_fitness"), label="mean of generation", alpha=0.7)
    ax.plot(gens, history.column("best_fitness"), label="best of generation", alpha=0.7)
    ax.plot(gens, history.column("best_so_far"), label="best so far", color="k")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title("fitness")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    if metric is None:
        names = [k for k in history.last if k.startswith("test_") and k.endswith("_mean")]
        metric = names[0][len("test_") : -len("_mean")] if names else None
    if metric is not None:
        rows = [r for r in history.rows if f"test_{metric}_mean" in r]
        wall = [r["wall_time"] for r in rows]
        ax.plot(wall, [r[f"test_{metric}_mean"] for r in rows], "o-", label="mean")
        ax.plot(wall, [r[f"test_{metric}_best"] for r in rows], "s--", label="best member")
        ax.set_xlabel("wall time (s, compilation included)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"test {metric}")
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _scalars(row: dict) -> dict[str, float]:
    """A row's finite numbers, without its step key."""
    return {
        name: value
        for name, value in row.items()
        if name not in ("generation", "round")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardWriter(Callback):
    """Write every generation's metrics as TensorBoard scalars (needs ``tensorboardX``:
    ``pip install 'evojax_nets[tensorboard]'``). Non-finite values are skipped.

    ``purge_step``: for a resumed run, the first step it writes (the checkpoint's generation
    plus one); TensorBoard then discards what an interrupted earlier run logged from that step
    on, so no step appears twice.
    """

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        self.logdir = Path(logdir)
        self.purge_step = purge_step
        self._writer: Any = None
        self._step = 0

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoardWriter needs tensorboardX: pip install 'evojax_nets[tensorboard]'"
            ) from err
        self._writer = SummaryWriter(str(self.logdir), purge_step=self.purge_step)

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        for row in rows:
            step = _step_of(row)
            self._step = int(step) if step is not None else self._step + 1
            for name, value in _scalars(row).items():
                self._writer.add_scalar(name, value, self._step)
        self._writer.flush()

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        self._writer.close()


class WandbLogger(Callback):
    """Log every generation's metrics to Weights & Biases (needs ``wandb``:
    ``pip install 'evojax_nets[wandb]'``). The step is the row's generation (or PBT round);
    non-finite values are skipped.

    Args:
      project: the W&B project of the run this callback starts (with ``wandb.init``) and
        finishes at the end of the run.
      run: an already started ``wandb`` run to log into instead; it is left open.
      config: the run's configuration (recorded by ``wandb.init``).
      init_kwargs: more arguments for ``wandb.init`` (``name``, ``dir``, ``mode``, ``tags``).

    Set ``WANDB_MODE=offline`` to log without an account or network (``wandb sync`` later).

    Example:
      >>> logger = WandbLogger(project="digits", config={"population": 256})  # doctest: +SKIP
      >>> state, history = evo.run(state, 100, callbacks=[logger])           # doctest: +SKIP
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        run: Any = None,
        config: dict | None = None,
        **init_kwargs: Any,
    ):
        self.project = project
        self.config = config
        self.init_kwargs = init_kwargs
        self.run = run
        self._owns_run = False
        self._step = 0

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        if self.run is not None:
            return
        try:
            import wandb
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("WandbLogger needs wandb: pip install 'evojax_nets[wandb]'") from err
        self.run = wandb.init(project=self.project, config=self.config, **self.init_kwargs)
        self._owns_run = True

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        for row in rows:
            step = _step_of(row)
            self._step = int(step) if step is not None else self._step + 1
            self.run.log(_scalars(row), step=self._step)

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        if self._owns_run and self.run is not None:
            self.run.finish()
            self.run = None
            self._owns_run = False


__all__ = [
    "MetricWriter",
    "ProgressBar",
    "RateClock",
    "TensorBoardWriter",
    "WandbLogger",
    "plot_history",
]
