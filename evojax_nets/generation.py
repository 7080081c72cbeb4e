"""One generation of evolution as a pure function of ``(state, params)``.

::

    key -> (key, k_ask, k_ops, k_eval, k_tell)
    ops.before_ask(strategy_state)                                     [identity by default]
    strategy.ask(k_ask, state, params)   -> population (P, D)          [or a lazy population]
    ops.apply(k_ops, Members(pop, pop))  -> genome, phenotype          [identity by default]
    vmap(task.fitness)(k_eval, phenotype) -> fitness (P,)              [task's own sense]
    minimise: negate once if the task maximises; non-finite -> worse than every finite value
    strategy.tell(k_tell, genome, fitness, state, params)
    ops.after_tell(strategy_state)                                     [identity by default]

:class:`EvolutionProgram` holds the static configuration (network, task, strategy, operators,
mesh, evaluation batch) and builds the :class:`~evojax_nets.program.Program`; every number
one may sweep lives in :class:`EvolutionParams`. :class:`~evojax_nets.engine.Evolution` is
the friendly layer over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_nets import prng
from evojax_nets.lowrank import LowRankPopulation, evaluate_lowrank
from evojax_nets.nets import Network
from evojax_nets.ops import Members, OpContext, PopulationOp
from evojax_nets.program import Program, canonicalize, sanitize_fitness
from evojax_nets.strategies import LazyPopulation, Strategy, StrategyParams
from evojax_nets.tasks.base import BoundTask
from evojax_nets.types import Genome, Population

PopulationInit = Callable[[jax.Array, int], Population]


@struct.dataclass
class EvolutionState:
    """Everything a run carries from one generation to the next (a pytree).

    Attributes:
      strategy_state: the strategy's state.
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


@struct.dataclass
class EvolutionParams:
    """What one may sweep or schedule in an evolution run (arrays; never recompiles).

    Attributes:
      strategy: the strategy's :class:`~evojax_nets.strategies.StrategyParams` (``std``,
        ``learning_rate``, and the evosax algorithm's own params as ``inner``).
    """

    strategy: StrategyParams


def gaussian_population_init(theta0: Genome, std: float | jax.Array) -> PopulationInit:
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
        return (theta0 + jnp.asarray(std, theta0.dtype) * noise).astype(theta0.dtype)

    return init


def keep_types(new: Any, old: Any) -> Any:
    """``new`` with the dtypes of ``old`` (a step must hand back the types it received, or a
    scanned loop breaks; under ``jax_enable_x64`` strategies otherwise drift to float64)."""

    def fix(a: Any, b: Any) -> Any:
        if isinstance(b, jax.Array) and jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            return a
        a = jnp.asarray(a)
        dtype = jnp.result_type(b)
        return a if a.dtype == dtype and not a.weak_type else a.astype(dtype)

    return jax.tree.map(fix, new, old)


@dataclass(frozen=True, eq=False)
class EvolutionProgram:
    """The static configuration of an evolution run, and its pure functions."""

    network: Network
    task: BoundTask
    strategy: Strategy
    ops: PopulationOp
    population_init: PopulationInit | None = None
    mesh: Mesh | None = None
    eval_batch_size: int | None = None

    @property
    def population_size(self) -> int:
        return self.strategy.population_size

    @property
    def maximize(self) -> bool:
        return bool(self.task.maximize)

    def _to_min(self, fitness: jax.Array) -> jax.Array:
        return -fitness if self.maximize else fitness

    def program(self) -> Program:
        return Program(
            init=self.init,
            step=self.step,
            counter=lambda s: s.generation,
            counter_name="generation",
            report=self.test_metrics if self.task.test_metrics is not None else None,
        )

    def check_fitness(self) -> None:
        """Refuse, from shapes alone, a fitness that does not return one real number."""
        theta = jax.ShapeDtypeStruct(self.network.theta0.shape, self.network.theta0.dtype)
        key = jax.eval_shape(lambda: jax.random.key(0))
        task_state = jax.eval_shape(self.task.initial_state, key) if self.task.stateful else ()
        batch = self.task.feed.spec() if self.task.fed else None
        out = jax.eval_shape(
            lambda k, th, ts, b: self.task.fitness_with_aux(ts, b)(k, th),
            key,
            theta,
            task_state,
            batch,
        )[0]
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise TypeError(
                f"fitness must return a scalar array; it returned {type(out).__name__} "
                f"{out!r}: return one number per member, for example jnp.mean(loss)"
            )
        if out.shape != ():
            raise ValueError(
                f"fitness must return a scalar; it returned shape {out.shape}: reduce it to "
                "one number per member (for example jnp.mean or jnp.sum)"
            )
        if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.integer)):
            raise TypeError(
                f"fitness must return a real number; it returned dtype {out.dtype}: cast it, "
                "for example jnp.float32(passed)"
            )

    # -- evaluation: the only place members are vmapped and sharded ----------------------------

    def evaluate(
        self, key: jax.Array, population: Any, task_state: Any = (), batch: Any = None
    ) -> tuple:
        """Fitness (task's own sense) and the task's per-member ``aux`` of every member; a fed
        task evaluates every member on the generation's ``batch``."""
        fit = self.task.fitness_with_aux(task_state, batch)
        if isinstance(population, LowRankPopulation):  # the low-rank forward (lowrank/)
            return evaluate_lowrank(
                population, self.task, key, fit, self.mesh, self.eval_batch_size
            )
        if isinstance(population, LazyPopulation):
            return population.map(lambda theta: fit(key, theta))
        if self.mesh is not None:
            population = jax.lax.with_sharding_constraint(
                population, NamedSharding(self.mesh, PartitionSpec("pop"))
            )
        if (
            self.eval_batch_size is None
            and self.task.population_fitness is not None
            and not self.task.fed
        ):
            fitness, aux = self.task.population_fitness(key, population), ()
        elif self.eval_batch_size is None:
            fitness, aux = jax.vmap(fit, in_axes=(None, 0))(key, population)
        else:
            fitness, aux = jax.lax.map(
                lambda theta: fit(key, theta), population, batch_size=self.eval_batch_size
            )
        if self.mesh is not None:
            fitness = jax.lax.with_sharding_constraint(
                fitness, NamedSharding(self.mesh, PartitionSpec())
            )
        return fitness, aux

    def context(self, generation: jax.Array, task_state: Any = ()) -> OpContext:
        fit = self.task.fitness_fn(task_state)
        return OpContext(
            loss=self.task.loss,
            fitness=(lambda k, th: -fit(k, th)) if self.maximize else fit,
            generation=generation,
        )

    # -- init and step -------------------------------------------------------------------------

    def init(self, key: jax.Array, params: EvolutionParams) -> EvolutionState:
        """The initial state; population-based strategies evaluate their first population."""
        sp = params.strategy
        key, k_init, k_pop, k_eval, k_ops = jax.random.split(key, 5)
        theta0 = self.network.theta0
        evaluations = jnp.int32(0)
        nonfinite = jnp.int32(0)
        best_theta, best_fitness = theta0, jnp.float32(jnp.inf)
        task_state = ()
        if self.task.stateful:  # split only here, so stateless runs keep their key stream
            key, k_task = jax.random.split(key)
            task_state = self.task.initial_state(k_task)
        p = self.population_size
        if self.strategy.population_based:
            init_pop = self.population_init or gaussian_population_init(theta0, sp.std)
            population = init_pop(k_pop, p).astype(theta0.dtype)
            raw, aux = self.evaluate(k_eval, population, task_state)
            task_state = self.task.next_state(task_state, aux)
            clean, finite = sanitize_fitness(self._to_min(raw))
            sstate = self.strategy.init(k_init, population, clean, sp)
            evaluations += p
            nonfinite += jnp.sum(~finite).astype(jnp.int32)
            masked = jnp.where(finite, clean, jnp.inf)
            i = jnp.argmin(masked)
            best_theta, best_fitness = population[i], masked[i]
        elif self.strategy.num_means > 1:
            # Several distributions (SV strategies): spread their means so they can repel.
            noise = jax.random.normal(k_pop, (self.strategy.num_means, theta0.shape[0]))
            means = theta0 + sp.std * noise.at[0].set(0.0)
            sstate = self.strategy.init(k_init, means.astype(theta0.dtype), None, sp)
        else:
            sstate = self.strategy.init(k_init, theta0, None, sp)
        op_state = self.ops.init(k_ops, jnp.broadcast_to(theta0, (p, theta0.shape[0])))
        return canonicalize(
            EvolutionState(
                strategy_state=sstate,
                op_state=op_state,
                key=key,
                generation=jnp.int32(0),
                best_theta=best_theta.astype(theta0.dtype),
                best_fitness=jnp.float32(best_fitness),
                evaluations=evaluations,
                nonfinite=nonfinite,
                task_state=task_state,
            )
        )

    def step(
        self, state: EvolutionState, params: EvolutionParams, inputs: Any = None
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """One generation (see the module docstring)."""
        sp = params.strategy
        # On CPU with a large draw, every threefry key draws its bits through straight-line
        # code that XLA fuses with the draw (see evojax_nets.prng): the same bits, faster.
        unroll = prng.should_unroll(self.population_size * self.network.num_params)
        old = state
        if unroll:
            state = prng.unrolled_keys(state)
        dtype = self.network.theta0.dtype
        key, k_ask, k_ops, k_eval, k_tell = jax.random.split(state.key, 5)
        # The hooks' keys derive from k_ops, so runs without hooks keep their key stream.
        k_before, k_after = jax.random.split(jax.random.fold_in(k_ops, 1))
        ctx = self.context(state.generation, state.task_state)
        sstate, op_state = self.ops.before_ask(k_before, state.strategy_state, state.op_state, ctx)
        population, sstate = self.strategy.ask(k_ask, sstate, sp)
        if isinstance(population, (LazyPopulation, LowRankPopulation)):
            genome = phenotype = population
            member = population.member
        else:
            population = population.astype(dtype)
            members = Members(genome=population, phenotype=population)
            members, op_state = self.ops.apply(k_ops, members, op_state, ctx)
            genome, phenotype = members.genome, members.phenotype

            def member(i: jax.Array) -> jax.Array:
                return phenotype[i]

        raw, aux = self.evaluate(k_eval, phenotype, state.task_state, inputs)
        raw = self._to_min(raw)
        fitness, finite = sanitize_fitness(raw)
        sstate, _ = self.strategy.tell(k_tell, genome, fitness, sstate, sp)
        sstate, op_state = self.ops.after_tell(k_after, sstate, op_state, ctx)

        masked = jnp.where(finite, fitness, jnp.inf)
        i = jnp.argmin(masked)
        improved = masked[i] < state.best_fitness
        best_theta = jnp.where(improved, member(i).astype(dtype), state.best_theta)
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
        sign = -1.0 if self.maximize else 1.0
        metrics = {
            "best_fitness": sign * masked[i],
            "mean_fitness": jnp.where(n_finite > 0, sign * mean_min, jnp.nan),
            "best_so_far": sign * best_fitness,
            "num_nonfinite": nonfinite,
            "evaluations": new_state.evaluations,
        }
        if unroll:
            new_state = prng.standard_keys(new_state)
        return keep_types(canonicalize(new_state), old), metrics

    # -- what a run hands back ---------------------------------------------------------------

    def mean_theta(self, state: EvolutionState) -> Genome:
        """The search distribution's mean (distribution-based strategies; the average of the
        means for several), or the population centroid (population-based)."""
        s = state.strategy_state
        if self.strategy.population_based:
            return jnp.mean(s.population, axis=0)
        mean = s.mean
        return mean if mean.ndim == 1 else jnp.mean(mean, axis=0)

    def solution_theta(self, state: EvolutionState) -> Genome:
        """The mean for distribution-based strategies (the ES estimate, not a lucky sample),
        the best member so far for population-based ones."""
        return state.best_theta if self.strategy.population_based else self.mean_theta(state)

    def test_metrics(self, state: EvolutionState, params: Any = None) -> dict[str, jax.Array]:
        test_metrics = self.task.test_metrics_fn(state.task_state)
        if test_metrics is None:
            return {}
        out = {}
        for which, theta in (("best", state.best_theta), ("mean", self.mean_theta(state))):
            for name, value in test_metrics(theta.astype(self.network.theta0.dtype)).items():
                out[f"test_{name}_{which}"] = value
        return out
