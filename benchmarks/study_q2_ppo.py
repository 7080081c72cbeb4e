"""Q2 of the study, its gradient side: PPO from rejax, with rejax's published configurations
(and on Breakout also gymnax-blines'), and the per-run CPU clock every Q2 contender is
measured with.

``benchmarks/study_q2.py`` holds the question's protocol (its docstring), the ES side, the
choosing and the plot; this module is the part that touches rejax.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# rejax's published PPO configurations (github.com/keraJLi/rejax): CartPole and MountainCar
# from its configs/gymnax/cartpole.yaml and continuous_mountaincar.yaml; rejax has no
# configs/gymnax/ file for MinAtar, so Breakout's is the PPO entry of its benchmark/
# breakout_1m.yaml (commit beb9640, 2024-01-29; the 1M-step run of its speed benchmark against
# cleanRL; its total_timesteps 1M and eval_freq 50k are replaced by this study's budget and
# chunks). No agent is named there, so rejax's default actor is used: an MLP 64-64 (tanh) on
# the flattened 10x10x4 observation.
PPO_CONFIGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "agent_kwargs": {"activation": "tanh"},
        "num_envs": 5,
        "num_steps": 100,
        "num_epochs": 5,
        "num_minibatches": 5,
        "learning_rate": 0.00075,
        "max_grad_norm": 0.5,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
    },
    "MountainCarContinuous-v0": {
        "agent_kwargs": {"activation": "relu"},
        "num_envs": 5,
        "num_steps": 100,
        "num_epochs": 10,
        "num_minibatches": 10,
        "learning_rate": 0.0003,
        "max_grad_norm": 10.0,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
    },
    "Breakout-MinAtar": {
        "agent_kwargs": {"activation": "tanh"},
        "num_envs": 32,
        "num_steps": 32,
        "num_epochs": 4,
        "num_minibatches": 4,
        "learning_rate": 0.00025674088686342003,
        "max_grad_norm": 1.0,
        "gamma": 0.995,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
    },
}
# gymnax-blines' own PPO configuration for Breakout-MinAtar (github.com/RobertTLange/
# gymnax-blines, agents/Breakout-MinAtar/ppo.yaml, commit 15b76af), the one behind gymnax's
# published 28 after 10M steps, as rejax's fields: 64 envs x 128 steps, 8 minibatches,
# 4 epochs, lr 5e-4 (its "warm-up" runs from 5e-4 to 5e-4, so the rate is constant),
# gradient clip 0.5, gamma 0.999, GAE 0.95, clip 0.2, entropy 0.01, value 0.5, and its
# network: separate actor and critic MLPs of 256-256 relu on the flattened frame. Run through
# rejax, whose update differs from gymnax-blines' own in three details: rejax clips each
# gradient element at max_grad_norm (``optax.clip``) where gymnax-blines clips the global norm,
# its Adam has eps 1e-8 (gymnax-blines 1e-5), and its biases start at zero (gymnax-blines
# uniform(0.05)).
PPO_BLINES_CONFIGS: dict[str, dict[str, Any]] = {
    "Breakout-MinAtar": {
        "agent_kwargs": {"activation": "relu", "hidden_layer_sizes": (256, 256)},
        "num_envs": 64,
        "num_steps": 128,
        "num_epochs": 4,
        "num_minibatches": 8,
        "learning_rate": 0.0005,
        "max_grad_norm": 0.5,
        "gamma": 0.999,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
    },
}
# Each PPO contender and where its configuration comes from.
PPO_SOURCES = {"ppo": PPO_CONFIGS, "ppo_blines": PPO_BLINES_CONFIGS}
HIDDEN = (64, 64)  # rejax's default hidden_layer_sizes, the actor every contender trains
QUICK = {"envs": ("CartPole-v1",), "budget_cpu_s": 1.0, "hidden": (8,), "population": 16}
EVAL_EPISODES, EVAL_SEED = 16, 4321


class Clock:
    """Per-run shares of a batch's CPU and wall time, host bookkeeping between chunks
    excluded (``pause`` / ``resume`` around it)."""

    def __init__(self, size: int):
        self.size, self.cpu, self.wall = size, 0.0, 0.0
        self.resume()

    def resume(self) -> None:
        self._c, self._w = time.process_time(), time.perf_counter()

    def pause(self) -> None:
        self.cpu += (time.process_time() - self._c) / self.size
        self.wall += (time.perf_counter() - self._w) / self.size


def curve_point(steps, returns, clock: Clock) -> dict[str, Any]:
    return {
        "steps": [int(s) for s in np.asarray(steps)],
        "eval_return": [round(float(r), 2) for r in np.asarray(returns)],
        "cpu_s": round(clock.cpu, 3),
        "wall_s": round(clock.wall, 3),
    }


def five_tuple(genv):
    from gymnax.environments import environment

    class FiveTuple(environment.Environment):
        """gymnax >= 1.0's environment as rejax 0.1.3 reads it: ``step`` returns
        ``(obs, state, reward, done, info)``, ``done`` = terminated or truncated (gymnax
        0.0.x's contract). Everything else is the wrapped environment's."""

        def __init__(self, env):
            super().__init__()
            self.env = env

        @property
        def default_params(self):
            return self.env.default_params

        def step(self, key, state, action, params=None):
            obs, state, reward, terminated, truncated, info = self.env.step(
                key, state, action, params
            )
            return obs, state, reward, jnp.logical_or(terminated, truncated), info

        def reset(self, key, params=None):
            return self.env.reset(key, params)

        def action_space(self, params=None):
            return self.env.action_space(params)

        def observation_space(self, params):
            return self.env.observation_space(params)

        @property
        def name(self):
            return self.env.name

        @property
        def num_actions(self):
            return self.env.num_actions

    return FiveTuple(genv)


def ppo_config(env_name: str, quick: bool, method: str = "ppo") -> dict[str, Any]:
    """The configuration PPO contender ``method`` runs with (``PPO_SOURCES``: rejax's published
    one, or gymnax-blines'), or its tiny quick version."""
    configs = PPO_SOURCES[method]
    if env_name not in configs:
        raise ValueError(f"{method} has a configuration for {sorted(configs)}, not {env_name!r}")
    config = dict(configs[env_name])
    if quick:
        config.update(num_envs=2, num_steps=16, num_epochs=1, num_minibatches=1)
        config["agent_kwargs"] = dict(config["agent_kwargs"], hidden_layer_sizes=QUICK["hidden"])
    return config


def hidden_of(config: dict[str, Any]) -> tuple[int, ...]:
    """The hidden layers of a PPO configuration's actor and critic (rejax's default if unset)."""
    return tuple(config.get("agent_kwargs", {}).get("hidden_layer_sizes", HIDDEN))


def make_ppo(env_name: str, lr: float, chunk: int, quick: bool, method: str = "ppo"):
    """rejax's PPO on ``env_name`` with ``method``'s configuration at learning rate ``lr``,
    ``chunk`` steps per ``train`` call, its own evaluation switched off."""
    import gymnax
    from rejax import get_algo

    genv, env_params = gymnax.make(env_name)
    config = dict(ppo_config(env_name, quick, method), learning_rate=lr)
    algo = get_algo("ppo").create(
        env=five_tuple(genv),
        env_params=env_params,
        total_timesteps=chunk,
        eval_freq=chunk,
        skip_initial_evaluation=True,
        **config,
    )
    return algo.replace(eval_callback=lambda algo, ts, rng: ())  # evaluated apart


def run_ppo(
    env_name: str, lr: float, seeds: list[int], spec: dict, quick: bool, method: str = "ppo"
) -> dict:
    """PPO with ``method``'s configuration at learning rate ``lr``, one run per seed, batched;
    chunks of ``spec[f'{method}_chunk_steps']`` steps until the per-run CPU budget is spent."""
    from evojax_nets.tasks.rl import make_env
    from evojax_nets.tasks.rl.episodes import run_episodes

    chunk = spec[f"{method}_chunk_steps"] if not quick else 512
    algo = make_ppo(env_name, lr, chunk, quick, method)
    env = make_env(env_name)
    discrete = env.discrete

    def evaluate(ts, index):
        def step(carry, obs):
            dist = algo.actor.apply(
                ts.actor_ts.params, obs[None], method=lambda m, o: m._action_dist(o)
            )
            out = dist.mode()[0]
            return carry, out if discrete else jnp.clip(out, env.action_low, env.action_high)

        key = jax.random.fold_in(jax.random.key(EVAL_SEED), index)
        result = run_episodes(
            env,
            step,
            (),
            key,
            None,
            EVAL_EPISODES,
            length=env.max_steps,
            to_action=lambda out, _: out.astype(jnp.int32) if discrete else out,
            obs_clip=None,
        )
        return jnp.mean(result.ret)

    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    t0 = time.perf_counter()
    states = jax.jit(jax.vmap(algo.init_state))(keys)
    train = jax.jit(jax.vmap(lambda ts: algo.train(train_state=ts)[0])).lower(states).compile()
    evaluate_all = jax.jit(jax.vmap(evaluate, in_axes=(0, None)))
    evaluate_all(states, 0).block_until_ready()
    compile_s = time.perf_counter() - t0
    clock, curve, eval_cpu = Clock(len(seeds)), [], 0.0
    budget = QUICK["budget_cpu_s"] if quick else spec["budget_cpu_s"]
    index = 0
    while clock.cpu < budget:
        clock.resume()
        states = jax.block_until_ready(train(states))
        clock.pause()
        index += 1
        c0 = time.process_time()
        returns = evaluate_all(states, index)
        curve.append(curve_point(states.global_step, returns, clock))
        eval_cpu += time.process_time() - c0
    return {"curve": curve, "compile_s": round(compile_s, 2), "eval_cpu_s": round(eval_cpu, 2)}
