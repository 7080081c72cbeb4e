"""Programs: every search is a pure ``(init, step)`` pair with its hyperparameters as arguments.

A :class:`Program` is shaped like an optax ``GradientTransformation``::

    state = program.init(key, params)
    state, metrics = program.step(state, params, inputs)

``params`` is a pytree of arrays holding everything one may sweep or schedule (a strategy's
std and learning rate, evosax's own params, PBT's explore factors, ...). Because it is an
argument and not a constant sealed into the compiled program, changing a value never
recompiles, and ``jax.vmap`` over ``(keys, params)`` runs many seeds and settings as one
program (:meth:`Program.batched`). ``inputs`` is what the host feeds each step (a minibatch
drawn by a host-side loader), or ``None``.

Evolution of weights (:mod:`evojax_nets.engine`), population-based training
(:mod:`evojax_nets.search.pbt`) and architecture search are all programs, and one
:class:`~evojax_nets.runner.Runner` runs every one of them.

This module also holds the rules every program shares: :func:`canonicalize` (strong dtypes,
so a state's type is the same before and after a step), :func:`sanitize_fitness` (the one rule
for ranking non-finite fitness) and :func:`check_key`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

InitFn = Callable[[jax.Array, Any], Any]
StepFn = Callable[[Any, Any, Any], tuple[Any, dict[str, jax.Array]]]
ReportFn = Callable[[Any, Any], dict[str, jax.Array]]


@dataclass(frozen=True)
class Program:
    """A search as a pure function pair (see the module docstring).

    Attributes:
      init: ``init(key, params) -> state``.
      step: ``step(state, params, inputs) -> (state, metrics)``; ``metrics`` is a dict of
        arrays (one row of the run's history).
      counter: ``counter(state) -> int32`` steps completed (the run's x-axis).
      counter_name: the name of that count in the history (``"generation"``, ``"round"``).
      report: optional ``report(state, params) -> {name: scalar}``, computed by the runner at
        the end of every chunk (held-out metrics: too costly to compute every step).
      batch_axis: ``True`` for a program made by :meth:`batched` (states, params and metrics
        carry a leading configuration axis).

    Example:
      >>> counting = Program(
      ...     init=lambda key, params: {"n": jnp.int32(0), "x": jnp.float32(0.0)},
      ...     step=lambda s, p, inputs: (
      ...         {"n": s["n"] + 1, "x": s["x"] + p}, {"x": s["x"] + p}
      ...     ),
      ...     counter=lambda s: s["n"],
      ... )
      >>> state, metrics = counting.step(counting.init(jax.random.key(0), 1.0), 1.0, None)
      >>> int(state["n"]), float(metrics["x"])
      (1, 1.0)
      >>> sweep = counting.batched()  # two settings as one program
      >>> keys = jax.random.split(jax.random.key(0), 2)
      >>> params = jnp.array([1.0, 10.0])
      >>> states = sweep.init(keys, params)
      >>> states, metrics = sweep.step(states, params, None)
      >>> metrics["x"].tolist()
      [1.0, 10.0]
    """

    init: InitFn
    step: StepFn
    counter: Callable[[Any], jax.Array]
    counter_name: str = "generation"
    report: ReportFn | None = None
    batch_axis: bool = False

    def batched(self) -> Program:
        """The same program over a leading axis of keys, params and states: a sweep.

        Every configuration runs the same arithmetic as alone (up to the rounding of batched
        kernels); ``inputs`` are shared by all configurations.
        """
        if self.batch_axis:
            raise ValueError("the program is already batched; batch the original once")
        report = self.report
        return Program(
            init=jax.vmap(self.init),
            step=jax.vmap(self.step, in_axes=(0, 0, None)),
            counter=jax.vmap(self.counter),
            counter_name=self.counter_name,
            report=None if report is None else jax.vmap(report),
            batch_axis=True,
        )


def canonicalize(tree: Any) -> Any:
    """Give every leaf a concrete, strong dtype.

    evosax's initial states hold Python scalars and weak-typed arrays; after one generation
    they come back strongly typed, and a jitted function would compile a second time.

    Example:
      >>> canonicalize({"a": 1.0, "b": jnp.float32(2.0)})["a"].dtype
      dtype('float32')
    """

    def fix(x: Any) -> Any:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        x = jnp.asarray(x)
        if not x.weak_type:
            return x
        # A weak Python float becomes float32 even under jax_enable_x64, where result_type
        # would say float64 and the state would no longer match float32 models. (Integers
        # keep result_type: evosax compares counters with Python ints, weak int64 under x64.)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jnp.float32)
        return jax.lax.convert_element_type(x, jnp.result_type(x))

    return jax.tree.map(fix, tree)


def sanitize_fitness(fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace NaN and +-inf (in the minimised sense) by a value worse than every finite one.

    The one rule for non-finite fitness in the library: a non-finite value always ranks below
    every finite one, also when a whole generation is non-finite (then every entry becomes
    the largest finite number, which loses to any real loss in a later comparison), and the
    substitute never overflows to ``inf`` even next to huge finite values. Returns the cleaned
    fitness and the mask of finite entries.

    Example:
      >>> clean, finite = sanitize_fitness(jnp.array([1.0, jnp.nan, 3.0, -jnp.inf]))
      >>> finite.tolist()
      [True, False, True, False]
      >>> bool(clean[1] > 3.0), bool(clean[3] > 3.0), bool(jnp.isfinite(clean).all())
      (True, True, True)
      >>> clean, _ = sanitize_fitness(jnp.array([jnp.nan, jnp.nan]))
      >>> bool((clean == jnp.finfo(jnp.float32).max).all())
      True
    """
    fitness = jnp.asarray(fitness)
    big = jnp.finfo(fitness.dtype).max
    finite = jnp.isfinite(fitness)
    any_finite = jnp.any(finite)
    hi = jnp.max(jnp.where(finite, fitness, -big))
    lo = jnp.min(jnp.where(finite, fitness, big))
    # hi + (hi - lo) + 1, at least the next float above hi (so it never ties), and saturated
    # at the largest finite number (so it never overflows to inf).
    worst = jnp.maximum(hi + (hi - lo) + 1.0, jnp.nextafter(hi, jnp.inf))
    worst = jnp.where(any_finite, jnp.minimum(worst, big), big)
    return jnp.where(finite, fitness, worst.astype(fitness.dtype)), finite


def rank_finite(scores: jax.Array, maximize: bool) -> jax.Array:
    """Goodness for ranking (larger is better): the score in its own sense, ``-inf`` for NaN
    or infinite scores, so a diverged member always ranks last.

    Example:
      >>> rank_finite(jnp.array([1.0, jnp.nan, 3.0]), maximize=False).tolist()
      [-1.0, -inf, -3.0]
    """
    s = scores if maximize else -scores
    return jnp.where(jnp.isfinite(s), s, -jnp.inf)


def truncation_select(
    key: jax.Array, goodness: jax.Array, num_parents: int, num_picks: int
) -> tuple[jax.Array, jax.Array]:
    """Truncation selection, shared by the GA, ESGD and PBT: the members ordered best first
    (stable, so ties keep their slot order) and ``num_picks`` parents drawn uniformly among
    the ``num_parents`` best. Returns ``(order, picks)``.

    Example:
      >>> order, picks = truncation_select(jax.random.key(0), jnp.array([0.0, 3.0, 1.0]), 2, 4)
      >>> order.tolist(), picks.shape, bool(jnp.isin(picks, order[:2]).all())
      ([1, 2, 0], (4,), True)
    """
    order = jnp.argsort(-goodness, stable=True)
    picks = order[jax.random.randint(key, (num_picks,), 0, num_parents)]
    return order, picks


def check_key(key: Any, argument: str = "key") -> None:
    """Refuse anything but a JAX PRNG key (typed, or legacy ``uint32[2]``).

    Example:
      >>> check_key(jax.random.key(0))
      >>> try:
      ...     check_key(0)
      ... except TypeError as err:
      ...     print(str(err).split(";")[0])
      key must be a jax.random.key, got 0
    """
    if not isinstance(key, jax.Array) or not (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
    ):
        raise TypeError(f"{argument} must be a jax.random.key, got {key!r}; use jax.random.key(0)")


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for errors re-raised with context.

    Example:
      >>> first_line(ValueError("bad shape\\nlong trace"))
      'ValueError: bad shape'
    """
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
