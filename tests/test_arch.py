"""Architecture search by masking: masked members equal dense networks of their genes, exports
are exact, genes travel with their weights, one compile, and bad spaces are refused."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_nets.arch import (
    ArchCNN,
    ArchMLP,
    ArchSearch,
    CNNSpace,
    MLPSpace,
    check_memory,
)
from evojax_nets.pbt import LogUniform, sample_hparams
from evojax_nets.tasks import load_digits

DIGITS = load_digits()
MLP_SPACE = MLPSpace(64, 10, max_depth=3, widths=(4, 8, 16), activations=("relu", "tanh", "gelu"))
CNN_SPACE = CNNSpace((8, 8, 1), 10, max_depth=2, channels=(2, 4), activations=("relu", "silu"))


mlp_apply = jax.jit(MLP_SPACE.apply)


def _param_count(module: nnx.Module) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _garbage_params(space, key):
    """Max-size weights that are large everywhere, so any unmasked leak shows."""
    params = space.init_params(key)
    return jax.tree.map(lambda x: x + 3.0, params)


def _embed_mlp(space: MLPSpace, module: ArchMLP, params):
    """Write a dense module's weights into the top-left corners of max-size weights."""
    params = jax.tree.map(np.array, jax.device_get(params))  # writable host copies
    for layer, lin in enumerate(module.hidden):
        k, b = np.asarray(lin.kernel[...]), np.asarray(lin.bias[...])
        params[f"layer_{layer}"]["kernel"][: k.shape[0], : k.shape[1]] = k
        params[f"layer_{layer}"]["bias"][: b.shape[0]] = b
    k = np.asarray(module.head.kernel[...])
    params["head"]["kernel"][: k.shape[0]] = k
    params["head"]["bias"][:] = np.asarray(module.head.bias[...])
    return params


@pytest.mark.parametrize(
    "genes",
    [
        {"depth": 1, "width_0": 8, "act_0": 1},
        {"depth": 3, "width_0": 4, "act_0": 2, "width_1": 16, "act_1": 1, "width_2": 8, "act_2": 0},
    ],
)
def test_masked_mlp_equals_the_dense_network_of_its_genes(genes):
    full = {f"{k}_{i}": v for i in range(3) for k, v in (("width", 16), ("act", 0))} | genes
    arch = MLP_SPACE.architecture(full)
    dense = ArchMLP(64, arch["widths"], arch["activations"], 10, rngs=nnx.Rngs(1))
    params = _embed_mlp(MLP_SPACE, dense, _garbage_params(MLP_SPACE, jax.random.key(0)))
    x = jnp.asarray(DIGITS.x_test)
    masked = mlp_apply(params, full, x)
    np.testing.assert_allclose(masked, dense(x), rtol=1e-5, atol=1e-5)
    exported = MLP_SPACE.export(params, full)
    np.testing.assert_allclose(exported(x), dense(x), rtol=1e-5, atol=1e-5)
    assert _param_count(exported) == _param_count(dense) == int(MLP_SPACE.num_params(full))


def test_vmapped_population_of_architectures_matches_each_export():
    P = 3
    genes = jax.jit(lambda k: sample_hparams(k, MLP_SPACE.genes(), P))(jax.random.key(3))
    params = jax.jit(jax.vmap(MLP_SPACE.init_params))(jax.random.split(jax.random.key(4), P))
    x = jnp.asarray(DIGITS.x_test[:64])
    out = np.asarray(jax.jit(jax.vmap(MLP_SPACE.apply, in_axes=(0, 0, None)))(params, genes, x))
    sizes = np.asarray(jax.jit(jax.vmap(MLP_SPACE.num_params))(genes))
    genes, params = jax.device_get((genes, params))
    for i in range(P):
        g = {k: int(v[i]) for k, v in genes.items()}
        module = MLP_SPACE.export(jax.tree.map(lambda a, i=i: a[i], params), g)
        np.testing.assert_allclose(out[i], module(x), rtol=1e-5, atol=1e-5)
        assert _param_count(module) == sizes[i]


@pytest.mark.parametrize("readout", ["flatten", "mean"])
def test_masked_cnn_equals_its_export(readout):
    space = CNNSpace((8, 8, 1), 10, max_depth=2, channels=(2, 4), readout=readout)
    params = _garbage_params(space, jax.random.key(0))
    x = jnp.asarray(DIGITS.x_test[:32])
    apply = jax.jit(space.apply)
    for genes in (
        {"depth": 1, "channels_0": 2, "act_0": 1, "channels_1": 4, "act_1": 0},
        {"depth": 2, "channels_0": 4, "act_0": 0, "channels_1": 2, "act_1": 3},
    ):
        module = space.export(params, genes)
        assert isinstance(module, ArchCNN)
        np.testing.assert_allclose(apply(params, genes, x), module(x), rtol=1e-4, atol=1e-4)
        assert _param_count(module) == int(space.num_params(genes))
        assert module(x.reshape(-1, 8, 8, 1)).shape == (32, 10)


def test_flops_count_multiply_adds():
    g = {"depth": 1, "width_0": 8, "act_0": 0, "width_1": 4, "act_1": 0, "width_2": 4, "act_2": 0}
    assert int(MLP_SPACE.flops(g)) == 2 * (64 * 8 + 8 * 10)
    assert MLP_SPACE.describe(g) == "64 -> 8 relu -> 10"


# -- the search -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_search():
    ds = DIGITS
    x, y = ds.x_train, ds.y_train
    search = ArchSearch(
        MLP_SPACE,
        x[:1000],
        y[:1000],
        x[1000:],
        y[1000:],
        population_size=8,
        ready=20,
        batch_size=32,
        learning_rate=LogUniform(1e-3, 3e-2),
        size_penalty=0.01,
        perturb_probability=0.5,
    )
    state = search.init(jax.random.key(0))
    state, history = search.run(state, 60, chunk_size=3)
    return search, state, history, ds


def test_search_trains_and_exports_an_exact_unmasked_module(digits_search):
    search, state, history, ds = digits_search
    result = search.result(state, history)
    x_test = jnp.asarray(ds.x_test)
    np.testing.assert_allclose(
        result.module(x_test), result.masked_apply(x_test), rtol=1e-5, atol=1e-5
    )
    assert isinstance(result.module, ArchMLP)
    assert result.num_params == int(MLP_SPACE.num_params(result.genes))
    assert result.architecture == MLP_SPACE.architecture(result.genes)
    size = result.num_params / MLP_SPACE.max_num_params
    assert result.score == pytest.approx(result.val_accuracy - 0.01 * size, abs=1e-5)
    assert result.val_accuracy > 0.5  # 60 Adam steps on digits
    assert set(result.pbt.schedule) == {*MLP_SPACE.genes(), "learning_rate"}
    # continuing the run uses the same executable
    search.run(state, 20, chunk_size=3)
    assert search.pbt.num_traces == 1


def test_genes_travel_with_their_weights(digits_search):
    search, state, _, _ = digits_search
    pbt = search.pbt
    new, parents = jax.jit(pbt.exploit_explore)(jax.random.key(7), state)
    parents = np.asarray(parents)
    copied = parents != np.arange(pbt.population_size)
    assert copied.sum() == pbt.num_replaced
    # every leaf of the weights and the optimizer state comes from the member it copied
    for old, nw in zip(
        jax.tree.leaves(state.members["params"]),
        jax.tree.leaves(new.members["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(nw), np.asarray(old)[parents])
    for name, space in MLP_SPACE.genes().items():
        before = np.asarray(state.hparams[name])[parents]
        after = np.asarray(new.hparams[name])
        np.testing.assert_array_equal(after[~copied], before[~copied])
        if space.ordered:  # a mutation moves an ordered gene by at most one step
            step = np.abs(np.asarray(space.index(after)) - np.asarray(space.index(before)))
            assert np.all(step <= 1)
    # mutation is rare (perturb_probability=0.5 per gene): some copied genes are the parent's
    same = [
        np.asarray(new.hparams[n])[copied] == np.asarray(state.hparams[n])[parents][copied]
        for n in MLP_SPACE.genes()
    ]
    assert np.any(same)


def test_finetune_freezes_genes_and_lowers_the_learning_rate(digits_search):
    search, state, history, _ = digits_search
    new, hist = search.finetune(state, 20, lr_scale=0.5, history=copy.deepcopy(history))
    for name in MLP_SPACE.genes():
        before, after = np.asarray(state.hparams[name]), np.asarray(new.hparams[name])
        np.testing.assert_array_equal(after, before)
    lr = np.asarray(state.hparams["learning_rate"]) * 0.5
    np.testing.assert_allclose(np.asarray(new.hparams["learning_rate"]), lr, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(new.members["opt_state"].hyperparams["learning_rate"]), lr, rtol=1e-6
    )
    assert np.all(hist.parents[-1] == np.arange(8)) and hist.steps[-1] == 80
    assert search.result(new, hist).pbt.schedule["learning_rate"][-1] in lr


def test_retrain_exports_a_fresh_copy_of_a_top_candidate(digits_search):
    search, state, _, ds = digits_search
    hp = {k: np.asarray(v) for k, v in state.hparams.items()}
    order = np.argsort(-np.asarray(state.scores))
    result = search.retrain(state, jax.random.key(5), 20, repeats=2)
    # The export's genes and learning rate are those of one of the 4 best distinct candidates.
    tops, seen = [], set()
    for i in order:
        sig = tuple(hp[k][i].item() for k in sorted(hp))
        if sig not in seen:
            seen.add(sig)
            tops.append(sig)
    exported = tuple(
        result.pbt.hparams[k] if k == "learning_rate" else result.genes[k] for k in sorted(hp)
    )
    assert exported in tops[:4]
    # Fresh weights trained 20 steps with no selection: a new run of one round, no copying.
    hist = result.pbt.history
    assert hist.steps == [20] and np.all(hist.parents[-1] == np.arange(8))
    x_test = jnp.asarray(ds.x_test)
    np.testing.assert_allclose(
        np.asarray(result.module(x_test)), np.asarray(result.masked_apply(x_test)), atol=1e-5
    )
    with pytest.raises(ValueError, match="repeats must be an int from 1 to population_size=8"):
        search.retrain(state, jax.random.key(5), 20, repeats=9)


def test_evaluate_reports_every_member_and_ready_is_checked(digits_search):
    search, state, _, ds = digits_search
    with pytest.raises(ValueError, match=r"ready=20 is longer than the run \(num_steps=10\)"):
        search.run(state, 10)
    ev = search.evaluate(state, ds.x_test, ds.y_test)
    assert ev["accuracy"].shape == (8,) and ev["params"].shape == (8,)
    assert np.all(ev["params"] <= MLP_SPACE.max_num_params)


# -- bad input --------------------------------------------------------------------------------


def test_maximum_architecture_too_large_for_memory():
    huge = MLPSpace(4096, 10, max_depth=12, widths=(1024, 65536))
    with pytest.raises(MemoryError, match=r"max_depth=12, widths up to 65536.*population_size=64"):
        check_memory(huge, 64, 128, 1000)
    with pytest.raises(MemoryError, match=r"more than the 0.00 GiB allowed \(max_bytes\)"):
        ds = DIGITS
        ArchSearch(MLP_SPACE, ds.x_train, ds.y_train, ds.x_test, ds.y_test, max_bytes=1000)
    cnn = CNNSpace((224, 224, 3), 1000, max_depth=8, channels=(64, 512))
    with pytest.raises(MemoryError, match="channels up to 512"):
        check_memory(cnn, 256, 256, 10000)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLPSpace(64, 10, widths=(32, 16)), "widths must be increasing and distinct"),
        (lambda: MLPSpace(64, 10, widths=()), "widths must be a non-empty sequence"),
        (lambda: MLPSpace(64, 10, widths=(0, 16)), "every entry of widths must be an int >= 1"),
        (
            lambda: MLPSpace(64, 10, activations=("relu", "swish")),
            r"unknown activations \['swish'\]",
        ),
        (
            lambda: MLPSpace(64, 10, max_depth=2, min_depth=3),
            "min_depth=3 is larger than max_depth=2",
        ),
        (lambda: MLPSpace(64, 10, max_depth=0), "max_depth must be an int >= 1"),
        (lambda: CNNSpace((8, 8), 10), r"input_shape must be \(height, width, channels\)"),
        (lambda: CNNSpace((8, 8, 1), 10, readout="max"), "readout must be 'flatten' or 'mean'"),
    ],
)
def test_bad_spaces(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_search_arguments():
    ds = DIGITS
    args = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    with pytest.raises(ValueError, match=r"examples have shapes \(32,\) / \(64,\), but the space"):
        ArchSearch(MLP_SPACE, ds.x_train[:, :32], ds.y_train, ds.x_test, ds.y_test)
    with pytest.raises(ValueError, match="score must be 'accuracy' or 'loss'"):
        ArchSearch(MLP_SPACE, *args, score="f1")
    with pytest.raises(ValueError, match="size_measure must be 'params' or 'flops'"):
        ArchSearch(MLP_SPACE, *args, size_measure="bytes")
    with pytest.raises(ValueError, match="y_val must be a vector of integer class labels"):
        ArchSearch(MLP_SPACE, ds.x_train, ds.y_train, ds.x_test, ds.y_test.astype(np.float32))
    with pytest.raises(ValueError, match="learning_rate must be a positive float or a Space"):
        ArchSearch(MLP_SPACE, *args, learning_rate=-1.0)
