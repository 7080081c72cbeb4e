"""The one host loop: every program (evolution, PBT, architecture search, sweeps) runs here.

:class:`Runner` owns what every search needs between compiled chunks:

* a chunk of ``chunk_size`` steps is one ``lax.scan``, compiled once ahead of time
  (``jit(...).lower(...).compile()``) and cached by chunk size and argument types; a shorter
  last chunk runs the same executable with fewer active steps (``lax.cond`` on the index);
* one memory guard, device-aware (an accelerator's own memory, else the host's RAM), checked
  on the compiled chunk before anything runs;
* the state is put back on the shardings the executable was compiled for after every chunk
  (a sharded run's outputs may come back laid out differently);
* data fed from a host iterator, one item per step, stacked for the chunk;
* the :class:`History` and the :class:`Callback` hooks (progress bars, metric files,
  checkpoints, plots), called with the *owner* (the user-facing object: an
  :class:`~evojax_nets.engine.Evolution`, a PBT or an architecture search).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.program import Program


@dataclass(frozen=True)
class History:
    """Per-step metrics of a run. Rows at chunk ends also carry ``wall_time`` (seconds since
    the run started, compilation included, plus the time of the run it resumes) and whatever
    the program reports there (for evolution, the test metrics of the best member,
    ``test_<metric>_best``, and of the mean, ``test_<metric>_mean``).

    Example:
      >>> h = History(rows=[{"generation": 1, "best_fitness": 2.0},
      ...                   {"generation": 2, "best_fitness": 1.0, "wall_time": 0.5}])
      >>> h.column("best_fitness").tolist(), h.last["generation"]
      ([2.0, 1.0], 2)
      >>> h.last_with("wall_time")["generation"], h.column("wall_time").shape
      (2, (2,))
    """

    rows: list[dict[str, Any]] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        """One metric over steps (NaN where a row lacks it)."""
        return np.asarray([r.get(name, np.nan) for r in self.rows], dtype=np.float64)

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    def last_with(self, name: str) -> dict[str, Any]:
        """The last row that holds ``name``."""
        for row in reversed(self.rows):
            if name in row:
                return row
        return {}

    def split(self, num_configs: int) -> list[History]:
        """A sweep's history (every value a list over configurations) as one history per
        configuration. Values that are not per-configuration (the step count, wall time) are
        copied into each."""
        out: list[History] = [History() for _ in range(num_configs)]
        for row in self.rows:
            for i, h in enumerate(out):
                h.rows.append(
                    {
                        k: (v[i] if isinstance(v, list) and len(v) == num_configs else v)
                        for k, v in row.items()
                    }
                )
        return out


class Callback:
    """Host-side hooks, called between chunks; subclass and override what you need.

    ``owner`` is the object whose run it is (an ``Evolution``, a ``PBT``, an ``ArchSearch``).

    Example:
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> class CountChunks(Callback):
      ...     def __init__(self):
      ...         self.chunks = 0
      ...     def on_chunk(self, owner, state, rows):
      ...         self.chunks += 1
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> counter = CountChunks()
      >>> _ = evo.run(evo.init(jax.random.key(0)), 3, chunk_size=1, callbacks=[counter])
      >>> counter.chunks
      3
    """

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        pass

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        pass

    def on_end(self, owner: Any, state: Any, history: History) -> None:
        pass


def _memory_of(compiled: Any) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"argument": -1, "output": -1, "temp": -1, "total": -1}
    out = {
        "argument": int(analysis.argument_size_in_bytes),
        "output": int(analysis.output_size_in_bytes),
        "temp": int(analysis.temp_size_in_bytes),
    }
    out["total"] = out["argument"] + out["output"] + out["temp"]
    return out


def host_memory_bytes() -> int:
    """The machine's physical memory."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def device_memory_bytes(device: Any = None) -> int:
    """Memory a program may use on ``device`` (default: the first device): an accelerator's
    own limit when the backend reports one, else the host's physical memory.

    Example:
      >>> device_memory_bytes() > 0
      True
    """
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else host_memory_bytes()


def check_fits(
    need_bytes: int,
    limit: int | None,
    what: str,
    hints: Sequence[str] = (),
    fraction: float = 0.8,
    setting: str = "max_memory_bytes",
) -> None:
    """Raise ``MemoryError`` when ``need_bytes`` exceeds ``limit`` (default: ``fraction`` of
    the device's memory), naming what was measured and the hints that would reduce it.

    Example:
      >>> check_fits(10, 100, "this run")
      >>> try:
      ...     check_fits(200, 100, "this run", ["eval_batch_size=8"])
      ... except MemoryError as err:
      ...     print(str(err).split(" (")[0])
      this run needs about 0.00 GiB
    """
    if need_bytes < 0:  # the backend gave no analysis
        return
    if limit is None:
        limit = int(fraction * device_memory_bytes())
    if need_bytes > limit:
        tail = (" Try: " + "; or ".join(hints)) if hints else ""
        raise MemoryError(
            f"{what} needs about {need_bytes / 2**30:.2f} GiB ({need_bytes:,} bytes), more "
            f"than the {limit / 2**30:.2f} GiB allowed ({setting}).{tail}"
        )


def _blank(shapes: Any) -> Any:
    return jax.tree.map(
        lambda s: (
            jnp.full(s.shape, jnp.nan, s.dtype)
            if jnp.issubdtype(s.dtype, jnp.floating)
            else jnp.zeros(s.shape, s.dtype)
        ),
        shapes,
    )


def _stack_inputs(items: list[Any], chunk_size: int) -> Any:
    # A shorter last chunk repeats its last item; those steps are inactive and never read it.
    items = items + [items[-1]] * (chunk_size - len(items))
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)


def _on_shardings(state: Any, shardings: Any) -> Any:
    """``state`` with every array on the sharding the executable was compiled for.

    A leaf already there (or on an equivalent sharding) is left alone. Under several
    processes a host-local value is left for the executable to place, as any jitted call does
    (putting it on a global sharding would first compare its value across processes, which
    fails for NaN); global arrays are moved like single-process ones.
    """

    def put(x: Any, s: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x
        if x.sharding == s or x.sharding.is_equivalent_to(s, x.ndim):
            return x
        if jax.process_count() > 1 and x.is_fully_addressable:
            return x
        return jax.device_put(x, s)

    return jax.tree.map(put, state, shardings)


def _to_row_value(value: np.ndarray) -> Any:
    return value.item() if value.ndim == 0 else value.tolist()


class Runner:
    """Runs a :class:`~evojax_nets.program.Program` in compiled chunks (module docstring).

    Args:
      program: the program.
      owner: the object handed to callbacks (default: the runner itself).
      max_memory_bytes: memory a compiled chunk may use (default: 80% of the device's).
      memory_hints: ``() -> [str]``, settings that would reduce the memory of a refused run.

    Example:
      >>> from evojax_nets.program import Program
      >>> prog = Program(
      ...     init=lambda key, p: {"n": jnp.int32(0), "x": jnp.float32(0.0)},
      ...     step=lambda s, p, inputs: ({"n": s["n"] + 1, "x": s["x"] + p}, {"x": s["x"] + p}),
      ...     counter=lambda s: s["n"],
      ... )
      >>> runner = Runner(prog)
      >>> params = jnp.float32(2.0)
      >>> state, history = runner.run(prog.init(jax.random.key(0), params), params, 5,
      ...                             chunk_size=2)
      >>> history.column("x").tolist(), runner.compile_count
      ([2.0, 4.0, 6.0, 8.0, 10.0], 1)
    """

    def __init__(
        self,
        program: Program,
        owner: Any = None,
        *,
        max_memory_bytes: int | None = None,
        memory_hints: Callable[[], list[str]] | None = None,
    ):
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program, got {type(program).__name__}")
        self.program = program
        self.owner = self if owner is None else owner
        self.max_memory_bytes = max_memory_bytes
        self.memory_hints = memory_hints or (lambda: [])
        self._compiled: dict[Any, Any] = {}
        self._report = None if program.report is None else jax.jit(program.report)
        self.compile_count = 0
        """Chunk executables compiled so far (a sweep or a resumed run compiles one)."""

    # -- the compiled chunk -------------------------------------------------------------------

    def _chunk_fn(self, chunk_size: int) -> Callable:
        step = self.program.step

        def chunk(state: Any, params: Any, num_active: jax.Array, inputs: Any):
            first = None if inputs is None else jax.tree.map(lambda x: x[0], inputs)
            blank = _blank(jax.eval_shape(step, state, params, first)[1])

            def body(s: Any, xs: tuple[jax.Array, Any]):
                i, x = xs
                return jax.lax.cond(
                    i < num_active, lambda s: step(s, params, x), lambda s: (s, blank), s
                )

            return jax.lax.scan(body, state, (jnp.arange(chunk_size), inputs))

        return chunk

    def lower(self, state: Any, params: Any, chunk_size: int, inputs: Any = None) -> Any:
        """The lowered (not compiled) chunk, for memory estimates from shapes alone."""
        return jax.jit(self._chunk_fn(chunk_size)).lower(
            state, params, jnp.int32(chunk_size), inputs
        )

    def compile(
        self, state: Any, params: Any, chunk_size: int, inputs: Any = None
    ) -> tuple[Any, float]:
        """The compiled chunk (once per chunk size and argument types), and the seconds spent
        compiling it now (0 when cached). Refused with ``MemoryError`` if it cannot fit."""
        spec = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), (state, params, inputs))
        cache_key = (chunk_size, jax.tree.structure((state, params, inputs)), str(spec))
        if cache_key in self._compiled:
            return self._compiled[cache_key], 0.0
        t0 = time.perf_counter()
        compiled = self.lower(state, params, chunk_size, inputs).compile()
        self.compile_count += 1
        check_fits(
            _memory_of(compiled)["total"],
            self.max_memory_bytes,
            "this run (one compiled chunk)",
            self.memory_hints(),
        )
        self._compiled[cache_key] = compiled
        return compiled, time.perf_counter() - t0

    @property
    def chunk_sizes(self) -> list[int]:
        """The chunk sizes compiled so far."""
        return sorted({k[0] for k in self._compiled})

    def memory_estimate(self, state: Any, params: Any, chunk_size: int = 1) -> dict[str, int]:
        """Bytes a compiled chunk needs (XLA's memory analysis); ``state`` and ``params`` may
        be ``jax.ShapeDtypeStruct`` trees, so nothing is allocated."""
        return _memory_of(self.lower(state, params, chunk_size).compile())

    # -- the host loop ------------------------------------------------------------------------

    def run(
        self,
        state: Any,
        params: Any,
        num_steps: int,
        *,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
        feed: Iterator[Any] | None = None,
        elapsed: float = 0.0,
    ) -> tuple[Any, History]:
        """Run ``num_steps`` steps in chunks of ``chunk_size`` (default ``min(n, 50)``).

        Args:
          state, params: the program's state and params.
          num_steps: steps to run now.
          chunk_size: steps per compiled chunk; callbacks run between chunks.
          callbacks: host-side hooks (see :class:`Callback`).
          feed: an iterator yielding one ``inputs`` pytree per step (for example minibatches
            from a host-side data loader); ``None`` gives the program ``inputs=None``.
          elapsed: seconds already spent by the run this one continues (``wall_time``
            continues from there).

        Returns the final state and this run's :class:`History`.
        """
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, int | np.integer)
            or num_steps < 1
        ):
            raise ValueError(
                f"num_{self.program.counter_name}s must be a positive int, got {num_steps!r}"
            )
        if chunk_size is None:
            chunk_size = min(int(num_steps), 50)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        chunk_size, num_steps = int(chunk_size), int(num_steps)
        callbacks = list(callbacks)
        t_start = time.perf_counter() - float(elapsed)
        for cb in callbacks:
            cb.on_start(self.owner, state, num_steps)
        history = History()
        name = self.program.counter_name
        done = 0
        compile_s = 0.0
        while done < num_steps:
            n = min(chunk_size, num_steps - done)
            inputs = None
            if feed is not None:
                inputs = _stack_inputs([next(feed) for _ in range(n)], chunk_size)
            compiled, secs = self.compile(state, params, chunk_size, inputs)
            compile_s += secs
            # Outputs of a sharded chunk may come back laid out differently from what the
            # executable was compiled for: put the state back where it expects it.
            state = _on_shardings(state, compiled.input_shardings[0][0])
            state, metrics = compiled(state, params, jnp.int32(n), inputs)
            metrics = jax.device_get(metrics)
            report = {}
            if self._report is not None:
                report = jax.device_get(self._report(state, params))
            count = int(np.asarray(self.program.counter(state)).reshape(-1)[0])
            rows = []
            for j in range(n):
                row: dict[str, Any] = {name: count - n + j + 1}
                row.update({k: _to_row_value(np.asarray(v)[j]) for k, v in metrics.items()})
                rows.append(row)
            rows[-1].update({k: _to_row_value(np.asarray(v)) for k, v in report.items()})
            rows[-1]["wall_time"] = time.perf_counter() - t_start
            rows[-1]["compile_time"] = compile_s
            history.rows.extend(rows)
            done += n
            for cb in callbacks:
                cb.on_chunk(self.owner, state, rows)
        for cb in callbacks:
            cb.on_end(self.owner, state, history)
        return state, history
