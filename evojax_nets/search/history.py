"""What a :class:`~evojax_nets.search.pbt.PBT` run carries and hands back: the population
state (:class:`PBTState`), the record of every round (:class:`PBTHistory`), the result
(:class:`PBTResult`), the host-side callbacks, and :func:`plot_schedules`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import struct

from evojax_nets.runner import Callback
from evojax_nets.search.spaces import Space

if TYPE_CHECKING:
    from evojax_nets.search.pbt import PBT


# -- state and history ------------------------------------------------------------------------


@struct.dataclass
class PBTState:
    """A population in training (a pytree).

    Attributes:
      members: the users' states stacked on a leading axis of size ``P``.
      hparams: ``{name: (P,)}``, the hyperparameters each member trains with now.
      scores: ``(P,)`` the last evaluation, in ``eval_fn``'s own sense (NaN before the first).
      key: the PRNG key for the next round.
      step: training steps done by every member (int32).
      round: rounds done (int32).
    """

    members: Any
    hparams: dict[str, jax.Array]
    scores: jax.Array
    key: jax.Array
    step: jax.Array
    round: jax.Array


@dataclass
class PBTHistory:
    """Every round of a run (host arrays; one row per round).

    Round ``r`` starts with exploit and explore (not in round 0), trains ``ready`` steps with
    ``hparams[name][r]``, and ends with ``scores[r]`` at step ``steps[r]``. ``parents[r][i]`` is
    the member whose state and hyperparameters member ``i`` copied at the start of round ``r``
    (``i`` itself when it kept its own).
    """

    space: dict[str, Space]
    maximize: bool
    steps: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    hparams: list[dict[str, np.ndarray]] = field(default_factory=list)
    parents: list[np.ndarray] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Append the runner's rows (one per round). A round's wall time is that of the end
        of the chunk it ran in (the host sees nothing finer)."""
        pending = 0
        for row in rows:
            self.steps.append(int(row["step"]))
            self.scores.append(np.asarray(row["scores"], np.float32))
            self.hparams.append(
                {
                    name: np.asarray(row[f"hparams/{name}"], np.dtype(s.dtype))
                    for name, s in self.space.items()
                }
            )
            self.parents.append(np.asarray(row["parents"], np.int32))
            pending += 1
            if "wall_time" in row:
                self.wall_time.extend([float(row["wall_time"])] * pending)
                pending = 0
        if pending:
            last = self.wall_time[-1] if self.wall_time else float("nan")
            self.wall_time.extend([last] * pending)

    @property
    def num_rounds(self) -> int:
        return len(self.steps)

    def hparam(self, name: str) -> np.ndarray:
        """``(R, P)``: every member's value of ``name`` in every round."""
        return np.stack([h[name] for h in self.hparams])

    def score_matrix(self) -> np.ndarray:
        """``(R, P)``: every member's score at the end of every round."""
        return np.stack(self.scores)

    def lineage(self, member: int) -> np.ndarray:
        """``(R,)``: the slot that held ``member``'s ancestor in each round (the last entry is
        ``member``): follows the copies backwards through ``parents``."""
        if not self.steps:
            raise ValueError("the history is empty: run at least one round")
        R = self.num_rounds
        line = np.empty(R, np.int64)
        line[R - 1] = member
        for r in range(R - 1, 0, -1):
            line[r - 1] = self.parents[r][line[r]]
        return line

    def schedule(self, member: int) -> dict[str, np.ndarray]:
        """``{name: (R,)}``: the hyperparameters ``member``'s lineage trained with, per round."""
        line = self.lineage(member)
        return {
            name: np.asarray([self.hparams[r][name][line[r]] for r in range(self.num_rounds)])
            for name in self.space
        }

    def lineage_scores(self, member: int) -> np.ndarray:
        """``(R,)``: the score of ``member``'s lineage at the end of each round."""
        line = self.lineage(member)
        return np.asarray([self.scores[r][line[r]] for r in range(self.num_rounds)])


@dataclass
class PBTResult:
    """What a PBT run hands back.

    Attributes:
      state: the best member's state, in the user's structure (host arrays).
      index: its slot in the population.
      score: its final score.
      hparams: its final hyperparameters.
      schedule: ``{name: (R,)}``, the hyperparameters its lineage followed, round by round.
      steps: ``(R,)``, the step at which each round ended (round ``r`` trained steps
        ``steps[r-1]`` to ``steps[r]`` with ``schedule[name][r]``).
      lineage: ``(R,)``, the slot that held its ancestor in each round.
      history: the whole run (:class:`PBTHistory`).

    Example:
      >>> import jax.numpy as jnp
      >>> from evojax_nets.search import PBT, LogUniform
      >>> pbt = PBT(lambda s, b, h: s - h["lr"] * s, lambda s: -jnp.abs(s),
      ...           {"lr": LogUniform(1e-3, 0.5)}, population_size=4, ready=5)
      >>> result = pbt.fit(jax.random.key(0), lambda key: jnp.float32(1.0), num_steps=10)
      >>> result.steps.tolist(), result.schedule["lr"].shape, result.lineage.shape
      ([5, 10], (2,), (2,))
      >>> sorted(result.hparams), 0 <= result.index < 4, result.history.num_rounds
      (['lr'], True, 2)
      >>> bool(result.score == -abs(float(result.state)))  # the best member's last score
      True
    """

    state: Any
    index: int
    score: float
    hparams: dict[str, float]
    schedule: dict[str, np.ndarray]
    steps: np.ndarray
    lineage: np.ndarray
    history: PBTHistory

    def plot(self, path: str | None = None, title: str | None = None, score_label: str = "score"):
        """The schedules (see :func:`plot_schedules`)."""
        return plot_schedules(
            self.history, path, member=self.index, title=title, score_label=score_label
        )


PBTCallback = Callback
"""PBT's callbacks are the runner's: ``on_start(pbt, state, num_rounds)``,
``on_chunk(pbt, state, rows)`` (one row per round: ``step``, ``best_score``, ``median_score``,
``scores``, ``parents``, ``hparams/<name>``), ``on_end(pbt, state, history)``."""


class PBTProgressBar(Callback):
    """A tqdm bar over rounds showing the training step, the best and the median score."""

    def __init__(self, disable: bool | None = None, desc: str = "pbt"):
        self.disable, self.desc, self._bar = disable, desc, None

    def on_start(self, pbt: PBT, state: PBTState, num_rounds: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=num_rounds, desc=self.desc, unit="round", disable=self.disable)

    def on_chunk(self, pbt: PBT, state: PBTState, rows: list[dict]) -> None:
        last = rows[-1]
        self._bar.set_postfix(
            {
                "step": last["step"],
                "best": f"{last['best_score']:.4g}",
                "median": f"{last['median_score']:.4g}",
            },
            refresh=False,
        )
        self._bar.update(len(rows))

    def on_end(self, pbt: PBT, state: PBTState, history: Any) -> None:
        self._bar.close()


def plot_schedules(
    history: PBTHistory,
    path: str | None = None,
    *,
    member: int | None = None,
    title: str | None = None,
    score_label: str = "score",
):
    """One panel per hyperparameter (every member's value per round in grey, the lineage of
    ``member``, by default the best at the end, in colour) and one for the scores.

    Writes a PNG when ``path`` is given; returns the matplotlib figure.

    Example:
      >>> fig = plot_schedules(result.history, "schedules.png")  # doctest: +SKIP
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history.steps:
        raise ValueError("the history is empty: run at least one round first")
    scores = history.score_matrix()
    if member is None:
        good = scores[-1] if history.maximize else -scores[-1]
        member = int(np.nanargmax(np.where(np.isfinite(good), good, -np.inf)))
    steps = np.asarray(history.steps)
    starts = np.concatenate([[0], steps[:-1]])
    sched = history.schedule(member)
    names = sorted(history.space)
    n = len(names) + 1
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, name in zip(axes, names, strict=False):
        # one point more, so the last round's value is drawn to the last step
        xs = np.append(starts, steps[-1])
        vals = history.hparam(name)
        vals = np.concatenate([vals, vals[-1:]])
        for i in range(vals.shape[1]):
            ax.step(xs, vals[:, i], where="post", color="0.75", lw=0.8)
        ys = np.append(sched[name], sched[name][-1])
        ax.step(xs, ys, where="post", color="C3", lw=2.0, label="best lineage")
        if history.space[name].log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    ax = axes[len(names)]
    for i in range(scores.shape[1]):
        ax.plot(steps, scores[:, i], color="0.75", lw=0.8)
    ax.plot(steps, history.lineage_scores(member), color="C3", lw=2.0, label="best lineage")
    finite = scores[np.isfinite(scores)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(f"{score_label} ({'higher' if history.maximize else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if history.maximize else "upper right")
    for ax in axes[n:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
