"""Q3's tasks and its gradient baseline: the two problems (network, loss, initialiser draws,
scorers), full-batch Adam from many starts, and the callback that records an evolution's
answers. ``study_q3`` holds the protocol and the contenders' budgets."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hybrid_minima import sine_wave, two_spirals
from hybrid_race import dense_flops
from jax.flatten_util import ravel_pytree

from evojax_nets import Evolution, Supervised
from evojax_nets.models import MLP
from evojax_nets.nets import from_nnx
from evojax_nets.runner import Callback


def task_data(name: str) -> dict[str, Any]:
    if name == "sine":
        splits = [sine_wave(256, 6.0, offset) for offset in (0.0, 0.25, 0.5)]
        kw = {"hidden": (2,), "activation": jnp.sin, "out": 1, "threshold": 0.99}
        return {"splits": splits, "regression": True, "score": "R^2", **kw}
    splits = [two_spirals(400, 3.0, 0.0, seed) for seed in (0, 2, 1)]
    kw = {"hidden": (16, 16), "activation": jax.nn.tanh, "out": 2, "threshold": 0.95}
    return {"splits": splits, "regression": False, "score": "accuracy", **kw}


class Problem:
    """One task's network, loss, initialiser draws and scorers."""

    def __init__(self, name: str):
        d = self.data = task_data(name)
        (x, y), (xv, yv), (xt, yt) = d["splits"]
        self.model = MLP(
            x.shape[1], d["hidden"], d["out"], rngs=nnx.Rngs(0), activation=d["activation"]
        )
        self.network = from_nnx(self.model)
        kind = "regression" if d["regression"] else "classification"
        self.task = Supervised(x, y, xv, yv, batch_size=None, kind=kind)
        self.loss_on = self.task.bind(self.network).extra["loss_on"]
        self.x, self.y, self.n = jnp.asarray(x), jnp.asarray(y), len(x)
        self.fwd = dense_flops(self.network)  # per example
        tree = self.network.unravel(self.network.theta0)
        self.leaves, self.treedef = jax.tree.flatten(tree)
        assert len(self.leaves) == len(self.network.paths)
        sets = {"validation": (xv, yv), "test": (xt, yt)}
        self.score = {k: jax.jit(jax.vmap(self._scorer(*v))) for k, v in sets.items()}
        self.cache: dict[Any, Any] = {}
        self.evos: dict[str, Evolution] = {}

    def _scorer(self, x, y):
        x, y, regression = jnp.asarray(x), jnp.asarray(y), self.data["regression"]

        def score(theta):
            out = self.network.apply(theta, x)
            if regression:
                return 1.0 - jnp.mean((out[:, 0] - y) ** 2) / jnp.var(y)
            return jnp.mean(jnp.argmax(out, -1) == y)

        return score

    def draw(self, key: jax.Array, scale: float = 1.0) -> jax.Array:
        """One draw of the standard initialiser (nnx.Linear's: LeCun normal kernels, zero
        biases), the first hidden layer's kernel times ``scale``."""
        keys = jax.random.split(key, len(self.leaves))
        leaves = []
        for k, path, leaf in zip(keys, self.network.paths, self.leaves, strict=True):
            if path.endswith("kernel"):
                w = jax.nn.initializers.lecun_normal()(k, leaf.shape, leaf.dtype)
                leaves.append(w * scale if path == "hidden/0/kernel" else w)
            else:
                leaves.append(jnp.zeros_like(leaf))
        return ravel_pytree(jax.tree.unflatten(self.treedef, leaves))[0]

    def draws(self, seeds, count: int, scale: float) -> jax.Array:
        """(configurations, count, D): ``count`` draws per seed, the same keys at any scale."""
        keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), count))(jnp.asarray(seeds))
        return jax.vmap(jax.vmap(lambda k: self.draw(k, scale)))(keys)


def run_adam(prob: Problem, inits: jax.Array, lrs: np.ndarray, steps: int, points: int):
    """Full-batch Adam from every row of ``inits`` (C, R, D) at rate ``lrs[c]``; the answer
    is each configuration's restart with the lowest training loss. Returns the (C, D) answers
    and the steps done at every checkpoint, and the wall times."""
    opt = optax.scale_by_adam()
    every = steps // points
    loss = prob.loss_on

    def one(theta, state, lr):
        def step(carry, _):
            th, st = carry
            g = jax.grad(loss)(th, prob.x, prob.y)
            u, st = opt.update(g, st)
            return (th - lr * u, st), None

        (theta, state), _ = jax.lax.scan(step, (theta, state), None, length=every)
        return theta, state

    thetas = inits
    states = jax.vmap(jax.vmap(opt.init))(thetas)
    lrs = jnp.asarray(lrs, jnp.float32)
    t0 = time.perf_counter()
    cache_key = ("adam", thetas.shape, every)
    if cache_key not in prob.cache:  # tuning and test runs have one shape: one compilation
        chunk = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, 0, None))))
        train = jax.vmap(jax.vmap(lambda t: loss(t, prob.x, prob.y)))
        best = lambda th: jnp.argmin(jnp.nan_to_num(train(th), nan=jnp.inf), axis=-1)
        pick = jax.jit(lambda th: jnp.take_along_axis(th, best(th)[:, None, None], 1)[:, 0])
        prob.cache[cache_key] = (chunk.lower(thetas, states, lrs).compile(), pick)
    compiled, answer = prob.cache[cache_key]
    compile_s = time.perf_counter() - t0
    answers, run_s = [answer(thetas)], 0.0
    for _ in range(points):
        t0 = time.perf_counter()
        thetas, states = jax.block_until_ready(compiled(thetas, states, lrs))
        run_s += time.perf_counter() - t0
        answers.append(answer(thetas))
    wall = {"compile": round(compile_s, 2), "run": round(run_s, 2)}
    return answers, [i * every for i in range(points + 1)], wall


class _Answers(Callback):
    """Each configuration's ``solution_theta`` at the start and after every chunk."""

    def __init__(self):
        self.answers, self.overhead, self.compile_s, self.wall = [], 0.0, 0.0, 0.0
        self.units = [0]
        self._fn = None

    def _grab(self, owner, state):
        t0 = time.perf_counter()
        if self._fn is None:
            self._fn = jax.jit(jax.vmap(owner.solution_theta))
        self.answers.append(self._fn(state))
        self.overhead += time.perf_counter() - t0

    def on_start(self, owner, state, num_steps):
        self._grab(owner, state)

    def on_chunk(self, owner, state, rows):
        self._grab(owner, state)
        self.units.append(self.units[-1] + len(rows))
        self.compile_s, self.wall = rows[-1]["compile_time"], rows[-1]["wall_time"]
