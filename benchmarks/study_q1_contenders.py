"""Q1's contenders (see ``benchmarks/study_q1.py`` for the protocol): what each one is, the
setting swept and its grid, the FLOPs a step costs, and the code that runs every seed x
setting of one contender as one compiled program (``jit(vmap(lax.scan))`` for the gradient
methods, ``Evolution.sweep`` for the evolution strategies), with the tracker that records where
each run first met the target and stops a sweep once its choice is certain."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evojax_nets import Callback
from evojax_nets.losses import accuracy

STD, RANK = 0.05, 1
# Three settings of each contender's step size, a factor of ~3 apart; nothing else tuned.
# ``param`` is the setting swept: ``learning_rate`` (the optimizer's step), or ``std`` (the
# evosax ``std_init`` / the population's initial spread / the GA's mutation scale, see below).
CONTENDERS: dict[str, dict[str, Any]] = {
    # A first quick run chose the top of [0.003, 0.01, 0.03] for Adam and of [0.01, 0.03, 0.1]
    # for both ES, so both grids were moved up one step, the same for each.
    "adam": {"kind": "gradient", "label": "Adam", "grid": [0.01, 0.03, 0.1]},
    # SGD with momentum 0.9: an effective step lr / (1 - 0.9), so 0.03-0.3 is 0.3-3 per
    # unit gradient, the usual range for a tanh MLP on cross-entropy.
    "sgd_momentum": {"kind": "gradient", "label": "SGD + momentum 0.9", "grid": [0.03, 0.1, 0.3]},
    "open_es": {"kind": "es", "strategy": "open_es", "label": "OpenAI-ES", "param": "lr"},
    "lowrank_es": {"kind": "es", "strategy": "lowrank_es", "label": "low-rank ES (rank 1)"},
    # PGPE: the library gives it the same Adam on its gradient estimate as OpenAI-ES, so its
    # step size is that learning rate; the same grid as OpenAI-ES (std_init 0.05, adapted).
    "pgpe": {"kind": "es", "strategy": "PGPE", "label": "PGPE"},
    # SNES: the mean moves by lr * std * (weighted noise) with lr = 1 by design (the library
    # leaves its natural-gradient step alone, so learning_rate would not reach it): its step
    # size is the search std, swept as the initial std (std_init; adapted afterwards).
    "snes": {"kind": "es", "strategy": "SNES", "label": "SNES", "param": "std"},
    # The CMA family: sigma is the step size (adapted by path length), swept as std_init.
    "sep_cma_es": {"kind": "es", "strategy": "Sep_CMA_ES", "label": "sep-CMA-ES", "param": "std"},
    # Full CMA-ES holds a D x D covariance (and decomposes it every generation) for each of
    # the 15 batched configurations: run only up to MAX_D_FULL_COVARIANCE.
    "cma_es": {"kind": "es", "strategy": "CMA_ES", "label": "CMA-ES", "param": "std"},
    # PSO and DE move members by multiples of their distances to other members (velocities
    # start at 0; DE's differential weight 0.8 and PSO's coefficients are evosax's), so the
    # scale of every step is set by the initial population's spread: the library starts it
    # at the network's initialisation plus std * N(0, I), and std is swept.
    "pso": {"kind": "es", "strategy": "PSO", "label": "PSO", "param": "std", "pop": True},
    "de": {
        "kind": "es",
        "strategy": "DifferentialEvolution",
        "label": "DE",
        "param": "std",
        "pop": True,
    },
    # The elitist GA (Such et al. 2017): std is its mutation scale (and the initial spread);
    # one step lower than the others, as mutations of 0.1 on weights of scale ~0.1 destroy.
    "deep_ga": {
        "kind": "es",
        "strategy": "DeepGA",
        "label": "elitist GA (Deep-GA)",
        "param": "std",
        "pop": True,
        "grid": [0.003, 0.01, 0.03],
    },
}
for _c in CONTENDERS.values():
    if _c["kind"] == "es":
        _c["param"] = "learning_rate" if _c.get("param", "lr") == "lr" else _c["param"]
        _c.setdefault("grid", [0.03, 0.1, 0.3] if _c["param"] == "learning_rate" else None)
        _c["grid"] = _c["grid"] or [0.01, 0.03, 0.1]
        _c.setdefault("pop", False)
    else:
        _c["param"] = "learning_rate"
METHODS = tuple(CONTENDERS)
GRADIENT = tuple(m for m, c in CONTENDERS.items() if c["kind"] == "gradient")
# Full CMA-ES eigendecomposes its D x D covariance every generation, per configuration. At
# D = 1,066 (h = 12) one generation of a single run took 0.25 s here (jnp.linalg.eigh 0.07 s,
# 0.19 s for 3 batched; 2026-12-02 21:25 UTC, load 0.3), so its 15-run tuning (up to 200
# generations) fits; an earlier 3.5 s per generation per run was measured beside this study's
# own run at load 5.5. At D = 3,466 (h = 32) one eigh took 1.5 s and 3 batched 5.6 s, so 15
# batched runs would cost ~28 s a generation, ~1.2 h for sep-CMA-ES's median 155 generations:
# over this study's budget, and more so at every larger size.
MAX_D_FULL_COVARIANCE = 1100
CMA_NOT_RUN = (
    "D too large for full CMA-ES here: one eigendecomposition took 1.5 s at D = 3,466 (5.6 s "
    "for 3 batched), ~28 s a generation for 15 batched runs (~1.2 h for 155 generations)"
)


def layer_shapes(h: int) -> list[tuple[int, int]]:
    return [(64, h), (h, h), (h, 10)]


def flops_per_step(method: str, h: int, P: int, B: int) -> dict[str, float]:
    """Counted FLOPs of one step / generation, its upper bound, and the FLOPs spent once before
    the first step (a population-based strategy evaluates its initial population)."""
    shapes = layer_shapes(h)
    forward = 2 * B * sum(i * o for i, o in shapes)
    c = CONTENDERS[method]
    if c["kind"] == "gradient":
        return {"counted": 3 * forward, "upper_bound": 3 * forward, "initial": 0}
    initial = P * forward if c["pop"] else 0
    if method != "lowrank_es":
        return {"counted": P * forward, "upper_bound": P * forward, "initial": initial}
    (i0, o0), rest = shapes[0], shapes[1:]
    shared = 2 * B * i0 * o0
    per_member = 2 * B * sum(i * o for i, o in rest) + 2 * B * RANK * sum(i + o for i, o in shapes)
    return {"counted": shared + P * per_member, "upper_bound": P * forward, "initial": 0}


class _Stop(Exception):
    """Raised by the tracker to end a sweep once its choice is certain."""


class Tracker:
    """Steps / time / test accuracy of every configuration where it first met the target, and
    the early-stop rule. ``group`` maps a configuration to its setting's index."""

    def __init__(self, group: np.ndarray, target: float, every: int, test_fn):
        self.group, self.target, self.every, self.test_fn = group, target, every, test_fn
        C = len(group)
        self.steps = np.full(C, -1)
        self.seconds = np.full(C, np.nan)
        self.test_acc = np.full(C, np.nan)
        self.val_acc = np.full(C, np.nan)
        self.last_step, self.run_s, self.runs_per_call = 0, 0.0, C

    def update(self, step: int, val: np.ndarray, run_s: float, thetas_fn) -> bool:
        """Record a check; True when the sweep may stop."""
        self.last_step, self.run_s = step, run_s
        new = (np.asarray(val) >= self.target) & (self.steps < 0)
        if new.any():
            acc = np.asarray(self.test_fn(thetas_fn()))
            self.steps[new], self.seconds[new] = step, run_s
            self.test_acc[new], self.val_acc[new] = acc[new], np.asarray(val)[new]
        lower = np.where(self.steps >= 0, self.steps, step + self.every).astype(float)
        groups = np.unique(self.group)
        done = np.array([np.all(self.steps[self.group == g] >= 0) for g in groups])
        med_lower = np.array([np.median(lower[self.group == g]) for g in groups])
        if not done.any():
            return False
        best = np.min(med_lower[done])
        return bool(np.all(done | (med_lower > best)))

    @staticmethod
    def concat(parts: list[Tracker], group: np.ndarray) -> Tracker:
        """Trackers of consecutive calls (one seed each) as one; each run's time is its own."""
        t = Tracker(group, parts[0].target, parts[0].every, parts[0].test_fn)
        for name in ("steps", "seconds", "test_acc", "val_acc"):
            setattr(t, name, np.concatenate([getattr(p, name) for p in parts]))
        t.last_step = max(p.last_step for p in parts)
        t.run_s = sum(p.run_s for p in parts)
        t.runs_per_call = parts[0].runs_per_call
        return t


class _SweepCallback(Callback):
    def __init__(self, tracker: Tracker, population_based: bool):
        self.tracker, self.overhead, self.compile_s = tracker, 0.0, 0.0
        self.which = "best" if population_based else "mean"

    def on_chunk(self, owner, state, rows):
        t0 = time.perf_counter()
        last = rows[-1]
        run_s = last["wall_time"] - last["compile_time"] - self.overhead
        thetas = lambda: self._solutions(owner, state)
        val = last[f"test_accuracy_{self.which}"]
        stop = self.tracker.update(int(last["generation"]), val, run_s, thetas)
        self.compile_s = last["compile_time"]
        self.overhead += time.perf_counter() - t0
        if stop:
            raise _Stop

    def _solutions(self, owner, state):
        if not hasattr(self, "_fn"):
            self._fn = jax.jit(jax.vmap(owner.evolution.solution_theta))
        return self._fn(state)


def accuracy_fn(network, x, y):
    return jax.jit(jax.vmap(lambda theta: accuracy(network.apply(theta, x), y)))


def run_es(evo, method, grid, seeds, cap, every, target, test_fn, one_seed_per_call=False):
    """Every seed x setting of an evosax strategy through ``Evolution.sweep``; with
    ``one_seed_per_call`` (one setting only, to bound memory) the seeds run one call each."""
    c = CONTENDERS[method]
    param = c["param"]
    configs = [(s, v) for s in seeds for v in grid]  # the sweep's order: seed-major
    group = np.array([grid.index(v) for _, v in configs])
    calls = [[s] for s in seeds] if one_seed_per_call else [list(seeds)]
    if one_seed_per_call:
        assert len(grid) == 1, "one seed per call is for a single setting"
    parts, compile_s = [], 0.0
    for call_seeds in calls:
        sub = np.array([grid.index(v) for s in call_seeds for v in grid])
        tracker = Tracker(sub, target, every, test_fn)
        cb = _SweepCallback(tracker, c["pop"])
        try:
            result = evo.sweep(call_seeds, cap, chunk_size=every, callbacks=[cb], **{param: grid})
            got = [(cfg["seed"], cfg[param]) for cfg in result.configs]
            assert got == [(s, v) for s in call_seeds for v in grid]
        except _Stop:
            pass
        parts.append(tracker)
        compile_s += cb.compile_s
    tracker = parts[0] if len(parts) == 1 else Tracker.concat(parts, group)
    return tracker, {"compile": round(compile_s, 2), "run": round(tracker.run_s, 2)}


# The gradient methods' wider space (``--q1-gradient-space``): each learning rate of the grid
# x a schedule (constant, or cosine decay to 0 over the cap) x a weight decay (decoupled from
# Adam's scaling as in AdamW; added to SGD's gradient before the momentum, as L2).
SCHEDULES, WEIGHT_DECAYS = ("constant", "cosine"), (0.0, 1e-4, 1e-3)


def gradient_space(lrs: list[float]) -> list[dict[str, Any]]:
    return [
        {"learning_rate": lr, "schedule": sched, "weight_decay": wd}
        for lr in lrs
        for sched in SCHEDULES
        for wd in WEIGHT_DECAYS
    ]


def _setting(v: float | dict[str, Any]) -> tuple[float, float, float]:
    """(learning rate, 1 for a cosine schedule, weight decay) of a grid entry: a learning
    rate alone means a constant schedule and no weight decay."""
    if not isinstance(v, dict):
        return float(v), 0.0, 0.0
    return v["learning_rate"], float(v["schedule"] == "cosine"), v["weight_decay"]


def gradient_update(method, opt, theta, g, opt_state, lr, cos, wd, t, cap):
    """One step of ``opt`` (``scale_by_adam`` or ``trace``) at step ``t``: the learning rate
    ``lr``, cosine-decayed to 0 over ``cap`` steps where ``cos`` is 1; weight decay ``wd``
    decoupled for Adam (AdamW's) and added to the gradient for SGD (L2 through the momentum)."""
    decoupled = method == "adam"
    g = g if decoupled else g + wd * theta
    u, opt_state = opt.update(g, opt_state)
    u = u + wd * theta if decoupled else u
    decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, cap) / cap))
    lr_t = lr * jnp.where(cos > 0, decay, 1.0)
    return theta - lr_t * u, opt_state


def run_gradient(method, network, task, val, grid, seeds, cap, every, target, test_fn):
    """Adam (optax.scale_by_adam) or SGD with momentum 0.9 (optax.trace) from the network's
    initialisation, on the library's own minibatch sampler (the one the ES's fitness draws
    from); the update is ``theta - lr_t * direction``, ``lr_t`` the configuration's learning
    rate under its schedule. A grid entry is a learning rate or a ``gradient_space`` dict."""
    bound = task.bind(network)
    sample, loss_on = bound.extra["sample"], bound.extra["loss_on"]
    theta0 = network.theta0
    val_acc = accuracy_fn(network, *val)
    opt = {"adam": optax.scale_by_adam(), "sgd_momentum": optax.trace(decay=0.9)}[method]
    configs = [(s, v) for s in seeds for v in grid]
    settings = np.asarray([_setting(v) for _, v in configs], np.float32)  # (configs, 3)
    lrs, cosine, wds = (jnp.asarray(settings[:, i]) for i in range(3))
    keys = jax.vmap(jax.random.key)(jnp.asarray([s + 7919 for s, _ in configs]))

    def one(theta, opt_state, lr, cos, wd, key, start):
        def step(carry, i):
            theta, opt_state = carry
            t = start + i
            x, y = sample(jax.random.fold_in(key, t))
            g = jax.grad(loss_on)(theta, x, y)
            return gradient_update(method, opt, theta, g, opt_state, lr, cos, wd, t, cap), None

        (theta, opt_state), _ = jax.lax.scan(step, (theta, opt_state), jnp.arange(every))
        return theta, opt_state

    chunk = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None)))
    C = len(configs)
    thetas = jnp.tile(theta0[None], (C, 1))
    states = jax.vmap(opt.init)(thetas)
    t0 = time.perf_counter()
    compiled = chunk.lower(thetas, states, lrs, cosine, wds, keys, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    val_acc(thetas).block_until_ready()
    group = np.array([grid.index(lr) for _, lr in configs])
    tracker = Tracker(group, target, every, test_fn)
    run_s = 0.0
    for start in range(0, cap, every):
        t0 = time.perf_counter()
        thetas, states = compiled(thetas, states, lrs, cosine, wds, keys, jnp.int32(start))
        val = np.asarray(val_acc(thetas))
        run_s += time.perf_counter() - t0
        if tracker.update(start + every, val, run_s, lambda: thetas):  # noqa: B023
            break
    return tracker, {"compile": round(compile_s, 2), "run": round(run_s, 2)}
