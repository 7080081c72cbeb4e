"""The speed-ups change no result: unrolled threefry keys, the once-drawn antithetic noise, and
the MLP's population forward."""

import evosax.algorithms
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from evojax_nets import Evolution
from evojax_nets.models import MLP
from evojax_nets.prng import standard_keys, unrolled_keys
from evojax_nets.strategies import Open_ES, make_strategy
from evojax_nets.strategies.fixes import cond_unbatched
from evojax_nets.tasks import Supervised, load_digits

DRAWS = {
    "normal": lambda k: jax.random.normal(k, (7, 13)),
    "normal_odd": lambda k: jax.random.normal(k, (3,)),
    "uniform": lambda k: jax.random.uniform(k, (4, 5)),
    "randint": lambda k: jax.random.randint(k, (33,), 0, 1797),
    "bits8": lambda k: jax.random.bits(k, (9,), jnp.uint8),
    "bits16": lambda k: jax.random.bits(k, (9,), jnp.uint16),
    "split": lambda k: jax.random.key_data(jax.random.split(k, 5)),
    "fold_in": lambda k: jax.random.key_data(jax.random.fold_in(k, 7)),
    "permutation": lambda k: jax.random.permutation(k, 50),
    "bernoulli": lambda k: jax.random.bernoulli(k, 0.3, (40,)),
}


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("name", sorted(DRAWS))
def test_unrolled_threefry_draws_the_same_bits(name, partitionable):
    draw = DRAWS[name]
    with jax.threefry_partitionable(partitionable):
        key = jax.random.key(42)
        expected = jax.jit(draw)(key)
        got = jax.jit(draw)(unrolled_keys(key))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_key_reinterpretation_round_trips():
    tree = {"k": jax.random.key(3), "x": jnp.ones(2), "n": None}
    back = standard_keys(unrolled_keys(tree))
    assert back["k"].dtype == tree["k"].dtype
    np.testing.assert_array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))


def test_open_es_population_is_evosax_bit_for_bit():
    ours = make_strategy("open_es", 16, 37).algorithm
    assert isinstance(ours, Open_ES)
    theirs = evosax.algorithms.Open_ES(
        population_size=16,
        solution=jnp.zeros(37),
        optimizer=optax.adam(0.02),
        std_schedule=optax.constant_schedule(0.05),
    )
    mean = jnp.linspace(-1, 1, 37)
    state = theirs.init(jax.random.key(0), mean, theirs.default_params)
    key = jax.random.key(1)
    expected, _ = jax.jit(lambda k, s: theirs.ask(k, s, theirs.default_params))(key, state)
    got, _ = jax.jit(lambda k, s: ours.ask(k, s, ours.default_params))(unrolled_keys(key), state)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_open_es_ask_under_vmap_stays_one_conditional_and_matches_each_config():
    # A sweep vmaps ask over configurations: the draw's lax.cond must stay a conditional
    # (a batched predicate would make it a select of both branches, and XLA would draw the
    # noise once per half of the population again), and each configuration's population
    # must be evosax's for that configuration alone, bit for bit.
    ours = make_strategy("open_es", 16, 37).algorithm
    theirs = evosax.algorithms.Open_ES(
        population_size=16,
        solution=jnp.zeros(37),
        optimizer=optax.adam(0.02),
        std_schedule=optax.constant_schedule(0.05),
    )
    states = [
        theirs.init(
            jax.random.key(c), jnp.linspace(-1, 1, 37) * (c + 1), theirs.default_params
        ).replace(std=jnp.float32(0.05 * (c + 1)), generation_counter=jnp.int32(3 * c))
        for c in range(2)
    ]
    keys = [jax.random.key(10), jax.random.key(11)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    stacked_keys = jnp.stack(keys)

    def ask(key, state):
        return ours.ask(key, state, ours.default_params)[0]

    batched = jax.vmap(ask)
    jaxpr = jax.make_jaxpr(batched)(stacked_keys, stacked)
    assert "cond[" in str(jaxpr)
    top = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
    assert "select_n" not in top  # the population is not a select of two branches
    hlo = jax.jit(batched).lower(stacked_keys, stacked).compile().as_text()
    assert "conditional(" in hlo
    for draw_keys in (stacked_keys, unrolled_keys(stacked_keys)):
        got = jax.jit(batched)(draw_keys, stacked)
        for c in range(2):
            expected, _ = jax.jit(lambda k, s: theirs.ask(k, s, theirs.default_params))(
                keys[c], states[c]
            )
            np.testing.assert_array_equal(np.asarray(got[c]), np.asarray(expected))
    # vmap of vmap (a sweep of PBT over ES runs) keeps the conditional too
    nested = jax.vmap(batched)
    twice = jax.tree.map(lambda x: jnp.stack([x, x]), (stacked_keys, stacked))
    assert "conditional(" in jax.jit(nested).lower(*twice).compile().as_text()
    np.testing.assert_array_equal(np.asarray(jax.jit(nested)(*twice)[1]), np.asarray(got))


def test_cond_unbatched_matches_vmap_of_cond_when_some_predicates_are_false():
    def one(key, n):
        draw = lambda k: jax.random.normal(k, (3,))
        return cond_unbatched(n >= 0, draw, lambda k: jnp.zeros(3), key)

    def plain(key, n):
        draw = lambda k: jax.random.normal(k, (3,))
        return jax.lax.cond(n >= 0, draw, lambda k: jnp.zeros(3), key)

    keys = jax.random.split(jax.random.key(0), 4).reshape(2, 2)
    counts = jnp.array([[0, -1], [2, 3]])
    got = jax.jit(jax.vmap(jax.vmap(one)))(keys, counts)
    np.testing.assert_array_equal(got, jax.vmap(jax.vmap(plain))(keys, counts))
    shared = jax.vmap(one, in_axes=(None, 0))(jax.random.key(1), jnp.array([1, -2]))
    np.testing.assert_array_equal(shared[0], jax.random.normal(jax.random.key(1), (3,)))
    np.testing.assert_array_equal(shared[1], jnp.zeros(3))


def test_open_es_tell_matches_evosax():
    kwargs = dict(
        population_size=16,
        solution=jnp.zeros(37),
        optimizer=optax.adam(0.02),
        std_schedule=optax.constant_schedule(0.05),
    )
    ours, theirs = Open_ES(**kwargs), evosax.algorithms.Open_ES(**kwargs)
    state = theirs.init(jax.random.key(0), jnp.linspace(-1, 1, 37), theirs.default_params)
    population, _ = theirs.ask(jax.random.key(1), state, theirs.default_params)
    fitness = jnp.sin(jnp.arange(16.0))
    for _ in range(3):
        expected, _ = theirs.tell(
            jax.random.key(2), population, fitness, state, theirs.default_params
        )
        got, _ = ours.tell(jax.random.key(2), population, fitness, state, ours.default_params)
        np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-6, atol=1e-7)
        assert not np.allclose(got.mean, state.mean)  # the step moved the mean
        state = expected
    assert got.generation_counter == expected.generation_counter


def test_generation_hands_back_standard_keys():
    evo = Evolution(
        nnx.Linear(64, 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(load_digits()), "open_es", 8
    )
    state, _ = evo.step(evo.init(jax.random.key(0)))
    assert jax.random.key_impl(state.key) == "threefry2x32"


def test_mlp_population_forward_matches_vmap():
    model = MLP(64, (32, 16), 10, rngs=nnx.Rngs(0))
    task = Supervised.from_dataset(load_digits(), batch_size=64)
    evo = Evolution(model, task, "open_es", 12)
    assert evo.task.population_fitness is not None
    thetas = evo.network.theta0 + 0.1 * jax.random.normal(
        jax.random.key(1), (12, evo.network.num_params)
    )
    x = jnp.asarray(load_digits().x_train[:64])
    fast = evo.network.population_apply(thetas, x)
    slow = jax.vmap(evo.network.apply, in_axes=(0, None))(thetas, x)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    key = jax.random.key(2)
    np.testing.assert_allclose(
        evo.evaluate(key, thetas),
        jax.vmap(evo.task.fitness, in_axes=(None, 0))(key, thetas),
        rtol=1e-5,
        atol=1e-6,
    )


def test_partly_evolved_mlp_gets_the_generic_population_forward():
    # MLP.population_apply needs every variable; with only the head evolving the network
    # falls back to the rewrite of the forward every model gets, which equals vmap.
    model = MLP(64, (16,), 10, rngs=nnx.Rngs(0))
    evo = Evolution(model, Supervised.from_dataset(load_digits()), "open_es", 8, filter="head")
    assert not evo.network.has_population_apply
    assert evo.task.population_fitness is not None
    thetas = evo.network.theta0 + 0.1 * jax.random.normal(
        jax.random.key(1), (8, evo.network.num_params)
    )
    x = jnp.asarray(load_digits().x_train[:32])
    np.testing.assert_allclose(
        evo.network.population_apply(thetas, x),
        jax.vmap(evo.network.apply, in_axes=(0, None))(thetas, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_population_forward_choice_by_argument_and_backend(monkeypatch):
    model = MLP(64, (16,), 10, rngs=nnx.Rngs(0))
    data = load_digits()

    def bound(**kwargs):
        task = Supervised(data.x_train, data.y_train, batch_size=32, **kwargs)
        return Evolution(model, task, "open_es", 8).task

    assert bound(population_forward=True).population_fitness is not None
    assert bound(population_forward=False).population_fitness is None
    assert bound().population_fitness is not None  # the CPU default
    # Off the CPU the default is vmap of the member forward; an explicit True still holds.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert bound().population_fitness is None
    assert bound(population_forward=True).population_fitness is not None
    with pytest.raises(ValueError, match="population_forward must be True, False or None"):
        bound(population_forward="yes")


def test_mlp_population_groups_change_nothing():
    model = MLP(8, (6,), 3, rngs=nnx.Rngs(0))
    params = jax.tree.map(
        lambda a: jnp.stack([a * (1 + 0.1 * i) for i in range(10)]), nnx.state(model, nnx.Param)
    )
    x = jnp.linspace(-1, 1, 40).reshape(5, 8)
    one = model.population_apply(params, x, groups=1)
    # Groups change the rows of the first layer's one matrix product (60 -> 24, 18, 18), and
    # XLA:CPU may pick another kernel, summing in another order, for another shape (it does on
    # AMD EPYC without AVX-512: 2.4e-7 apart): equal to float32 rounding. A member sliced into
    # the wrong group would be off by ~0.1.
    np.testing.assert_allclose(
        model.population_apply(params, x, groups=3), one, rtol=1e-6, atol=1e-6
    )
    assert one.shape == (10, 5, 3)


def test_bfloat16_evaluation_is_close_to_float32_and_bad_dtypes_are_refused():
    ds = load_digits()
    model = MLP(64, (32,), 10, rngs=nnx.Rngs(0))
    thetas = None
    fits = {}
    for dtype in (None, jnp.bfloat16):
        task = Supervised.from_dataset(ds, batch_size=128)
        task = Supervised(task.x_train, task.y_train, task.x_test, task.y_test, compute_dtype=dtype)
        evo = Evolution(model, task, "open_es", 8)
        if thetas is None:
            thetas = evo.network.theta0 + 0.05 * jax.random.normal(
                jax.random.key(0), (8, evo.network.num_params)
            )
        fits[dtype] = np.asarray(evo.evaluate(jax.random.key(1), thetas))
        grad = jax.grad(evo.task.extra["loss_on"])(thetas[0], task.x_train[:16], task.y_train[:16])
        assert grad.dtype == jnp.float32 and np.isfinite(grad).all()
    assert fits[jnp.bfloat16].dtype == np.float32
    assert not np.array_equal(fits[None], fits[jnp.bfloat16])  # it did compute in bfloat16
    np.testing.assert_allclose(fits[jnp.bfloat16], fits[None], rtol=0.03)
    with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
        Evolution(model, Supervised(ds.x_train, ds.y_train, compute_dtype=jnp.int32), "snes", 8)
