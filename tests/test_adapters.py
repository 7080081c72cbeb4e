"""Round trips through the three Flax adapters: the genome holds exactly the parameters,
``export(theta0)`` reproduces the user's model, and the exported structure is the user's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state
from helpers import assert_trees_equal

from evojax_nets import Evolution, from_linen, from_nnx, from_train_state

NON_PARAM = (nnx.BatchStat, nnx.RngState)


def num_leaves(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def perturbed(theta: jax.Array) -> jax.Array:
    return theta + 0.1 * jax.random.normal(jax.random.key(7), theta.shape)


# -- NNX -----------------------------------------------------------------------------------


def test_nnx_round_trip_keeps_batch_stats_and_rng_state(bn_nnx, tiny_data):
    x, _ = tiny_data
    model = bn_nnx
    before = nnx.state(model)
    expected = np.asarray(model(x))
    net = from_nnx(model)

    # The genome is exactly the Params; BatchNorm statistics and RNG state are not in it.
    assert net.num_params == num_leaves(nnx.state(model, nnx.Param))
    assert net.num_params < num_leaves(nnx.state(model, nnx.Param, *NON_PARAM))
    assert not any(("mean" in p or "var" in p or "rngs" in p) for p in net.paths), net.paths

    exported = net.export(net.theta0)
    assert type(exported) is type(model)
    assert exported is not model
    np.testing.assert_array_equal(np.asarray(exported(x)), expected)
    # Non-evolved state survives the export bit for bit.
    assert_trees_equal(nnx.state(exported, nnx.BatchStat), nnx.state(model, nnx.BatchStat))
    assert_trees_equal(nnx.state(exported, nnx.RngState), nnx.state(model, nnx.RngState))
    assert num_leaves(nnx.state(model, nnx.BatchStat)) > 0
    assert num_leaves(nnx.state(model, nnx.RngState)) > 0

    other = net.export(perturbed(net.theta0))
    assert not np.allclose(np.asarray(other(x)), expected)
    assert_trees_equal(nnx.state(other, nnx.BatchStat), nnx.state(model, nnx.BatchStat))
    # Exporting never touches the user's model.
    assert_trees_equal(nnx.state(model), before)


def test_nnx_evolution_result_is_a_module_with_the_original_statistics(bn_nnx, tiny_task):
    evo = Evolution(bn_nnx, tiny_task, "open_es", 8)
    state, _ = evo.run(evo.init(jax.random.key(0)), 2)
    for result in (evo.solution(state), evo.best(state)):
        assert isinstance(result, type(bn_nnx))
        assert_trees_equal(nnx.state(result, nnx.BatchStat), nnx.state(bn_nnx, nnx.BatchStat))
        assert_trees_equal(nnx.state(result, nnx.RngState), nnx.state(bn_nnx, nnx.RngState))
    params = jax.tree.leaves(nnx.state(evo.solution(state), nnx.Param))
    original = jax.tree.leaves(nnx.state(bn_nnx, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(params, original, strict=True))


# -- linen ---------------------------------------------------------------------------------


def test_linen_round_trip_keeps_batch_stats(bn_linen, tiny_data):
    x, _ = tiny_data
    module, variables = bn_linen
    expected = np.asarray(module.apply(variables, x))
    net = from_linen(module, variables)

    assert net.num_params == num_leaves(variables["params"])
    assert all(not p.startswith("batch_stats") for p in net.paths)

    exported = net.export(net.theta0)
    assert isinstance(exported, dict)
    assert set(exported) == {"params", "batch_stats"}
    assert_trees_equal(exported["params"], dict(variables["params"]))
    assert_trees_equal(exported["batch_stats"], dict(variables["batch_stats"]))
    np.testing.assert_array_equal(np.asarray(module.apply(exported, x)), expected)

    other = net.export(perturbed(net.theta0))
    assert not np.allclose(np.asarray(module.apply(other, x)), expected)
    assert_trees_equal(other["batch_stats"], dict(variables["batch_stats"]))


# -- TrainState ----------------------------------------------------------------------------


def test_train_state_round_trip_keeps_optimizer_state(trained_state, tiny_data):
    x, y = tiny_data
    ts = trained_state
    expected = np.asarray(ts.apply_fn({"params": ts.params}, x))
    net = from_train_state(ts)
    assert net.num_params == num_leaves(ts.params)

    exported = net.export(net.theta0)
    assert isinstance(exported, train_state.TrainState)
    assert int(exported.step) == int(ts.step) == 2
    assert_trees_equal(exported.opt_state, ts.opt_state)
    assert_trees_equal(exported.params, ts.params)
    out = exported.apply_fn({"params": exported.params}, x)
    np.testing.assert_array_equal(np.asarray(out), expected)

    other = net.export(perturbed(net.theta0))
    assert_trees_equal(other.opt_state, ts.opt_state)
    assert not np.allclose(np.asarray(other.apply_fn({"params": other.params}, x)), expected)

    # The user's own optax loop continues from the exported state.
    def loss(params):
        logits = other.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(state):
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    before = float(loss(other.params))
    state = other
    for _ in range(5):
        state = train_step(state)
    assert int(state.step) == 7
    assert float(loss(state.params)) < before
    # Adam's moments kept accumulating from the original optimizer state.
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(state.opt_state)[1]),
        np.asarray(jax.tree.leaves(ts.opt_state)[1]),
    )


def test_train_state_evolution_result_continues_training(trained_state, tiny_task, tiny_data):
    x, y = tiny_data
    evo = Evolution(trained_state, tiny_task, "snes", 8)
    state, _ = evo.run(evo.init(jax.random.key(0)), 2)
    solution = evo.solution(state)
    assert isinstance(solution, train_state.TrainState)
    assert_trees_equal(solution.opt_state, trained_state.opt_state)
    grads = jax.grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(
            solution.apply_fn({"params": p}, x), y
        ).mean()
    )(solution.params)
    stepped = solution.apply_gradients(grads=grads)
    assert int(stepped.step) == int(trained_state.step) + 1
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(stepped.params))
