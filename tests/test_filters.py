"""Evolving a subset: the genome is exactly the selected parameters, and everything else is
bit-identical, both in any exported genome and after a short run."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import HIDDEN, NUM_CLASSES, make_mlp
from flax import nnx
from helpers import flat_by_path

from evojax_nets import Evolution, from_linen, from_nnx, from_train_state

HEAD_SIZE = HIDDEN * NUM_CLASSES + NUM_CLASSES  # kernel + bias of the last layer

CASES = {
    "nnx-filter": ("nnx", nnx.All(nnx.Param, nnx.PathContains("head")), "head"),
    "nnx-regex": ("nnx", "head", "head"),
    "nnx-callable": ("nnx", lambda path, x: "head" in path and isinstance(x, nnx.Param), "head"),
    "linen-regex": ("linen", "Dense_1", "Dense_1"),
    "linen-callable": ("linen", lambda path, leaf: path[0] == "Dense_1", "Dense_1"),
    "train_state-regex": ("train_state", "Dense_1", "Dense_1"),
}


def setup(kind, linen_mlp, trained_state):
    """(model, variables, original params by path, params-by-path of a member, adapter)."""
    if kind == "nnx":
        model = make_mlp()
        params = lambda member: flat_by_path(nnx.state(member, nnx.Param))
        return model, None, params(model), params, lambda f: from_nnx(model, f)
    if kind == "linen":
        module, variables = linen_mlp
        params = lambda member: flat_by_path(member["params"])
        return (
            module,
            variables,
            params(variables),
            params,
            lambda f: from_linen(module, variables, f),
        )
    params = lambda member: flat_by_path(member.params)
    adapter = lambda f: from_train_state(trained_state, f)
    return trained_state, None, params(trained_state), params, adapter


def assert_only_head_differs(evolved, original, head):
    assert evolved.keys() == original.keys()
    for path, value in original.items():
        if head not in path:
            assert np.array_equal(evolved[path], value), f"{path} changed"
    assert any(not np.array_equal(evolved[p], v) for p, v in original.items() if head in p)


@pytest.mark.parametrize("case", list(CASES))
def test_genome_is_exactly_the_head(case, linen_mlp, trained_state):
    kind, filter, head = CASES[case]
    _, _, original, params_of, adapter = setup(kind, linen_mlp, trained_state)
    net = adapter(filter)
    assert net.num_params == HEAD_SIZE == sum(v.size for k, v in original.items() if head in k)
    assert net.paths and all(head in p for p in net.paths)
    assert_only_head_differs(params_of(net.export(net.theta0 + 1.0)), original, head)


@pytest.mark.parametrize("case", ["nnx-filter", "nnx-regex", "linen-regex", "linen-callable"])
def test_a_run_changes_only_the_head(case, tiny_task, linen_mlp, trained_state):
    kind, filter, head = CASES[case]
    model, variables, original, params_of, _ = setup(kind, linen_mlp, trained_state)
    evo = Evolution(
        model, tiny_task, "open_es", 8, variables=variables, filter=filter, learning_rate=0.05
    )
    assert evo.network.num_params == HEAD_SIZE
    state, _ = evo.run(evo.init(jax.random.key(0)), 3)
    assert_only_head_differs(params_of(evo.solution(state)), original, head)
    best = params_of(evo.best(state))
    for path, value in original.items():
        if head not in path:
            assert np.array_equal(best[path], value), f"{path} changed in the best member"
