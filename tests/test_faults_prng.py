"""Issue 13, item 18: tiny problems draw with JAX's own threefry, not the unrolled one.

``tests/test_faults_compile.py`` times the compile of tiny problems, the symptom the issue
reported (SNES with P=8 on 3 weights compiling for minutes). That symptom did not reproduce on
this machine: the code before the fix (999a048) compiled it in 5-7 s, so the timing guard
passed there too. This test checks the cause the issue names instead, which did fail before
the fix: below the measured threshold (:func:`evojax_nets.prng.should_unroll`) a generation
never reinterprets its keys as :data:`evojax_nets.prng.UNROLLED_THREEFRY`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from evojax_nets import Evolution, prng
from evojax_nets.models import MLP


def _tiny_problem(num_params: int):
    if num_params == 3:
        model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        x = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    else:
        model = MLP(4, (16,), 2, rngs=nnx.Rngs(0))  # 114 weights
        x = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
    return model, lambda key, member: jnp.mean((member(x) - 0.5) ** 2)


@pytest.mark.parametrize("name", ["SNES", "Sep_CMA_ES"])
def test_item18_tiny_problems_draw_with_jax_threefry(name, monkeypatch):
    unrolled = []
    wrap = jax.random.wrap_key_data

    def spy(data, *args, impl=None, **kwargs):
        if impl is prng.UNROLLED_THREEFRY:
            unrolled.append(impl)
        return wrap(data, *args, impl=impl, **kwargs)

    # prng reinterprets keys through jax.random.wrap_key_data, looked up at call time.
    monkeypatch.setattr(jax.random, "wrap_key_data", spy)
    for population_size, num_params in ((8, 3), (16, 114)):
        model, fitness = _tiny_problem(num_params)
        evo = Evolution(model, fitness, name, population_size, maximize=False)
        _, history = evo.run(evo.init(jax.random.key(0)), 2)
        assert len(history.rows) == 2
    assert not unrolled, f"{name}: a tiny problem drew through the unrolled threefry"
