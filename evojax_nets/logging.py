"""Host-side callbacks run between scanned chunks: progress bar, metric files, plots.

Each is a :class:`~evojax_nets.engine.Callback`; anything else (Weights & Biases, MLflow) is a
few lines::

    class WandbLogger(Callback):
        def on_chunk(self, evolution, state, rows):
            for row in rows:
                wandb.log(row, step=row["generation"])
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from evojax_nets.engine import Callback, Evolution, EvolutionState, History


class ProgressBar(Callback):
    """A tqdm bar over generations showing best and mean fitness, the headline test metric
    and generations per second. ``disable=None`` hides it when output is not a terminal.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> bar = ProgressBar(disable=True)  # True: silent here; the default shows it in a terminal
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 3, callbacks=[bar])
      >>> int(state.generation), len(history.rows)
      (3, 3)
    """

    def __init__(self, disable: bool | None = None, desc: str = "evolving"):
        self.disable = disable
        self.desc = desc
        self._bar: Any = None

    def on_start(self, evolution: Evolution, state: EvolutionState, num_generations: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=num_generations, desc=self.desc, unit="gen", disable=self.disable, leave=True
        )

    def on_chunk(self, evolution: Evolution, state: EvolutionState, rows: list[dict]) -> None:
        last = rows[-1]
        post = {"best": f"{last['best_so_far']:.4g}", "mean": f"{last['mean_fitness']:.4g}"}
        metric = evolution.task.metric
        if metric and f"test_{metric}_mean" in last:
            post[f"test_{metric}"] = f"{last[f'test_{metric}_mean']:.4f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(len(rows))

    def on_end(self, evolution: Evolution, state: EvolutionState, history: History) -> None:
        self._bar.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricWriter(Callback):
    """Append every generation's metrics to a JSONL (``.jsonl``) or CSV (``.csv``) file.

    Rows are flushed at every chunk, so a crashed run keeps what it logged. JSON has no NaN:
    missing values are written as ``null``, infinities as the strings ``"inf"``/``"-inf"``.
    ``append=True`` continues an existing file (a resumed run).

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

    def on_start(self, evolution: Evolution, state: EvolutionState, num_generations: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns = None
        if not (self.append and self.path.exists()):
            self.path.write_text("")
        elif self.path.suffix == ".csv":
            with self.path.open(newline="") as f:
                self._columns = next(csv.reader(f), None)

    def on_chunk(self, evolution: Evolution, state: EvolutionState, rows: list[dict]) -> None:
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


class TensorBoardWriter(Callback):
    """Write every generation's metrics as TensorBoard scalars (needs ``tensorboardX``:
    ``pip install 'evojax_nets[tensorboard]'``). Non-finite values are skipped."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self._writer: Any = None

    def on_start(self, evolution: Evolution, state: EvolutionState, num_generations: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoardWriter needs tensorboardX: pip install 'evojax_nets[tensorboard]'"
            ) from err
        self._writer = SummaryWriter(str(self.logdir))

    def on_chunk(self, evolution: Evolution, state: EvolutionState, rows: list[dict]) -> None:
        for row in rows:
            step = int(row["generation"])
            for name, value in row.items():
                if name != "generation" and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def on_end(self, evolution: Evolution, state: EvolutionState, history: History) -> None:
        self._writer.close()
