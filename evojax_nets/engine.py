"""The engine: one generation is one jitted function; a run is chunks of ``lax.scan``.

One generation::

    key -> (key, k_ask, k_ops, k_eval, k_tell)
    ops.before_ask(strategy_state)                                     [identity by default]
    strategy.ask(k_ask)                  -> population (P, D)          [evosax, flat]
    ops.apply(k_ops, Members(pop, pop))  -> genome, phenotype          [identity by default]
    vmap(task.fitness)(k_eval, phenotype) -> fitness (P,)              [task's own sense]
    minimise: negate once if the task maximises; non-finite -> worst finite + margin
    strategy.tell(k_tell, genome, fitness)
    ops.after_tell(strategy_state)                                     [identity by default]

``Evolution.run`` compiles a chunk of ``chunk_size`` generations once, ahead of time, and calls
the compiled executable for every chunk (a shorter last chunk runs the same executable with
fewer active generations), so later chunks cannot recompile. Between chunks the host computes
the test metrics and calls the callbacks (progress bar, metric files, plots, checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_nets.lowmem import LowMemoryOpenES
from evojax_nets.nets import Network, as_network
from evojax_nets.ops import Members, OpContext, PopulationOp, chain
from evojax_nets.prng import standard_keys, unrolled_keys
from evojax_nets.sharding import population_mesh
from evojax_nets.strategies import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_STD,
    Strategy,
    _available_memory_bytes,
    check_memory,
    make_strategy,
)
from evojax_nets.tasks.base import BoundTask, as_task
from evojax_nets.types import Genome, Population

LOW_MEMORY_NAMES = ("low_memory_open_es", "lowmem_open_es", "lowmemoryopenes")

PopulationInit = Callable[[jax.Array, int], Population]


@struct.dataclass
class EvolutionState:
    """Everything a run carries from one generation to the next (a pytree).

    Attributes:
      strategy_state: the evosax state.
      op_state: the population operators' states.
      key: the PRNG key for the next generation.
      generation: generations completed (int32).
      best_theta: the best phenotype evaluated so far, ``(D,)``.
      best_fitness: its fitness, minimised (``-fitness`` for maximising tasks); ``inf`` until a
        finite fitness is seen.
      evaluations: member evaluations so far (int32).
      nonfinite: evaluations so far whose fitness was NaN or infinite (int32).
      task_state: a stateful task's state (for example RL observation statistics), frozen
        within a generation and updated once per generation; ``()`` for stateless tasks.
    """

    strategy_state: Any
    op_state: Any
    key: jax.Array
    generation: jax.Array
    best_theta: jax.Array
    best_fitness: jax.Array
    evaluations: jax.Array
    nonfinite: jax.Array
    task_state: Any = ()


def canonicalize(tree: Any) -> Any:
    """Give every leaf a concrete, strong dtype.

    evosax's initial states hold Python scalars and weak-typed arrays; after one generation
    they come back strongly typed, and a jitted function would compile a second time.
    """

    def fix(x: Any) -> Any:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        x = jnp.asarray(x)
        return jax.lax.convert_element_type(x, jnp.result_type(x)) if x.weak_type else x

    return jax.tree.map(fix, tree)


def sanitize_fitness(fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace NaN and +-inf (in the minimised sense) by a value worse than every finite one.

    Returns the cleaned fitness and the mask of finite entries. ``-inf`` would otherwise win
    in evosax, and ``NaN`` breaks some fitness shapings.

    Example:
      >>> clean, finite = sanitize_fitness(jnp.array([1.0, jnp.nan, 3.0, -jnp.inf]))
      >>> finite.tolist()
      [True, False, True, False]
      >>> bool(clean[1] > 3.0), bool(clean[3] > 3.0), bool(jnp.isfinite(clean).all())
      (True, True, True)
    """
    finite = jnp.isfinite(fitness)
    any_finite = jnp.any(finite)
    hi = jnp.max(jnp.where(finite, fitness, -jnp.inf))
    lo = jnp.min(jnp.where(finite, fitness, jnp.inf))
    worst = jnp.where(any_finite, hi + (hi - lo) + 1.0, 0.0)
    return jnp.where(finite, fitness, worst), finite


@dataclass(frozen=True)
class History:
    """Per-generation metrics of a run. Rows at chunk ends also carry ``wall_time`` (seconds
    since the run started, compilation included) and the test metrics of the best member
    (``test_<metric>_best``) and of the mean (``test_<metric>_mean``).

    Example:
      >>> h = History(rows=[{"generation": 1, "best_fitness": 2.0},
      ...                   {"generation": 2, "best_fitness": 1.0, "wall_time": 0.5}])
      >>> h.column("best_fitness").tolist(), h.last["generation"]
      ([2.0, 1.0], 2)
      >>> h.last_with("wall_time")["generation"], h.column("wall_time").shape
      (2, (2,))
    """

    rows: list[dict[str, float]] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        """One metric over generations (NaN where a row lacks it)."""
        return np.asarray([r.get(name, np.nan) for r in self.rows], dtype=np.float64)

    @property
    def last(self) -> dict[str, float]:
        return self.rows[-1] if self.rows else {}

    def last_with(self, name: str) -> dict[str, float]:
        """The last row that holds ``name``."""
        for row in reversed(self.rows):
            if name in row:
                return row
        return {}


class Callback:
    """Host-side hooks, called between chunks; subclass and override what you need.

    Example:
      >>> from flax import nnx
      >>> class CountChunks(Callback):
      ...     def __init__(self):
      ...         self.chunks = 0
      ...     def on_chunk(self, evolution, state, rows):
      ...         self.chunks += 1
      >>> fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
      >>> counter = CountChunks()
      >>> _ = evo.run(evo.init(jax.random.key(0)), 3, chunk_size=1, callbacks=[counter])
      >>> counter.chunks
      3
    """

    def on_start(self, evolution: Evolution, state: EvolutionState, num_generations: int) -> None:
        pass

    def on_chunk(self, evolution: Evolution, state: EvolutionState, rows: list[dict]) -> None:
        pass

    def on_end(self, evolution: Evolution, state: EvolutionState, history: History) -> None:
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


def gaussian_population_init(theta0: Genome, std: float) -> PopulationInit:
    """Initial population: the network's own initialisation (member 0) plus Gaussian noise.

    Example:
      >>> theta0 = jnp.arange(3.0)
      >>> population = gaussian_population_init(theta0, std=0.1)(jax.random.key(0), 5)
      >>> population.shape, bool((population[0] == theta0).all())
      ((5, 3), True)
    """

    def init(key: jax.Array, population_size: int) -> Population:
        noise = jax.random.normal(key, (population_size, theta0.shape[0]), theta0.dtype)
        noise = noise.at[0].set(0.0)
        return theta0 + std * noise

    return init


class Evolution:
    """A population of Flax networks evolved by an evosax strategy on a task.

    Args:
      model: an ``nnx.Module``, a ``TrainState``, a linen module (with ``variables``), or a
        :class:`~evojax_nets.nets.Network`.
      task: a task object (for example :class:`~evojax_nets.tasks.Supervised`) or a custom
        ``fitness(key, member) -> scalar`` (then say ``maximize``).
      strategy: an evosax strategy name (see :func:`~evojax_nets.strategies.strategy_names`)
        or instance.
      population_size: members per generation.
      variables: a linen module's variables.
      filter: which parameters evolve (see :mod:`evojax_nets.nets`).
      maximize: objective sense of a custom fitness function.
      std, learning_rate, strategy_kwargs, strategy_params: see
        :func:`~evojax_nets.strategies.make_strategy`.
      ops: a :class:`~evojax_nets.ops.PopulationOp` or a sequence of them (chained).
      population_init: ``init(key, P) -> (P, D)`` initial population for population-based
        strategies; default: the network's initialisation plus ``std`` Gaussian noise. To start
        from the network's own initialiser, ravel fresh initialisations, for example
        ``lambda key, P: jax.vmap(lambda k: ravel(init(k)))(jax.random.split(key, P))``.
      mesh: ``True`` to shard the population over all devices, or a mesh with an axis
        ``"pop"`` (see :func:`~evojax_nets.sharding.population_mesh`); the population size
        must be a multiple of that axis's size.
      max_state_bytes: memory allowed for the strategy state (default: half the machine).
      max_memory_bytes: memory a compiled chunk may use (default: 80% of the machine's); a
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
        std: float = DEFAULT_STD,
        learning_rate: float = DEFAULT_LEARNING_RATE,
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
        if isinstance(strategy, str) and strategy.lower().replace("-", "_") in LOW_MEMORY_NAMES:
            algo = LowMemoryOpenES(
                population_size,
                self.network.num_params,
                std=std,
                optimizer=optax.adam(learning_rate),
                batch_size=eval_batch_size or 32,
            )
            self.strategy = Strategy(algo.name, algo, None, population_based=False)
        else:
            self.strategy = make_strategy(
                strategy,
                population_size,
                self.network.num_params,
                std=std,
                learning_rate=learning_rate,
                strategy_kwargs=strategy_kwargs,
                strategy_params=strategy_params,
            )
        check_memory(self.strategy, max_state_bytes)
        if eval_batch_size is not None and not (
            isinstance(eval_batch_size, int) and eval_batch_size >= 1
        ):
            raise ValueError(
                f"eval_batch_size must be a positive int or None, got {eval_batch_size!r}"
            )
        self.eval_batch_size = eval_batch_size
        self.max_memory_bytes = max_memory_bytes
        self._implicit = isinstance(self.strategy.algorithm, LowMemoryOpenES)
        if self._implicit and ops:
            raise ValueError(
                "ops need the population as a (P, D) array, which low_memory_open_es never "
                "builds; use open_es with eval_batch_size instead"
            )
        if ops is None:
            ops = ()
        self.ops: PopulationOp = chain(*ops) if not isinstance(ops, PopulationOp) else ops
        self.population_size = self.strategy.population_size
        self.std = std
        self.population_init = population_init or gaussian_population_init(self.network.theta0, std)
        if mesh is True:
            mesh = population_mesh()
        self.mesh = None if mesh is None or mesh is False else mesh
        if self.mesh is not None:
            if "pop" not in mesh.axis_names:
                raise ValueError(f"mesh must have an axis named 'pop'; it has {mesh.axis_names}")
            n = mesh.shape["pop"]
            if self.population_size % n:
                raise ValueError(
                    f"population_size={self.population_size} does not divide over the "
                    f"{n} devices of mesh axis 'pop'; use a multiple of {n}"
                )
        self.step = jax.jit(self._generation)
        self._compiled: dict[int, Any] = {}
        self._test = jax.jit(self._test_metrics)
        self._init = jax.jit(self._init_fn)

    # -- pure functions -------------------------------------------------------------------

    def evaluate(self, key: jax.Array, population: Population, task_state: Any = ()) -> jax.Array:
        """Fitness of every row of ``population`` in the task's own sense (vmapped); a
        stateful task needs ``task_state`` (``state.task_state``)."""
        return self._evaluate(key, population, task_state)[0]

    def _evaluate(self, key: jax.Array, population: Population, task_state: Any) -> tuple:
        """Fitness and the task's per-member ``aux`` (stacked over P; ``()`` if stateless)."""
        fit = self.task.fitness_with_aux(task_state)
        if self.mesh is not None:
            population = jax.lax.with_sharding_constraint(
                population, NamedSharding(self.mesh, PartitionSpec("pop"))
            )
        if self.eval_batch_size is None and self.task.population_fitness is not None:
            fitness, aux = self.task.population_fitness(key, population), ()
        elif self.eval_batch_size is None:
            fitness, aux = jax.vmap(fit, in_axes=(None, 0))(key, population)
        else:
            fitness, aux = jax.lax.map(
                lambda theta: fit(key, theta),
                population,
                batch_size=self.eval_batch_size,
            )
        if self.mesh is not None:
            fitness = jax.lax.with_sharding_constraint(
                fitness, NamedSharding(self.mesh, PartitionSpec())
            )
        return fitness, aux

    def _to_min(self, fitness: jax.Array) -> jax.Array:
        return -fitness if self.maximize else fitness

    def _from_min(self, fitness: jax.Array) -> jax.Array:
        return -fitness if self.maximize else fitness

    def _context(self, generation: jax.Array, task_state: Any = ()) -> OpContext:
        fit = self.task.fitness_fn(task_state)
        return OpContext(
            loss=self.task.loss,
            fitness=(lambda k, th: -fit(k, th)) if self.maximize else fit,
            generation=generation,
        )

    def init(self, key: jax.Array) -> EvolutionState:
        """The initial state; population-based strategies evaluate their first population."""
        if not isinstance(key, jax.Array) or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
        ):
            raise TypeError(f"key must be a jax.random.key, got {key!r}")
        return self._init(key)

    def _init_fn(self, key: jax.Array) -> EvolutionState:
        algo, params = self.strategy.algorithm, self.strategy.params
        key, k_init, k_pop, k_eval, k_ops = jax.random.split(key, 5)
        theta0 = self.network.theta0
        evaluations = jnp.int32(0)
        nonfinite = jnp.int32(0)
        best_theta, best_fitness = theta0, jnp.float32(jnp.inf)
        task_state = ()
        if self.task.stateful:  # split only here, so stateless runs keep their key stream
            key, k_task = jax.random.split(key)
            task_state = self.task.initial_state(k_task)
        if self.strategy.population_based:
            population = self.population_init(k_pop, self.population_size)
            raw, aux = self._evaluate(k_eval, population, task_state)
            raw = self._to_min(raw)
            task_state = self.task.next_state(task_state, aux)
            clean, finite = sanitize_fitness(raw)
            sstate = algo.init(k_init, population, clean, params)
            evaluations += self.population_size
            nonfinite += jnp.sum(~finite).astype(jnp.int32)
            masked = jnp.where(finite, clean, jnp.inf)
            i = jnp.argmin(masked)
            best_theta, best_fitness = population[i], masked[i]
        elif self.strategy.num_means > 1:
            # Several distributions (SV strategies): spread their means so they can repel.
            noise = jax.random.normal(k_pop, (self.strategy.num_means, theta0.shape[0]))
            means = theta0 + self.std * noise.at[0].set(0.0)
            sstate = algo.init(k_init, means, params)
        else:
            sstate = algo.init(k_init, theta0, params)
        op_state = self.ops.init(
            k_ops, jnp.broadcast_to(theta0, (self.population_size, theta0.shape[0]))
        )
        return canonicalize(
            EvolutionState(
                strategy_state=sstate,
                op_state=op_state,
                key=key,
                generation=jnp.int32(0),
                best_theta=best_theta,
                best_fitness=jnp.float32(best_fitness),
                evaluations=evaluations,
                nonfinite=nonfinite,
                task_state=task_state,
            )
        )

    def _generation(self, state: EvolutionState) -> tuple[EvolutionState, dict[str, jax.Array]]:
        # Within a generation every threefry key (ours, the strategy's, the task's) draws its
        # bits through straight-line code that XLA fuses with the draw: the same bits, several
        # times faster on CPU (see evojax_nets.prng). The state leaves with ordinary keys.
        state = unrolled_keys(state)
        algo, params = self.strategy.algorithm, self.strategy.params
        key, k_ask, k_ops, k_eval, k_tell = jax.random.split(state.key, 5)
        if self._implicit:
            # The population is never materialised: members are regenerated from their keys.
            sstate = algo.ask(k_ask, state.strategy_state)
            fit = self.task.fitness_with_aux(state.task_state)
            raw, aux = algo.map_members(lambda th: fit(k_eval, th), sstate)
            raw = self._to_min(raw)
            fitness, finite = sanitize_fitness(raw)
            op_state = state.op_state
            member = lambda i: algo.member(sstate, i)
            sstate = algo.tell(fitness, sstate)
        else:
            # The hooks' keys derive from k_ops, so runs without hooks keep their key stream.
            k_before, k_after = jax.random.split(jax.random.fold_in(k_ops, 1))
            ctx = self._context(state.generation, state.task_state)
            sstate, op_state = self.ops.before_ask(
                k_before, state.strategy_state, state.op_state, ctx
            )
            population, sstate = algo.ask(k_ask, sstate, params)
            members = Members(genome=population, phenotype=population)
            members, op_state = self.ops.apply(k_ops, members, op_state, ctx)
            raw, aux = self._evaluate(k_eval, members.phenotype, state.task_state)
            raw = self._to_min(raw)
            fitness, finite = sanitize_fitness(raw)
            member = lambda i: members.phenotype[i]
            sstate, _ = algo.tell(k_tell, members.genome, fitness, sstate, params)
            sstate, op_state = self.ops.after_tell(k_after, sstate, op_state, ctx)

        masked = jnp.where(finite, fitness, jnp.inf)
        i = jnp.argmin(masked)
        improved = masked[i] < state.best_fitness
        best_theta = jnp.where(improved, member(i), state.best_theta)
        best_fitness = jnp.where(improved, masked[i], state.best_fitness)
        n_finite = jnp.sum(finite)
        mean_min = jnp.sum(jnp.where(finite, raw, 0.0)) / jnp.maximum(n_finite, 1)
        nonfinite = (finite.size - n_finite).astype(jnp.int32)
        new_state = EvolutionState(
            strategy_state=sstate,
            op_state=op_state,
            key=key,
            generation=state.generation + 1,
            best_theta=best_theta,
            best_fitness=best_fitness,
            evaluations=state.evaluations + self.population_size,
            nonfinite=state.nonfinite + nonfinite,
            task_state=self.task.next_state(state.task_state, aux),
        )
        metrics = {
            "best_fitness": self._from_min(masked[i]),
            "mean_fitness": jnp.where(n_finite > 0, self._from_min(mean_min), jnp.nan),
            "best_so_far": self._from_min(best_fitness),
            "num_nonfinite": nonfinite,
        }
        return standard_keys(canonicalize(new_state)), metrics

    def mean_theta(self, state: EvolutionState) -> Genome:
        """The search distribution's mean (distribution-based strategies; the average of the
        means for several), or the population centroid (population-based)."""
        s = state.strategy_state
        if self.strategy.population_based:
            return jnp.mean(s.population, axis=0)
        mean = s.mean
        return mean if mean.ndim == 1 else jnp.mean(mean, axis=0)

    def solution_theta(self, state: EvolutionState) -> Genome:
        """What a run hands back: the mean for distribution-based strategies (the ES
        estimate, not a lucky sample), the best member so far for population-based ones."""
        return state.best_theta if self.strategy.population_based else self.mean_theta(state)

    def _test_metrics(self, state: EvolutionState) -> dict[str, jax.Array]:
        test_metrics = self.task.test_metrics_fn(state.task_state)
        if test_metrics is None:
            return {}
        out = {}
        for which, theta in (("best", state.best_theta), ("mean", self.mean_theta(state))):
            for name, value in test_metrics(theta).items():
                out[f"test_{name}_{which}"] = value
        return out

    def test_metrics(self, state: EvolutionState) -> dict[str, float]:
        """Test metrics of the best member and of the mean, as Python floats."""
        return {k: float(v) for k, v in jax.device_get(self._test(state)).items()}

    # -- chunked run ------------------------------------------------------------------------

    def _chunk_fn(self, chunk_size: int) -> Callable:
        def chunk(state: EvolutionState, num_active: jax.Array):
            blank = jax.tree.map(
                lambda s: (
                    jnp.full(s.shape, jnp.nan, s.dtype)
                    if jnp.issubdtype(s.dtype, jnp.floating)
                    else jnp.zeros(s.shape, s.dtype)
                ),
                jax.eval_shape(self._generation, state)[1],
            )

            def body(s: EvolutionState, i: jax.Array):
                return jax.lax.cond(i < num_active, self._generation, lambda s: (s, blank), s)

            return jax.lax.scan(body, state, jnp.arange(chunk_size))

        return chunk

    def memory_estimate(self, chunk_size: int = 1) -> dict[str, int]:
        """Bytes a compiled chunk needs (XLA's memory analysis), from shapes alone: nothing
        is initialised or allocated. Keys: ``argument``, ``output``, ``temp``, ``total``."""
        abstract = jax.eval_shape(self._init_fn, jax.random.key(0))
        lowered = jax.jit(self._chunk_fn(chunk_size)).lower(abstract, jnp.int32(chunk_size))
        return _memory_of(lowered.compile())

    def _check_fits(self, compiled: Any) -> None:
        need = _memory_of(compiled)
        if need["total"] < 0:  # the backend gave no analysis
            return
        limit = self.max_memory_bytes
        if limit is None:
            limit = int(0.8 * _available_memory_bytes())
        if need["total"] > limit:
            p, d = self.population_size, self.network.num_params
            hints = [f"eval_batch_size={max(1, p // 8)} (evaluate members in batches)"]
            if not self.strategy.population_based:
                hints.append("strategy='low_memory_open_es' (never holds the P x D population)")
            hints.append("a diagonal strategy instead of a full-covariance one")
            raise MemoryError(
                f"this run needs about {need['total'] / 2**30:.2f} GiB per chunk "
                f"(population {p:,} x {d:,} parameters; temporaries "
                f"{need['temp'] / 2**30:.2f} GiB), more than the {limit / 2**30:.2f} GiB "
                f"allowed (max_memory_bytes). Try: " + "; or ".join(hints)
            )

    def compile(self, state: EvolutionState, chunk_size: int) -> tuple[Any, float]:
        """Compile (once per chunk size) the scanned chunk; returns it and the seconds spent."""
        if chunk_size in self._compiled:
            return self._compiled[chunk_size], 0.0
        t0 = time.perf_counter()
        compiled = jax.jit(self._chunk_fn(chunk_size)).lower(state, jnp.int32(chunk_size)).compile()
        self._check_fits(compiled)
        self._compiled[chunk_size] = compiled
        return compiled, time.perf_counter() - t0

    def run(
        self,
        state: EvolutionState,
        num_generations: int,
        *,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> tuple[EvolutionState, History]:
        """Run ``num_generations`` generations in scanned chunks of ``chunk_size``.

        After each chunk the test metrics of the best member and of the mean are computed and
        the callbacks are called with that chunk's rows. Returns the final state and the
        :class:`History`.
        """
        if not isinstance(num_generations, int | np.integer) or num_generations < 1:
            raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
        if chunk_size is None:
            chunk_size = min(int(num_generations), 50)
        if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        chunk_size = int(chunk_size)
        callbacks = list(callbacks)
        t_start = time.perf_counter()
        for cb in callbacks:
            cb.on_start(self, state, int(num_generations))
        compiled, compile_s = self.compile(state, chunk_size)
        history = History()
        done = 0
        while done < num_generations:
            n = min(chunk_size, int(num_generations) - done)
            state, metrics = compiled(state, jnp.int32(n))
            metrics = jax.device_get(metrics)
            test = self.test_metrics(state)
            first_gen = int(state.generation) - n
            evals = int(state.evaluations)
            wall = time.perf_counter() - t_start
            rows = []
            for j in range(n):
                row = {"generation": first_gen + j + 1}
                row.update({k: np.asarray(v)[j].item() for k, v in metrics.items()})
                row["evaluations"] = evals - (n - 1 - j) * self.population_size
                rows.append(row)
            rows[-1].update(test)
            rows[-1]["wall_time"] = wall
            rows[-1]["compile_time"] = compile_s
            history.rows.extend(rows)
            done += n
            for cb in callbacks:
                cb.on_chunk(self, state, rows)
        for cb in callbacks:
            cb.on_end(self, state, history)
        return state, history

    # -- results in the user's structure ----------------------------------------------------

    def export(self, theta: Genome) -> Any:
        """``theta`` in the user's own structure (NNX module, variables dict or TrainState)."""
        return self.network.export(theta)

    def best(self, state: EvolutionState) -> Any:
        """The best member evaluated so far, in the user's structure."""
        return self.network.export(state.best_theta)

    def solution(self, state: EvolutionState) -> Any:
        """The run's answer (see :meth:`solution_theta`), in the user's structure."""
        return self.network.export(self.solution_theta(state))


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
