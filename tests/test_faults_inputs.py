"""Issue 13, items 10, 11 (data) and 14: inputs that gave silent nonsense or cryptic errors.

* 10: ``jax_enable_x64`` and bfloat16 parameters: the genome keeps the model's dtype.
* 11: NaN or inf in the data is refused when the ``Supervised`` task is built.
* 14: a model left in training mode, or a linen ``__call__`` that needs ``train``, is reported
  as what it is, with the fix, instead of "x_train examples ... do not fit the network".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NUM_CLASSES, NUM_FEATURES, NNXBNNet
from flax import nnx

from evojax_nets import Evolution, Supervised, from_linen, from_nnx


def _x64():
    """A context with 64-bit types on, so the rest of the session keeps them off
    (``jax.enable_x64`` from jax 0.7, ``jax.experimental.enable_x64`` before)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64

    return enable_x64()


def _float_dtypes(tree) -> set:
    return {
        leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


# -- item 10 ---------------------------------------------------------------------------------


def test_item10_unravel_keeps_model_dtype():
    # A population in another dtype (float64 from a strategy under x64) is cast back to the
    # model's dtype when members are rebuilt, so members never compute in float64.
    with _x64():
        net = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
        assert net.theta0.dtype == jnp.float32
        member = net.member(net.theta0.astype(jnp.float64))
        assert _float_dtypes(nnx.state(member, nnx.Param)) == {jnp.dtype(jnp.float32)}
        x = jnp.ones((4, 3), jnp.float32)
        out = jax.eval_shape(net.apply, net.theta0.astype(jnp.float64), x)
        assert out.dtype == jnp.float32
    bf16 = from_nnx(nnx.Linear(3, 2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert bf16.theta0.dtype == jnp.bfloat16
    member = bf16.member(jnp.zeros(bf16.num_params, jnp.float32))
    assert _float_dtypes(nnx.state(member, nnx.Param)) == {jnp.dtype(jnp.bfloat16)}


# One of each family, plus the two whose own code drifted to float64 under x64 (EvoTF_ES's
# fitness features, the low-memory OpenAI-ES's gradient accumulation).
X64_STRATEGIES = [
    "open_es",
    "sep_cma_es",
    "de",
    "ga",
    "sv_open_es",
    "evotf_es",
    "low_memory_open_es",
]


@pytest.mark.parametrize("strategy", X64_STRATEGIES)
def test_item10_x64_float32_model_runs(tiny_data, strategy):
    x, y = tiny_data
    with _x64():
        model = nnx.Linear(NUM_FEATURES, NUM_CLASSES, rngs=nnx.Rngs(0))
        evo = Evolution(model, Supervised(x, y, batch_size=16), strategy, 8)
        state = evo.init(jax.random.key(0))
        state, history = evo.run(state, 2)
        assert evo.solution_theta(state).dtype == jnp.float32
        assert state.best_theta.dtype == jnp.float32
        solution = evo.solution(state)
    assert _float_dtypes(nnx.state(solution, nnx.Param)) == {jnp.dtype(jnp.float32)}
    assert np.isfinite(history.rows[-1]["best_so_far"])


@pytest.mark.parametrize("strategy", ["open_es", "de", "low_memory_open_es"])
def test_item10_bfloat16_params(tiny_data, strategy):
    x, y = tiny_data
    model = nnx.Linear(NUM_FEATURES, NUM_CLASSES, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    evo = Evolution(model, Supervised(x, y, batch_size=16), strategy, 8)
    assert evo.network.theta0.dtype == jnp.bfloat16
    state = evo.init(jax.random.key(0))
    state, history = evo.run(state, 2)
    assert state.best_theta.dtype == jnp.bfloat16
    assert _float_dtypes(nnx.state(evo.solution(state), nnx.Param)) == {jnp.dtype(jnp.bfloat16)}
    # The search itself stays finite: strategy constants rounded to bfloat16 (Adam's b2 = 0.999
    # becomes 1.0) would turn the mean into NaN after one generation.
    assert bool(jnp.isfinite(evo.solution_theta(state)).all())
    assert [row["num_nonfinite"] for row in history.rows] == [0, 0]


# -- item 11 (data) --------------------------------------------------------------------------


def test_item11_nan_in_x_train_refused(tiny_data):
    x, y = tiny_data
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match=r"x_train holds 2 non-finite entries \(2 NaN\)") as err:
        Supervised(bad, y)
    assert "index (3, 1)" in str(err.value)
    # jax arrays are checked too, and the task is refused before any network is involved.
    with pytest.raises(ValueError, match="x_train holds 2 non-finite"):
        Supervised(jnp.asarray(bad), y)


def test_item11_inf_in_other_splits_refused(tiny_data):
    x, y = tiny_data
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"x_test holds 1 non-finite entries \(1 inf\)"):
        Supervised(x, y, bad, y)
    targets = x[:, 0].copy()
    targets[5] = -np.inf
    with pytest.raises(ValueError, match=r"y_train holds 1 non-finite .* index 5"):
        Supervised(x, targets, kind="regression")
    with pytest.raises(ValueError, match="y_test holds 1 non-finite"):
        Supervised(x, x[:, 0], x, targets, kind="regression")
    Supervised(x, y, x, y)  # finite data and integer labels pass


# -- item 14 ---------------------------------------------------------------------------------


def test_item14_batchnorm_train_mode_message(tiny_data):
    x, y = tiny_data
    model = NNXBNNet(nnx.Rngs(0))  # BatchNorm and Dropout still in training mode
    with pytest.raises(ValueError) as err:
        Evolution(model, Supervised(x, y), "open_es", 8)
    message = str(err.value)
    assert "do not fit" not in message
    assert "training mode" in message and "model.eval()" in message
    assert "BatchNorm 'bn' (use_running_average=False)" in message
    assert "Dropout 'drop' (deterministic=False)" in message
    model.eval()
    Evolution(model, Supervised(x, y), "open_es", 8)  # the fix the message gives works


def test_item14_dropout_train_mode_message(tiny_data):
    x, y = tiny_data

    class DropNet(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.body = nnx.Linear(NUM_FEATURES, 6, rngs=rngs)
            self.drop = nnx.Dropout(0.3, rngs=rngs)
            self.head = nnx.Linear(6, NUM_CLASSES, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(self.body(x)))

    with pytest.raises(ValueError, match=r"training mode: Dropout 'drop'.*model\.eval\(\)"):
        Supervised(x, y).bind(from_nnx(DropNet(nnx.Rngs(0))))


class _LinenTrainFlag(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(NUM_CLASSES)(x)


def test_item14_linen_train_argument_message(tiny_data):
    x, y = tiny_data
    module = _LinenTrainFlag()
    variables = module.init(jax.random.key(0), x[:2], train=False)
    with pytest.raises(ValueError) as err:
        Evolution(module, Supervised(x, y), "open_es", 8, variables=variables)
    message = str(err.value)
    assert "do not fit" not in message
    assert "needs the argument(s) train" in message
    assert "apply_kwargs={'train': False}" in message
    # The fix the message gives works.
    net = from_linen(module, variables, apply_kwargs={"train": False})
    Evolution(net, Supervised(x, y), "open_es", 8)


def test_item14_linen_training_layers_messages(tiny_data):
    x, y = tiny_data
    module = _LinenTrainFlag()
    variables = module.init(jax.random.key(0), x[:2], train=False)
    # train=True: BatchNorm would update batch_stats (Dropout would need an RNG after it).
    net = from_linen(module, variables, apply_kwargs={"train": True})
    with pytest.raises(ValueError, match=r"update a variable collection.*batch_stats"):
        Supervised(x, y).bind(net)

    class DropoutByDefault(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Dropout(0.5, deterministic=not train)(nn.Dense(6)(x))
            return nn.Dense(NUM_CLASSES)(x)

    module = DropoutByDefault()
    variables = module.init(jax.random.key(0), x[:2], train=False)
    with pytest.raises(ValueError, match=r"Dropout.*asks for an RNG.*apply_kwargs"):
        Supervised(x, y).bind(from_linen(module, variables))


def test_item14_real_shape_errors_keep_their_message(tiny_data):
    x, y = tiny_data
    model = nnx.Linear(NUM_FEATURES + 1, NUM_CLASSES, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x_train examples of shape \(4,\) do not fit"):
        Supervised(x, y).bind(from_nnx(model))
    # A model in training mode whose first layer rejects the shape: the shape is the news.
    with pytest.raises(ValueError, match=r"x_train examples of shape \(3,\) do not fit"):
        Supervised(x[:, :3], y).bind(from_nnx(NNXBNNet(nnx.Rngs(0))))
