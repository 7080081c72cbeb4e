"""Issue 14, item 4: a user's own model gets the population forward the library's MLP has
(``Network.population_apply`` through ``evojax_nets.lowrank.fullrank``)."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_nets.lowrank.fullrank import population_forward
from evojax_nets.nets import from_linen, from_nnx, population_groups
from evojax_nets.tasks import Supervised


def _user_mlp(widths=(6, 8, 8, 3), seed=0) -> nnx.Sequential:
    rngs = nnx.Rngs(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nnx.Linear(a, b, rngs=rngs))
        if i < len(widths) - 2:
            layers.append(nnx.tanh)
    return nnx.Sequential(*layers)


class _ConvNet(nnx.Module):
    """Conv, BatchNorm (inference mode), gelu, Einsum head."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.head = nnx.Einsum("bi,io->bo", (16 * 3, 4), (4,), rngs=rngs)

    def __call__(self, x):
        h = jax.nn.gelu(self.bn(self.conv(x.reshape(-1, 4, 4, 1))))
        return self.head(h.reshape(h.shape[0], -1))


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm()(nn.Dense(8)(x))
        x = jnp.where(x > 0, x, 0.1 * x)
        x = nn.DenseGeneral((2, 3))(x)
        return nn.Dense(3)(nn.relu(x.reshape(x.shape[0], -1)))


def _networks():
    conv = _ConvNet(nnx.Rngs(1))
    conv.eval()
    linen = _LinenNet()
    variables = linen.init(jax.random.key(0), jnp.ones((2, 6)))
    return {
        "nnx_mlp": (from_nnx(_user_mlp()), 6),
        "nnx_conv_bn_einsum": (from_nnx(conv), 16),
        "linen_dense_layernorm_densegeneral": (from_linen(linen, variables), 6),
        # Only the head evolves: the frozen body (a custom_jvp relu among it) is shared.
        "linen_frozen_body": (from_linen(linen, variables, filter="Dense_1"), 6),
    }


@pytest.mark.parametrize("name", list(_networks()))
@pytest.mark.parametrize("population", [8, 70])  # one group; two groups of 35
def test_population_forward_equals_vmap_of_the_member_forward(name, population):
    net, features = _networks()[name]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, features)), jnp.float32)
    noise = jax.random.normal(jax.random.key(population), (population, net.num_params))
    thetas = net.theta0[None] + 0.1 * noise
    fast = jax.jit(lambda t: net.population_apply(t, x))(thetas)
    plain = jax.jit(lambda t: jax.vmap(net.apply, in_axes=(0, None))(t, x))(thetas)
    assert fast.shape == plain.shape == (population, *net.apply(net.theta0, x).shape)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


def test_a_user_mlp_runs_features_major():
    # The point of the rewrite: hidden activations are laid out (P, features, B), the long
    # batch axis last, not (P, B, features) as vmap lays them out.
    net = from_nnx(_user_mlp())
    population, batch, hidden = 16, 5, 8
    x = jnp.ones((batch, 6))
    thetas = jnp.zeros((population, net.num_params))

    def tanh_shapes(fn):
        eqns = jax.make_jaxpr(fn)(thetas).jaxpr.eqns
        return [tuple(e.outvars[0].aval.shape) for e in eqns if e.primitive.name == "tanh"]

    fast = tanh_shapes(lambda t: population_forward(net, t, x))
    plain = tanh_shapes(lambda t: jax.vmap(net.apply, in_axes=(0, None))(t, x))
    assert fast == [(population, hidden, batch)] * 2, fast
    assert plain == [(population, batch, hidden)] * 2, plain


def test_supervised_uses_it_for_a_user_model_and_agrees_with_vmap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)
    net = from_nnx(_user_mlp())
    fast = Supervised(x, y, batch_size=16).bind(net)
    plain = Supervised(x, y, batch_size=16, population_forward=False).bind(net)
    assert fast.population_fitness is not None and plain.population_fitness is None
    thetas = net.theta0[None] + 0.1 * jax.random.normal(jax.random.key(0), (12, net.num_params))
    key = jax.random.key(3)
    f_fast = jax.jit(fast.population_fitness)(key, thetas)
    f_plain = jax.jit(jax.vmap(plain.fitness, in_axes=(None, 0)))(key, thetas)
    np.testing.assert_allclose(f_fast, f_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "groups", "expected"),
    [(16, None, 1), (70, None, 2), (256, None, 8), (1024, None, 8), (10, 3, 3)],
)
def test_population_groups_cover_the_population(size, groups, expected):
    bounds = population_groups(size, groups)
    assert len(bounds) == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(hi == lo2 for (_, hi), (lo2, _) in itertools.pairwise(bounds))
    assert all(hi > lo for lo, hi in bounds)


def test_a_model_the_rewrite_cannot_trace_falls_back_to_vmap_with_a_warning(monkeypatch):
    import evojax_nets.lowrank.fullrank as fullrank

    def broken(*args, **kwargs):
        raise NotImplementedError("no rule for this primitive")

    monkeypatch.setattr(fullrank, "population_forward", broken)
    net = from_nnx(_user_mlp())
    x = jnp.ones((5, 6))
    thetas = net.theta0[None] + jnp.arange(3.0)[:, None] * 0.1
    with pytest.warns(UserWarning, match="no rule for this primitive.*using vmap"):
        out = net.population_apply(thetas, x)
    np.testing.assert_array_equal(out, jax.vmap(net.apply, in_axes=(0, None))(thetas, x))
