"""evosax classes replaced by name: their initial search scale ignores ``std`` (xNES,
iAMaLGaM), or the same computation runs faster (Open_ES). Each class says what it changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms.distribution_based.iamalgam_full import iAMaLGaM_Full as _iAMaLGaM_Full
from evosax.algorithms.distribution_based.iamalgam_univariate import (
    iAMaLGaM_Univariate as _iAMaLGaM_Univariate,
)
from evosax.algorithms.distribution_based.open_es import Open_ES as _Open_ES
from evosax.algorithms.distribution_based.xnes import xNES as _xNES


class xNES(_xNES):
    """evosax's xNES with the shape matrix ``B`` starting at ``I``.

    evosax 0.3.2 starts ``B`` at ``std_init * I`` and samples ``mean + std * z @ B``, so the
    initial search scale is ``std_init**2`` (0.0025 for ``std=0.05``) rather than
    ``std_init``. Glasmachers et al. (2010), "Exponential Natural Evolution Strategies",
    https://arxiv.org/abs/1106.4487, split ``A = sigma * B`` with ``det(B) = 1``.
    """

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(B=jnp.eye(self.num_dims))


class iAMaLGaM_Full(_iAMaLGaM_Full):
    """evosax's iAMaLGaM (full covariance) with the covariance starting at ``std**2 * I``.

    evosax 0.3.2 starts the learned covariance ``C`` at ``I`` and samples from
    ``C + std**2 I``, so the initial search scale is about 1 whatever ``std`` says, which
    destroys network weights in one step. Starting ``C`` at the ``std_schedule``'s initial
    scale keeps it invertible (the standard-deviation ratio needs ``C^-1``) and puts the first
    samples at scale ``~sqrt(2) * std``.
    """

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(C=state.C * jnp.square(self.std_schedule(0)))


class iAMaLGaM_Univariate(_iAMaLGaM_Univariate):
    """evosax's univariate iAMaLGaM with the variances starting at ``std**2`` (see
    :class:`iAMaLGaM_Full`; it samples with scale ``std + sqrt(C)``, so ``~2 * std``)."""

    def _init(self, key: jax.Array, params: Any) -> Any:
        state = super()._init(key, params)
        return state.replace(C=state.C * jnp.square(self.std_schedule(0)))


def cond_unbatched(pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
    """``jax.lax.cond(pred, true_fn, false_fn, *operands)`` that stays a conditional under
    ``jax.vmap``.

    ``vmap`` turns a ``lax.cond`` whose predicate is batched into a ``select`` of both
    branches, so both run, and XLA may fuse what a branch computes into each of its
    consumers. Here a ``custom_vmap`` rule reduces the batched predicate to one: when it holds
    for every configuration, one real conditional runs ``vmap(true_fn)``; otherwise (the other
    branch of the same conditional) each configuration's branch is selected as ``vmap`` would.
    The rule applies again at every level of nested ``vmap``s. Each configuration gets
    exactly what it gets alone. ``true_fn`` and ``false_fn`` must not close over traced
    values (pass them as ``operands``).

    Example:
      >>> draw = lambda k: jax.random.normal(k, (3,))
      >>> zeros = lambda k: jnp.zeros(3)
      >>> one = lambda k, n: cond_unbatched(n >= 0, draw, zeros, k)
      >>> keys, counts = jax.random.split(jax.random.key(0), 2), jnp.array([0, -1])
      >>> got = jax.vmap(one)(keys, counts)
      >>> bool(jnp.all(got[0] == draw(keys[0]))), bool(jnp.all(got[1] == 0))
      (True, True)
      >>> "cond[" in str(jax.make_jaxpr(jax.vmap(one))(keys, counts))
      True
    """
    return _cond_call(true_fn, false_fn)(pred, operands)


def _cond_call(true_fn: Callable, false_fn: Callable) -> Callable:
    @jax.custom_batching.custom_vmap
    def call(pred: Any, operands: tuple) -> Any:
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    @call.def_vmap
    def rule(axis_size: int, in_batched: list, pred: Any, operands: tuple):
        pred_batched, operands_batched = in_batched
        axes = tuple(jax.tree.map(lambda b: 0 if b else None, operands_batched))
        many_true = jax.vmap(true_fn, in_axes=axes, axis_size=axis_size)
        many_false = jax.vmap(false_fn, in_axes=axes, axis_size=axis_size)
        if not pred_batched:
            out = _cond_call(many_true, many_false)(pred, operands)
        else:

            def each(p: jax.Array, *ops: Any) -> Any:  # what vmap of lax.cond computes
                def pick(a: jax.Array, b: jax.Array) -> jax.Array:
                    return jnp.where(p.reshape(p.shape + (1,) * (a.ndim - 1)), a, b)

                return jax.tree.map(pick, many_true(*ops), many_false(*ops))

            def every(p: jax.Array, *ops: Any) -> Any:
                return many_true(*ops)

            out = _cond_call(every, each)(jnp.all(pred), (pred, *operands))
        return out, jax.tree.map(lambda _: True, out)

    return call


class Open_ES(_Open_ES):
    """evosax's OpenAI-ES (Salimans et al. 2017, https://arxiv.org/abs/1703.03864), drawing
    each antithetic pair's Gaussian noise once and taking the gradient without a second copy
    of the noise.

    evosax builds the population as ``mean + std * concatenate([z, -z])``. XLA fuses the draw
    of ``z`` (hash, uniform, inverse error function) into both halves of the concatenation and
    so computes it twice. Drawn inside a conditional (whose predicate is always true),
    ``z`` becomes a buffer of its own: the draw runs once, and the population is bit-for-bit
    evosax's. The conditional stays one under ``vmap`` (a sweep), see :func:`cond_unbatched`.
    (``lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.)
    """

    def _ask(self, key: jax.Array, state: Any, params: Any) -> tuple[jax.Array, Any]:
        if not self.use_antithetic_sampling:
            return super()._ask(key, state, params)
        shape = (self.population_size // 2, self.num_dims)
        z_plus = cond_unbatched(
            state.generation_counter >= 0,
            lambda k: jax.random.normal(k, shape),
            lambda k: jnp.zeros(shape),
            key,
        )
        # ``mean - std * z`` is bit-for-bit ``mean + std * (-z)`` (negation is exact), and
        # writes the population in one pass instead of materialising ``[z, -z]`` first.
        step = state.std * z_plus
        return jnp.concatenate([state.mean + step, state.mean - step]), state

    def _tell(
        self, key: jax.Array, population: jax.Array, fitness: jax.Array, state: Any, params: Any
    ) -> Any:
        # evosax's gradient is ``fitness @ ((population - mean) / std) / (P * std)``, which
        # writes the (P, D) matrix of normalised noise to memory and reads it back for the
        # product: a third of an MLP generation's non-evaluation time on CPU. By linearity the
        # product is ``(fitness @ population - sum(fitness) * mean) / std``, computed straight
        # from the population; it agrees with evosax's to float32 rounding.
        centred = jnp.dot(fitness, population) - jnp.sum(fitness) * state.mean
        grad = centred / state.std / (self.population_size * state.std)
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.mean)
        return state.replace(
            mean=optax.apply_updates(state.mean, updates),
            std=self.std_schedule(state.generation_counter),
            opt_state=opt_state,
        )
