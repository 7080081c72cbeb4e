"""One invocation's run loop: the engine calls in stretches of generations, the callbacks
over all of them, and Ctrl-C/SIGTERM held back while a callback writes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evojax_nets.cli.config import RunConfig
    from evojax_nets.engine import Evolution, EvolutionState


class _Session:
    """One invocation's callbacks over several engine calls, as a single engine callback.

    The command line calls ``Evolution.run`` once per stretch of generations (so that progress
    is reported about every half second and every checkpoint falls at a chunk end); this
    object starts the real callbacks once, keeps the clock across calls (``wall_time``
    continues the time recorded by earlier, resumed sessions), remembers the latest state, and
    holds Ctrl-C back while a callback writes, so files and checkpoints are never torn.
    """

    def __init__(self, callbacks: list, bar: Any, total: int, wall_offset: float):
        self.callbacks = callbacks
        self.bar = bar
        self.total = total
        self.wall_offset = wall_offset
        self.started = False
        self.state: Any = None
        self.rows: list[dict] = []
        self.compile_s = 0.0
        self.call_compile_s = 0.0
        self.t_begin = self.t_last = time.perf_counter()
        from evojax_nets.logging import RateClock

        self.clock = RateClock(self.t_begin)
        self._call_seen = False
        self._holding = False
        self._stopping = False
        self._pending = False
        self.signal: signal.Signals | None = None  # the first one received

    # Ctrl-C and SIGTERM ---------------------------------------------------------------------

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        if self._holding or self._stopping:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def holding(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending and not self._stopping:
            self._pending = False
            raise KeyboardInterrupt

    def stop(self) -> None:
        """From now on Ctrl-C is only noted (the outputs are being written)."""
        self._stopping = True

    # engine callback ------------------------------------------------------------------------

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        self._call_seen = False
        self.call_compile_s = 0.0
        if self.started:
            return
        with self.holding():
            self.started = True
            self.state = state
            self.t_begin = time.perf_counter()
            for cb in self.callbacks:
                cb.on_start(owner, state, self.total)
            if self.bar is not None:  # last: its clock starts where compilation starts
                self.bar.on_start(owner, state, self.total)
            self.clock.start()

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        with self.holding():
            now = time.perf_counter()
            last = rows[-1]
            if not self._call_seen:  # the engine reports this call's compilation (0 if cached)
                self._call_seen = True
                self.call_compile_s = float(last.get("compile_time") or 0.0)
                self.compile_s += self.call_compile_s
            last["compile_time"] = self.compile_s
            last["wall_time"] = self.wall_offset + (now - self.t_begin)
            self.state = state
            self.rows.extend(rows)
            self.t_last = now
            self.clock.chunk(len(rows), self.compile_s, now)
            if self.bar is not None:  # first: its clock stops where the chunk ended
                self.bar.on_chunk(owner, state, rows)
            for cb in self.callbacks:
                cb.on_chunk(owner, state, rows)

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        pass  # the session ends in finish(), after the last engine call

    def finish(self, owner: Any, history: Any) -> None:
        if not self.started:
            return
        with self.holding():
            for cb in self.callbacks:
                cb.on_end(owner, self.state, history)
            if self.bar is not None:
                self.bar.on_end(owner, self.state, history)

    @property
    def generations_per_s(self) -> float | None:
        """Generations per second, as the bar reports them (see ``logging.RateClock``)."""
        return self.clock.rate


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def next_stretch(
    generation: int,
    left: int,
    chunk_size: int,
    checkpoint_every: int,
    seconds_per_generation: float | None,
    target_s: float = 0.5,
) -> int:
    """How many generations the next engine call runs: ending on a multiple of a divisor of
    ``chunk_size`` that takes about ``target_s`` at most (one generation while the speed is
    unknown), on every multiple of ``checkpoint_every``, and at the end of the run."""
    if seconds_per_generation is None:
        step = 1
    else:
        fits = int(target_s / max(seconds_per_generation, 1e-9))
        step = _largest_divisor_at_most(chunk_size, max(1, fits))
    n = step - generation % step
    if checkpoint_every:
        n = min(n, checkpoint_every - generation % checkpoint_every)
    return max(1, min(n, left))


def _drive(
    evolution: Evolution,
    state: EvolutionState,
    left: int,
    config: RunConfig,
    every: int,
    session: _Session,
) -> EvolutionState:
    done, per_generation = 0, None
    while done < left:
        generation = int(state.generation)
        n = next_stretch(generation, left - done, config.chunk_size, every, per_generation)
        t0 = time.perf_counter()
        state, _ = evolution.run(state, n, chunk_size=config.chunk_size, callbacks=[session])
        spent = time.perf_counter() - t0 - session.call_compile_s
        per_generation = spent / n if per_generation is None else 0.5 * (per_generation + spent / n)
        done += n
    return state


@contextmanager
def _sigint_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
