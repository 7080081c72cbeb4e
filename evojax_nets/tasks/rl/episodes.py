"""Episodes inside the jitted generation: running observation statistics
(:class:`RunningStats`, :class:`ObsMoments`), the task state (:class:`RLState`), and the
masked time loop of one episode (:func:`run_episode`) and of a batch (:func:`run_episodes`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from evojax_nets.tasks.rl.envs import Env

# -- observation statistics -----------------------------------------------------------------


@struct.dataclass
class RunningStats:
    """Running mean and variance of observations (``count`` is a float32 scalar; ``m2`` is
    the sum of squared deviations from the mean)."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> RunningStats:
        return cls(jnp.float32(0.0), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    @property
    def var(self) -> jax.Array:
        """The population variance; 1 before any observation (normalisation is then the
        identity)."""
        return jnp.where(self.count > 0, self.m2 / jnp.maximum(self.count, 1.0), 1.0)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var)

    def normalize(self, obs: jax.Array, clip: float | None = 10.0) -> jax.Array:
        """``(obs - mean) / std``, clipped to ``[-clip, clip]``; constant features map to 0."""
        x = (obs - self.mean) / jnp.maximum(self.std, 1e-6)
        return x if clip is None else jnp.clip(x, -clip, clip)

    def merge(self, moments: ObsMoments) -> RunningStats:
        """Add a batch of observations given by its moments about ``self.mean`` (Chan et al.,
        1979, parallel variance)."""
        n = moments.count
        total = self.count + n
        safe_n = jnp.maximum(n, 1.0)
        delta = moments.sum / safe_n  # batch mean - self.mean
        batch_m2 = jnp.maximum(moments.sumsq - moments.sum * delta, 0.0)
        mean = self.mean + delta * n / jnp.maximum(total, 1.0)
        m2 = self.m2 + batch_m2 + delta**2 * self.count * n / jnp.maximum(total, 1.0)
        keep = n > 0
        return RunningStats(
            count=total,
            mean=jnp.where(keep, mean, self.mean),
            m2=jnp.where(keep, m2, self.m2),
        )


@struct.dataclass
class ObsMoments:
    """Sufficient statistics of observations ``x``: ``count``, ``sum(x - m)`` and
    ``sum((x - m)**2)`` about the frozen running mean ``m``. Additive over steps, episodes
    and members."""

    count: jax.Array
    sum: jax.Array
    sumsq: jax.Array

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> ObsMoments:
        return cls(jnp.float32(0.0), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    def add(self, obs: jax.Array, center: jax.Array, weight: jax.Array) -> ObsMoments:
        d = (obs - center) * weight
        return ObsMoments(self.count + weight, self.sum + d, self.sumsq + d * (obs - center))

    def total(self) -> ObsMoments:
        """Sum over every leading axis (episodes, members)."""
        lead = lambda x, nd: tuple(range(x.ndim - nd))
        nd = self.sum.ndim - self.count.ndim
        return ObsMoments(
            jnp.sum(self.count),
            jnp.sum(self.sum, axis=lead(self.sum, nd)),
            jnp.sum(self.sumsq, axis=lead(self.sumsq, nd)),
        )


@struct.dataclass
class RLState:
    """The RL task's state in ``EvolutionState.task_state``.

    Attributes:
      obs_stats: running observation statistics (:class:`RunningStats`).
      updates: generations folded in so far; seeds the fresh evaluation episodes.
    """

    obs_stats: RunningStats
    updates: jax.Array


# -- rollouts -------------------------------------------------------------------------------


class EpisodeResult(NamedTuple):
    """What one episode returns: its return, its length (steps taken before it ended) and
    the moments of the observations its policy saw."""

    ret: jax.Array
    length: jax.Array
    moments: ObsMoments


class _Loop(NamedTuple):
    t: jax.Array
    obs: jax.Array
    env_state: Any
    carry: Any
    alive: jax.Array
    ret: jax.Array
    length: jax.Array
    moments: ObsMoments


PolicyStep = Callable[[Any, jax.Array], tuple[Any, jax.Array]]
"""``policy_step(carry, obs) -> (carry, out)``; feed-forward policies use ``carry = ()``."""


def action_fn(env: Env, stochastic: bool = False) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``to_action(out, key)``: the policy output as an action of ``env``."""
    if env.discrete:
        if stochastic:
            return lambda out, key: jax.random.categorical(key, out.reshape(-1))
        return lambda out, key: jnp.argmax(out.reshape(-1)).astype(jnp.int32)
    if stochastic:
        raise ValueError("stochastic=True samples discrete actions; this action space is a box")
    low = jnp.asarray(env.action_low)
    high = jnp.asarray(env.action_high)
    return lambda out, key: (
        low + (jnp.tanh(out.reshape(env.action_shape)) + 1.0) * 0.5 * (high - low)
    )


def run_episode(
    env: Env,
    policy_step: PolicyStep,
    carry0: Any,
    key: jax.Array,
    obs_stats: RunningStats | None,
    *,
    length: int,
    to_action: Callable[[jax.Array, jax.Array], jax.Array],
    obs_clip: float | None = 10.0,
    early_exit: bool = True,
) -> EpisodeResult:
    """One episode of at most ``length`` steps; per-episode code (``vmap`` it).

    ``obs_stats=None`` feeds raw observations; otherwise they are normalised with the frozen
    ``obs_stats`` and the moments are taken about its mean.
    """
    key_reset, key_run = jax.random.split(key)
    obs, env_state = env.reset(key_reset)
    center = jnp.zeros(env.obs_shape, jnp.float32) if obs_stats is None else obs_stats.mean

    def body(c: _Loop) -> _Loop:
        key_act, key_env = jax.random.split(jax.random.fold_in(key_run, c.t))
        x = c.obs if obs_stats is None else obs_stats.normalize(c.obs, obs_clip)
        carry, out = policy_step(c.carry, x)
        action = to_action(out, key_act)
        obs, env_state, reward, done = env.step(key_env, c.env_state, action)
        alive = c.alive
        # An ended episode keeps its last state: no reset, no reward, no statistics.
        env_state = jax.tree.map(
            lambda new, old: jnp.where(alive, new, old), env_state, c.env_state
        )
        return _Loop(
            t=c.t + 1,
            obs=jnp.where(alive, obs, c.obs),
            env_state=env_state,
            carry=carry,
            alive=jnp.logical_and(alive, jnp.logical_not(done)),
            ret=c.ret + jnp.where(alive, reward, 0.0),
            length=c.length + alive.astype(jnp.int32),
            moments=c.moments.add(c.obs, center, alive.astype(jnp.float32)),
        )

    init = _Loop(
        t=jnp.int32(0),
        obs=obs,
        env_state=env_state,
        carry=carry0,
        alive=jnp.asarray(True),
        ret=jnp.float32(0.0),
        length=jnp.int32(0),
        moments=ObsMoments.zeros(env.obs_shape),
    )
    if early_exit:
        final = jax.lax.while_loop(lambda c: (c.t < length) & c.alive, body, init)
    else:
        final, _ = jax.lax.scan(lambda c, _: (body(c), None), init, None, length=length)
    return EpisodeResult(final.ret, final.length, final.moments)


def run_episodes(
    env: Env,
    policy_step: PolicyStep,
    carry0: Any,
    key: jax.Array,
    obs_stats: RunningStats | None,
    num_episodes: int,
    **kwargs: Any,
) -> EpisodeResult:
    """``num_episodes`` episodes from ``split(key, num_episodes)``, vmapped; every episode
    starts from ``carry0``."""
    keys = jax.random.split(key, num_episodes)
    one = functools.partial(run_episode, env, policy_step, carry0, obs_stats=obs_stats, **kwargs)
    return jax.vmap(one)(keys)
