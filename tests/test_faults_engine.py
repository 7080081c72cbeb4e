"""Issue 13's engine items: each test failed on the code before the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import Open_ES as EvosaxOpenES
from flax import nnx

from evojax_nets import Evolution
from evojax_nets.program import sanitize_fitness


def _linear() -> nnx.Module:
    return nnx.Linear(2, 1, rngs=nnx.Rngs(0))


def _loss(key, model):  # positive: a loss
    return jnp.sum((model(jnp.ones((1, 2))) - 3.0) ** 2) + 1.0


def test_item5_all_nonfinite_generation_ranks_below_every_real_loss() -> None:
    clean, finite = sanitize_fitness(jnp.array([jnp.nan, jnp.inf, jnp.nan]))
    assert not bool(finite.any())
    assert bool(jnp.all(clean > 1e30)) and bool(jnp.all(jnp.isfinite(clean)))
    # Huge finite values next to a NaN: the substitute is worse and still finite.
    clean, _ = sanitize_fitness(jnp.array([3e38, -3e38, jnp.nan]))
    assert bool(jnp.isfinite(clean).all()) and float(clean[2]) >= float(clean[0])
    # All finite values equal and large: the substitute is strictly worse, never a tie.
    clean, _ = sanitize_fitness(jnp.array([1e30, 1e30, jnp.nan]))
    assert float(clean[2]) > 1e30


@pytest.mark.parametrize("strategy", ["de", "pso"])
def test_item5_one_nan_generation_does_not_freeze_de_and_pso(strategy: str) -> None:
    """One all-NaN generation told to DE / PSO must not freeze them: before the fix it scored
    0.0, which beat every real (positive) loss for good."""
    evo = Evolution(_linear(), _loss, strategy, 16, maximize=False, std=0.5)
    state, _ = evo.run(evo.init(jax.random.key(0)), 2)
    # Poison one whole generation by telling the strategy an all-NaN fitness directly.
    pop, sstate = evo.strategy.ask(jax.random.key(1), state.strategy_state, evo.params.strategy)
    clean, _ = sanitize_fitness(jnp.full((16,), jnp.nan))
    sstate, _ = evo.strategy.tell(jax.random.key(2), pop, clean, sstate, evo.params.strategy)
    state = state.replace(strategy_state=sstate)
    # The record the strategy compares new members against: DE's fitness, PSO's personal bests.
    field = "fitness_best" if strategy == "pso" else "fitness"
    before = float(jnp.min(getattr(sstate, field)))
    state, _ = evo.run(state, 30)
    after = float(jnp.min(getattr(state.strategy_state, field)))
    assert before < 1e30, "the all-NaN generation replaced the real losses"
    assert after < before, f"{strategy} froze after an all-NaN generation: {before} -> {after}"


@pytest.mark.parametrize("setting", ["std", "learning_rate"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -0.1])
def test_item11_nonfinite_settings_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        Evolution(_linear(), _loss, "open_es", 8, maximize=False, **{setting: value})
    evo = Evolution(_linear(), _loss, "open_es", 8, maximize=False)
    with pytest.raises(ValueError, match=setting):
        evo.params_with(**{setting: value})


@pytest.mark.parametrize(
    ("fitness", "message"),
    [
        (lambda key, m: m(jnp.ones((10, 2)))[:, 0], r"scalar; it returned shape \(10,\)"),
        (lambda key, m: (jnp.float32(0.0), jnp.float32(1.0)), r"scalar array; it returned tuple"),
        (lambda key, m: jnp.sum(m(jnp.ones((1, 2)))) > 0, r"real number; it returned dtype bool"),
    ],
)
def test_item12_fitness_output_checked_at_construction(fitness, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Evolution(_linear(), fitness, "open_es", 8, maximize=False)


def test_item13_instance_population_size_and_std_are_not_ignored() -> None:
    instance = EvosaxOpenES(population_size=16, solution=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"population_size=8 disagrees .* population_size=16"):
        Evolution(_linear(), _loss, instance, 8, maximize=False)
    with pytest.raises(ValueError, match=r"std= would be ignored"):
        Evolution(_linear(), _loss, instance, 16, maximize=False, std=0.1)
    with pytest.raises(ValueError, match=r"learning_rate"):
        Evolution(_linear(), _loss, instance, 16, maximize=False, learning_rate=0.1)
    Evolution(_linear(), _loss, instance, 16, maximize=False)  # as built: accepted


def test_item16_memory_guard_messages_and_init_guard() -> None:
    big = nnx.Linear(100, 1000, rngs=nnx.Rngs(0))  # 101,000 weights
    fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 100))))
    # A GA's state holds the population, not D x D matrices: say so, suggest what shrinks it.
    with pytest.raises(MemoryError) as err:
        Evolution(big, fitness, "ga", 256, maximize=False, max_state_bytes=20 * 2**20)
    message = str(err.value)
    assert "256 x 101,000 population" in message and "x 101,000 matrices" not in message
    assert "diagonal" not in message and "smaller population_size" in message
    # The initial evaluation of a population-based strategy is guarded too.
    evo = Evolution(big, fitness, "de", 256, maximize=False, max_memory_bytes=20 * 2**20)
    with pytest.raises(MemoryError, match="initial state"):
        evo.init(jax.random.key(0))


def test_item16_eval_batch_hint_is_not_repeated_once_taken() -> None:
    evo = Evolution(_linear(), _loss, "open_es", 64, maximize=False, eval_batch_size=8)
    assert not any("eval_batch_size" in h for h in evo._memory_hints())
    evo = Evolution(_linear(), _loss, "open_es", 64, maximize=False)
    assert any("eval_batch_size=8" in h for h in evo._memory_hints())


def test_item17_all_nonfinite_run_warns() -> None:
    evo = Evolution(_linear(), lambda k, m: jnp.float32(jnp.nan), "snes", 8, maximize=False)
    with pytest.warns(RuntimeWarning, match=r"3 of 3 generations had no finite fitness"):
        state, _ = evo.run(evo.init(jax.random.key(0)), 3)
    assert np.isinf(float(state.best_fitness))
