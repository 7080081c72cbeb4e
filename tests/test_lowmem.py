"""Bounded memory: chunked evaluation, and the OpenAI-ES that regenerates its noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.lowmem import LowMemoryOpenES
from evojax_nets.models import MLP


def test_update_equals_the_explicit_open_es_estimate() -> None:
    """With SGD(lr=1) the step is minus the gradient: compare it with the estimate computed
    from the materialised population, as evosax's Open_ES computes it."""
    pop, dim, std = 10, 7, 0.3
    es = LowMemoryOpenES(pop, jnp.zeros(dim), optimizer=optax.sgd(1.0), batch_size=3)
    params = es.default_params.replace(std_init=std)
    mean = jnp.linspace(-1.0, 1.0, dim)
    lazy, state = es.ask(jax.random.key(1), es.init(jax.random.key(0), mean, params), params)
    population = jnp.stack([lazy.member(i) for i in range(pop)])
    # Antithetic: member j + P/2 mirrors member j.
    np.testing.assert_allclose(population[:5] - mean, mean - population[5:], atol=1e-6)
    fitness = jnp.sum(population**2, axis=1)
    ranks = jnp.argsort(jnp.argsort(fitness)).astype(jnp.float32)
    shaped = ranks / (pop - 1) - 0.5
    grad = shaped @ ((population - mean) / std) / (pop * std)
    new, _ = es.tell(jax.random.key(2), lazy, fitness, state, params)
    np.testing.assert_allclose(new.mean, mean - grad, rtol=1e-5, atol=1e-6)
    # The evaluation helper visits the same members, in order, a batch at a time.
    np.testing.assert_allclose(lazy.map(lambda th: jnp.sum(th**2)), fitness, rtol=1e-6)
    np.testing.assert_allclose(lazy.materialize(), population, rtol=1e-6)


def test_low_memory_es_descends_a_quadratic() -> None:
    es = LowMemoryOpenES(32, jnp.zeros(20), optimizer=optax.adam(0.05), batch_size=8)
    params = es.default_params.replace(std_init=0.1)
    state = es.init(jax.random.key(0), jnp.ones(20), params)

    @jax.jit
    def step(state, key):
        lazy, state = es.ask(key, state, params)
        fitness = lazy.map(lambda th: jnp.sum(th**2))
        return es.tell(key, lazy, fitness, state, params)[0]

    for i in range(60):
        state = step(state, jax.random.key(i + 1))
    assert float(jnp.sum(state.mean**2)) < 0.2 * 20


@pytest.mark.parametrize("population_size", [0, 7])
def test_low_memory_es_needs_an_even_population(population_size: int) -> None:
    with pytest.raises(ValueError, match="population_size"):
        LowMemoryOpenES(population_size, jnp.zeros(5), optimizer=optax.sgd(0.1))


def _digits_evolution(strategy: str, **kwargs) -> Evolution:
    return Evolution(
        MLP(64, (16,), 10, rngs=nnx.Rngs(0)),
        Supervised.from_dataset(load_digits(), 128),
        strategy,
        32,
        **kwargs,
    )


def test_chunked_evaluation_equals_vmapped() -> None:
    full = _digits_evolution("open_es")
    chunked = _digits_evolution("open_es", eval_batch_size=5)
    population = full.network.theta0 + 0.05 * jax.random.normal(
        jax.random.key(3), (32, full.network.num_params)
    )
    key = jax.random.key(4)
    np.testing.assert_allclose(
        chunked.evaluate(key, population), full.evaluate(key, population), rtol=1e-5
    )


def test_low_memory_es_learns_digits_through_the_engine() -> None:
    evo = _digits_evolution("low_memory_open_es", eval_batch_size=8)
    state = evo.init(jax.random.key(0))
    state, history = evo.run(state, 30, chunk_size=10)
    loss = history.column("mean_fitness")
    assert loss[-5:].mean() < 0.85 * loss[:5].mean()
    assert history.last["test_accuracy_mean"] > 0.3  # chance is 0.1
    with pytest.raises(ValueError, match="eval_batch_size"):
        _digits_evolution("open_es", eval_batch_size=0)


def test_memory_estimate_refuses_a_run_that_will_not_fit() -> None:
    small = _digits_evolution("open_es").memory_estimate()
    chunked = _digits_evolution("open_es", eval_batch_size=4).memory_estimate()
    lowmem = _digits_evolution("low_memory_open_es", eval_batch_size=4).memory_estimate()
    assert 0 < lowmem["temp"] < small["temp"]
    assert chunked["total"] > 0
    tight = _digits_evolution("open_es", max_memory_bytes=small["total"] // 2)
    with pytest.raises(MemoryError, match=r"max_memory_bytes.*eval_batch_size"):
        tight.run(tight.init(jax.random.key(0)), 2)
