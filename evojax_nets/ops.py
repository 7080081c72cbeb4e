"""Population operators: values, not flags.

A :class:`PopulationOp` is an ``(init, apply)`` pair in the manner of optax's
``GradientTransformation``. The engine calls ``apply`` once per generation between the
strategy's ``ask`` and the evaluation:

``apply(key, members, op_state, ctx) -> (members, op_state)``

``members`` is a :class:`Members` value holding two ``(P, D)`` arrays: ``genome`` (what is
handed back to the strategy's ``tell``) and ``phenotype`` (what is evaluated). They start as
the same array. An operator that writes its result into both is Lamarckian; one that changes
only the phenotype is Baldwinian. :func:`chain` composes operators left to right.

Two optional hooks let an operator act on the strategy's own state, for gradients that must go
where a distribution-based strategy expects them rather than into its samples:
``before_ask(key, strategy_state, op_state, ctx)`` runs before ``ask`` and
``after_tell(key, strategy_state, op_state, ctx)`` after ``tell``; both return
``(strategy_state, op_state)`` and default to the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from evojax_nets.types import Population


class Members(NamedTuple):
    """What the strategy proposed (``genome``) and what will be evaluated (``phenotype``).

    Example:
      >>> import jax.numpy as jnp
      >>> population = jnp.zeros((4, 3))
      >>> members = Members(genome=population, phenotype=population)
      >>> members = members._replace(phenotype=members.phenotype + 1.0)  # Baldwinian change
      >>> members.genome.shape, float(members.genome.sum()), float(members.phenotype.sum())
      ((4, 3), 0.0, 12.0)
    """

    genome: Population
    phenotype: Population


@dataclass(frozen=True)
class OpContext:
    """What an operator may use: the per-member objective, minimised.

    Attributes:
      loss: ``loss(key, theta) -> scalar`` for one genome; differentiable when the task is
        (supervised tasks give their minibatch loss), else ``None``.
      fitness: ``fitness(key, theta) -> scalar`` for one genome, minimised.
      generation: the generation counter (a traced int32).
    """

    loss: Callable[[jax.Array, jax.Array], jax.Array] | None
    fitness: Callable[[jax.Array, jax.Array], jax.Array]
    generation: jax.Array


InitFn = Callable[[jax.Array, Population], Any]
ApplyFn = Callable[[jax.Array, Members, Any, OpContext], tuple[Members, Any]]
HookFn = Callable[[jax.Array, Any, Any, OpContext], tuple[Any, Any]]


def no_hook(key: jax.Array, strategy_state: Any, op_state: Any, ctx: OpContext) -> tuple[Any, Any]:
    """The default ``before_ask`` / ``after_tell`` hook: changes nothing."""
    return strategy_state, op_state


@dataclass(frozen=True)
class PopulationOp:
    """An operator on the population: ``init(key, population) -> state`` and
    ``apply(key, members, state, ctx) -> (members, state)``; optionally hooks on the
    strategy state, ``before_ask`` and ``after_tell`` (see the module docstring).

    Example:
      A Lamarckian operator that clips every member to ``[-1, 1]`` and counts its calls:

      >>> import jax.numpy as jnp
      >>> clip = PopulationOp(
      ...     init=lambda key, population: jnp.int32(0),
      ...     apply=lambda key, members, calls, ctx: (
      ...         Members(*(jnp.clip(a, -1.0, 1.0) for a in members)), calls + 1
      ...     ),
      ... )
      >>> ctx = OpContext(loss=None, fitness=lambda k, th: th.sum(), generation=jnp.int32(0))
      >>> population = jnp.full((4, 3), 5.0)
      >>> members = Members(genome=population, phenotype=population)
      >>> calls = clip.init(jax.random.key(0), population)
      >>> members, calls = clip.apply(jax.random.key(1), members, calls, ctx)
      >>> float(members.genome.max()), float(members.phenotype.max()), int(calls)
      (1.0, 1.0, 1)

      Pass it to the engine as ``Evolution(..., ops=clip)`` (or a list of operators).
    """

    init: InitFn
    apply: ApplyFn
    before_ask: HookFn = no_hook
    after_tell: HookFn = no_hook


def identity() -> PopulationOp:
    """The operator that changes nothing (the engine's default).

    Example:
      >>> import jax.numpy as jnp
      >>> op = identity()
      >>> population = jnp.ones((4, 3))
      >>> ctx = OpContext(loss=None, fitness=lambda k, th: th.sum(), generation=jnp.int32(0))
      >>> out, state = op.apply(jax.random.key(0), Members(population, population), (), ctx)
      >>> out.phenotype is population, op.init(jax.random.key(0), population)
      (True, ())
    """
    return PopulationOp(
        init=lambda key, population: (),
        apply=lambda key, members, state, ctx: (members, state),
    )


def chain(*ops: PopulationOp) -> PopulationOp:
    """Apply ``ops`` in order; each gets its own key and keeps its own state.

    Example:
      >>> import jax.numpy as jnp
      >>> def add(c):  # a Baldwinian operator: only the phenotype changes
      ...     return PopulationOp(
      ...         init=lambda key, population: (),
      ...         apply=lambda key, m, state, ctx: (m._replace(phenotype=m.phenotype + c), state),
      ...     )
      >>> op = chain(add(1.0), add(10.0))
      >>> population = jnp.zeros((4, 3))
      >>> ctx = OpContext(loss=None, fitness=lambda k, th: th.sum(), generation=jnp.int32(0))
      >>> state = op.init(jax.random.key(0), population)
      >>> out, state = op.apply(jax.random.key(1), Members(population, population), state, ctx)
      >>> float(out.phenotype[0, 0]), float(out.genome[0, 0]), state
      (11.0, 0.0, ((), ()))
    """
    if not all(isinstance(op, PopulationOp) for op in ops):
        bad = [type(op).__name__ for op in ops if not isinstance(op, PopulationOp)]
        raise TypeError(f"chain takes PopulationOp values; got {bad}")
    if not ops:
        return identity()
    if len(ops) == 1:
        return ops[0]

    def init(key: jax.Array, population: Population) -> tuple:
        keys = jax.random.split(key, len(ops))
        return tuple(op.init(k, population) for op, k in zip(ops, keys, strict=True))

    def apply(key: jax.Array, members: Members, state: tuple, ctx: OpContext):
        keys = jax.random.split(key, len(ops))
        new_state = []
        for op, k, s in zip(ops, keys, state, strict=True):
            members, s = op.apply(k, members, s, ctx)
            new_state.append(s)
        return members, tuple(new_state)

    def hook(name: str) -> HookFn:
        if all(getattr(op, name) is no_hook for op in ops):
            return no_hook

        def run(key: jax.Array, strategy_state: Any, state: tuple, ctx: OpContext):
            keys = jax.random.split(key, len(ops))
            new_state = []
            for op, k, s in zip(ops, keys, state, strict=True):
                strategy_state, s = getattr(op, name)(k, strategy_state, s, ctx)
                new_state.append(s)
            return strategy_state, tuple(new_state)

        return run

    return PopulationOp(
        init=init, apply=apply, before_ask=hook("before_ask"), after_tell=hook("after_tell")
    )
