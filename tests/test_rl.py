"""RL task: rollouts equal a hand-written loop, episodes stay ended, returns are maximised,
observation statistics are exact, recurrent carries restart every episode, and two real
environments run end to end."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("gymnax")

from evojax_nets import Evolution
from evojax_nets.nets import from_nnx
from evojax_nets.policies import CNNPolicy, MLPPolicy, RecurrentPolicy
from evojax_nets.tasks.rl import (
    Env,
    ObsMoments,
    RLState,
    RLTask,
    RunningStats,
    rollout,
)

# -- a hand-written reference: one member, one episode, one step at a time ----------------------


@functools.lru_cache
def gymnax_env(name: str):
    import gymnax

    return gymnax.make(name)


@functools.lru_cache
def jitted_policy(network, recurrent: bool):
    if recurrent:
        return jax.jit(lambda theta, carry, x: network.apply(theta, carry, x))
    return jax.jit(lambda theta, x: network.apply(theta, x))


def reference_episode(task: RLTask, network, theta, key, stats: RunningStats | None):
    """Python loop over gymnax's public ``reset``/``step`` (with its automatic reset), stopped
    at the first ``done``; returns (return, length, observations the policy saw)."""
    genv, params = gymnax_env(task.env)
    member = network.member(theta)
    recurrent = hasattr(member, "initial_carry")
    policy = jitted_policy(network, recurrent)
    carry = member.initial_carry() if recurrent else None
    if stats is not None:
        mean, std = np.asarray(stats.mean), np.maximum(np.asarray(stats.std), 1e-6)
    key_reset, key_run = jax.random.split(key)
    obs, state = genv.reset(key_reset, params)
    total, seen = 0.0, []
    for t in range(task.length):
        seen.append(np.asarray(obs))
        x = seen[-1] if stats is None else np.clip((seen[-1] - mean) / std, -10, 10)
        if recurrent:
            carry, out = policy(theta, carry, x)
        else:
            out = policy(theta, x)
        action = int(np.argmax(out))
        _, key_env = jax.random.split(jax.random.fold_in(key_run, t))
        obs, state, reward, terminated, truncated, _ = genv.step(key_env, state, action, params)
        total += float(reward)
        if bool(terminated) or bool(truncated):
            break
    return total, len(seen), np.stack(seen)


def population(network, n: int, scale: float = 0.5, seed: int = 0):
    noise = jax.random.normal(jax.random.key(seed), (n, network.num_params))
    return network.theta0 + scale * noise


def some_stats(shape) -> RunningStats:
    """Non-trivial statistics, so that normalisation matters."""
    rng = np.random.default_rng(1)
    return RunningStats(
        jnp.float32(100.0),
        jnp.asarray(rng.normal(0, 0.05, shape), jnp.float32),
        jnp.asarray(100 * rng.uniform(0.01, 0.5, shape), jnp.float32),
    )


def test_vectorised_rollout_equals_per_member_loop():
    task = RLTask("CartPole-v1", num_episodes=2, episode_length=60)
    network = from_nnx(MLPPolicy(task.obs_shape, task.num_outputs, (8,), rngs=nnx.Rngs(0)))
    stats = some_stats(task.obs_shape)
    tstate = RLState(stats, jnp.int32(0))
    pop = population(network, 3)
    key = jax.random.key(7)
    lengths, returns = [], []
    for m in range(3):
        rets = []
        for ep_key in jax.random.split(key, 2):
            ret, length, _ = reference_episode(task, network, pop[m], ep_key, stats)
            rets.append(ret)
            lengths.append(length)
        returns.append(np.mean(rets))
    assert len(set(lengths)) > 1  # episodes of different lengths: masking was exercised
    for early_exit in (True, False):  # while_loop with early exit, and a full-length scan
        bound = dataclasses.replace(task, early_exit=early_exit).bind(network)
        fitness = jax.jit(jax.vmap(bound.fitness, in_axes=(None, 0, None)))
        fit, moments = fitness(key, pop, tstate)
        np.testing.assert_allclose(fit, returns)
        assert float(jnp.sum(moments.count)) == sum(lengths)


def toy_env(end: int, leak: float = 100.0) -> Env:
    """Reward 1 per step until step ``end`` terminates the episode; stepping on past the end
    (or an automatic reset) would pay ``leak`` per step. Observation: ``[t]``."""

    def reset(key):
        return jnp.zeros(1), jnp.int32(0)

    def step(key, t, action):
        t = t + 1
        reward = jnp.where(t > end, leak, 1.0)
        return jnp.asarray([t], jnp.float32), t, reward, t >= end

    return Env("toy", reset, step, (1,), 2, (), None, None, max_steps=50)


@pytest.mark.parametrize("early_exit", [True, False])
def test_terminated_episodes_are_masked(early_exit):
    network = from_nnx(MLPPolicy((1,), 2, (4,), rngs=nnx.Rngs(0)))
    for end, length, expected in ((5, 20, 5), (30, 12, 12)):  # terminated, then truncated
        task = RLTask(
            toy_env(end), episode_length=length, normalize_obs=False, early_exit=early_exit
        )
        bound = task.bind(network)
        state = bound.initial_state(jax.random.key(0))
        ret, moments = jax.jit(bound.fitness)(jax.random.key(1), network.theta0, state)
        assert float(ret) == expected
        assert float(moments.count) == expected
        # the policy saw t = 0 .. expected-1, never the terminal observation
        assert float(moments.sum[0]) == sum(range(expected))
        out = jax.jit(bound.test_metrics)(network.theta0, state)
        assert float(out["return"]) == expected
        assert float(out["length"]) == expected


class Bandit(nnx.Module):
    """A constant action: one bias."""

    def __init__(self):
        self.b = nnx.Param(jnp.zeros(1))

    def __call__(self, obs):
        return self.b[...]


def bandit_env() -> Env:
    """One step; the reward is the action in [-1, 1]."""
    return Env(
        "bandit",
        lambda key: (jnp.zeros(1), jnp.int32(0)),
        lambda key, s, a: (jnp.zeros(1), s, a[0], jnp.asarray(True)),
        (1,),
        None,
        (1,),
        -np.ones(1, np.float32),
        np.ones(1, np.float32),
        max_steps=1,
    )


def test_returns_are_maximised():
    task = RLTask(bandit_env(), normalize_obs=False, eval_episodes=2)
    evo = Evolution(Bandit(), task, "open_es", 16, std=0.3, learning_rate=0.2)
    assert evo.maximize
    state = evo.init(jax.random.key(0))
    state, history = evo.run(state, 15)
    assert history.last["test_return_mean"] > 0.9  # action -> +1, not -1
    fitness = history.column("best_fitness")
    assert np.all(fitness >= history.column("mean_fitness") - 1e-6)
    assert history.last["best_so_far"] == pytest.approx(np.max(fitness))
    with pytest.raises(ValueError, match="maximize"):
        Evolution(Bandit(), task, "open_es", 16, maximize=False)


def test_normalisation_statistics_match_numpy():
    task = RLTask("CartPole-v1", num_episodes=2, episode_length=40)
    network = from_nnx(MLPPolicy(task.obs_shape, task.num_outputs, (8,), rngs=nnx.Rngs(1)))
    bound = task.bind(network)
    fit = jax.jit(jax.vmap(bound.fitness, in_axes=(None, 0, None)))
    update = jax.jit(bound.update_state)
    state = bound.initial_state(jax.random.key(0))
    pop = population(network, 3, seed=3)
    seen = []
    for gen in range(2):  # the second generation is normalised with, and merged into, the first
        key = jax.random.key(10 + gen)
        stats = state.obs_stats
        _, moments = fit(key, pop, state)
        state = update(state, moments)
        for m in range(3):
            for ep_key in jax.random.split(key, 2):
                seen.append(
                    reference_episode(task, network, pop[m], ep_key, stats if gen else None)[2]
                )
        obs = np.concatenate(seen)
        np.testing.assert_allclose(state.obs_stats.mean, obs.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state.obs_stats.var, obs.var(0), rtol=1e-3, atol=1e-7)
        assert float(state.obs_stats.count) == len(obs)
    assert int(state.updates) == 2


def test_running_stats_merge_is_exact():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 3)).astype(np.float32) for n in (5, 17, 1, 40)]
    stats = RunningStats.zeros((3,))
    for b in batches:
        m = ObsMoments.zeros((3,))
        for x in b:
            m = m.add(jnp.asarray(x), stats.mean, jnp.float32(1.0))
        stats = stats.merge(m)
    allx = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, allx.var(0), rtol=1e-4)
    empty = stats.merge(ObsMoments.zeros((3,)))
    np.testing.assert_array_equal(empty.mean, stats.mean)


class Counter(nnx.Module):
    """Carry = steps since the episode began; pushes right at even steps, left at odd ones,
    unless the carry was not reset (then the first action is wrong)."""

    def __init__(self):
        self.w = nnx.Param(jnp.ones(()))

    def initial_carry(self):
        return jnp.float32(0.0)

    def __call__(self, carry, obs):
        even = jnp.mod(carry, 2.0) < 0.5
        return carry + 1.0, self.w[...] * jnp.where(
            even, jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0])
        )


def test_recurrent_carry_restarts_every_episode():
    # The toy env pays 1 per step; make the reward depend on the action at step 0 instead.
    def reset(key):
        return jnp.zeros(1), jnp.int32(0)

    def step(key, t, action):
        reward = jnp.where(t == 0, action.astype(jnp.float32), 0.0)  # 1 iff carry started at 0
        return jnp.zeros(1), t + 1, reward, t + 1 >= 3

    env = Env("first-action", reset, step, (1,), 2, (), None, None, max_steps=3)
    network = from_nnx(Counter())
    bound = RLTask(env, num_episodes=4, normalize_obs=False).bind(network)
    assert bound.extra["recurrent"]
    state = bound.initial_state(jax.random.key(0))
    result = jax.jit(lambda k: bound.extra["rollout"](k, network.theta0, state, 4))(
        jax.random.key(0)
    )
    np.testing.assert_array_equal(result.ret, np.ones(4))  # every episode starts at carry 0

    # A GRU policy on CartPole equals the per-episode hand loop (which restarts the carry).
    task = RLTask("CartPole-v1", num_episodes=2, episode_length=40, normalize_obs=False)
    network = from_nnx(RecurrentPolicy(task.obs_shape, 2, hidden=6, rngs=nnx.Rngs(0)))
    bound = task.bind(network)
    theta = population(network, 1, scale=1.0)[0]
    key = jax.random.key(3)
    fit, _ = jax.jit(bound.fitness)(key, theta, bound.initial_state(key))
    rets = [reference_episode(task, network, theta, k, None)[0] for k in jax.random.split(key, 2)]
    assert float(fit) == pytest.approx(np.mean(rets))


def cnn(task):
    return CNNPolicy(task.obs_shape, task.num_outputs, features=4, hidden=8, rngs=nnx.Rngs(0))


def mlp_policy(task):
    return MLPPolicy(task.obs_shape, task.num_outputs, (4,), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("env", "make", "strategy", "kwargs"),
    [
        # MinAtar images, a CNN, a distribution-based strategy.
        ("Breakout-MinAtar", cnn, "snes", {}),
        # Continuous actions; the elitist GA initialises from an evaluated population (the
        # statistics are updated then too), members evaluated in batches of 4 (lax.map).
        ("Pendulum-v1", mlp_policy, "ga", {"eval_batch_size": 4}),
    ],
)
def test_tiny_run(env, make, strategy, kwargs):
    task = RLTask(env, episode_length=30, eval_episodes=3)
    evo = Evolution(make(task), task, strategy, 8, std=0.1, **kwargs)
    state = evo.init(jax.random.key(0))
    initial_updates = int(state.task_state.updates)
    assert initial_updates == (1 if strategy == "ga" else 0)
    state, history = evo.run(state, 4, chunk_size=2)
    row = history.last
    for name in ("test_return_mean", "test_return_best", "test_length_mean"):
        assert np.isfinite(row[name])
    assert int(state.task_state.updates) == initial_updates + 4
    assert float(state.task_state.obs_stats.count) > 0
    if env == "Pendulum-v1":
        assert row["test_length_mean"] == 30  # Pendulum never terminates early
    policy = evo.solution(state)
    assert isinstance(policy, nnx.Module)
    stats = state.task_state.obs_stats
    out = rollout(task, policy, jax.random.key(1), num_episodes=2, obs_stats=stats)
    assert out.returns.shape == (2,) and np.all(np.asarray(out.lengths) <= 30)


def test_clear_errors():
    task = RLTask("CartPole-v1")
    with pytest.raises(ValueError, match="2 action logits"):
        task.bind(from_nnx(MLPPolicy((4,), 3, (4,), rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="do not fit the policy"):
        task.bind(from_nnx(MLPPolicy((7,), 2, (4,), rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="unknown gymnax environment"):
        _ = RLTask("CartPole").environment
    with pytest.raises(ValueError, match="obs_stats"):
        rollout(task, MLPPolicy((4,), 2, (4,), rngs=nnx.Rngs(0)), jax.random.key(0))
    with pytest.raises(ValueError, match="num_episodes"):
        RLTask("CartPole-v1", num_episodes=0)


def test_supervised_task_is_stateless(tiny_task, mlp):
    evo = Evolution(mlp, tiny_task, "open_es", 4)
    assert not evo.task.stateful
    assert evo.init(jax.random.key(0)).task_state == ()


@pytest.mark.skipif(
    not os.environ.get("EVOJAX_NETS_BRAX_TESTS"),
    reason="Brax compiles for minutes on a CPU: set EVOJAX_NETS_BRAX_TESTS=1 (brax extra)",
)
def test_brax_task():
    pytest.importorskip("brax")
    task = RLTask("brax:halfcheetah", episode_length=5, eval_episodes=2)
    assert task.obs_shape == (17,) and task.num_outputs == 6
    evo = Evolution(mlp_policy(task), task, "open_es", 4, std=0.1)
    _, history = evo.run(evo.init(jax.random.key(0)), 1)
    assert np.isfinite(history.last["test_return_mean"])
