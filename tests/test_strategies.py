"""Every registered strategy runs inside ``lax.scan`` on a tiny network, and the
network-sized defaults put the first samples at the requested scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_mlp

from evojax_nets import Evolution, PopulationOp
from evojax_nets.strategies import DEFAULT_STD, strategy_names

# Population size and constructor arguments per strategy; everything else uses (8, {}).
# SV_CMA_ES / SV_Open_ES split the 8 members into num_populations=2 groups of 4.
# GESMR_GA needs (P - 1) % num_groups == 0; num_groups=4 exercises its per-group step sizes.
SETTINGS: dict[str, tuple[int, dict]] = {
    "GESMR_GA": (9, {"num_groups": 4}),
}

# Strategies whose first samples are not ~std per coordinate around the mean by design:
# Guided ES and ASEBO scale the whole perturbation to norm ~std (per coordinate
# std * sqrt(alpha / D)); RandomSearch samples around the origin, not the mean.
NOT_PER_COORDINATE = {"GuidedES", "ASEBO", "RandomSearch"}


def record_first_population() -> PopulationOp:
    """An operator that changes nothing and keeps generation 1's population in its state."""

    def apply(key, members, state, ctx):
        return members, jnp.where(ctx.generation == 0, members.phenotype, state)

    return PopulationOp(init=lambda key, population: population, apply=apply)


@pytest.fixture(scope="module")
def cross_entropy(tiny_data):
    """The tiny classification data's full-batch loss, as a custom fitness: the same as
    ``Supervised(x, y, batch_size=None)`` without test metrics, which would cost every one of
    these 38 runs a second compilation."""
    x, y = (jnp.asarray(a) for a in tiny_data)

    def fitness(key, member):
        return optax.softmax_cross_entropy_with_integer_labels(member(x), y).mean()

    return fitness


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_runs_three_scanned_generations(name, cross_entropy):
    population_size, kwargs = SETTINGS.get(name, (8, {}))
    # The low-memory and low-rank strategies never build the (P, D) population an operator
    # would record.
    lazy = name == "LowMemoryOpenES"
    implicit = lazy or name == "LowRankES"
    evo = Evolution(
        make_mlp(),
        cross_entropy,
        name,
        population_size,
        maximize=False,
        strategy_kwargs=kwargs,
        ops=None if implicit else record_first_population(),
    )
    assert evo.strategy.lazy == lazy
    assert evo.population_size == population_size
    state = evo.init(jax.random.key(0))
    state, history = evo.run(state, 3, chunk_size=3)

    assert [r["generation"] for r in history.rows] == [1, 2, 3]
    best = history.column("best_so_far")
    assert np.all(np.isfinite(best)), best
    assert np.all(np.diff(best) <= 0), f"best_so_far of a minimised loss went up: {best}"
    assert int(state.generation) == 3
    initial = 1 if evo.strategy.population_based else 0
    assert int(state.evaluations) == (3 + initial) * population_size
    assert np.all(np.isfinite(np.asarray(evo.mean_theta(state))))
    # The tracked best really has the recorded loss.
    loss = evo.task.fitness(jax.random.key(1), state.best_theta)
    np.testing.assert_allclose(float(loss), best[-1], rtol=1e-5)

    if not (evo.strategy.population_based or implicit) and name not in NOT_PER_COORDINATE:
        first = np.asarray(state.op_state) - np.asarray(evo.network.theta0)
        spread = float(first.std())
        assert 0.3 * DEFAULT_STD < spread < 3 * DEFAULT_STD, (
            f"{name}: the first samples have spread {spread:.4f}, not ~std={DEFAULT_STD}"
        )
