"""Reinforcement learning: control policies evolved on gymnax (or Brax) environments.

Fitness is the mean undiscounted return of ``num_episodes`` episodes, maximised. Everything
runs inside the jitted generation: the engine ``vmap``s members, the task ``vmap``s episodes
and loops over time. All members of a generation start their episodes from the same seeds
(the engine shares the evaluation key: common random numbers, the "Pegasus" trick of Ng &
Jordan, 2000), so fitness differences measure the policies, not the start states.

Episodes end, and stay ended. The environment is stepped without gymnax's automatic reset
(``step_env``); after an episode terminates or is truncated its state and observation are
frozen and its rewards, length and observation statistics are masked, so a reset's reward can
never leak into a return. With ``early_exit`` the time loop stops as soon as every episode of
the batch (under the engine's ``vmap``: of the whole population) has ended.

Observation normalisation follows Salimans et al. (2017), "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning", https://arxiv.org/abs/1703.03864: running mean and
variance of every observation the policies see, kept in the engine state
(``EvolutionState.task_state``), frozen within a generation (all members see the same
normalisation) and updated once per generation from sufficient statistics the rollouts return
(count, and the sums of deviations from the current mean and of their squares, merged with
Chan et al.'s parallel formula), so no trajectory is ever stored.

Test metrics roll the best member and the mean out on ``eval_episodes`` fresh episodes,
seeded from ``eval_seed`` and the generation counter: new start states at every report,
independent of the training keys, identical for the best and the mean.

Actions: for a discrete space the policy outputs logits and the action is their ``argmax``
(or a categorical sample with ``stochastic=True``); for a box the policy outputs one value per
action dimension and the action is ``low + (tanh(out) + 1) / 2 * (high - low)``.

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
from flax import nnx, struct

from evojax_nets.nets import Network
from evojax_nets.tasks.base import BoundTask

GYMNAX_HINT = "pip install 'evojax_nets[rl]'  (gymnax and six)"
BRAX_HINT = "pip install 'evojax_nets[brax]'"


# -- environments ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Env:
    """An environment as the rollout sees it: pure functions, no automatic reset.

    Attributes:
      name: for messages.
      reset: ``reset(key) -> (obs, state)``.
      step: ``step(key, state, action) -> (obs, state, reward, done)``; ``done`` is
        termination or truncation, and the environment is not reset after it.
      obs_shape: the shape of one observation.
      num_actions: the number of discrete actions, or ``None`` for a box.
      action_shape: the shape of one action (``()`` when discrete).
      action_low, action_high: the box's bounds (``None`` when discrete).
      max_steps: the episode length used when the task does not set one.
    """

    name: str
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]
    step: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, jax.Array, jax.Array]]
    obs_shape: tuple[int, ...]
    num_actions: int | None
    action_shape: tuple[int, ...]
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    max_steps: int

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None

    @property
    def num_outputs(self) -> int:
        """The width of the policy's output: logits, or one value per action dimension."""
        return self.num_actions if self.discrete else int(np.prod(self.action_shape))


def _import_gymnax():
    try:
        import gymnax
    except ImportError as err:  # six is imported by gymnax but not declared
        raise ImportError(f"gymnax environments need gymnax: {GYMNAX_HINT} ({err})") from None
    return gymnax


def gymnax_env(env: Any, env_params: Any = None, **env_kwargs: Any) -> Env:
    """Wrap a gymnax environment, by name (``"CartPole-v1"``, ``"Breakout-MinAtar"``) or
    instance. ``env_params`` is a params object or a dict of fields to replace in the
    defaults; ``env_kwargs`` go to ``gymnax.make``."""
    gymnax = _import_gymnax()
    if isinstance(env, str):
        if env not in gymnax.registered_envs:
            close = [n for n in gymnax.registered_envs if env.lower() in n.lower()]
            raise ValueError(
                f"unknown gymnax environment {env!r}"
                + (f"; did you mean {close}?" if close else "")
                + f" Registered: {', '.join(gymnax.registered_envs)}"
            )
        genv, default = gymnax.make(env, **env_kwargs)
    else:
        genv, default = env, env.default_params
    if env_params is None:
        params = default
    elif isinstance(env_params, dict):
        params = default.replace(**env_params)
    else:
        params = env_params
    space = genv.action_space(params)
    if hasattr(space, "n"):
        num_actions, shape, low, high = int(space.n), (), None, None
    elif hasattr(space, "low") and hasattr(space, "high"):
        shape = tuple(space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        num_actions = None
    else:
        raise ValueError(
            f"{genv.name}: action space {type(space).__name__} is neither discrete nor a box"
        )
    obs_shape = tuple(genv.observation_space(params).shape)

    if hasattr(genv, "is_truncated"):
        truncated = lambda state: genv.is_truncated(state, params)
    else:  # gymnax < 1.0 folds the time limit into step_env's done
        truncated = lambda state: jnp.asarray(False)

    def reset(key: jax.Array):
        obs, state = genv.reset_env(key, params)
        return jnp.asarray(obs, jnp.float32), state

    def step(key: jax.Array, state: Any, action: jax.Array):
        obs, state, reward, terminated, _ = genv.step_env(key, state, action, params)
        done = jnp.logical_or(terminated, truncated(state))
        return jnp.asarray(obs, jnp.float32), state, jnp.asarray(reward, jnp.float32), done

    return Env(
        name=str(env) if isinstance(env, str) else genv.name,
        reset=reset,
        step=step,
        obs_shape=obs_shape,
        num_actions=num_actions,
        action_shape=shape,
        action_low=low,
        action_high=high,
        max_steps=int(params.max_steps_in_episode),
    )


def brax_env(name: str, backend: str = "positional", max_steps: int = 1000, **kwargs: Any) -> Env:
    """Wrap a Brax environment (``"ant"``, ``"halfcheetah"``, ...); actions lie in [-1, 1].

    ``backend`` is Brax's physics pipeline; ``"positional"`` and ``"spring"`` are the cheap
    ones (``"generalized"`` and ``"mjx"`` are far slower on a CPU). Brax environments have
    no time limit of their own: ``max_steps`` is the episode length.
    """
    try:
        from brax import envs
    except ImportError as err:
        raise ImportError(f"Brax environments need brax: {BRAX_HINT} ({err})") from None
    benv = envs.get_environment(name, backend=backend, **kwargs)

    def reset(key: jax.Array):
        state = benv.reset(key)
        return state.obs, state

    def step(key: jax.Array, state: Any, action: jax.Array):
        state = benv.step(state, action)
        return state.obs, state, state.reward, state.done > 0.5

    size = int(benv.action_size)
    return Env(
        name=f"brax:{name}",
        reset=reset,
        step=step,
        obs_shape=(int(benv.observation_size),),
        num_actions=None,
        action_shape=(size,),
        action_low=-np.ones(size, np.float32),
        action_high=np.ones(size, np.float32),
        max_steps=int(max_steps),
    )


def make_env(env: Any, env_params: Any = None, **env_kwargs: Any) -> Env:
    """An :class:`Env` from a gymnax name or instance, ``"brax:<name>"``, or an :class:`Env`.

    Example:
      >>> env = make_env("CartPole-v1")
      >>> env.obs_shape, env.num_outputs, env.discrete, env.max_steps
      ((4,), 2, True, 500)
      >>> obs, state = env.reset(jax.random.key(0))
      >>> obs, state, reward, done = env.step(jax.random.key(1), state, jnp.int32(1))
      >>> obs.shape, bool(done), make_env(env) is env
      ((4,), False, True)
    """
    if isinstance(env, Env):
        return env
    if isinstance(env, str) and env.startswith("brax:"):
        return brax_env(env.split(":", 1)[1], **env_kwargs)
    if isinstance(env, str) or hasattr(env, "step_env"):
        return gymnax_env(env, env_params, **env_kwargs)
    raise TypeError(
        "env must be a gymnax environment name (for example 'CartPole-v1'), 'brax:<name>', a "
        f"gymnax environment or an evojax_nets.tasks.rl.Env; got {type(env).__name__}"
    )


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
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
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
