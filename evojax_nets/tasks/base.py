"""The task interface the engine evaluates.

A task, once bound to a :class:`~evojax_nets.nets.Network`, is a :class:`BoundTask`: functions
of one genome ``theta``. The engine ``vmap``s them over the population in one place. The
evaluation key is shared by all members of a generation (common random numbers: every member
sees the same minibatch or episode seeds), which lowers the variance of fitness differences
and lets XLA sample the minibatch once.

A custom task is any ``fitness(key, member) -> scalar`` written against the user's own model
(``member`` is the model in the user's structure, see ``Network.member``), wrapped by
:func:`as_task` with its objective sense stated once: ``maximize=True`` for returns or
accuracy. The engine minimises internally; nobody negates by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import jax

from evojax_nets.nets import Network


@dataclass(frozen=True, eq=False)
class BoundTask:
    """A task's functions of one genome.

    Attributes:
      fitness: ``fitness(key, theta) -> scalar`` in the task's own sense.
      maximize: the sense of ``fitness``.
      loss: a differentiable minimised objective ``loss(key, theta) -> scalar`` (optional).
      test_metrics: ``test_metrics(theta) -> {name: scalar}`` on held-out data (optional).
      metric: the name of the headline test metric (a key of ``test_metrics``).
      metric_maximize: whether larger values of ``metric`` are better.
      init_state: makes the task *stateful* (optional): ``init_state(key) -> task_state``, a
        pytree the engine carries in ``EvolutionState.task_state`` (for example running
        observation statistics). A stateful task's functions take the state as a last
        argument: ``fitness(key, theta, task_state) -> (fitness, aux)`` and
        ``test_metrics(theta, task_state)``. The state is frozen within a generation.
      update_state: ``update_state(task_state, aux) -> task_state``, called once per
        generation with ``aux`` stacked over the population (leading axis ``P``).
      population_fitness: ``population_fitness(key, thetas) -> (P,)`` fitness of a whole
        ``(P, D)`` population at once, equal to ``vmap(fitness)`` up to float32 rounding
        (optional, stateless tasks only); the engine uses it when it is faster, for example
        when the network has its own population forward.
      feed: makes the task *fed* (optional): an object with ``iterator()`` (a host-side
        iterator yielding one batch, a pytree of arrays, per generation, with
        ``get_state()``/``set_state(state)`` so a checkpoint can save its position) and
        ``spec()`` (the batch's ``jax.ShapeDtypeStruct`` tree). The runner pulls a chunk's
        batches between chunks and the fitness takes its generation's batch:
        ``fitness(key, theta, batch)``. Data larger than memory streams from disk this way.

    The engine calls a task through :meth:`fitness_with_aux`, :meth:`fitness_fn`,
    :meth:`test_metrics_fn` and :meth:`next_state`, which give stateless tasks the same shape
    (``aux`` and the state are ``()``).
    """

    fitness: Callable[..., Any]
    maximize: bool
    loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    test_metrics: Callable[..., dict[str, jax.Array]] | None = None
    metric: str | None = None
    metric_maximize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    init_state: Callable[[jax.Array], Any] | None = None
    update_state: Callable[[Any, Any], Any] | None = None
    population_fitness: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    feed: Any = None

    @property
    def fed(self) -> bool:
        """Whether the fitness takes a host-fed batch (see ``feed``)."""
        return self.feed is not None

    @property
    def stateful(self) -> bool:
        """Whether the task carries state across generations (see ``init_state``)."""
        return self.init_state is not None

    def initial_state(self, key: jax.Array) -> Any:
        """The task state a run starts from; ``()`` for a stateless task."""
        return self.init_state(key) if self.init_state is not None else ()

    def fitness_with_aux(
        self, task_state: Any = (), batch: Any = None
    ) -> Callable[[jax.Array, jax.Array], Any]:
        """``f(key, theta) -> (fitness, aux)`` with the task state (and a fed task's batch)
        bound; ``aux`` is ``()`` for a stateless task."""
        if self.feed is not None:
            fit = self.fitness
            return lambda key, theta: (fit(key, theta, batch), ())
        if self.init_state is None:
            fit = self.fitness
            return lambda key, theta: (fit(key, theta), ())
        return lambda key, theta: self.fitness(key, theta, task_state)

    def fitness_fn(self, task_state: Any = ()) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """``f(key, theta) -> fitness`` with the task state bound."""
        if self.init_state is None:
            return self.fitness
        return lambda key, theta: self.fitness(key, theta, task_state)[0]

    def test_metrics_fn(self, task_state: Any = ()) -> Callable[[jax.Array], dict] | None:
        """``test_metrics(theta)`` with the task state bound, or ``None``."""
        if self.test_metrics is None or self.init_state is None:
            return self.test_metrics
        return lambda theta: self.test_metrics(theta, task_state)

    def next_state(self, task_state: Any, aux: Any) -> Any:
        """The task state after a generation whose members returned ``aux`` (stacked)."""
        if self.update_state is None:
            return task_state
        return self.update_state(task_state, aux)


@runtime_checkable
class Task(Protocol):
    """Anything with ``bind(network) -> BoundTask``."""

    def bind(self, network: Network) -> BoundTask: ...


@dataclass(frozen=True, eq=False)
class FunctionTask:
    """A custom task: ``fitness(key, member) -> scalar`` against the user's own model.

    Args:
      fitness: the per-member objective; ``member`` is the user's structure (an NNX module, a
        linen variables dict or a TrainState).
      maximize: ``True`` when larger fitness is better (returns, accuracy).
      test_metrics: optional ``test_metrics(member) -> {name: scalar}``.
      metric: the headline key of ``test_metrics``.
      metric_maximize: whether larger values of ``metric`` are better.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> net = from_nnx(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
      >>> task = FunctionTask(lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2), maximize=False)
      >>> bound = task.bind(net)  # what the engine evaluates: functions of the flat genome
      >>> bound.maximize, float(bound.fitness(jax.random.key(0), jnp.zeros(net.num_params)))
      (False, 0.0)
    """

    fitness: Callable[[jax.Array, Any], jax.Array]
    maximize: bool = False
    test_metrics: Callable[[Any], dict[str, jax.Array]] | None = None
    metric: str | None = None
    metric_maximize: bool = True

    def bind(self, network: Network) -> BoundTask:
        fit, tm = self.fitness, self.test_metrics
        return BoundTask(
            fitness=lambda key, theta: fit(key, network.member(theta)),
            maximize=self.maximize,
            test_metrics=None if tm is None else (lambda theta: tm(network.member(theta))),
            metric=self.metric,
            metric_maximize=self.metric_maximize,
        )


def as_task(task: Any, maximize: bool | None = None) -> Task:
    """A :class:`Task` from a task object or a plain ``fitness(key, member)`` callable.

    ``maximize`` is required for a plain callable (there is no safe default for an unknown
    objective) and, for a task object, must agree with the task's own sense if given.

    Example:
      >>> task = as_task(lambda key, member: 0.0, maximize=True)
      >>> type(task).__name__, task.maximize, as_task(task) is task
      ('FunctionTask', True, True)
      >>> try:
      ...     as_task(lambda key, member: 0.0)
      ... except ValueError:
      ...     print("a plain function needs maximize=True or maximize=False")
      a plain function needs maximize=True or maximize=False
    """
    if isinstance(task, Task):
        own = getattr(task, "maximize", None)
        if maximize is not None and own is not None and bool(own) != bool(maximize):
            raise ValueError(f"maximize={maximize} contradicts the task, which says maximize={own}")
        return task
    if callable(task):
        if maximize is None:
            raise ValueError(
                "a fitness function needs its objective sense: pass maximize=True (returns, "
                "accuracy) or maximize=False (losses)"
            )
        return FunctionTask(task, maximize=bool(maximize))
    raise TypeError(
        f"task must be a Task (with bind(network)) or a fitness(key, member) callable; got "
        f"{type(task).__name__}"
    )
