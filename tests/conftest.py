"""Shared fixtures: tiny networks (NNX, linen, TrainState) and tiny data, so that every test
compiles in a second or two on a 2-core CPU.

Compilation dominates the suite's time, so XLA is asked to compile fast (``tests/xla.py``);
flags already in ``XLA_FLAGS`` are kept.
"""

from __future__ import annotations

import os
import tempfile

from xla import FAST_COMPILE

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# Many tests start Python again (the command line, killed-and-resumed runs, notebooks) and
# compile the same programs there: one compilation cache for the session (a fresh folder, made
# before pytest-xdist starts its workers, which inherit it) compiles each program once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="evojax-nets-tests-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from evojax_nets.models import MLP
from evojax_nets.tasks import Supervised

NUM_FEATURES = 4
NUM_CLASSES = 3
HIDDEN = 6


class LinenMLP(nn.Module):
    """``Dense_0 -> relu -> Dense_1``."""

    hidden: int = HIDDEN
    out: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out)(x)


class LinenBNNet(nn.Module):
    """A linen net with a ``batch_stats`` collection (BatchNorm in inference mode)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(HIDDEN)(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Dense(NUM_CLASSES)(nn.relu(x))


class NNXBNNet(nnx.Module):
    """An NNX net with non-evolved state: BatchNorm statistics and a Dropout RNG stream."""

    def __init__(self, rngs: nnx.Rngs):
        self.body = nnx.Linear(NUM_FEATURES, HIDDEN, rngs=rngs)
        self.bn = nnx.BatchNorm(HIDDEN, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(jax.nn.relu(self.bn(self.body(x)))))


def make_mlp(seed: int = 0, hidden: tuple[int, ...] = (HIDDEN,)) -> MLP:
    return MLP(NUM_FEATURES, hidden, NUM_CLASSES, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="session")
def tiny_data() -> tuple[np.ndarray, np.ndarray]:
    """48 examples, 4 features, 3 classes (the quadrant of the first two features)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, NUM_FEATURES)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    return x, y


@pytest.fixture(scope="session")
def tiny_task(tiny_data) -> Supervised:
    x, y = tiny_data
    return Supervised(x, y, batch_size=None)


@pytest.fixture
def mlp() -> MLP:
    """``hidden[0]: 4 -> 6``, ``head: 6 -> 3`` (51 parameters)."""
    return make_mlp()


@pytest.fixture
def linen_mlp(tiny_data):
    x, _ = tiny_data
    module = LinenMLP()
    return module, module.init(jax.random.key(0), x[:2])


@pytest.fixture
def bn_nnx(tiny_data) -> NNXBNNet:
    """An NNX BatchNorm net whose statistics are not the defaults, put in eval mode."""
    x, _ = tiny_data
    model = NNXBNNet(nnx.Rngs(0))
    model.train()
    model(x * 2.0 + 1.0)  # moves the running statistics away from (0, 1)
    model.eval()
    return model


@pytest.fixture
def bn_linen(tiny_data):
    """A linen BatchNorm net whose ``batch_stats`` are not the defaults."""
    x, _ = tiny_data
    module = LinenBNNet()
    variables = module.init(jax.random.key(1), x[:2])
    stats = jax.tree.map(
        lambda a: a + 0.5 * jax.random.uniform(jax.random.key(2), a.shape),
        variables["batch_stats"],
    )
    return module, {"params": variables["params"], "batch_stats": stats}


@pytest.fixture
def trained_state(tiny_data, linen_mlp) -> train_state.TrainState:
    """A TrainState (Adam) after two optax steps, so step and opt_state are not trivial."""
    x, y = tiny_data
    module, variables = linen_mlp
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=optax.adam(1e-2)
    )

    def loss(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(state):
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    return step(step(state))
