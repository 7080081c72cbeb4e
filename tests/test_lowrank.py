"""Low-rank ES (``lowrank_es``): the rewritten forward equals explicitly perturbed weights, the
update equals its formula, antithetic pairs cancel, it learns digits, sharded equals
single-device, and a checkpointed run resumes bit-exact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from xla import child_env

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.checkpoint import Checkpointer, resume, tree_equal
from evojax_nets.lowrank import LowRankES, layout_for_task, layout_of
from evojax_nets.nets import from_linen, from_nnx
from evojax_nets.tasks import FunctionTask


class NNXNet(nnx.Module):
    """Conv -> 3-D Einsum (Gaussian noise) -> 2-D Einsum -> LayerNorm -> Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.heads = nnx.Einsum("bi,hio->bho", (2, 48, 4), (2, 4), rngs=rngs)
        self.mix = nnx.Einsum("bi,io->bo", (8, 6), (6,), rngs=rngs)
        self.norm = nnx.LayerNorm(6, rngs=rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        x = self.heads(x).reshape(x.shape[0], -1)
        return self.out(self.norm(nnx.tanh(self.mix(x))))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3))(x)).reshape(x.shape[0], -1)
        x = nn.DenseGeneral((2, 3))(x).reshape(x.shape[0], -1)
        x = nn.tanh(nn.DenseGeneral(5)(x))
        return nn.Dense(3)(x)


X = jax.random.normal(jax.random.key(1), (5, 4, 4, 2))


def _networks():
    linen = LinenNet()
    return {
        "nnx": from_nnx(NNXNet(nnx.Rngs(0))),
        "linen": from_linen(linen, linen.init(jax.random.key(0), X)),
    }


def _population(net, rank: int, p: int = 6, std: float = 0.3, layout=None):
    layout = layout_of(net, (X,)) if layout is None else layout
    es = LowRankES(p, net.theta0, optimizer=optax.sgd(1.0), rank=rank, layout=layout)
    params = es.default_params.replace(std_init=jnp.float32(std))
    state = es.init(jax.random.key(0), net.theta0, params)
    population, state = es.ask(jax.random.key(2), state, params)
    return es, population, state, params


@pytest.mark.parametrize(("kind", "rank"), [("nnx", 1), ("linen", 2)])
def test_forward_equals_explicitly_perturbed_weights(kind: str, rank: int) -> None:
    net = _networks()[kind]
    layout = layout_of(net, (X,))
    kinds = sorted({s.kind for s in layout.leaves})
    assert kinds == ["conv", "matrix", "other"], [(s.shape, s.kind) for s in layout.leaves]
    # A 3-D einsum / DenseGeneral kernel and the biases get Gaussian noise.
    assert all(s.kind == "other" for s in layout.leaves if len(s.shape) == 3 and s.shape[0] > 3)
    _, population, _, _ = _population(net, rank)
    members = jax.jit(lambda pop: pop.materialize())(population)
    apply = jax.jit(jax.vmap(lambda th: net.apply(th, X)))
    explicit = apply(members)
    moved = explicit - apply(jnp.broadcast_to(net.theta0, members.shape))
    assert float(jnp.abs(moved).max()) > 0.1  # the perturbation is not negligible
    forward = jax.jit(lambda pop: pop.population_forward(net, X))(population)
    np.testing.assert_allclose(forward, explicit, rtol=1e-4, atol=1e-5)
    # The engine's path: the per-member fitness traced and rewritten through unravel's split.
    fitness = jax.jit(lambda pop: pop.call(lambda th: jnp.sum(net.apply(th, X) ** 2)))(population)
    np.testing.assert_allclose(fitness, jnp.sum(explicit**2, axis=(1, 2)), rtol=1e-4)
    # A subset of members (evaluation in chunks).
    sub = jax.jit(lambda pop: pop.subset(jnp.array([4, 1])).population_forward(net, X))
    np.testing.assert_allclose(sub(population), explicit[jnp.array([4, 1])], 1e-4)


def test_forward_never_builds_a_population_of_kernels() -> None:
    model = nnx.Sequential(
        nnx.Linear(12, 10, rngs=nnx.Rngs(0)), nnx.Linear(10, 7, rngs=nnx.Rngs(1))
    )
    net = from_nnx(model)
    _, population, _, _ = _population(net, 1, p=6, layout=layout_of(net))
    x = jnp.ones((3, 12))
    jaxpr = str(jax.make_jaxpr(lambda pop: pop.call(lambda th: net.apply(th, x).sum()))(population))
    for m, n in ((12, 10), (10, 7)):
        assert f"[6,{m},{n}]" not in jaxpr and f"[6,{m * n}]" not in jaxpr


def test_update_equals_the_explicit_formula() -> None:
    net = from_nnx(
        nnx.Sequential(nnx.Linear(5, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 3, rngs=nnx.Rngs(1)))
    )
    es, population, state, params = _population(net, 2, p=8, std=0.1, layout=layout_of(net))
    fitness = jnp.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0])
    new, _ = es.tell(jax.random.key(3), population, fitness, state, params)
    members = jax.jit(lambda pop: pop.materialize())(population)
    eps = (members[:4] - state.mean) / 0.1
    np.testing.assert_allclose(eps, -(members[4:] - state.mean) / 0.1, rtol=1e-4, atol=1e-5)
    ranks = jnp.argsort(jnp.argsort(fitness)) / 7.0 - 0.5  # centred ranks
    grad = (ranks[:4] - ranks[4:]) @ eps / (8 * 0.1)
    np.testing.assert_allclose(new.mean, state.mean - grad, rtol=1e-4, atol=1e-6)
    # The kernels' update is of rank up to P/2 * r = 8, above the perturbations' rank 2.
    kernel = next(s for s in es.layout.leaves if s.shape == (5, 4))
    update = (new.mean - state.mean)[kernel.offset : kernel.offset + kernel.size].reshape(5, 4)
    assert int(jnp.linalg.matrix_rank(update)) == 4


def test_antithetic_pairs_cancel() -> None:
    net = from_nnx(nnx.Linear(6, 5, rngs=nnx.Rngs(0)))
    es, population, state, _ = _population(net, 1, p=10, layout=layout_of(net))
    members = jax.jit(lambda pop: pop.materialize())(population)
    np.testing.assert_allclose(
        members[:5] + members[5:], jnp.broadcast_to(2 * state.mean, (5, 35)), atol=1e-6
    )
    pair_equal = jnp.tile(jnp.arange(5.0), 2)  # f_j == f_{j + P/2}
    weights = pair_equal[:5] - pair_equal[5:]
    np.testing.assert_array_equal(es.gradient(population, weights), 0.0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="rank must be a positive int"):
        LowRankES(8, jnp.zeros(4), rank=0)
    with pytest.raises(ValueError, match="population_size=7"):
        LowRankES(7, jnp.zeros(4))
    with pytest.raises(ValueError, match="layout"):
        LowRankES(8, jnp.zeros(4), layout=layout_of(from_nnx(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))))
    model = nnx.Linear(64, 10, rngs=nnx.Rngs(0))
    from evojax_nets.hybrids import gradient_steps

    with pytest.raises(ValueError, match="lowrank_es"):
        Evolution(
            model,
            Supervised.from_dataset(load_digits(), 32),
            "lowrank_es",
            8,
            ops=gradient_steps(optax.sgd(0.1), 1),
        )


def _evolution(**kwargs) -> Evolution:
    model = nnx.Sequential(
        nnx.Linear(64, 16, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(16, 10, rngs=nnx.Rngs(1))
    )
    kwargs.setdefault("strategy_kwargs", {"rank": 2})
    return Evolution(
        model,
        Supervised.from_dataset(load_digits(), 64),
        "lowrank_es",
        32,
        learning_rate=0.03,
        **kwargs,
    )


def test_evolution_on_digits_improves_and_chunks_agree() -> None:
    evo = _evolution()
    assert evo.strategy.name == "LowRankES" and evo.strategy.lowrank
    assert [s.kind for s in evo.strategy.algorithm.layout.leaves] == [
        "other",
        "matrix",
        "other",
        "matrix",
    ]
    _, history = evo.run(evo.init(jax.random.key(0)), 30, chunk_size=3)
    losses = [r["mean_fitness"] for r in history.rows]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    # eval_batch_size evaluates members in chunks: the same fitness, the same run.
    chunked = _evolution(eval_batch_size=8)
    other, _ = chunked.run(chunked.init(jax.random.key(0)), 3, chunk_size=3)
    first, _ = evo.run(evo.init(jax.random.key(0)), 3, chunk_size=3)
    np.testing.assert_allclose(other.strategy_state.mean, first.strategy_state.mean, atol=1e-5)


def test_custom_fitness_and_materialising_fallback() -> None:
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 4))
    fitness = lambda key, member: jnp.sum(member(x) ** 2)
    evo = Evolution(model, fitness, "lowrank_es", 8, maximize=False)
    state, history = evo.run(evo.init(jax.random.key(0)), 4, chunk_size=4)
    population = evo.strategy.algorithm.population(state.strategy_state)
    bound = FunctionTask(fitness).bind(evo.network)
    assert layout_for_task(evo.network, bound).leaves[1].kind == "matrix"
    direct = jax.jit(lambda pop: pop.call(bound.fitness, jax.random.key(0)))(population)
    mapped = population.map(lambda th: bound.fitness(jax.random.key(0), th), batch_size=3)
    np.testing.assert_allclose(direct, mapped, rtol=1e-5)
    assert len(history.rows) == 4


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    evo = _evolution()
    full, _ = evo.run(evo.init(jax.random.key(1)), 6, chunk_size=3)
    part, _ = evo.run(
        evo.init(jax.random.key(1)), 3, chunk_size=3, callbacks=[Checkpointer(tmp_path, every=3)]
    )
    state, _ = resume(_evolution(), tmp_path)
    assert int(state.generation) == 3 and tree_equal(state, part)
    state, _ = evo.run(state, 3, chunk_size=3)
    assert tree_equal(state, full)


SHARDED = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    from evojax_nets import Evolution, Supervised, load_digits
    from evojax_nets.checkpoint import _to_storable

    assert len(jax.devices()) == 8, jax.devices()
    data = load_digits()
    # One device, whole population at once; 8 devices, chunks of 8 members (one per device).
    states = []
    for mesh, batch in ((None, None), (True, 8)):
        model = nnx.Sequential(nnx.Linear(64, 8, rngs=nnx.Rngs(0)), nnx.relu,
                               nnx.Linear(8, 10, rngs=nnx.Rngs(1)))
        evo = Evolution(model, Supervised.from_dataset(data, 32), "lowrank_es", 16,
                        mesh=mesh, eval_batch_size=batch, strategy_kwargs={"rank": 2})
        state, _ = evo.run(evo.init(jax.random.key(0)), 3, chunk_size=3)
        states.append(jax.tree.leaves(_to_storable(state)[0]))
    for a, b in zip(*states, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    print("sharded == single-device")
    """
)


def test_sharded_on_8_fake_devices_equals_single_device() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SHARDED],
        env=child_env(devices=8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sharded == single-device" in out.stdout


def test_sweep_vmaps_over_its_params() -> None:
    model = nnx.Sequential(
        nnx.Linear(64, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 10, rngs=nnx.Rngs(1))
    )
    evo = Evolution(model, Supervised.from_dataset(load_digits(), 32), "lowrank_es", 8)
    result = evo.sweep([0, 1], 2, std=[0.05, 0.1])
    finals = [h.rows[-1]["mean_fitness"] for h in result.histories]
    assert len(finals) == 4 and np.all(np.isfinite(finals)) and len(set(finals)) == 4
