"""Bad input is refused up front with a message that names the argument and what is valid."""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NUM_FEATURES, make_mlp
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.strategies import strategy_names


def test_unknown_strategy_lists_the_valid_names(mlp, tiny_task):
    with pytest.raises(ValueError, match=r"unknown strategy 'no_such_es'; valid names") as err:
        Evolution(mlp, tiny_task, "no_such_es", 8)
    for name in strategy_names():
        assert name in str(err.value)


@pytest.mark.parametrize("strategy", ["open_es", "pgpe"])
def test_odd_population_for_antithetic_sampling(strategy, mlp, tiny_task):
    with pytest.raises(ValueError, match=r"population_size=7 is invalid .*use 6 or 8"):
        Evolution(mlp, tiny_task, strategy, 7)


@pytest.mark.parametrize(
    ("strategy", "population_size", "kwargs", "match"),
    [
        ("GESMR_GA", 8, {"num_groups": 2}, r"population_size=8 is invalid for GESMR_GA"),
        ("SV_Open_ES", 9, {"num_populations": 2}, r"num_populations=2 .*multiple of 2"),
        # 3 groups of 3: each group samples antithetic pairs, so the total must be 6, 12, ...
        ("SV_Open_ES", 9, {"num_populations": 3}, r"population_size=9 .*3 groups of 3.*6 or 12"),
        ("open_es", 1, {}, r"population_size must be at least 2"),
        ("open_es", 8, {"no_such_arg": 1}, r"strategy_kwargs \['no_such_arg'\] are not arguments"),
    ],
)
def test_invalid_strategy_settings(strategy, population_size, kwargs, match, mlp, tiny_task):
    with pytest.raises(ValueError, match=match):
        Evolution(mlp, tiny_task, strategy, population_size, strategy_kwargs=kwargs)


def test_unknown_strategy_params(mlp, tiny_task):
    with pytest.raises(ValueError, match=r"strategy_params \['nope'\] are not params of Open_ES"):
        Evolution(mlp, tiny_task, "open_es", 8, strategy_params={"nope": 1.0})


def test_data_that_does_not_fit_the_network(mlp, tiny_data):
    x, y = tiny_data
    wide = np.concatenate([x, x[:, :1]], axis=1)  # 5 features for a 4-input network
    with pytest.raises(
        ValueError, match=r"x_train examples of shape \(5,\) do not fit the network"
    ):
        Evolution(mlp, Supervised(wide, y), "open_es", 8)
    with pytest.raises(ValueError, match=r"x_test examples have shape \(5,\)"):
        Evolution(mlp, Supervised(x, y, x_test=wide, y_test=y), "open_es", 8)
    with pytest.raises(ValueError, match=r"x_train has 48 examples but y_train has 47"):
        Evolution(mlp, Supervised(x, y[:-1]), "open_es", 8)


@pytest.mark.parametrize(
    ("bad_label", "shown"), [(10, r"\[0, 10\]"), (-1, r"\[-1, \d\]")], ids=["too-big", "negative"]
)
def test_labels_out_of_range(bad_label, shown):
    model = nnx.Linear(NUM_FEATURES, 10, rngs=nnx.Rngs(0))  # 10 outputs: labels 0..9
    x = np.ones((12, NUM_FEATURES), np.float32)
    y = np.arange(12, dtype=np.int32) % 10
    y[3] = bad_label
    match = rf"y_train holds labels in {shown}, but valid labels are 0 to 9"
    with pytest.raises(ValueError, match=match):
        Evolution(model, Supervised(x, y), "open_es", 8)
    good = np.arange(12, dtype=np.int32) % 10
    with pytest.raises(ValueError, match=rf"y_test holds labels in {shown}"):
        Evolution(model, Supervised(x, good, x_test=x, y_test=y), "open_es", 8)


def test_float_labels_for_classification(mlp, tiny_data):
    x, y = tiny_data
    with pytest.raises(ValueError, match=r"y_train must hold integer class labels"):
        Evolution(mlp, Supervised(x, y.astype(np.float32)), "open_es", 8)


def test_full_covariance_strategy_on_a_big_network_fails_before_allocating():
    # 1000 -> 1000: D = 1,001,000; one D x D float32 matrix is 4 TB, a CMA-ES state holds several.
    big = nnx.Linear(1000, 1000, rngs=nnx.Rngs(0))
    fitness = lambda key, member: jnp.sum(member.kernel[...])
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(MemoryError, match=r"'CMA_ES' on a network of 1,001,000 parameters") as err:
        Evolution(big, fitness, "cma_es", 8, maximize=False)
    assert time.perf_counter() - start < 30
    # Nothing of the state's size was allocated: the peak grew by less than 256 MiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 * 1024
    message = str(err.value)
    assert "max_state_bytes" in message and "sep_cma_es" in message


def test_full_covariance_strategy_respects_max_state_bytes(mlp, tiny_task):
    with pytest.raises(MemoryError, match=r"max_state_bytes"):
        Evolution(mlp, tiny_task, "cma_es", 8, max_state_bytes=1000)
    # A diagonal strategy on the same network and budget is fine.
    Evolution(mlp, tiny_task, "sep_cma_es", 8, max_state_bytes=10_000)


@pytest.fixture(scope="module")
def evolution(tiny_task):
    return Evolution(make_mlp(), tiny_task, "open_es", 8)


@pytest.mark.parametrize(
    "key",
    [0, np.zeros(2, np.uint32), jnp.zeros(3), "seed"],
    ids=["int", "numpy", "float-array", "str"],
)
def test_init_rejects_a_key_that_is_not_a_jax_key(key, evolution):
    with pytest.raises(TypeError, match=r"key must be a jax.random.key"):
        evolution.init(key)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_generations": 0}, r"num_generations must be a positive int"),
        ({"num_generations": 2.5}, r"num_generations must be a positive int"),
        ({"num_generations": 3, "chunk_size": 0}, r"chunk_size must be a positive int"),
    ],
)
def test_run_rejects_bad_lengths(kwargs, match, evolution):
    state = evolution.init(jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        evolution.run(state, **kwargs)


def test_filter_that_selects_nothing(tiny_task):
    with pytest.raises(ValueError, match=r"the filter selected no parameters"):
        Evolution(make_mlp(), tiny_task, "open_es", 8, filter="no_such_layer")


def test_export_rejects_a_genome_of_the_wrong_size(evolution):
    with pytest.raises(ValueError, match=r"theta has shape \(50,\).*genome has shape \(51,\)"):
        evolution.export(jnp.zeros(50))


def test_task_of_the_wrong_type(mlp):
    with pytest.raises(TypeError, match=r"task must be a Task"):
        Evolution(mlp, 42, "open_es", 8)
