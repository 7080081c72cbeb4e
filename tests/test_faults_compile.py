"""Issue 13, item 18: every strategy compiles a tiny problem quickly.

The unrolled threefry of :mod:`evojax_nets.prng` was reported to make tiny problems compile
for minutes (SNES, P=8 on 3 weights); it is now used only where it was measured to pay
(:func:`evojax_nets.prng.should_unroll`: CPU and large draws). This guard builds every
strategy of the registry on two tiny problems and times the compile and a 2-generation run.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from evojax_nets import Evolution
from evojax_nets.models import MLP
from evojax_nets.prng import should_unroll
from evojax_nets.strategies import strategy_names

# Generous: a tiny problem compiles in a few seconds here; the reported hazard took minutes.
LIMIT_S = 20.0


def _tiny_problem(num_params: int):
    """A network of exactly ``num_params`` weights and a fitness on a fixed batch."""
    if num_params == 3:
        model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))  # 2 weights + 1 bias
        x = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    elif num_params == 114:
        model = MLP(4, (16,), 2, rngs=nnx.Rngs(0))  # 4*16 + 16 + 16*2 + 2
        x = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
    else:
        raise ValueError(num_params)
    return model, lambda key, member: jnp.mean((member(x) - 0.5) ** 2)


# P=8 and P=16 are valid for every strategy of the registry: both are even (antithetic
# strategies such as Open_ES and PGPE need pairs) and both split into the SV strategies'
# default of 2 sub-populations of equal size, so no strategy needs another size here.
SIZES = ((8, 3), (16, 114))


def test_tiny_problems_stay_below_the_unroll_threshold():
    # The guard below is only meaningful if these problems take JAX's own threefry on CPU.
    assert not any(should_unroll(p * d, backend="cpu") for p, d in SIZES)


# The strategies reported to compile for minutes (SNES, sep-CMA-ES) and one of each family.
# Every strategy of the registry compiles and runs a tiny problem in tests/test_faults_sharding.py
# already; timing all 39 twice here took ~10 minutes of this 2-core machine, more than the
# whole suite's budget.
REPORTED = ["SNES", "Sep_CMA_ES", "Open_ES", "CMA_ES", "DifferentialEvolution", "PSO", "DeepGA"]


def test_reported_names_exist():
    assert set(REPORTED) <= set(strategy_names())


@pytest.fixture
def no_compilation_cache():
    """Compile for real: the suite's compilation cache (conftest) may hold these programs."""
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.mark.parametrize("name", REPORTED)
def test_item18_every_strategy_compiles_tiny_problems(name, no_compilation_cache):
    for population_size, num_params in SIZES:
        model, fitness = _tiny_problem(num_params)
        evo = Evolution(model, fitness, name, population_size, maximize=False)
        assert evo.network.num_params == num_params
        state = evo.init(jax.random.key(0))
        start, start_cpu = time.perf_counter(), time.process_time()
        state, history = evo.run(state, 2)
        jax.block_until_ready(state)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        assert len(history.rows) == 2
        # The wall clock alone would measure the other processes on a shared 2-core machine
        # (EvoTF_ES: 27 s wall for 6.8 s of CPU at load 11); a compile that really blows up
        # is slow by both clocks.
        assert min(wall, cpu) < LIMIT_S, (
            f"{name} with P={population_size} on {num_params} weights took {wall:.1f} s "
            f"({cpu:.1f} s of CPU) to compile and run 2 generations (limit {LIMIT_S:.0f} s)"
        )
