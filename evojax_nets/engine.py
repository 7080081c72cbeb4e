"""Evolution of a Flax network's weights: the friendly layer over a pure program.

:class:`Evolution` builds an :class:`~evojax_nets.generation.EvolutionProgram` (one generation
as a pure function of ``(state, params)``, see :mod:`evojax_nets.generation`) and runs it with
the one :class:`~evojax_nets.runner.Runner`: chunks of ``lax.scan`` compiled once ahead of
time, host callbacks in between (progress bar, metric files, plots, checkpoints).

Hyperparameters are arguments, not constants: ``evo.params`` holds the strategy's ``std``,
``learning_rate`` and evosax params as arrays, so ``evo.run(state, n, params=...)`` with other
values reuses the compiled chunk, and :meth:`Evolution.sweep` runs seeds x settings as one
``vmap``-ed program.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from evojax_nets.generation import (
    EvolutionParams,
    EvolutionProgram,
    EvolutionState,
    PopulationInit,
    gaussian_population_init,
)
from evojax_nets.lowrank import LowRankES, layout_for_task
from evojax_nets.nets import Network, as_network
from evojax_nets.ops import PopulationOp, chain
from evojax_nets.program import canonicalize, check_key, sanitize_fitness
from evojax_nets.runner import Callback, History, Runner, _memory_of, check_fits
from evojax_nets.sharding import population_mesh
from evojax_nets.strategies import LowMemoryOpenES, Strategy, check_memory, make_strategy
from evojax_nets.sweep import SweepResult, run_sweep
from evojax_nets.tasks.base import BoundTask, as_task
from evojax_nets.types import Genome, Population

__all__ = [
    "Callback",
    "Evolution",
    "EvolutionParams",
    "EvolutionState",
    "History",
    "Result",
    "canonicalize",
    "evolve",
    "gaussian_population_init",
    "sanitize_fitness",
]


class Evolution:
    """A population of Flax networks evolved by an evosax strategy on a task.

    Args:
      model: an ``nnx.Module``, a ``TrainState``, a linen module (with ``variables``), or a
        :class:`~evojax_nets.nets.Network`.
      task: a task object (for example :class:`~evojax_nets.tasks.Supervised`) or a custom
        ``fitness(key, member) -> scalar`` (then say ``maximize``).
      strategy: a strategy name (see :func:`~evojax_nets.strategies.strategy_names`) or an
        evosax instance.
      population_size: members per generation.
      variables: a linen module's variables.
      filter: which parameters evolve (see :mod:`evojax_nets.nets`).
      maximize: objective sense of a custom fitness function.
      std, learning_rate, strategy_kwargs, strategy_params: see
        :func:`~evojax_nets.strategies.make_strategy`; ``std`` and ``learning_rate`` are the
        defaults of ``evo.params`` (arrays), changeable per run without recompiling.
      ops: a :class:`~evojax_nets.ops.PopulationOp` or a sequence of them (chained).
      population_init: ``init(key, P) -> (P, D)`` initial population for population-based
        strategies; default: the network's initialisation plus ``std`` Gaussian noise.
      mesh: ``True`` to shard the population over all devices, or a mesh with an axis
        ``"pop"`` (see :func:`~evojax_nets.sharding.population_mesh`); the population size
        must be a multiple of that axis's size.
      max_state_bytes: memory allowed for the strategy state (default: half the device's).
      max_memory_bytes: memory a compiled chunk may use (default: 80% of the device's); a
        run whose compiled program needs more is refused before it executes.
      eval_batch_size: evaluate this many members at a time (``lax.map``) instead of the
        whole population in one ``vmap``: peak memory then grows with the batch, not with P.
        With ``strategy="low_memory_open_es"`` it also bounds the regenerated noise.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> from evojax_nets.tasks import Supervised, load_digits
      >>> model = nnx.Sequential(nnx.Linear(64, 10, rngs=nnx.Rngs(0)))
      >>> evo = Evolution(model, Supervised.from_dataset(load_digits()), "open_es", 16)
      >>> state = evo.init(jax.random.key(0))
      >>> state, history = evo.run(state, 4)
      >>> len(history.rows)
      4
      >>> wider = evo.params_with(std=0.1)  # same compiled program, another setting
      >>> state, history = evo.run(state, 4, params=wider)
    """

    def __init__(
        self,
        model: Any,
        task: Any,
        strategy: Any = "open_es",
        population_size: int = 256,
        *,
        variables: Any = None,
        filter: Any = None,
        maximize: bool | None = None,
        std: float | None = None,
        learning_rate: float | None = None,
        strategy_kwargs: dict | None = None,
        strategy_params: dict | None = None,
        ops: PopulationOp | Sequence[PopulationOp] | None = None,
        population_init: PopulationInit | None = None,
        mesh: Mesh | bool | None = None,
        max_state_bytes: int | None = None,
        eval_batch_size: int | None = None,
        max_memory_bytes: int | None = None,
    ):
        adapter_kwargs = {} if filter is None else {"filter": filter}
        self.network: Network = as_network(model, variables, **adapter_kwargs)
        bound = as_task(task, maximize).bind(self.network)
        if not isinstance(bound, BoundTask):
            raise TypeError(f"task.bind must return a BoundTask, got {type(bound).__name__}")
        self.task: BoundTask = bound
        self.maximize = bool(bound.maximize)
        if eval_batch_size is not None and (
            isinstance(eval_batch_size, bool)
            or not isinstance(eval_batch_size, int)
            or eval_batch_size < 1
        ):
            raise ValueError(
                f"eval_batch_size must be a positive int or None, got {eval_batch_size!r}"
            )
        strategy_kwargs = dict(strategy_kwargs or {})
        chosen = _strategy_class(strategy) if isinstance(strategy, str) else None
        if chosen is LowMemoryOpenES:
            # The lazy strategy evaluates its regenerated members in batches of its own.
            strategy_kwargs.setdefault("batch_size", eval_batch_size or 32)
        if chosen is LowRankES:
            # Which leaves are matrices / conv kernels, as the task's fitness uses them.
            strategy_kwargs.setdefault("layout", layout_for_task(self.network, bound))
            strategy_kwargs.setdefault("batch_size", eval_batch_size or 32)
        self.strategy: Strategy = make_strategy(
            strategy,
            population_size,
            self.network.num_params,
            std=std,
            learning_rate=learning_rate,
            strategy_kwargs=strategy_kwargs,
            strategy_params=strategy_params,
        )
        check_memory(self.strategy, max_state_bytes)
        op_list = [ops] if isinstance(ops, PopulationOp) else list(ops or ())
        ops = chain(*op_list)
        if mesh is True:
            mesh = population_mesh()
        mesh = None if mesh is None or mesh is False else mesh
        if self.strategy.lowrank and op_list:
            raise ValueError(
                "ops need the population as a (P, D) array, which lowrank_es never builds; "
                "use open_es with eval_batch_size instead"
            )
        if self.strategy.lazy:
            if op_list:
                raise ValueError(
                    "ops need the population as a (P, D) array, which low_memory_open_es "
                    "never builds; use open_es with eval_batch_size instead"
                )
            if mesh is not None:
                raise ValueError(
                    "mesh= cannot shard low_memory_open_es, which regenerates its members one "
                    "batch at a time on one device; use open_es with mesh= (and eval_batch_size "
                    "to bound memory) instead"
                )
        if mesh is not None:
            if "pop" not in mesh.axis_names:
                raise ValueError(f"mesh must have an axis named 'pop'; it has {mesh.axis_names}")
            n = mesh.shape["pop"]
            if self.strategy.population_size % n:
                raise ValueError(
                    f"population_size={self.strategy.population_size} does not divide over "
                    f"the {n} devices of mesh axis 'pop'; use a multiple of {n}"
                )
        self.ops: PopulationOp = ops
        self.mesh = mesh
        self.eval_batch_size = eval_batch_size
        self.max_memory_bytes = max_memory_bytes
        self.population_size = self.strategy.population_size
        self._settings = {
            "strategy_kwargs": sorted(strategy_kwargs),
            "strategy_params": {k: repr(v) for k, v in sorted((strategy_params or {}).items())},
            "ops": [getattr(op.apply, "__qualname__", "op") for op in op_list],
            "eval_batch_size": eval_batch_size,
            "population_init": population_init is not None,
        }
        self.evolution = EvolutionProgram(
            network=self.network,
            task=self.task,
            strategy=self.strategy,
            ops=ops,
            population_init=population_init,
            mesh=mesh,
            eval_batch_size=eval_batch_size,
        )
        self.params: EvolutionParams = EvolutionParams(strategy=self.strategy.params)
        self.evolution.check_fitness()
        self.program = self.evolution.program()
        self.runner = Runner(
            self.program,
            owner=self,
            max_memory_bytes=max_memory_bytes,
            memory_hints=self._memory_hints,
        )
        self._feed: Any = None
        self._init_compiled: dict[Any, Any] = {}
        self._step = jax.jit(self.program.step)
        self._init = jax.jit(self.program.init)
        self._test = jax.jit(self.evolution.test_metrics)

    @property
    def std(self) -> float:
        """The default search scale (``float(self.params.strategy.std)``)."""
        return float(self.params.strategy.std)

    # -- checks made once, before anything compiles ------------------------------------------

    def _memory_hints(self) -> list[str]:
        p, d = self.population_size, self.network.num_params
        hints = []
        if self.eval_batch_size is None or self.eval_batch_size > max(1, p // 8):
            hints.append(f"eval_batch_size={max(1, p // 8)} (evaluate members in batches)")
        if not self.strategy.population_based and not self.strategy.lazy:
            hints.append("strategy='low_memory_open_es' (never holds the P x D population)")
        hints.append(f"a smaller population_size than {p:,} or fewer than {d:,} evolved weights")
        return hints

    # -- the program's pieces, with this run's defaults ---------------------------------------

    def params_with(self, **settings: Any) -> EvolutionParams:
        """``self.params`` with settings replaced: ``std``, ``learning_rate``, or any field of
        the evosax algorithm's own params (for example ``c_std`` of CMA-ES).

        Example:
          >>> from flax import nnx
          >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), lambda k, m: 0.0, "snes", 4,
          ...                 maximize=False)
          >>> round(float(evo.params_with(std=0.3).strategy.std), 6)
          0.3
        """
        sp = self.params.strategy
        valid = ["std", "learning_rate", *sorted(getattr(sp.inner, "__dataclass_fields__", {}))]
        for name, value in settings.items():
            if name not in valid:
                raise ValueError(f"unknown setting {name!r}; valid: {', '.join(valid)}")
            if name in ("std", "learning_rate"):
                v = np.asarray(value, np.float64)
                if not (np.all(np.isfinite(v)) and np.all(v > 0)):
                    raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        return self.replace_settings(self.params, settings)

    @staticmethod
    def replace_settings(params: EvolutionParams, settings: dict[str, Any]) -> EvolutionParams:
        """``params`` with settings replaced, traceably (no checks: see :meth:`params_with`);
        values may be tracers, so PBT can set them per member inside a compiled round."""
        sp = params.strategy
        for name, value in settings.items():
            if name in ("std", "learning_rate"):
                sp = sp.replace(**{name: jnp.asarray(value, jnp.float32)})
            else:
                old = getattr(sp.inner, name)
                new = jnp.asarray(value, jnp.result_type(old))
                sp = sp.replace(inner=sp.inner.replace(**{name: new}))
        return params.replace(strategy=sp)

    def pbt(
        self,
        space: dict[str, Any],
        population_size: int,
        *,
        ready: int,
        score: Any = None,
        **pbt_kwargs: Any,
    ) -> Any:
        """Population-based training whose members are whole runs of this evolution: each
        member is an :class:`EvolutionState` with its own ``space`` settings (``std``,
        ``learning_rate``, evosax params), ``ready`` generations per round (see
        :func:`evojax_nets.search.over.pbt_over`). ``score(state) -> scalar`` (larger is better)
        defaults to the task's fitness of the run's solution on a fixed key, in the task's
        sense."""
        from evojax_nets.search.over import pbt_of_evolution

        return pbt_of_evolution(self, space, population_size, ready, score, **pbt_kwargs)

    def evaluate(self, key: jax.Array, population: Population, task_state: Any = ()) -> jax.Array:
        """Fitness of every row of ``population`` in the task's own sense (vmapped); a
        stateful task needs ``task_state`` (``state.task_state``)."""
        return self.evolution.evaluate(key, population, task_state)[0]

    def init(self, key: jax.Array, params: EvolutionParams | None = None) -> EvolutionState:
        """The initial state; population-based strategies evaluate their first population."""
        check_key(key)
        params = self.params if params is None else params
        kind = (str(key.dtype), key.shape)
        if kind not in self._init_compiled:
            # Population-based strategies evaluate a whole first population here: guard its
            # memory as the runner guards a chunk's, before anything runs.
            compiled = self._init.lower(key, params).compile()
            check_fits(
                _memory_of(compiled)["total"],
                self.max_memory_bytes,
                "the initial state (population evaluated at init)",
                self._memory_hints(),
            )
            self._init_compiled[kind] = compiled
        return self._init_compiled[kind](key, params)

    def step(
        self, state: EvolutionState, params: EvolutionParams | None = None, inputs: Any = None
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """One jitted generation."""
        return self._step(state, self.params if params is None else params, inputs)

    def compile(self, state: EvolutionState, chunk_size: int) -> tuple[Any, float]:
        """Compile (once per chunk size) the scanned chunk; returns it and the seconds spent.

        The chunk is ``chunk(state, num_active, params=None) -> (state, metrics)``: it runs
        ``num_active <= chunk_size`` generations with ``params`` (default ``self.params``)."""
        compiled, seconds = self.runner.compile(state, self.params, chunk_size)

        def chunk(s: EvolutionState, num_active: Any, params: Any = None) -> Any:
            return compiled(s, self.params if params is None else params, num_active, None)

        return chunk, seconds

    def memory_estimate(self, chunk_size: int = 1) -> dict[str, int]:
        """Bytes a compiled chunk needs (XLA's memory analysis), from shapes alone: nothing
        is initialised or allocated. Keys: ``argument``, ``output``, ``temp``, ``total``."""
        return self.runner.memory_estimate(self.abstract_state(), self.params, chunk_size)

    def run(
        self,
        state: EvolutionState,
        num_generations: int,
        *,
        params: EvolutionParams | None = None,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
        elapsed: float = 0.0,
    ) -> tuple[EvolutionState, History]:
        """Run ``num_generations`` generations in scanned chunks of ``chunk_size``.

        After each chunk the test metrics of the best member and of the mean are computed and
        the callbacks are called with that chunk's rows. Returns the final state and the
        :class:`History`. ``params`` (default ``self.params``) may differ between calls
        without recompiling.
        """
        params = self.params if params is None else params
        state, history = self.runner.run(
            state,
            params,
            num_generations,
            chunk_size=chunk_size,
            callbacks=callbacks,
            feed=self.feed(),
            elapsed=elapsed,
        )
        dead = sum(1 for r in history.rows if r.get("num_nonfinite") == self.population_size)
        if dead:
            warnings.warn(
                f"{dead} of {len(history.rows)} generations had no finite fitness (every "
                "member NaN or infinite): check the task, the std and the learning rate",
                RuntimeWarning,
                stacklevel=2,
            )
        return state, history

    def sweep(
        self,
        seeds: Iterable[int],
        num_generations: int,
        *,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
        **settings: Sequence[Any],
    ) -> SweepResult:
        """Every seed x every combination of ``settings`` as one compiled, ``vmap``-ed run.

        Args:
          seeds: PRNG seeds (``jax.random.key(seed)`` each).
          num_generations: generations of every configuration.
          chunk_size, callbacks: as in :meth:`run` (callbacks see stacked states and rows
            whose values are lists over configurations).
          settings: ``name=[values]`` for :meth:`params_with` (``std``, ``learning_rate``, an
            evosax param).

        Returns a :class:`~evojax_nets.sweep.SweepResult`: the configurations, the stacked
        final states, one :class:`History` per configuration. Each configuration computes what
        it would compute alone (up to the rounding of batched kernels).

        Example:
          >>> from flax import nnx
          >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
          >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "open_es", 8,
          ...                 maximize=False)
          >>> result = evo.sweep([0, 1], 5, std=[0.02, 0.1])
          >>> len(result.configs), result.configs[3], result.compile_count
          (4, {'seed': 1, 'std': 0.1}, 1)
          >>> len(result.histories[3].rows)
          5
        """
        return run_sweep(self, seeds, num_generations, settings, chunk_size, callbacks)

    # -- a fed task's host iterator, and for checkpoints ------------------------------------

    def feed(self) -> Any:
        """A fed task's host iterator (one for the life of this object, so consecutive runs
        continue the data stream), or ``None``."""
        if self.task.feed is not None and self._feed is None:
            self._feed = self.task.feed.iterator()
        return self._feed

    def feed_state(self) -> Any:
        """The fed iterator's position (JSON-serialisable), or ``None`` for other tasks."""
        it = self.feed()
        return None if it is None else it.get_state()

    def set_feed_state(self, position: Any) -> None:
        """Move the fed iterator to a saved position (a resumed run continues the stream)."""
        it = self.feed()
        if it is not None and position is not None:
            it.set_state(position)

    def abstract_state(self) -> Any:
        """The state's shapes and dtypes (``jax.ShapeDtypeStruct``), from shapes alone."""
        return jax.eval_shape(self.program.init, jax.random.key(0), self.params)

    def step_count(self, state: EvolutionState) -> int:
        return int(state.generation)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that must match between a run that saved a checkpoint and one resuming
        it (JSON-serialisable)."""
        net = self.network
        sp = jax.device_get(self.params.strategy)
        return {
            "kind": "evolution",
            "network_kind": net.kind,
            "num_params": net.num_params,
            "param_paths": list(net.paths),
            "strategy": self.strategy.name,
            "population_size": self.population_size,
            "maximize": self.maximize,
            "std": float(sp.std),
            "learning_rate": float(sp.learning_rate),
            **self._settings,
            "data": (
                getattr(self.task.feed, "fingerprint", lambda: type(self.task.feed).__name__)()
                if self.task.fed
                else None
            ),
        }

    # -- results in the user's structure ----------------------------------------------------

    def mean_theta(self, state: EvolutionState) -> Genome:
        """See :meth:`EvolutionProgram.mean_theta`."""
        return self.evolution.mean_theta(state)

    def solution_theta(self, state: EvolutionState) -> Genome:
        """What a run hands back: the mean for distribution-based strategies (the ES
        estimate, not a lucky sample), the best member so far for population-based ones."""
        return self.evolution.solution_theta(state)

    def test_metrics(self, state: EvolutionState) -> dict[str, float]:
        """Test metrics of the best member and of the mean, as Python floats."""
        return {k: float(v) for k, v in jax.device_get(self._test(state)).items()}

    def export(self, theta: Genome) -> Any:
        """``theta`` in the user's own structure (NNX module, variables dict or TrainState)."""
        return self.network.export(theta)

    def best(self, state: EvolutionState) -> Any:
        """The best member evaluated so far, in the user's structure."""
        return self.network.export(state.best_theta)

    def solution(self, state: EvolutionState) -> Any:
        """The run's answer (see :meth:`solution_theta`), in the user's structure."""
        return self.network.export(self.solution_theta(state))


def _strategy_class(name: str) -> Any:
    """The class a strategy name resolves to, or ``None`` (an unknown name is reported by
    ``make_strategy``)."""
    from evojax_nets.strategies import resolve_name

    try:
        return resolve_name(name)[1]
    except ValueError:
        return None


@dataclass(frozen=True)
class Result:
    """What :func:`evolve` returns."""

    evolution: Evolution
    state: EvolutionState
    history: History

    @property
    def solution(self) -> Any:
        return self.evolution.solution(self.state)

    @property
    def best(self) -> Any:
        return self.evolution.best(self.state)


def evolve(
    model: Any,
    task: Any,
    strategy: Any = "open_es",
    population_size: int = 256,
    num_generations: int = 100,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    callbacks: Iterable[Callback] = (),
    **kwargs: Any,
) -> Result:
    """Build an :class:`Evolution`, run it, and return the :class:`Result`.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets import evolve
      >>> from evojax_nets.tasks import Supervised, load_digits
      >>> model = nnx.Linear(64, 10, rngs=nnx.Rngs(0))
      >>> result = evolve(model, Supervised.from_dataset(load_digits()), "snes", 16, 3)
      >>> isinstance(result.solution, nnx.Linear)
      True
    """
    evo = Evolution(model, task, strategy, population_size, **kwargs)
    state = evo.init(jax.random.key(seed))
    state, history = evo.run(state, num_generations, chunk_size=chunk_size, callbacks=callbacks)
    return Result(evo, state, history)
