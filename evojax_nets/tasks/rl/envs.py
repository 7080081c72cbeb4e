"""Environments as the rollout sees them (:class:`Env`: pure functions, no automatic reset),
and the wrappers that build one from gymnax (:func:`gymnax_env`) or Brax (:func:`brax_env`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
