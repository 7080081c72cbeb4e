"""Issue 13, items 3 and 4: every strategy on a mesh of 8 fake CPU devices, across chunks, and
what a sharded CMA-ES run does and does not reproduce of a single-device one.

The every-strategy test is also the registry's test: each strategy runs inside ``lax.scan`` on
a tiny network, its best-so-far only improves and is the loss of the member it tracks, it
counts its evaluations, and the network-sized defaults put its first samples at the requested
scale (the low-memory strategy, which refuses a mesh, runs on one device).

Each test runs one subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be
set before JAX starts), so JAX's start-up is paid once per test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from xla import child_env


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env(devices=8),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Every strategy in the registry, 4 generations in chunks of 2 (so the second chunk runs on
# the state the first one handed back), population sharded over the 8 devices, on a tiny
# classification loss; the checks every strategy must pass (tests/test_strategies.py).
EVERY_STRATEGY = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from evojax_nets import Evolution, PopulationOp
    from evojax_nets.models import MLP
    from evojax_nets.strategies import DEFAULT_STD, strategy_names

    assert len(jax.devices()) == 8, jax.devices()
    # Populations must be a multiple of the 8 devices and suit the strategy: GESMR_GA needs
    # (P - 1) % num_groups == 0; everything else takes 8 (the SV strategies split it into
    # num_populations=2 groups of 4).
    SETTINGS = {"GESMR_GA": (16, {"num_groups": 5})}
    # Whose first samples are not ~std per coordinate around the mean by design: Guided ES
    # and ASEBO scale the whole perturbation to norm ~std; RandomSearch samples around 0.
    NOT_PER_COORDINATE = {"GuidedES", "ASEBO", "RandomSearch"}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = jnp.asarray((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0))
    x = jnp.asarray(x)

    def fitness(key, member):
        return optax.softmax_cross_entropy_with_integer_labels(member(x), y).mean()

    def record_first_population():  # changes nothing; keeps generation 1's population
        def apply(key, members, state, ctx):
            return members, jnp.where(ctx.generation == 0, members.phenotype, state)
        return PopulationOp(init=lambda key, population: population, apply=apply)

    def check(name, evo, population_size, generations, chunk, recorded=False):
        state, history = evo.run(evo.init(jax.random.key(0)), generations, chunk_size=chunk)
        assert [r["generation"] for r in history.rows] == list(range(1, generations + 1))
        best = history.column("best_so_far")
        assert np.all(np.isfinite(best)), best
        assert np.all(np.diff(best) <= 0), f"best_so_far of a minimised loss went up: {best}"
        assert int(state.generation) == generations
        initial = 1 if evo.strategy.population_based else 0
        assert int(state.evaluations) == (generations + initial) * population_size
        assert np.all(np.isfinite(np.asarray(evo.mean_theta(state))))
        # The tracked best really has the recorded loss.
        loss = evo.task.fitness(jax.random.key(1), state.best_theta)
        np.testing.assert_allclose(float(loss), best[-1], rtol=1e-5)
        if recorded and not evo.strategy.population_based and name not in NOT_PER_COORDINATE:
            spread = float((np.asarray(state.op_state) - np.asarray(evo.network.theta0)).std())
            assert 0.3 * DEFAULT_STD < spread < 3 * DEFAULT_STD, (
                f"the first samples have spread {spread:.4f}, not ~std={DEFAULT_STD}")
        return best[-1]

    for name in sys.argv[1:] or strategy_names():
        population_size, kwargs = SETTINGS.get(name, (8, {}))
        model = MLP(4, (6,), 3, rngs=nnx.Rngs(0))
        # The low-memory and low-rank strategies never build the (P, D) population an
        # operator would record.
        implicit = name in ("LowMemoryOpenES", "LowRankES")
        ops = None if implicit else record_first_population()
        try:
            if name == "LowMemoryOpenES":
                try:
                    Evolution(model, fitness, name, population_size, maximize=False, mesh=True)
                except ValueError as err:
                    assert "mesh=" in str(err) and "low_memory_open_es" in str(err), err
                else:
                    raise AssertionError("mesh=True accepted")
                evo = Evolution(model, fitness, name, population_size, maximize=False)
                assert evo.strategy.lazy
                best = check(name, evo, population_size, 3, 3)
                print(f"refused-mesh-ok {name} {best:.6g}")
                continue
            evo = Evolution(model, fitness, name, population_size, maximize=False,
                            strategy_kwargs=kwargs, mesh=True, ops=ops)
            assert not evo.strategy.lazy and evo.population_size == population_size
            best = check(name, evo, population_size, 4, 2, recorded=ops is not None)
            print(f"ok {name} {best:.6g}")
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            print(f"FAIL {name}: {type(err).__name__}: {first}")
    """
)


# The registry in parts, one subprocess each, so that each test stays near a minute on two
# cores (compiling one strategy's chunk takes 2-3 s of CPU; 38 of them in one process ~100 s).
PARTS = 3


@pytest.mark.parametrize("part", range(PARTS))
def test_item3_every_strategy_two_chunks_on_8_devices(part: int) -> None:
    from evojax_nets.strategies import strategy_names

    names = strategy_names()[part::PARTS]
    out = _run(EVERY_STRATEGY, *names)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert not failures, "\n".join(failures)
    for name in names:
        expected = "refused-mesh-ok" if name == "LowMemoryOpenES" else "ok"
        assert any(line.startswith(f"{expected} {name}") for line in lines), (name, lines)


# What a sharded CMA-ES run reproduces of the single-device one (docs/scale.md,
# "Reproducibility across device counts"). Generation 1 agrees to rounding: the same
# population, fitness equal to the last bit or so, the same ranks, mean and covariance equal to
# float tolerance. The eigenbasis that generation 2 samples in is not reproducible: C has an
# eigenvalue of multiplicity about D - P, and within that eigenspace `eigh` may return any
# orthonormal basis, so a perturbation of 1e-11 (sharded or not) rotates it arbitrarily while
# the eigenvectors of the simple eigenvalues and B D^2 B^T (the distribution) stay put.
CMA_ES_SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from evosax.algorithms.distribution_based.cma_es import eigen_decomposition
    from evojax_nets import Evolution, Supervised, load_digits
    from evojax_nets.models import MLP

    assert len(jax.devices()) == 8, jax.devices()
    data = load_digits()
    evos = [Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(data, 64),
                      "CMA_ES", 16, mesh=mesh) for mesh in (None, True)]
    d = lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

    def first_generation(evo, state):  # the population and fitness step() computes
        _, k_ask, _, k_eval, _ = jax.random.split(state.key, 5)
        population, _ = evo.strategy.ask(k_ask, state.strategy_state, evo.params.strategy)
        return population, evo.evaluate(k_eval, population, state.task_state)

    states = [evo.init(jax.random.key(0)) for evo in evos]
    (p0, f0), (p1, f1) = [jax.jit(lambda s, e=e: first_generation(e, s))(s)
                          for e, s in zip(evos, states, strict=True)]
    print(f"population {d(p0, p1):.3g} fitness {d(f0, f1):.3g}")
    assert d(p0, p1) <= 1e-6
    assert d(f0, f1) <= 1e-6 * float(np.max(np.abs(np.asarray(f0))))
    assert (np.argsort(np.asarray(f0)) == np.argsort(np.asarray(f1))).all(), "ranks differ"

    a, b = [evo.step(s)[0].strategy_state for evo, s in zip(evos, states, strict=True)]
    print(f"after 1 generation: mean {d(a.mean, b.mean):.3g} C {d(a.C, b.C):.3g}")
    assert d(a.mean, b.mean) <= 1e-6 and d(a.std, b.std) <= 1e-7 and d(a.C, b.C) <= 1e-9

    eig = jax.jit(eigen_decomposition)
    dim, population_size = a.C.shape[0], 16
    rng = np.random.default_rng(0)
    noise = rng.normal(size=a.C.shape)
    noise = (noise + noise.T) / 2
    perturbed = jnp.asarray(np.asarray(a.C, np.float64) + 1e-11 * noise / np.abs(noise).max(),
                            jnp.float32)
    _, B0, D0 = (np.asarray(x, np.float64) for x in eig(a.C))
    lam = D0**2
    gap = np.minimum(np.abs(np.diff(lam, prepend=-np.inf)), np.abs(np.diff(lam, append=np.inf)))
    simple = gap > 1e-5
    # rank-mu and rank-one updates move at most P + 1 directions away from the rest.
    assert simple.sum() <= population_size + 1 and (~simple).sum() >= dim - population_size - 1
    for tag, C in (("sharded", b.C), ("single-device C + 1e-11", perturbed)):
        _, B1, D1 = (np.asarray(x, np.float64) for x in eig(C))
        overlap = np.abs(np.sum(B0 * B1, axis=0))
        dist = np.abs(B0 @ np.diag(D0**2) @ B0.T - B1 @ np.diag(D1**2) @ B1.T).max()
        print(f"{tag}: B {d(B0, B1):.3g}, simple eigenvectors min overlap "
              f"{overlap[simple].min():.6f}, degenerate min overlap {overlap[~simple].min():.3g}, "
              f"B D^2 B^T {dist:.3g}")
        assert overlap[simple].min() > 0.999, overlap[simple]
        assert dist <= 1e-5, dist
        if tag != "sharded":  # without any device: degenerate eigenvectors are not determined
            assert overlap[~simple].min() < 0.5 and d(B0, B1) > 0.5
    print("cma_es behaviour as documented")
    """
)


def test_item4_cma_es_sharded_behaviour() -> None:
    out = _run(CMA_ES_SHARDED)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cma_es behaviour as documented" in out.stdout, out.stdout
