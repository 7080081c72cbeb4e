"""Objective sense (``maximize``) and non-finite fitness (NaN, +-inf)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LinenMLP, make_mlp
from flax import nnx
from jax.flatten_util import ravel_pytree

from evojax_nets import Evolution, PopulationOp
from evojax_nets.engine import sanitize_fitness

TARGET = 3.0


def flat_params(member) -> jax.Array:
    """All parameters of a member (NNX module or linen variables dict) as one vector."""
    if isinstance(member, nnx.Module):
        return ravel_pytree(nnx.state(member, nnx.Param))[0]
    return ravel_pytree(member["params"])[0]


def closeness(key, member):
    """Larger is better: -sum((params - 3)^2)."""
    return -jnp.sum((flat_params(member) - TARGET) ** 2)


def distance(key, member):
    """Smaller is better: the negated ``closeness``."""
    return jnp.sum((flat_params(member) - TARGET) ** 2)


# -- maximize ------------------------------------------------------------------------------


def run_toward_target(model, variables, fitness, maximize):
    evo = Evolution(
        model, fitness, "open_es", 16, variables=variables, maximize=maximize, learning_rate=0.1
    )
    return (evo, *evo.run(evo.init(jax.random.key(0)), 5))


@pytest.fixture(scope="module")
def linen_runs(tiny_data):
    """The linen MLP run twice: maximising ``closeness`` and minimising ``distance``."""
    module = LinenMLP()
    variables = module.init(jax.random.key(0), tiny_data[0][:2])
    return {
        True: run_toward_target(module, variables, closeness, True),
        False: run_toward_target(module, variables, distance, False),
    }


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_maximize_drives_the_objective_up(kind, linen_runs):
    if kind == "nnx":
        evo, state, history = run_toward_target(make_mlp(), None, closeness, True)
    else:
        evo, state, history = linen_runs[True]
    theta0 = np.asarray(evo.network.theta0)
    mean = np.asarray(evo.mean_theta(state))
    # The mean moves up, toward 3 (all parameters start well below it).
    assert np.all(theta0 < TARGET - 1)
    assert np.mean(mean - theta0) > 0.1
    assert np.mean(mean > theta0) > 0.6
    objective = lambda theta: -np.sum((theta - TARGET) ** 2)
    assert objective(mean) > objective(theta0) + 20.0
    best = history.column("best_so_far")
    assert np.all(np.diff(best) >= 0), best
    assert best[-1] > best[0]
    assert best[0] > float(closeness(None, evo.export(evo.network.theta0))) - 1.0
    # best_so_far is reported in the task's own sense: the fitness of the tracked best member.
    np.testing.assert_allclose(best[-1], float(closeness(None, evo.best(state))), rtol=1e-6)


def test_minimizing_the_negated_objective_is_the_same_run(linen_runs):
    """Negation is exact, so maximising f and minimising -f give bit-identical runs."""
    (evo_max, s_max, h_max), (evo_min, s_min, h_min) = linen_runs[True], linen_runs[False]
    np.testing.assert_array_equal(evo_max.mean_theta(s_max), evo_min.mean_theta(s_min))
    np.testing.assert_array_equal(h_max.column("best_so_far"), -h_min.column("best_so_far"))
    np.testing.assert_array_equal(h_max.column("mean_fitness"), -h_min.column("mean_fitness"))
    assert np.all(np.diff(h_min.column("best_so_far")) <= 0)
    assert h_min.last["best_so_far"] < h_min.rows[0]["best_so_far"]
    theta0 = np.asarray(evo_min.network.theta0)
    assert np.mean(np.asarray(evo_min.mean_theta(s_min)) - theta0) > 0.1


def test_plain_fitness_function_needs_maximize(mlp):
    with pytest.raises(ValueError, match="maximize"):
        Evolution(mlp, closeness, "open_es", 8)


def test_task_and_maximize_must_agree(mlp, tiny_task):
    with pytest.raises(ValueError, match="maximize=True contradicts"):
        Evolution(mlp, tiny_task, "open_es", 8, maximize=True)


# -- non-finite fitness --------------------------------------------------------------------


def sabotaged(maximize: bool):
    """``closeness`` (or ``distance``), but about a quarter of the members get NaN and a
    quarter the infinity that would win (+inf when maximising, -inf when minimising), chosen
    by a hash of the parameters so that it changes from member to member."""
    good = closeness if maximize else distance
    winning_inf = jnp.inf if maximize else -jnp.inf
    w = jax.random.normal(jax.random.key(123), (51,))

    def fitness(key, member):
        theta = flat_params(member)
        u = jnp.mod(jnp.dot(theta, w) * 37.0, 1.0)
        value = good(key, member)
        return jnp.where(u < 0.25, jnp.nan, jnp.where(u > 0.75, winning_inf, value))

    return fitness


def record_phenotype() -> PopulationOp:
    """Keeps the last evaluated population in the operator state."""
    return PopulationOp(
        init=lambda key, population: population,
        apply=lambda key, members, state, ctx: (members, members.phenotype),
    )


@pytest.mark.parametrize(
    ("strategy", "maximize"), [("open_es", True), ("open_es", False), ("de", True)]
)
def test_nonfinite_fitness_never_becomes_best(strategy, maximize):
    fitness = sabotaged(maximize)
    # A known initial population (the key is ignored), so the initial evaluation can be checked.
    noise = 0.05 * jax.random.normal(jax.random.key(5), (16, 51))
    population_init = lambda key, size: make_mlp_theta0() + noise
    evo = Evolution(
        make_mlp(),
        fitness,
        strategy,
        16,
        maximize=maximize,
        ops=record_phenotype(),
        population_init=population_init,
    )
    state0 = evo.init(jax.random.key(0))
    init_nonfinite = int(state0.nonfinite)
    if evo.strategy.population_based:
        values = np.asarray(evo.evaluate(jax.random.key(0), population_init(None, 16)))
        assert init_nonfinite == np.sum(~np.isfinite(values)) > 0
        best = np.max if maximize else np.min
        np.testing.assert_allclose(
            float(state0.best_fitness), (-1 if maximize else 1) * best(values[np.isfinite(values)])
        )
    else:
        assert init_nonfinite == 0

    state, history = evo.run(state0, 4)
    best_so_far = history.column("best_so_far")
    per_gen = history.column("best_fitness")
    counts = history.column("num_nonfinite")
    assert np.all(np.isfinite(best_so_far)) and np.all(np.isfinite(per_gen))
    assert np.all(np.isfinite(history.column("mean_fitness")))
    running = np.maximum.accumulate if maximize else np.minimum.accumulate
    if not evo.strategy.population_based:
        np.testing.assert_array_equal(best_so_far, running(per_gen))
    assert np.all(counts > 0) and np.all(counts < 16), counts
    assert int(state.nonfinite) == init_nonfinite + int(counts.sum())
    assert np.all(np.isfinite(np.asarray(evo.mean_theta(state))))

    # The last generation, recomputed member by member from the recorded population.
    last = np.asarray(state.op_state)
    values = np.array([float(evo.task.fitness(None, theta)) for theta in last])
    finite = np.isfinite(values)
    assert counts[-1] == np.sum(~finite)
    expected = values[finite].max() if maximize else values[finite].min()
    np.testing.assert_allclose(per_gen[-1], expected, rtol=1e-5)
    # best_so_far is a real, finite member's fitness.
    np.testing.assert_allclose(
        float(evo.task.fitness(None, state.best_theta)), best_so_far[-1], rtol=1e-5
    )


def make_mlp_theta0() -> jax.Array:
    return ravel_pytree(nnx.state(make_mlp(), nnx.Param))[0]


@pytest.mark.parametrize("maximize", [True, False])
def test_all_nonfinite_generations_leave_the_best_unset(maximize, mlp):
    evo = Evolution(mlp, lambda key, member: jnp.float32(jnp.nan), "open_es", 8, maximize=maximize)
    state, history = evo.run(evo.init(jax.random.key(0)), 2)
    assert history.column("num_nonfinite").tolist() == [8, 8]
    assert int(state.nonfinite) == 16
    assert float(state.best_fitness) == np.inf  # minimised internally: nothing seen yet
    assert history.last["best_so_far"] == (-np.inf if maximize else np.inf)
    assert np.all(np.isnan(history.column("mean_fitness")))
    # A constant (sanitised) fitness gives the strategy nothing to follow, but breaks nothing.
    np.testing.assert_allclose(evo.mean_theta(state), evo.network.theta0, atol=1e-5)


# -- sanitize_fitness ----------------------------------------------------------------------


def test_sanitize_fitness_puts_nonfinite_last():
    raw = jnp.array([1.0, jnp.nan, 3.0, -jnp.inf, jnp.inf, 2.0])
    clean, finite = sanitize_fitness(raw)
    np.testing.assert_array_equal(finite, [True, False, True, False, False, True])
    np.testing.assert_array_equal(clean[np.asarray(finite)], [1.0, 3.0, 2.0])
    assert np.all(np.isfinite(clean))
    # Worse (larger, minimised) than every finite value, by more than the finite range.
    assert np.all(clean[~np.asarray(finite)] > 3.0 + (3.0 - 1.0))
    assert int(jnp.argmin(clean)) == 0


def test_sanitize_fitness_all_nonfinite():
    clean, finite = sanitize_fitness(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
    assert not np.any(finite)
    assert np.all(np.isfinite(clean))
    assert np.all(clean == clean[0])  # no member is preferred


def test_sanitize_fitness_keeps_finite_values_and_works_under_jit():
    raw = jnp.array([0.5, -2.0, 7.0], jnp.float32)
    clean, finite = jax.jit(sanitize_fitness)(raw)
    np.testing.assert_array_equal(clean, raw)
    assert clean.dtype == raw.dtype
    assert np.all(finite)
    clean, finite = jax.jit(sanitize_fitness)(jnp.array([jnp.nan, 4.0, jnp.nan]))
    np.testing.assert_array_equal(finite, [False, True, False])
    assert clean[1] == 4.0 and np.all(clean[np.array([0, 2])] > 4.0)
