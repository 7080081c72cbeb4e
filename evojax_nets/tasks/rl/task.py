"""The RL task (:class:`RLTask`) and :func:`rollout` of a trained policy by hand; see
:mod:`evojax_nets.tasks.rl` for how episodes, seeds and observation normalisation work.

Example:
  >>> from flax import nnx
  >>> from evojax_nets import evolve
  >>> from evojax_nets.policies import MLPPolicy
  >>> task = RLTask("CartPole-v1")
  >>> policy = MLPPolicy(task.obs_shape, task.num_outputs, rngs=nnx.Rngs(0))
  >>> result = evolve(policy, task, "open_es", 64, 5)
  >>> out = rollout(task, result.solution, jax.random.key(1), num_episodes=4,
  ...               obs_stats=result.state.task_state.obs_stats)
  >>> out.returns.shape
  (4,)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets.nets import Network
from evojax_nets.program import first_line
from evojax_nets.tasks.base import BoundTask
from evojax_nets.tasks.rl.envs import Env, make_env
from evojax_nets.tasks.rl.episodes import (
    EpisodeResult,
    ObsMoments,
    RLState,
    RunningStats,
    action_fn,
    run_episodes,
)

# -- the task -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RLTask:
    """Evolve a control policy on an environment; fitness is the mean return, maximised.

    Args:
      env: a gymnax environment name (``"CartPole-v1"``, ``"Acrobot-v1"``, ``"Pendulum-v1"``,
        ``"MountainCarContinuous-v0"``, ``"Breakout-MinAtar"``, ...), ``"brax:<name>"``
        (``"brax:ant"``, needs the ``brax`` extra), a gymnax environment instance, or an
        :class:`Env`.
      num_episodes: episodes per member and generation (the fitness is their mean return).
      episode_length: the step budget of an episode; default: the environment's own limit.
      normalize_obs: normalise observations with running statistics kept in the engine
        state (see the module docstring).
      obs_clip: normalised observations are clipped to ``[-obs_clip, obs_clip]``.
      eval_episodes: fresh episodes of the test metrics (for the best member and the mean).
      eval_seed: seeds the evaluation episodes (independent of the run's key).
      stochastic: sample discrete actions from the logits instead of taking the argmax.
      early_exit: stop the time loop once every episode has ended (else run all
        ``episode_length`` steps).
      env_params: gymnax params, or a dict of fields to replace in the defaults.
      env_kwargs: arguments for ``gymnax.make`` (or :func:`brax_env`: ``backend``,
        ``max_steps``).
      recurrent: whether the policy is called as ``policy(carry, obs) -> (carry, out)``;
        default: when it (an NNX module) has an ``initial_carry()`` method or
        ``initial_carry`` is given.
      initial_carry: ``initial_carry(member) -> carry`` for a recurrent policy without an
        ``initial_carry()`` method (a linen module: ``lambda variables: jnp.zeros(32)``).

    The bound task's ``extra`` holds ``env`` (the :class:`Env`) and
    ``rollout(key, theta, task_state, num_episodes) -> EpisodeResult``.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets import Evolution
      >>> task = RLTask("CartPole-v1", num_episodes=1, episode_length=10, eval_episodes=2)
      >>> task.obs_shape, task.num_outputs
      ((4,), 2)
      >>> policy = nnx.Linear(4, 2, rngs=nnx.Rngs(0))  # observation -> action logits
      >>> evo = Evolution(policy, task, "snes", 4)
      >>> state, history = evo.run(evo.init(jax.random.key(0)), 2)
      >>> "test_return_mean" in history.last, bool(history.last["best_so_far"] <= 10)
      (True, True)
    """

    env: Any
    num_episodes: int = 1
    episode_length: int | None = None
    normalize_obs: bool = True
    obs_clip: float | None = 10.0
    eval_episodes: int = 16
    eval_seed: int = 0
    stochastic: bool = False
    early_exit: bool = True
    env_params: Any = None
    env_kwargs: dict | None = None
    recurrent: bool | None = None
    initial_carry: Callable[[Any], Any] | None = None
    maximize: bool = field(default=True, init=False)

    def __post_init__(self):
        for name in ("num_episodes", "eval_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.episode_length is not None and not (
            isinstance(self.episode_length, int) and self.episode_length >= 1
        ):
            raise ValueError(
                f"episode_length must be a positive int or None, got {self.episode_length!r}"
            )

    @functools.cached_property
    def environment(self) -> Env:
        """The wrapped environment."""
        return make_env(self.env, self.env_params, **(self.env_kwargs or {}))

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """The shape of one observation (to build a policy)."""
        return self.environment.obs_shape

    @property
    def num_outputs(self) -> int:
        """The width the policy must output (to build a policy)."""
        return self.environment.num_outputs

    @property
    def length(self) -> int:
        return self.episode_length or self.environment.max_steps

    def _policy(self, network: Network) -> tuple[bool, Callable[[Any], Any]]:
        """Whether the policy is recurrent, and ``member -> initial carry``."""
        member = network.member(network.theta0)
        has_method = callable(getattr(member, "initial_carry", None))
        recurrent = self.recurrent
        if recurrent is None:
            recurrent = self.initial_carry is not None or has_method
        if not recurrent:
            return False, lambda m: ()
        if self.initial_carry is not None:
            return True, self.initial_carry
        if has_method:
            return True, lambda m: m.initial_carry()
        raise ValueError(
            "recurrent=True needs the initial carry: give the policy an initial_carry() method "
            "or pass initial_carry=lambda member: ... to RLTask"
        )

    def _check_policy(self, network: Network, recurrent: bool, carry_fn) -> None:
        env = self.environment

        def one(theta):
            member = network.member(theta)
            obs = jnp.zeros(env.obs_shape, jnp.float32)
            if recurrent:
                carry = carry_fn(member)
                new_carry, out = network.apply_member(member, carry, obs)
                return carry, new_carry, out
            return (), (), network.apply_member(member, obs)

        try:
            carry, new_carry, out = jax.eval_shape(one, network.theta0)
        except Exception as err:  # the user's module rejected the observation
            first = first_line(err)
            call = "policy(carry, obs)" if recurrent else "policy(obs)"
            raise ValueError(
                f"{env.name} observations of shape {env.obs_shape} do not fit the policy "
                f"({network.kind}, {network.num_params:,} parameters) called as {call}: {first}"
            ) from None
        if recurrent and jax.tree.structure(carry) != jax.tree.structure(new_carry):
            raise ValueError("a recurrent policy must return a carry of its input's structure")
        shapes_in = [x.shape for x in jax.tree.leaves(carry)]
        shapes_out = [x.shape for x in jax.tree.leaves(new_carry)]
        if shapes_in != shapes_out:
            raise ValueError(
                f"a recurrent policy must keep its carry's shapes; got {shapes_in} -> {shapes_out}"
            )
        if not hasattr(out, "shape") or int(np.prod(out.shape)) != env.num_outputs:
            what = (
                f"{env.num_actions} action logits"
                if env.discrete
                else f"{env.num_outputs} action values (shape {env.action_shape})"
            )
            raise ValueError(
                f"{env.name} needs {what} from the policy for one observation; it outputs "
                f"shape {getattr(out, 'shape', type(out).__name__)}"
            )

    def bind(self, network: Network) -> BoundTask:
        env = self.environment
        recurrent, carry_fn = self._policy(network)
        self._check_policy(network, recurrent, carry_fn)
        to_action = action_fn(env, self.stochastic)
        kwargs = dict(
            length=self.length,
            to_action=to_action,
            obs_clip=self.obs_clip,
            early_exit=self.early_exit,
        )
        normalize = self.normalize_obs

        def episodes(key, theta, task_state: RLState, n: int) -> EpisodeResult:
            member = network.member(theta)
            if recurrent:
                carry0 = carry_fn(member)
                step = lambda carry, x: network.apply_member(member, carry, x)
            else:
                carry0 = ()
                step = lambda carry, x: ((), network.apply_member(member, x))
            stats = task_state.obs_stats if normalize else None
            return run_episodes(env, step, carry0, key, stats, n, **kwargs)

        def fitness(key, theta, task_state: RLState):
            result = episodes(key, theta, task_state, self.num_episodes)
            return jnp.mean(result.ret), result.moments.total()

        def test_metrics(theta, task_state: RLState):
            key = jax.random.fold_in(jax.random.key(self.eval_seed), task_state.updates)
            result = episodes(key, theta, task_state, self.eval_episodes)
            return {
                "return": jnp.mean(result.ret),
                "return_std": jnp.std(result.ret),
                "length": jnp.mean(result.length.astype(jnp.float32)),
            }

        def init_state(key):
            return RLState(RunningStats.zeros(env.obs_shape), jnp.int32(0))

        def update_state(task_state: RLState, moments: ObsMoments) -> RLState:
            stats = task_state.obs_stats
            if normalize:
                stats = stats.merge(moments.total())
            return RLState(obs_stats=stats, updates=task_state.updates + 1)

        return BoundTask(
            fitness=fitness,
            maximize=True,
            test_metrics=test_metrics,
            metric="return",
            metric_maximize=True,
            init_state=init_state,
            update_state=update_state,
            extra={"env": env, "rollout": episodes, "recurrent": recurrent},
        )


# -- rolling out a trained policy by hand ---------------------------------------------------


class Rollout(NamedTuple):
    """Returns and lengths of the episodes :func:`rollout` ran, shape ``(num_episodes,)``."""

    returns: jax.Array
    lengths: jax.Array


def rollout(
    env: Any,
    policy: Any,
    key: jax.Array,
    *,
    num_episodes: int = 16,
    obs_stats: RunningStats | None = None,
    episode_length: int | None = None,
    recurrent: bool | None = None,
    initial_carry: Callable[[Any], Any] | None = None,
    stochastic: bool | None = None,
    obs_clip: float | None = None,
) -> Rollout:
    """Roll a policy out on fresh episodes, outside any evolution run.

    Args:
      env: an :class:`RLTask` (its environment, episode length, clipping and action mode are
        used), a gymnax name, ``"brax:<name>"`` or an :class:`Env`.
      policy: what a run hands back (``Result.solution``: an NNX module), or any
        ``policy(obs) -> out`` (``policy(carry, obs) -> (carry, out)`` when recurrent), for
        example ``functools.partial(module.apply, variables)`` for linen.
      key: seeds the episodes.
      num_episodes: episodes to run (in parallel).
      obs_stats: the run's observation statistics, ``state.task_state.obs_stats``; required
        when the policy was evolved with ``normalize_obs=True``.
      episode_length, stochastic, obs_clip: override the task's (or the defaults).
      recurrent, initial_carry: as for :class:`RLTask`; by default a policy with an
        ``initial_carry()`` method is recurrent.

    Example:
      >>> from flax import nnx
      >>> policy = nnx.Linear(4, 2, rngs=nnx.Rngs(0))  # observation -> action logits
      >>> out = rollout("CartPole-v1", policy, jax.random.key(0), num_episodes=2,
      ...               episode_length=10)
      >>> out.returns.shape, out.lengths.shape, bool((out.lengths <= 10).all())
      ((2,), (2,), True)
    """
    task = env if isinstance(env, RLTask) else None
    environment = task.environment if task is not None else make_env(env)
    length = episode_length or (task.length if task is not None else environment.max_steps)
    if stochastic is None:
        stochastic = task.stochastic if task is not None else False
    if obs_clip is None:
        obs_clip = task.obs_clip if task is not None else 10.0
    if task is not None and task.normalize_obs and obs_stats is None:
        raise ValueError(
            "this task normalises observations: pass obs_stats=state.task_state.obs_stats "
            "(the statistics the policy was evolved with)"
        )
    if recurrent is None:
        recurrent = initial_carry is not None or callable(getattr(policy, "initial_carry", None))
    if recurrent and initial_carry is None:
        if not callable(getattr(policy, "initial_carry", None)):
            raise ValueError("a recurrent policy needs initial_carry= or an initial_carry() method")
        initial_carry = lambda p: p.initial_carry()
    to_action = action_fn(environment, stochastic)

    def run(policy, key, stats):
        if recurrent:
            carry0, step = initial_carry(policy), policy
        else:
            carry0, step = (), lambda carry, x: ((), policy(x))
        out = run_episodes(
            environment,
            step,
            carry0,
            key,
            stats,
            num_episodes,
            length=length,
            to_action=to_action,
            obs_clip=obs_clip,
        )
        return Rollout(out.ret, out.length)

    if isinstance(policy, nnx.Module):
        graphdef, state = nnx.split(policy)
        fn = jax.jit(lambda s, k, st: run(nnx.merge(graphdef, s), k, st))
        return fn(state, key, obs_stats)
    return jax.jit(functools.partial(run, policy))(key, obs_stats)
