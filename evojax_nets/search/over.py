"""Population-based training over any program: PBT whose members are whole runs.

Jaderberg et al. (2017), https://arxiv.org/abs/1711.09846, train a population of models and
every ``ready`` steps let the worst copy the best (weights, optimizer state and
hyperparameters) and perturb the copied hyperparameters. Nothing in that requires the member
to be a gradient trainer: here a member is the state of any
:class:`~evojax_nets.program.Program` (an evolution run, for example, whose ``std`` and
learning rate PBT schedules), one round is ``ready`` of its steps, and the hyperparameters in
the search space are written into the program's params before every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from evojax_nets.program import Program
from evojax_nets.search.pbt import PBT
from evojax_nets.search.spaces import Space


def pbt_over(
    program: Program,
    params: Any,
    space: Mapping[str, Space],
    score: Callable[[Any], jax.Array],
    population_size: int,
    *,
    ready: int,
    set_params: Callable[[Any, dict[str, jax.Array]], Any],
    **pbt_kwargs: Any,
) -> PBT:
    """A :class:`~evojax_nets.search.pbt.PBT` whose members are states of ``program``.

    Args:
      program: the member program (for example ``Evolution(...).program``).
      params: the program's params; the ``space`` entries are written into them per member by
        ``set_params(params, {name: value}) -> params`` (traceable).
      space: ``{name: LogUniform | Uniform | Choice}`` over settings of ``params``.
      score: ``score(state) -> scalar``, larger is better (a validation score).
      population_size: members (independent runs of ``program``).
      ready: program steps per round.
      pbt_kwargs: passed to :class:`PBT` (``quantile``, ``explore``, ``exploit="none"`` for
        the same members with their sampled settings kept fixed, ...).

    The returned PBT has ``member_init(key) -> state`` for :meth:`PBT.init` / :meth:`PBT.fit`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> from evojax_nets.search import LogUniform
      >>> fitness = lambda key, m: jnp.sum((m(jnp.ones((1, 2))) - 3.0) ** 2)
      >>> evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "open_es", 8,
      ...                 maximize=False)
      >>> pbt = evo.pbt({"learning_rate": LogUniform(1e-3, 1e-1)}, 4, ready=5)
      >>> result = pbt.fit(jax.random.key(0), pbt.member_init, num_steps=20)
      >>> result.schedule["learning_rate"].shape, int(result.state.generation)
      ((4,), 20)
    """

    def train_step(state: Any, batch: Any, hparams: dict[str, jax.Array]) -> Any:
        return program.step(state, set_params(params, hparams), None)[0]

    pbt_kwargs.setdefault("maximize", True)
    pbt_kwargs.setdefault("inject", False)
    pbt = PBT(train_step, score, space, population_size, ready=ready, **pbt_kwargs)
    pbt.member_init = lambda key: program.init(key, params)
    pbt.fingerprint_extra = {"member_program": program.counter_name}
    return pbt


def pbt_of_evolution(
    evolution: Any,
    space: Mapping[str, Space],
    population_size: int,
    ready: int,
    score: Callable[[Any], jax.Array] | None = None,
    **pbt_kwargs: Any,
) -> PBT:
    """:func:`pbt_over` for an :class:`~evojax_nets.engine.Evolution` (see
    :meth:`~evojax_nets.engine.Evolution.pbt`)."""
    if score is None:
        fitness = evolution.task.fitness_fn(())
        key = jax.random.key(0)
        sign = 1.0 if evolution.maximize else -1.0

        def score(state: Any) -> jax.Array:
            return sign * fitness(key, evolution.solution_theta(state))

    return pbt_over(
        evolution.program,
        evolution.params,
        space,
        score,
        population_size,
        ready=ready,
        set_params=evolution.replace_settings,
        **pbt_kwargs,
    )
