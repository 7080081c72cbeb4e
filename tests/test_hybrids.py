"""Hybrids: gradient steps as an operator, hooks for distribution-based strategies, ESGD and
evolved starting points. Tiny networks and few generations: the file runs in well under a
minute on 2 CPU cores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_mlp
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import (
    blended_mean_update,
    esgd,
    gradient_steps,
    guided_es_gradient,
)
from evojax_nets.nets import from_nnx
from evojax_nets.ops import Members, OpContext
from evojax_nets.tasks.base import BoundTask
from evojax_nets.warmstart import (
    StartingPointTask,
    evolve_starting_point,
    init_scale_network,
    sample_sinusoid,
)


def _ctx(loss) -> OpContext:
    return OpContext(loss=loss, fitness=loss, generation=jnp.int32(0))


def _apply(op, key, pop, loss):
    """``op.apply`` under jit, on ``Members(pop, pop)`` with a fresh state."""
    return jax.jit(lambda k, m, s: op.apply(k, m, s, _ctx(loss)))(
        key, Members(pop, pop), op.init(key, pop)
    )


@pytest.fixture(scope="module")
def minibatch_loss(tiny_data):
    """The tiny task's minibatch cross-entropy (16 of 48 examples per key) on a 51-weight MLP."""
    x, y = tiny_data
    bound = Supervised(x, y, batch_size=16).bind(from_nnx(make_mlp()))
    return bound.loss, from_nnx(make_mlp()).theta0


def _population(theta0: jax.Array, size: int, seed: int = 1) -> jax.Array:
    noise = jax.random.normal(jax.random.key(seed), (size, theta0.shape[0]))
    return theta0 + 0.3 * noise


def _python_loop(loss, optimizer, theta, keys):
    """One member, one optax step at a time (each step jitted, the loop in Python)."""

    @jax.jit
    def step(k, theta, state):
        grads = jax.grad(loss, argnums=1)(k, theta)
        updates, state = optimizer.update(grads, state, theta)
        return optax.apply_updates(theta, updates), state

    state = optimizer.init(theta)
    for k in keys:
        theta, state = step(k, theta, state)
    return theta


@pytest.mark.parametrize("top_k", [None, 2])
def test_vectorised_steps_equal_a_per_member_python_loop(minibatch_loss, top_k):
    loss, theta0 = minibatch_loss
    pop = _population(theta0, 5)
    optimizer = optax.adam(0.05)
    op = gradient_steps(optimizer, 4, top_k=top_k)
    key = jax.random.key(3)
    out, state = _apply(op, key, pop, loss)

    # The operator's documented key use: k_pre picks top_k, step keys are shared by members.
    k_pre, k_steps = jax.random.split(key)
    keys = list(jax.random.split(k_steps, 4))
    chosen = range(5)
    if top_k is not None:
        pre = np.asarray([loss(k_pre, th) for th in pop])
        chosen = np.argsort(pre)[:top_k]
    expected = np.asarray(pop).copy()
    for i in chosen:
        expected[i] = _python_loop(loss, optimizer, pop[i], keys)
    np.testing.assert_allclose(out.phenotype, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.genome, expected, rtol=1e-5, atol=1e-6)
    if top_k is not None:  # the others passed through untouched
        others = np.setdiff1d(np.arange(5), chosen)
        np.testing.assert_array_equal(out.phenotype[others], pop[others])
    assert int(state.num_skipped) == 0


def test_lamarckian_writes_back_and_baldwinian_does_not(minibatch_loss):
    loss, theta0 = minibatch_loss
    pop = _population(theta0, 4)
    key = jax.random.key(0)
    lam = gradient_steps(optax.sgd(0.5), 3, mode="lamarckian")
    bal = gradient_steps(optax.sgd(0.5), 3, mode="baldwinian")
    out_l, _ = _apply(lam, key, pop, loss)
    out_b, _ = _apply(bal, key, pop, loss)

    np.testing.assert_array_equal(out_l.genome, out_l.phenotype)  # learnt weights inherited
    np.testing.assert_array_equal(out_b.genome, pop)  # the genome is untouched...
    np.testing.assert_array_equal(out_b.phenotype, out_l.phenotype)  # ...but evaluated trained
    assert not np.allclose(out_b.phenotype, pop)


@pytest.mark.parametrize("mode", ["lamarckian", "baldwinian"])
def test_engine_tells_the_genome_and_evaluates_the_phenotype(tiny_task, mode):
    """What the strategy is told: trained weights (Lamarckian) or the proposal (Baldwinian)."""
    evo = Evolution(
        make_mlp(), tiny_task, "ga", 8, ops=gradient_steps(optax.sgd(0.5), 3, mode=mode)
    )
    state = evo.init(jax.random.key(0))
    proposal, _ = evo.strategy.ask(
        jax.random.split(state.key, 5)[1], state.strategy_state, evo.strategy.params
    )
    state, _ = evo.step(state)
    told = np.asarray(state.strategy_state.population)
    best = np.asarray(state.best_theta)  # a phenotype: always trained
    holds_best = np.any(np.all(told == best, axis=1))
    if mode == "lamarckian":
        assert holds_best
    else:
        np.testing.assert_allclose(told, proposal, rtol=1e-5, atol=1e-7)
        assert not holds_best


def test_nan_gradients_are_skipped():
    def loss(key, theta):  # finite gradient only where theta[0] < 5
        scale = jnp.where(theta[0] < 5.0, 1.0, jnp.nan)
        return scale * jnp.sum((theta - 1.0) ** 2)

    pop = jnp.stack([jnp.zeros(3), jnp.full((3,), 10.0), jnp.full((3,), -2.0)])
    op = gradient_steps(optax.adam(0.1), 5)
    key = jax.random.key(0)
    out, state = _apply(op, key, pop, loss)
    assert np.all(np.isfinite(out.phenotype))
    np.testing.assert_array_equal(out.phenotype[1], pop[1])  # skipped, not poisoned
    assert not np.allclose(out.phenotype[0], pop[0]) and not np.allclose(out.phenotype[2], pop[2])
    assert int(state.num_skipped) == 5


class Quadratic:
    """``sum(a * (theta - c)**2)`` on the weights of a small linear layer; its own loss."""

    maximize = False

    def __init__(self, dim: int):
        self.a = jnp.linspace(0.5, 2.0, dim)
        self.c = jax.random.normal(jax.random.key(42), (dim,))

    def value(self, theta: jax.Array) -> jax.Array:
        return jnp.sum(self.a * (theta - self.c) ** 2)

    def bind(self, network) -> BoundTask:
        f = lambda key, theta: self.value(theta)
        return BoundTask(fitness=f, maximize=False, loss=f)


def _mean_loss(task: Quadratic, evo: Evolution, state) -> float:
    return float(task.value(evo.mean_theta(state)))


def test_blended_mean_update_interpolates_es_and_gradient():
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))  # 10 weights
    task = Quadratic(10)
    gens = 15
    kwargs = dict(std=0.1, learning_rate=0.05)
    evo_es = Evolution(model, task, "open_es", 8, **kwargs)
    es, _ = evo_es.run(evo_es.init(jax.random.key(0)), gens)
    evo = Evolution(model, task, "open_es", 8, ops=blended_mean_update(optax.adam(0.05)), **kwargs)
    start = evo.init(jax.random.key(0))

    def run(weight):  # the weight is an array in the state: one compiled program for all
        state = start.replace(op_state=start.op_state.replace(weight=jnp.float32(weight)))
        return evo.run(state, gens)[0]

    w0, w1, wh = run(0.0), run(1.0), run(0.5)
    assert evo.runner.compile_count == 1
    # w = 0 is the strategy alone (hooks do not change the ES key stream): equal up to the
    # last bit, which two separately compiled programs may round differently (another key
    # stream would move the mean by about std = 0.1).
    np.testing.assert_allclose(evo.mean_theta(w0), evo_es.mean_theta(es), rtol=1e-6, atol=1e-7)
    # w = 1 is plain Adam on the mean.
    theta, opt = evo.network.theta0, optax.adam(0.05)
    opt_state = opt.init(theta)
    for _ in range(gens):
        updates, opt_state = opt.update(jax.grad(task.value)(theta), opt_state, theta)
        theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(evo.mean_theta(w1), theta, rtol=1e-5, atol=1e-6)
    # A blend moves the mean toward lower loss, faster than the strategy alone.
    assert _mean_loss(task, evo, wh) < 0.5 * float(task.value(evo.network.theta0))
    assert _mean_loss(task, evo, wh) < _mean_loss(task, evo, w0)


def test_guided_es_gradient_moves_the_mean_downhill():
    model = nnx.Linear(20, 5, rngs=nnx.Rngs(0))  # 105 weights, 4 samples: ES alone is slow
    task = Quadratic(105)

    def run(ops):
        evo = Evolution(
            model,
            task,
            "guided_es",
            4,
            std=0.3,
            learning_rate=0.05,
            ops=ops,
            strategy_params={"alpha": 0.1},
        )
        state, _ = evo.run(evo.init(jax.random.key(0)), 30)
        return _mean_loss(task, evo, state), float(task.value(evo.network.theta0))

    guided, start = run(guided_es_gradient())
    unguided, _ = run(None)
    assert guided < 0.5 * start
    assert guided < 0.5 * unguided


def test_esgd_best_fitness_never_increases(tiny_data):
    x, y = tiny_data
    task = Supervised(x, y, batch_size=None)  # deterministic fitness: the guarantee is exact
    model = make_mlp()
    strategy, op = esgd(model, 8, optax.adam(0.3), num_steps=3, num_parents=3, std=0.2)
    evo = Evolution(model, task, strategy, 8, ops=op, std=0.2)
    state, history = evo.run(evo.init(jax.random.key(0)), 25)
    best = history.column("best_fitness")  # best of each generation, not a running minimum
    assert np.all(np.diff(best) <= 1e-6), best
    assert best[-1] < best[0]
    assert int(state.op_state.num_reverted) > 0  # back-off was exercised


def test_evolved_starting_point_is_handed_back_as_flax_parameters():
    task = StartingPointTask(
        sample_sinusoid,
        optax.sgd(1e-2),
        num_steps=2,
        num_instances=2,
        test_keys=jax.random.split(jax.random.key(7), 2),
    )
    model = nnx.Sequential(
        nnx.Linear(1, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1))
    )
    res = evolve_starting_point(model, task, "open_es", 4, 2)
    assert isinstance(res.solution, nnx.Sequential)
    np.testing.assert_array_equal(from_nnx(res.solution).theta0, res.theta)

    scaled = evolve_starting_point(model, task, "open_es", 4, 2, scales=True, std=0.2)
    scale_net, expand = init_scale_network(from_nnx(model))
    assert scale_net.num_params == 4  # two kernels, two biases
    genome = scaled.evolution.solution_theta(scaled.state)
    np.testing.assert_allclose(scaled.theta, expand(genome))
    # Each tensor is the model's own initialisation times one scale.
    kernel = np.asarray(scaled.solution.layers[0].kernel[...])
    ratio = kernel / np.asarray(model.layers[0].kernel[...])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
