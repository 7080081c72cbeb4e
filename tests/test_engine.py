"""The engine's run: determinism, one compile per run shape, vectorised evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mlp
from flax import nnx
from helpers import assert_trees_equal
from jax import monitoring

from evojax_nets import Evolution, Supervised

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA compilations while active."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            self.count += 1

    def __enter__(self):
        monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        monitoring.unregister_event_duration_listener(self)


# -- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["cma_es", "de"])  # distribution- / population-based
def test_same_key_gives_bit_identical_runs(strategy, tiny_data):
    x, y = tiny_data
    task = Supervised(x, y, batch_size=16)  # minibatches drawn from the key as well

    def run(evo, seed):
        return evo.run(evo.init(jax.random.key(seed)), 4, chunk_size=2)

    evo = Evolution(make_mlp(), task, strategy, 8)
    state_a, history_a = run(evo, 0)
    state_b, history_b = run(evo, 0)  # same compiled executable
    fresh = Evolution(make_mlp(), task, strategy, 8)
    state_c, history_c = run(fresh, 0)  # compiled again from scratch
    for state in (state_b, state_c):
        assert_trees_equal(state, state_a)  # includes the strategy state and the key
    assert_trees_equal(state_a.strategy_state, state_c.strategy_state)
    for history in (history_b, history_c):
        for row_a, row in zip(history_a.rows, history.rows, strict=True):
            for name in ("best_fitness", "mean_fitness", "best_so_far", "num_nonfinite"):
                assert row_a[name] == row[name]

    state_d, _ = run(evo, 1)
    assert not np.array_equal(evo.mean_theta(state_d), evo.mean_theta(state_a))


# -- one compile per run shape -------------------------------------------------------------


def test_jitted_step_has_one_cache_entry(mlp, tiny_task):
    """The initial state and the stepped state have the same dtypes (no weak types), so the
    jitted generation step does not compile a second time."""
    evo = Evolution(mlp, tiny_task, "open_es", 8)
    state = evo.init(jax.random.key(0))
    new_state, metrics = evo.step(state)
    assert evo._step._cache_size() == 1
    with CompileCounter() as counter:
        newer_state, _ = evo.step(new_state)
    assert evo._step._cache_size() == 1
    assert counter.count == 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(newer_state), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert not getattr(a, "weak_type", False)
    assert int(newer_state.generation) == 2
    assert np.isfinite(float(metrics["best_fitness"]))


def test_one_compile_per_chunk_size(mlp, tiny_task):
    """7 generations in chunks of 3 (3, 3 and a short 1) use one executable; later runs of
    the same chunk size compile nothing at all."""
    evo = Evolution(mlp, tiny_task, "open_es", 8)
    state = evo.init(jax.random.key(0))
    state, history = evo.run(state, 7, chunk_size=3)
    assert evo.runner.chunk_sizes == [3]
    assert [r["generation"] for r in history.rows] == list(range(1, 8))
    assert [r["evaluations"] for r in history.rows] == [8 * g for g in range(1, 8)]
    assert int(state.generation) == 7 and int(state.evaluations) == 56
    # Chunk-end rows carry the timing and the test metrics; the others do not.
    ends = [r["generation"] for r in history.rows if "wall_time" in r]
    assert ends == [3, 6, 7]
    assert all("test_accuracy_best" in history.rows[g - 1] for g in ends)
    assert history.rows[2]["compile_time"] > 0
    assert np.all(np.isfinite(history.column("best_so_far")))

    with CompileCounter() as counter:
        later, again = evo.run(state, 3, chunk_size=3)
        evo.run(later, 4, chunk_size=3)
    assert counter.count == 0, f"later runs compiled {counter.count} times"
    assert evo.runner.chunk_sizes == [3]
    assert again.last["compile_time"] == 0.0
    assert [r["generation"] for r in again.rows] == [8, 9, 10]

    # The inactive steps of the short chunk change nothing: 7 generations in chunks of 3
    # equal 7 generations in one chunk.
    whole = Evolution(make_mlp(), tiny_task, "open_es", 8)
    whole_state, whole_history = whole.run(whole.init(jax.random.key(0)), 7, chunk_size=7)
    np.testing.assert_allclose(whole.mean_theta(whole_state), evo.mean_theta(state), rtol=1e-5)
    np.testing.assert_allclose(
        whole_history.column("best_so_far"), history.column("best_so_far"), rtol=1e-5
    )


# -- vectorised evaluation -----------------------------------------------------------------


def population_around(theta0: jax.Array, size: int) -> jax.Array:
    return theta0 + 0.1 * jax.random.normal(jax.random.key(3), (size, theta0.shape[0]))


def test_evaluate_equals_a_per_member_loop_supervised(mlp, tiny_data):
    x, y = tiny_data
    evo = Evolution(mlp, Supervised(x, y, batch_size=16), "open_es", 8)
    population = population_around(evo.network.theta0, 8)
    key = jax.random.key(11)
    vectorised = np.asarray(evo.evaluate(key, population))
    member_fitness = jax.jit(evo.task.fitness)  # one member at a time, no vmap
    loop = np.array([float(member_fitness(key, population[i])) for i in range(8)])
    np.testing.assert_allclose(vectorised, loop, rtol=1e-5, atol=1e-6)
    assert vectorised.shape == (8,) and len(np.unique(vectorised)) == 8
    # Common random numbers: one key, one minibatch for everyone; another key, another batch.
    other = np.asarray(evo.evaluate(jax.random.key(12), population))
    assert not np.allclose(other, vectorised)


def test_evaluate_equals_a_per_member_loop_custom_fitness(tiny_data):
    x, _ = tiny_data

    def fitness(key, member):
        noise = jax.random.normal(key, x.shape)
        return jnp.mean(member(x + 0.1 * noise) ** 2)

    evo = Evolution(make_mlp(), fitness, "snes", 8, maximize=True)
    population = population_around(evo.network.theta0, 8)
    key = jax.random.key(4)
    vectorised = np.asarray(jax.jit(evo.evaluate)(key, population))
    loop = []
    for theta in population:
        member = evo.network.member(theta)
        assert isinstance(member, nnx.Module)
        loop.append(float(fitness(key, member)))
    np.testing.assert_allclose(vectorised, np.array(loop), rtol=1e-5, atol=1e-6)
