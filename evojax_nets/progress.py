"""Progress on the terminal between scanned chunks: :class:`ProgressBar` (a tqdm bar, or log
lines where there is no terminal) and :class:`RateClock`, the one definition of generations
per second.

**Generations per second** means one thing everywhere (the bar, the log lines, the command
line's summary): the steady rate, generations per second after the first chunk, which is where
every one-time cost (compiling the chunk, the test metrics, the first transfers) falls; until
a second chunk has run, the generations so far over the seconds since the start less the
chunk's compilation. tqdm is imported when a bar starts.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from evojax_nets.engine import Callback, Evolution, History  # noqa: F401  (Evolution: doctests)

logger = logging.getLogger("evojax_nets.progress")

# tqdm's own rate and remaining time would count compilation; ours are in the postfix.
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def _step_of(row: dict) -> Any:
    """The step a row belongs to: its ``generation``, else its ``round`` (PBT), else None."""
    return row.get("generation", row.get("round"))


def _headline_metric(owner: Any) -> str | None:
    task = getattr(owner, "task", None)
    return getattr(task, "metric", None)


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else str(value)


class RateClock:
    """Generations per second, as the bar, the log lines and the command line's summary report
    them: after the first chunk, the generations of the later chunks over the seconds they
    took (one-time costs such as compilation fall in the first chunk); before, the
    generations so far over the seconds since :meth:`start` less ``compile_s``.

    Example:
      >>> clock = RateClock(now=0.0)
      >>> clock.chunk(10, compile_s=3.0, now=5.0)   # 10 generations in 5 s, 3 s compiling
      >>> clock.rate
      5.0
      >>> clock.chunk(20, now=7.0)                  # then 20 generations in 2 s
      >>> clock.rate, clock.steps
      (10.0, 30)
    """

    def __init__(self, now: float | None = None):
        self.start(now)

    def start(self, now: float | None = None) -> None:
        """Start the clock (where compilation starts)."""
        self.t_start = time.perf_counter() if now is None else now
        self.t_last = self.t_start
        self.steps = 0
        self.compile_s = 0.0
        self._first: tuple[int, float] | None = None

    def chunk(self, steps: int, compile_s: float | None = None, now: float | None = None) -> None:
        """A chunk of ``steps`` ended now; ``compile_s``: the run's compilation so far."""
        self.t_last = time.perf_counter() if now is None else now
        self.steps += int(steps)
        if compile_s is not None:
            self.compile_s = float(compile_s)
        if self._first is None:
            self._first = (self.steps, self.t_last)

    @property
    def rate(self) -> float | None:
        """Generations per second; None before the first chunk."""
        if self._first is None:
            return None
        first_steps, t_first = self._first
        if self.steps > first_steps and self.t_last > t_first:
            return (self.steps - first_steps) / (self.t_last - t_first)
        return self.steps / max(self.t_last - self.t_start - self.compile_s, 1e-9)


class ProgressBar(Callback):
    """Progress of a run: a tqdm bar in a terminal or notebook, log lines elsewhere.

    In a terminal (or a Jupyter notebook) a bar shows ``compiling`` until the first chunk has
    run, then the generations done, best and mean fitness, the headline test metric and the
    generations per second (see the module docstring); its clock refreshes every
    ``refresh_every`` seconds. Where output is not a terminal (``nohup``, SLURM, a redirected
    log) it logs a line through the stdlib logger ``evojax_nets.progress`` at INFO every
    ``log_every`` seconds instead (configure logging, e.g. ``logging.basicConfig(level=
    logging.INFO)``, to see them; the command line does).

    The bar advances when a chunk ends: for one update a second, a chunk must take under a
    second (the command line sizes its chunks that way).

    Args:
      disable: ``True`` shows nothing; ``False`` always shows the bar; ``None`` (default)
        chooses the bar or log lines as above.
      desc: the bar's label.
      log_every: seconds between log lines when not in a terminal.
      refresh_every: seconds between redraws of the bar's clock.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> bar = ProgressBar(disable=True)  # True: silent here; the default shows it in a terminal
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 3, callbacks=[bar])
      >>> int(state.generation), len(history.rows), bar.steps_done
      (3, 3, 3)
    """

    def __init__(
        self,
        disable: bool | None = None,
        desc: str = "evolving",
        *,
        log_every: float = 5.0,
        refresh_every: float = 1.0,
    ):
        if not (log_every > 0 and refresh_every > 0):
            raise ValueError(
                f"log_every and refresh_every must be positive seconds, got {log_every} and "
                f"{refresh_every}"
            )
        self.disable = disable
        self.desc = desc
        self.log_every = float(log_every)
        self.refresh_every = float(refresh_every)
        self._bar: Any = None
        self._mode = "off"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset(0)

    def _reset(self, total: int) -> None:
        self.total = int(total)
        self.steps_done = 0
        self.clock = RateClock()
        self._t0 = self.clock.t_start
        self._t_last = self._t0
        self._t_event = self._t0
        self._t_logged = self._t0
        self._last_row: dict = {}
        self._compiling = True
        self._metric: str | None = None
        self._logged_steps = -1

    @property
    def generations_per_s(self) -> float | None:
        """Generations per second (see :class:`RateClock`); None before the first chunk."""
        return self.clock.rate

    @property
    def compile_s(self) -> float:
        """The compilation time the engine reported."""
        return self.clock.compile_s

    def _choose_mode(self) -> str:
        if self.disable is True:
            return "off"
        if self.disable is False:
            return "bar"
        from tqdm.auto import tqdm

        if "ipykernel" in sys.modules or any("notebook" in c.__module__ for c in type.mro(tqdm)):
            return "bar"  # Jupyter: a widget, or text that the notebook redraws
        isatty = getattr(sys.stderr, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        self.close()
        self._reset(num_steps)
        self._mode = self._choose_mode()
        if self._mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=f"{self.desc} (compiling)",
                unit="gen",
                leave=True,
                bar_format=_BAR_FORMAT,
                smoothing=0.0,
            )
        elif self._mode == "log":
            logger.info("%s: compiling; %d generations to run", self.desc, self.total)
        if self._mode != "off":
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._tick, name="evojax_nets-progress", daemon=True
            )
            self._thread.start()
        self.clock.start()  # compilation starts now
        self._t0 = self._t_event = self._t_logged = self.clock.t_start

    def _postfix(self) -> dict[str, str]:
        last, post = self._last_row, {}
        for key, name in (("best_so_far", "best"), ("mean_fitness", "mean")):
            if key in last:
                post[name] = _fmt(last[key], ".4g")
        metric = self._metric
        if metric and f"test_{metric}_mean" in last:
            post[f"test_{metric}"] = _fmt(last[f"test_{metric}_mean"], ".4f")
        rate = self.generations_per_s
        if rate is not None:
            post["gen/s"] = f"{rate:.3g}"
            if rate > 0:
                post["left"] = f"{(self.total - self.steps_done) / rate:.0f}s"
        return post

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        if not rows:
            return
        now = time.perf_counter()
        with self._lock:
            self._metric = _headline_metric(owner)
            self.clock.chunk(len(rows), rows[-1].get("compile_time"), now)
            self.steps_done += len(rows)
            self._t_last = self._t_event = now
            self._last_row = rows[-1]
            first, self._compiling = self._compiling, False
        if self._mode == "bar":
            if first:
                self._bar.set_description_str(self.desc, refresh=False)
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(len(rows))
        elif self._mode == "log" and (
            first or now - self._t_logged >= self.log_every or self.steps_done >= self.total
        ):
            self._log_status(now)

    def _log_status(self, now: float) -> None:
        self._t_logged = now
        if self._compiling:
            logger.info("%s: still compiling (%.0f s)", self.desc, now - self._t0)
            return
        step = _step_of(self._last_row)
        if self._logged_steps == self.steps_done:  # nothing new since the last line
            logger.info(
                "%s: still running after generation %s (%.0f s since it ended)",
                self.desc,
                step,
                now - self._t_last,
            )
            return
        self._logged_steps = self.steps_done
        parts = [f"{self.desc}: generation {step} ({self.steps_done}/{self.total})"]
        post = self._postfix()
        parts += [f"{k} {v}" for k, v in post.items() if k not in ("gen/s", "left")]
        if "gen/s" in post:
            parts.append(f"{post['gen/s']} generations/s")
        if "left" in post:
            parts.append(f"about {post['left']} left")
        logger.info(" | ".join(parts))

    def _tick(self) -> None:
        # Redraw the bar's clock (it shows compilation time too) and keep log lines coming
        # while a long compilation or a slow chunk runs. Gives up after ten minutes without
        # any event, so a run that died with an exception does not tick forever.
        while not self._stop.wait(self.refresh_every):
            now = time.perf_counter()
            if now - self._t_event > 600:
                return
            if self._mode == "bar" and self._bar is not None:
                self._bar.refresh()
            elif self._mode == "log" and now - self._t_logged >= self.log_every:
                with self._lock:
                    self._log_status(now)

    def close(self) -> None:
        """Stop the clock and close the bar (``on_end`` does; call it after an exception)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.refresh_every)
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        self.close()
        if self._mode == "log":
            rate = self.generations_per_s
            logger.info(
                "%s: done, %d generations in %.1f s (compilation %.1f s), %s generations/s",
                self.desc,
                self.steps_done,
                self._t_last - self._t0,
                self.compile_s,
                "n/a" if rate is None else f"{rate:.3g}",
            )
