"""Sweeps: many seeds x many settings of one search, as one compiled, ``vmap``-ed program.

A :class:`~evojax_nets.program.Program` takes its hyperparameters as an argument, so
``program.batched()`` (``jax.vmap`` over keys, params and states) runs every configuration
in one XLA program, the way purejaxrl runs many agents in one ``jit(vmap(train))``. Small
programs are dominated by per-call overhead, which one program pays once; large ones fill the
machine with one wide computation instead of many narrow ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.runner import Callback, History, Runner


def stack_trees(trees: Sequence[Any]) -> Any:
    """One pytree whose leaves stack the leaves of ``trees`` on a new leading axis.

    Example:
      >>> stack_trees([{"a": jnp.float32(1)}, {"a": jnp.float32(2)}])["a"].tolist()
      [1.0, 2.0]
    """
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, index: int) -> Any:
    """Configuration ``index`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


def grid(seeds: Iterable[int], settings: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every seed with every combination of the settings' values, seed-major.

    Example:
      >>> grid([0, 1], {"std": [0.1, 0.2]})
      [{'seed': 0, 'std': 0.1}, {'seed': 0, 'std': 0.2}, {'seed': 1, 'std': 0.1}, {'seed': 1, 'std': 0.2}]
    """  # noqa: E501
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed, for example seeds=range(4)")
    names = sorted(settings)
    for name in names:
        values = settings[name]
        if isinstance(values, str) or not isinstance(values, Sequence) or not len(values):
            raise ValueError(f"setting {name!r} must be a non-empty list of values, got {values!r}")
    combos = itertools.product(*(settings[n] for n in names))
    values = [dict(zip(names, c, strict=True)) for c in combos]
    return [{"seed": s, **v} for s in seeds for v in values]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep hands back.

    Attributes:
      configs: one dict per configuration (``seed`` and the settings).
      states: the final states, stacked on a leading configuration axis.
      params: the params of every configuration, stacked.
      histories: one :class:`~evojax_nets.runner.History` per configuration.
      compile_count: chunk executables this sweep compiled (1 for a first sweep; 0 for a
        later one of the same shapes on the same owner).
      owner: the object that ran it (for example the :class:`~evojax_nets.engine.Evolution`).
    """

    configs: list[dict[str, Any]]
    states: Any
    params: Any
    histories: list[History]
    compile_count: int
    owner: Any = None

    def state(self, index: int) -> Any:
        """Configuration ``index``'s final state, as a run of it alone would return it."""
        return take(self.states, index)

    def final(self, metric: str) -> np.ndarray:
        """The last value of ``metric`` in every configuration's history."""
        return np.asarray([h.last_with(metric).get(metric, np.nan) for h in self.histories])

    def solution(self, index: int) -> Any:
        """Configuration ``index``'s answer in the user's structure (evolution sweeps)."""
        return self.owner.solution(self.state(index))


def run_sweep(
    owner: Any,
    seeds: Iterable[int],
    num_steps: int,
    settings: Mapping[str, Sequence[Any]],
    chunk_size: int | None = None,
    callbacks: Iterable[Callback] = (),
) -> SweepResult:
    """The sweep behind ``Evolution.sweep`` (any owner with ``program``, ``params_with(**s)``
    and ``max_memory_bytes``)."""
    configs = grid(seeds, settings)
    per_config = [owner.params_with(**{k: v for k, v in c.items() if k != "seed"}) for c in configs]
    params = stack_trees(per_config)
    keys = jnp.stack([jax.random.key(c["seed"]) for c in configs])
    # One batched program, jitted init and runner per owner: a second sweep (other values,
    # same number of configurations) reuses the compiled chunk.
    cached = getattr(owner, "_sweep_cache", None)
    if cached is None:
        program = owner.program.batched()
        runner = Runner(program, owner=owner, max_memory_bytes=owner.max_memory_bytes)
        cached = (jax.jit(program.init), runner)
        owner._sweep_cache = cached
    init, runner = cached
    compiles_before = runner.compile_count
    states = init(keys, params)
    states, history = runner.run(
        states, params, num_steps, chunk_size=chunk_size, callbacks=callbacks
    )
    return SweepResult(
        configs=configs,
        states=states,
        params=params,
        histories=history.split(len(configs)),
        compile_count=runner.compile_count - compiles_before,
        owner=owner,
    )
