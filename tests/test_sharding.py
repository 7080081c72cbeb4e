"""Sharding the population over 8 fake CPU devices gives the single-device result."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from xla import child_env

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    from evojax_nets import Evolution, Supervised, load_digits
    from evojax_nets.checkpoint import _to_storable
    from evojax_nets.models import MLP

    assert len(jax.devices()) == 8, jax.devices()
    data = load_digits()
    for strategy in ("open_es", "ga", "de"):
        states = []
        for mesh in (None, True):
            evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)),
                            Supervised.from_dataset(data, 64), strategy, 16, mesh=mesh)
            state, _ = evo.run(evo.init(jax.random.key(0)), 4, chunk_size=4)
            states.append(jax.tree.leaves(_to_storable(state)[0]))
        for a, b in zip(*states, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        print(strategy, "sharded == single-device")
    try:
        Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(data, 64),
                  "open_es", 12, mesh=True)
    except ValueError as err:
        assert "population_size=12" in str(err) and "multiple of 8" in str(err), err
        print("indivisible population refused")
    else:
        raise AssertionError("population 12 over 8 devices was accepted")
    """
)


def test_sharded_equals_single_device_on_8_fake_devices() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=child_env(devices=8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for strategy in ("open_es", "ga", "de"):
        assert f"{strategy} sharded == single-device" in out.stdout
    assert "indivisible population refused" in out.stdout
