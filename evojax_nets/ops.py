"""Population operators: values, not flags.

A :class:`PopulationOp` is an ``(init, apply)`` pair in the manner of optax's
``GradientTransformation``. The engine calls ``apply`` once per generation between the
strategy's ``ask`` and the evaluation:

``apply(key, members, op_state, ctx) -> (members, op_state)``

``members`` is a :class:`Members` value holding two ``(P, D)`` arrays: ``genome`` (what is
handed back to the strategy's ``tell``) and ``phenotype`` (what is evaluated). They start as
the same array. An operator that writes its result into both is Lamarckian; one that changes
only the phenotype is Baldwinian. :func:`chain` composes operators left to right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax

from evojax_nets.types import Population


class Members(NamedTuple):
    """What the strategy proposed (``genome``) and what will be evaluated (``phenotype``)."""

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


@dataclass(frozen=True)
class PopulationOp:
    """An operator on the population: ``init(key, population) -> state`` and
    ``apply(key, members, state, ctx) -> (members, state)``."""

    init: InitFn
    apply: ApplyFn


def identity() -> PopulationOp:
    """The operator that changes nothing (the engine's default)."""
    return PopulationOp(
        init=lambda key, population: (),
        apply=lambda key, members, state, ctx: (members, state),
    )


def chain(*ops: PopulationOp) -> PopulationOp:
    """Apply ``ops`` in order; each gets its own key and keeps its own state."""
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

    return PopulationOp(init=init, apply=apply)
