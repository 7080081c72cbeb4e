"""Population-based training: exploit copies state and hyperparameters together, explore stays in
the space, lineages trace the copies, one compile per run shape, and bad input is refused."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

from evojax_nets.pbt import (
    PBT,
    Choice,
    LogUniform,
    PBTProgressBar,
    Uniform,
    check_space,
    inject_hparams,
    sample_batches,
)

# -- a tiny supervised problem ----------------------------------------------------------------

_rng = np.random.default_rng(0)
X = _rng.normal(size=(128, 4)).astype(np.float32)
W_TRUE = _rng.normal(size=(4, 3)).astype(np.float32)
Y = np.argmax(X @ W_TRUE, axis=1).astype(np.int32)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


MODEL = Linear()
TX = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
SPACE = {"learning_rate": LogUniform(1e-3, 1.0), "momentum": Uniform(0.0, 0.99)}


def create(key):
    params = MODEL.init(key, jnp.ones((1, 4)))
    return train_state.TrainState.create(apply_fn=MODEL.apply, params=params, tx=TX)


def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(params, x), y).mean()


def train_step(state, batch, hparams):
    return state.apply_gradients(grads=jax.grad(loss)(state.params, *batch))


def accuracy(state):
    return jnp.mean(jnp.argmax(MODEL.apply(state.params, X), -1) == Y)


def make_pbt(**kw):
    kw.setdefault("ready", 5)
    return PBT(
        train_step,
        accuracy,
        SPACE,
        kw.pop("population_size", 8),
        batch_fn=sample_batches(X, Y, batch_size=16),
        **kw,
    )


@pytest.fixture(scope="module")
def trained():
    pbt = make_pbt(quantile=0.25)
    state = pbt.init(jax.random.key(0), create)
    state, history = pbt.run(state, 10, chunk_size=2)
    return pbt, state, history


def _is_hyperparam(path) -> bool:
    return any(getattr(k, "name", None) == "hyperparams" for k in path)


# -- exploit and explore ----------------------------------------------------------------------


def test_exploit_copies_params_opt_state_and_hparams_together(trained):
    pbt, state, _ = trained
    # Make every member distinguishable, also in its optimizer state.
    scores = jnp.arange(8, dtype=jnp.float32)[::-1]  # member 0 best, member 7 worst
    state = state.replace(scores=scores)
    new, parents = jax.jit(pbt.exploit_explore)(jax.random.key(1), state)
    parents = np.asarray(parents)
    copied = parents != np.arange(8)
    # The bottom quantile (2 of 8: members 6, 7) copies members of the top quantile (0, 1).
    assert sorted(np.flatnonzero(copied)) == [6, 7]
    assert set(parents[copied]) <= {0, 1}
    old_leaves = jax.tree_util.tree_leaves_with_path(state.members)
    new_leaves = jax.tree.leaves(new.members)
    assert len(old_leaves) == len(new_leaves)
    for (path, old), nw in zip(old_leaves, new_leaves, strict=True):
        if _is_hyperparam(path):
            continue
        # parameters, momentum trace, step counters: all from the same parent
        np.testing.assert_array_equal(np.asarray(nw), np.asarray(old)[parents])
    for name, space in SPACE.items():
        before = np.asarray(state.hparams[name])
        after = np.asarray(new.hparams[name])
        np.testing.assert_array_equal(after[~copied], before[~copied])
        ratio = after[copied] / before[parents[copied]]
        clipped = np.isclose(after[copied], space.low) | np.isclose(after[copied], space.high)
        assert np.all(
            np.isclose(ratio, 0.8, rtol=1e-5) | np.isclose(ratio, 1.2, rtol=1e-5) | clipped
        )
        # the optimizer state carries the member's own (explored) hyperparameters
        inj = np.asarray(new.members.opt_state.hyperparams[name])
        np.testing.assert_allclose(inj, after, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.scores), np.asarray(scores)[parents])


def test_nan_scores_rank_worst_and_get_replaced(trained):
    pbt = trained[0]
    scores = jnp.asarray([0.5, jnp.nan, 0.9, 0.8, 0.7, 0.6, 0.55, 0.52])
    parents = np.asarray(pbt.exploit(jax.random.key(0), scores))
    assert parents[1] != 1 and parents[1] in (2, 3)


def test_explore_stays_inside_the_search_space():
    space = {
        "lr": LogUniform(1e-4, 1e-1),
        "mom": Uniform(0.1, 0.9),
        "width": Choice([8, 16, 32, 64]),
        "act": Choice([0, 1, 2], ordered=False),
        "const": Choice([3.5]),
    }
    pbt = PBT(
        lambda s, b, h: s,
        lambda s: s,
        space,
        64,
        ready=1,
        perturb_factors=(0.01, 100.0),
        resample_probability=0.3,
    )
    hp = {k: s.sample(jax.random.key(i), (64,)) for i, (k, s) in enumerate(space.items())}
    explore = jax.jit(pbt.explore)
    half = jnp.arange(64) < 32
    for i in range(8):
        new = explore(jax.random.key(i), hp, half)
        for name, s in space.items():
            assert new[name].dtype == s.dtype
            assert np.all(s.contains(np.asarray(new[name]))), name
            # members outside the mask keep theirs
            np.testing.assert_array_equal(np.asarray(new[name])[32:], np.asarray(hp[name])[32:])
        hp = new
    # perturbation alone: an ordered choice moves one position, an unordered one always moves,
    # a one-value choice never moves
    factors = jnp.asarray([0.8, 1.2])
    w = space["width"]
    moved = jax.jit(w.perturb)(jax.random.key(0), hp["width"], factors)
    assert np.all(np.abs(np.asarray(w.index(moved)) - np.asarray(w.index(hp["width"]))) <= 1)
    act = jax.jit(space["act"].perturb)(jax.random.key(1), hp["act"], factors)
    assert np.all(np.asarray(act) != np.asarray(hp["act"]))
    assert np.all(
        np.asarray(space["const"].perturb(jax.random.key(2), hp["const"], factors)) == 3.5
    )


# -- a whole run ------------------------------------------------------------------------------


def test_lineage_schedule_matches_what_the_best_member_trained_with():
    # Each step adds the member's "lr" to its state: the final state of a member is the sum of
    # its lineage's learning rates times the steps of each round, if lineages are traced right.
    pbt = PBT(
        lambda s, b, h: s + h["lr"],
        lambda s: s,
        {"lr": LogUniform(0.01, 1.0)},
        8,
        ready=3,
        quantile=0.5,
    )
    state = pbt.init(jax.random.key(3), jnp.float32(0.0))
    state, history = pbt.run(state, 20, chunk_size=3)  # 7 rounds, the last one of 2 steps
    assert history.steps == [3, 6, 9, 12, 15, 18, 20]
    res = pbt.result(state, history)
    lengths = np.diff([0, *history.steps])
    np.testing.assert_allclose(res.state, np.sum(res.schedule["lr"] * lengths), rtol=1e-5)
    assert res.lineage[-1] == res.index
    # copies happened, so the lineage changes slots at least once for some member
    assert any(np.any(p != np.arange(8)) for p in history.parents[1:])
    assert np.all(history.parents[0] == np.arange(8))


def test_run_compiles_once_continues_and_is_deterministic(trained):
    pbt, state, history = trained
    assert np.nanmax(history.scores[-1]) > 0.6
    # the same key again: bit-identical, and nothing recompiles
    again, _ = pbt.run(pbt.init(jax.random.key(0), create), 10, chunk_size=2)
    for a, b in zip(jax.tree.leaves(state.members), jax.tree.leaves(again.members), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # continue with a shorter last round and a partial last chunk: still the same executable
    more, hist = pbt.run(state, 13, chunk_size=2, history=copy.deepcopy(history))
    assert pbt.num_traces == 1
    assert hist.steps == [5, 10, 15, 20, 23]
    assert int(more.step) == 23 and int(more.round) == 5


def test_result_and_plot(trained, tmp_path):
    pbt, state, history = trained
    res = pbt.result(state, history)
    assert isinstance(res.state, train_state.TrainState)
    assert res.state.params["params"]["Dense_0"]["kernel"].shape == (4, 3)
    assert set(res.schedule) == set(SPACE) and res.schedule["momentum"].shape == (2,)
    res.plot(str(tmp_path / "schedules.png"))
    assert (tmp_path / "schedules.png").stat().st_size > 1000


def test_random_search_baseline_keeps_hyperparameters():
    pbt = make_pbt(exploit="none")
    state = pbt.init(jax.random.key(0), create)
    start = jax.device_get(state.hparams)
    state, history = pbt.run(state, 10, callbacks=[PBTProgressBar(disable=True)])
    for name in SPACE:
        np.testing.assert_array_equal(np.asarray(state.hparams[name]), start[name])
    assert all(np.all(p == np.arange(8)) for p in history.parents)


def test_nnx_model_and_optimizer_split():
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(
        model, optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), wrt=nnx.Param
    )
    graphdef, nnx_state = nnx.split((model, opt))

    def step(st, batch, hp):
        m, o = nnx.merge(graphdef, st)
        x, y = batch
        grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(
            m
        )
        o.update(m, grads)
        return nnx.state((m, o))

    def evaluate(st):
        m, _ = nnx.merge(graphdef, st)
        return jnp.mean(jnp.argmax(m(X), -1) == Y)

    pbt = PBT(
        step,
        evaluate,
        {"learning_rate": LogUniform(1e-3, 1e-1)},
        4,
        ready=5,
        batch_fn=sample_batches(X, Y, batch_size=16),
    )
    state, history = pbt.run(pbt.init(jax.random.key(0), nnx_state), 10)
    res = pbt.result(state, history)
    m, o = nnx.merge(graphdef, res.state)
    assert isinstance(m, nnx.Linear)
    assert float(o.opt_state.hyperparams["learning_rate"][...]) == pytest.approx(
        res.hparams["learning_rate"], rel=1e-6
    )


def test_inject_hparams_leaves_other_leaves_alone():
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=0.1, weight_decay=0.01)
    s = tx.init({"w": jnp.zeros(3)})
    s2 = inject_hparams(s, {"learning_rate": jnp.float32(0.5), "other": jnp.float32(2.0)})
    assert float(s2.hyperparams["learning_rate"]) == 0.5
    assert float(s2.hyperparams["weight_decay"]) == pytest.approx(0.01)


# -- PBT over the hyperparameters of evolution strategies ("evolving the evolution") -----------


def test_pbt_over_openai_es_runs():
    """Each member is a whole OpenAI-ES run (evosax); PBT tunes its Adam step and search std,
    which are arrays in its state, so the population of ES runs is one vmapped program."""
    from evosax.algorithms import Open_ES

    dim = 16
    target = jnp.linspace(-1.0, 1.0, dim)

    def fitness(x):  # minimised by the ES
        return jnp.sum((x - target) ** 2, axis=-1)

    es = Open_ES(
        population_size=16,
        solution=jnp.zeros(dim),
        optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
    )
    es_params = es.default_params

    def init(key):
        return es.init(key, jnp.zeros(dim), es_params)

    def es_generation(state, key, hp):
        state = state.replace(std=hp["std"])  # evosax resets std from its schedule in tell
        k_ask, k_tell = jax.random.split(key)
        pop, state = es.ask(k_ask, state, es_params)
        state, _ = es.tell(k_tell, pop, fitness(pop), state, es_params)
        return state

    def evaluate(state):
        return -fitness(state.mean)

    space = {"learning_rate": LogUniform(1e-3, 0.3), "std": LogUniform(1e-3, 0.5)}
    pbt = PBT(es_generation, evaluate, space, 8, ready=10)
    state = pbt.init(jax.random.key(0), init)
    start = float(np.max(np.asarray(pbt.evaluate(state.members, state.hparams))))
    state, history = pbt.run(state, 40)
    res = pbt.result(state, history)
    assert res.score > start + 0.5 * abs(start)
    # the learning rate each ES run used is its member's hyperparameter
    lr_in_state = np.asarray(state.members.opt_state.hyperparams["learning_rate"])
    np.testing.assert_allclose(lr_in_state, np.asarray(state.hparams["learning_rate"]), rtol=1e-6)
    assert set(res.schedule) == {"learning_rate", "std"}


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Uniform(1.0, 1.0), r"Uniform\(low=1.0, high=1.0\) is empty"),
        (lambda: Uniform(2.0, 1.0), r"inverted: low must be < high"),
        (lambda: LogUniform(0.1, 0.01), r"inverted"),
        (lambda: LogUniform(0.0, 1.0), r"low must be positive"),
        (lambda: LogUniform(-1.0, 1.0), r"low must be positive"),
        (lambda: Uniform(0.0, float("inf")), r"high must be finite"),
        (lambda: Choice([]), r"Choice\(values=\[\]\) is empty"),
        (lambda: Choice([1, 1]), r"distinct"),
        (lambda: Choice(["relu", "tanh"]), r"must be a number"),
    ],
)
def test_bad_search_spaces(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_pbt_arguments():
    with pytest.raises(ValueError, match="space is empty"):
        check_space({})
    with pytest.raises(TypeError, match=r"space\['lr'\] must be LogUniform, Uniform or Choice"):
        check_space({"lr": (1e-3, 1.0)})
    with pytest.raises(ValueError, match="quantile must be in"):
        make_pbt(quantile=0.7)
    with pytest.raises(ValueError, match="ready must be a positive int"):
        make_pbt(ready=0)
    with pytest.raises(ValueError, match="population_size must be an int >= 2"):
        make_pbt(population_size=1)


def test_ready_longer_than_the_run():
    pbt = make_pbt(ready=50)
    state = pbt.init(jax.random.key(0), create)
    with pytest.raises(ValueError, match=r"ready=50 is longer than the run \(num_steps=20\)"):
        pbt.run(state, 20)


def test_bad_train_step_and_eval_fn():
    bad_step = PBT(lambda s, b, h: {"x": s}, lambda s: s, SPACE, 4, ready=1)
    with pytest.raises(ValueError, match="train_step must return the state in the structure"):
        bad_step.init(jax.random.key(0), jnp.float32(0.0))
    bad_eval = PBT(lambda s, b, h: s, lambda s: jnp.ones(3), SPACE, 4, ready=1)
    with pytest.raises(ValueError, match="eval_fn must return a scalar"):
        bad_eval.init(jax.random.key(0), jnp.float32(0.0))
    with pytest.raises(TypeError, match=r"nnx.split\(\(model, optimizer\)\)"):
        make_pbt().init(jax.random.key(0), nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="hparams must have the keys"):
        make_pbt().init(jax.random.key(0), create, hparams={"learning_rate": jnp.ones(8)})
