"""Q1 of ``benchmarks/ANSWER.md``: cost to reach a fixed target against the number of weights.

Run through ``benchmarks/study.py --questions q1``; this module holds the question's code.

* Task: scikit-learn's digits (``evojax_nets.load_digits``, its train/test split), a fixed
  20% of the training set held out for validation (``_digits.train_val_test``, seed 0). The
  target, validation accuracy >= 0.90, is the same for every size and method; the test set is
  read only to report the test accuracy of the chosen configurations where they reached it.
* Networks: ``models.MLP(64, (h, h), 10)``, tanh, one initialisation (``nnx.Rngs(0)``) shared
  by every method and seed; ``h`` in ``SETS`` gives D from about 1.1e3 to 3.8e4 weights.
* Contenders, three learning rates each (a factor of about 3 apart, ``GRIDS``), nothing else
  tuned: **Adam** (optax) on minibatches of 256; **OpenAI-ES** (``"open_es"``, population
  256, minibatch 256, std 0.05, the library's default Adam on the ES gradient estimate);
  **low-rank ES** (``"lowrank_es"``, rank 1, the same). Every seed x learning rate of one
  method runs as one compiled program: ``Evolution.sweep`` for the ES, ``jit(vmap(...))`` of a
  ``lax.scan`` chunk for Adam. Seeds draw the minibatches (and the ES noise).
* Validation accuracy of the ES mean / Adam's weights is checked every ``every`` steps; a
  run's steps to target is the first checked step at or above the target. A configuration's
  score is the median over seeds of its FLOPs to target (a seed that never reaches it counts
  as infinite); the smallest score is chosen.
* FLOPs are forward-pass multiply-adds of the weight matrices, 2 per multiply-add (biases and
  activations not counted); F(B) = 2 B sum(fan_in fan_out). Adam step = 3 F(256) (forward and
  backward). OpenAI-ES generation = 256 F(256). Low-rank ES generation, counted exactly for
  this network: the first layer's x W once for the population (its input and W are shared),
  each member's rank-1 terms (x a) b^T for every matrix, and each member's own later layers
  in full; the upper bound 256 F(256) is recorded next to it. The ES update and noise are not
  counted (they are O(P D) per generation, against O(P B D) for the forwards).
* Early stop: a method's sweep stops at a check once its chosen configuration is certain: the
  best configuration has every seed at the target, and every other configuration's median
  cannot come below it (its unresolved seeds would reach the target at the next check at the
  earliest). Those configurations' results are then censored at the stop step (recorded).
* Wall time excludes compilation. Every configuration of a method runs in one batched
  program; a run's time to target is the batched program's run time up to the check where it
  reached the target, divided by the number of configurations in the batch (the run's share),
  measured per chunk; host-side bookkeeping between chunks (the test-accuracy evaluation) is
  subtracted, the validation check is included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import train_val_test
from flax import nnx
from study import _fmt, bootstrap_median

from evojax_nets import Callback, Evolution
from evojax_nets.losses import accuracy
from evojax_nets.models import MLP
from evojax_nets.nets import as_network
from evojax_nets.tasks import Supervised

METHODS = ("adam", "open_es", "lowrank_es")
LABELS = {"adam": "Adam (gradient)", "open_es": "OpenAI-ES", "lowrank_es": "low-rank ES (rank 1)"}
# Three learning rates each, a factor of ~3 apart. A first quick run chose the top of
# [0.003, 0.01, 0.03] for Adam and of [0.01, 0.03, 0.1] for both ES (the library's default is
# Adam(0.02) on the ES estimate), so both grids were moved up one step, the same for each.
GRIDS = {"adam": [0.01, 0.03, 0.1], "open_es": [0.03, 0.1, 0.3], "lowrank_es": [0.03, 0.1, 0.3]}
STD, RANK = 0.05, 1
SETS = {
    "full": {
        # D = 1,066 to 37,770. h = 320 (D = 126,730) measured 0.53 s (OpenAI-ES) and 0.38 s
        # (low-rank ES) per generation per run here, batched 15 at load 2.5: 15 runs x 200
        # generations would take ~27 min per ES alone, over this study's 30-minute budget.
        "hidden": (12, 32, 80, 160),
        "population": 256,
        "batch": 256,
        "target": 0.90,
        "caps": {"adam": 2000, "open_es": 200, "lowrank_es": 200},
        "every": {"adam": 5, "open_es": 5, "lowrank_es": 5},
        "seeds": [0, 1, 2, 3, 4],
    },
    "quick": {
        "hidden": (8, 16),
        "population": 32,
        "batch": 64,
        "target": 0.40,
        "caps": {"adam": 60, "open_es": 40, "lowrank_es": 40},
        "every": {"adam": 5, "open_es": 5, "lowrank_es": 5},
        "seeds": [0, 1],
    },
}


class _Stop(Exception):
    """Raised by the tracker to end a sweep once its choice is certain."""


def layer_shapes(h: int) -> list[tuple[int, int]]:
    return [(64, h), (h, h), (h, 10)]


def flops_per_step(method: str, h: int, P: int, B: int) -> dict[str, float]:
    shapes = layer_shapes(h)
    forward = 2 * B * sum(i * o for i, o in shapes)
    if method == "adam":
        return {"counted": 3 * forward, "upper_bound": 3 * forward}
    if method == "open_es":
        return {"counted": P * forward, "upper_bound": P * forward}
    (i0, o0), rest = shapes[0], shapes[1:]
    shared = 2 * B * i0 * o0
    per_member = 2 * B * sum(i * o for i, o in rest) + 2 * B * RANK * sum(i + o for i, o in shapes)
    return {"counted": shared + P * per_member, "upper_bound": P * forward}


class Tracker:
    """Steps / time / test accuracy of every configuration where it first met the target, and
    the early-stop rule. ``group`` maps a configuration to its learning-rate index."""

    def __init__(self, group: np.ndarray, target: float, every: int, test_fn):
        self.group, self.target, self.every, self.test_fn = group, target, every, test_fn
        C = len(group)
        self.steps = np.full(C, -1)
        self.seconds = np.full(C, np.nan)
        self.test_acc = np.full(C, np.nan)
        self.val_acc = np.full(C, np.nan)
        self.last_step, self.run_s = 0, 0.0

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


class _SweepCallback(Callback):
    def __init__(self, tracker: Tracker):
        self.tracker, self.overhead, self.compile_s = tracker, 0.0, 0.0

    def on_chunk(self, owner, state, rows):
        t0 = time.perf_counter()
        last = rows[-1]
        run_s = last["wall_time"] - last["compile_time"] - self.overhead
        means = lambda: self._means(owner, state)
        stop = self.tracker.update(
            int(last["generation"]), last["test_accuracy_mean"], run_s, means
        )
        self.compile_s = last["compile_time"]
        self.overhead += time.perf_counter() - t0
        if stop:
            raise _Stop

    def _means(self, owner, state):
        if not hasattr(self, "_mean_fn"):
            self._mean_fn = jax.jit(jax.vmap(owner.evolution.mean_theta))
        return self._mean_fn(state)


def accuracy_fn(network, x, y):
    return jax.jit(jax.vmap(lambda theta: accuracy(network.apply(theta, x), y)))


def run_es(evo, grid, seeds, cap, every, target, test_fn) -> tuple[Tracker, dict]:
    configs = [(s, lr) for s in seeds for lr in grid]  # the sweep's order: seed-major
    group = np.array([grid.index(lr) for _, lr in configs])
    tracker = Tracker(group, target, every, test_fn)
    cb = _SweepCallback(tracker)
    try:
        result = evo.sweep(seeds, cap, chunk_size=every, callbacks=[cb], learning_rate=grid)
        assert [(c["seed"], c["learning_rate"]) for c in result.configs] == configs
    except _Stop:
        pass
    return tracker, {"compile": round(cb.compile_s, 2), "run": round(tracker.run_s, 2)}


def run_adam(network, task, val, grid, seeds, cap, every, target, test_fn):
    """Adam from the network's initialisation, on the library's own minibatch sampler (the
    one the ES's fitness draws from)."""
    bound = task.bind(network)
    sample, loss_on = bound.extra["sample"], bound.extra["loss_on"]
    theta0 = network.theta0
    val_acc = accuracy_fn(network, *val)
    opt = optax.scale_by_adam()
    configs = [(s, lr) for s in seeds for lr in grid]
    lrs = jnp.asarray([lr for _, lr in configs], jnp.float32)
    keys = jax.vmap(jax.random.key)(jnp.asarray([s + 7919 for s, _ in configs]))

    def one(theta, opt_state, lr, key, start):
        def step(carry, i):
            theta, opt_state = carry
            x, y = sample(jax.random.fold_in(key, start + i))
            g = jax.grad(loss_on)(theta, x, y)
            u, opt_state = opt.update(g, opt_state)
            return (theta - lr * u, opt_state), None

        (theta, opt_state), _ = jax.lax.scan(step, (theta, opt_state), jnp.arange(every))
        return theta, opt_state

    chunk = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))
    C = len(configs)
    thetas = jnp.tile(theta0[None], (C, 1))
    states = jax.vmap(opt.init)(thetas)
    t0 = time.perf_counter()
    compiled = chunk.lower(thetas, states, lrs, keys, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    val_acc(thetas).block_until_ready()
    group = np.array([grid.index(lr) for _, lr in configs])
    tracker = Tracker(group, target, every, test_fn)
    run_s = 0.0
    for start in range(0, cap, every):
        t0 = time.perf_counter()
        thetas, states = compiled(thetas, states, lrs, keys, jnp.int32(start))
        val = np.asarray(val_acc(thetas))
        run_s += time.perf_counter() - t0
        if tracker.update(start + every, val, run_s, lambda: thetas):  # noqa: B023
            break
    return tracker, {"compile": round(compile_s, 2), "run": round(run_s, 2)}


def summarise(tracker: Tracker, grid, seeds, flops: float, cap: int) -> dict[str, Any]:
    R = len(seeds)
    steps = tracker.steps.reshape(R, len(grid)).T  # (lr, seed)
    secs = tracker.seconds.reshape(R, len(grid)).T / len(tracker.steps)  # a run's share
    fl = np.where(steps >= 0, steps * flops, np.inf)
    med = np.median(fl, axis=1)
    best = int(np.argmin(med))
    test = tracker.test_acc.reshape(R, len(grid)).T[best]
    reached = steps[best] >= 0
    per_seed = [int(v) if v >= 0 else None for v in steps[best]]
    return {
        "grid": grid,
        "validation_median_flops_to_target": [_fmt(v) for v in med],
        "validation_success_per_setting": [int(v) for v in (steps >= 0).sum(axis=1)],
        "chosen": grid[best],
        "steps_to_target_per_seed": per_seed,
        "flops_to_target_per_seed": [_fmt(s * flops) if s is not None else None for s in per_seed],
        "steps_to_target_median": _fmt(float(np.median(np.where(reached, steps[best], np.inf)))),
        "flops_to_target_median": _fmt(float(med[best])),
        "flops_to_target_ci95": [_fmt(v) for v in bootstrap_median(fl[best])]
        if reached.any()
        else [None, None],
        "wall_s_to_target_per_seed": [
            _fmt(v) if r else None for v, r in zip(secs[best], reached, strict=True)
        ],
        "wall_s_to_target_median": _fmt(float(np.median(np.where(reached, secs[best], np.inf)))),
        "success_rate": float(reached.mean()),
        "test_accuracy_at_target_per_seed": [
            _fmt(v) if r else None for v, r in zip(test, reached, strict=True)
        ],
        "test_accuracy_at_target_median": _fmt(float(np.median(test[reached])))
        if reached.any()
        else None,
        "stopped_at_step": int(tracker.last_step),
        "cap": cap,
        "censored": bool(tracker.last_step < cap),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q1-seeds", type=int, nargs="+", default=None, help="Q1 seeds")
    parser.add_argument("--q1-hidden", type=int, nargs="+", default=None, help="Q1 widths h")
    parser.add_argument("--q1-methods", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument(
        "--q1-lrs", type=float, nargs="+", default=None, help="Q1: these rates, every method"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = SETS["quick" if args.quick else "full"]
    P, B, target = cfg["population"], cfg["batch"], cfg["target"]
    seeds = cfg["seeds"] if args.q1_seeds is None else args.q1_seeds
    hidden = cfg["hidden"] if args.q1_hidden is None else tuple(args.q1_hidden)
    methods = args.q1_methods or METHODS
    x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(0.2)
    task = Supervised(x_tr, y_tr, x_val, y_val, batch_size=B, num_classes=10)
    report: dict[str, Any] = {
        "question": "Q1: FLOPs and time to a fixed validation accuracy against the weights D",
        "task": {
            "data": "digits (load_digits), 20% of train held out for validation (seed 0)",
            "train": len(y_tr),
            "validation": len(y_val),
            "test": len(y_te),
            "target_validation_accuracy": target,
            "batch": B,
            "population": P,
            "std": STD,
            "lowrank_rank": RANK,
        },
        "seeds": list(seeds),
        "caps": {m: cfg["caps"][m] for m in methods},
        "check_every": {m: cfg["every"][m] for m in methods},
        "flops_formula": {
            "forward": "F(B) = 2 * B * sum(fan_in * fan_out) over the 3 weight matrices",
            "adam": "3 * F(B) per step (forward + backward)",
            "open_es": "P * F(B) per generation",
            "lowrank_es": (
                "exact: 2*B*64*h (first layer, shared) + P * (2*B*(h*h + h*10) + "
                "2*B*rank*sum(fan_in + fan_out)); upper bound P * F(B) also recorded"
            ),
            "flops_to_target": "steps_to_target * flops_per_step (counted)",
        },
        "wall_time_note": (
            "compilation excluded; batched run time up to the check where a run reached the "
            "target, divided by the configurations in the batch"
        ),
        "sizes": [],
    }
    test_fns: dict[int, Any] = {}
    for h in hidden:
        model = MLP(64, (h, h), 10, rngs=nnx.Rngs(0))
        row: dict[str, Any] = {"hidden": h, "methods": {}}
        for method in methods:
            network = as_network(model)
            row["D"] = network.num_params
            test_fn = test_fns.setdefault(h, accuracy_fn(network, x_te, y_te))
            grid = list(args.q1_lrs) if args.q1_lrs else GRIDS[method]  # a sensitivity check
            cap, every = cfg["caps"][method], cfg["every"][method]
            common = (grid, seeds, cap, every, target, test_fn)
            if method == "adam":
                tracker, wall = run_adam(network, task, (x_val, y_val), *common)
            else:
                kw = {"strategy_kwargs": {"rank": RANK}} if method == "lowrank_es" else {}
                evo = Evolution(model, task, method, P, std=STD, **kw)
                tracker, wall = run_es(evo, *common)
            flops = flops_per_step(method, h, P, B)
            out = summarise(tracker, grid, seeds, flops["counted"], cap)
            out["flops_per_step"] = flops["counted"]
            out["flops_per_step_upper_bound"] = flops["upper_bound"]
            steps_run = tracker.last_step * len(tracker.steps)
            out["wall_s"] = {
                **wall,
                "runs_per_call": len(tracker.steps),
                "ms_per_step_per_run": round(1e3 * tracker.run_s / steps_run, 3),
            }
            row["methods"][method] = out
            print(
                f"q1 h={h} D={row['D']} {method}: {out['flops_to_target_median']} FLOPs, "
                f"success {out['success_rate']}, wall {wall}",
                flush=True,
            )
        report["sizes"].append(row)
        print("q1 size " + json.dumps(row), flush=True)  # a partial record, should a run stop
    report["fits"] = {}
    for method in methods:
        pts = [
            (r["D"], r["methods"][method]["flops_to_target_median"])
            for r in report["sizes"]
            if r["methods"][method]["flops_to_target_median"] is not None
        ]
        fit = {"sizes_used": [d for d, _ in pts]}
        if len(pts) >= 2:
            b, a = np.polyfit(np.log10([d for d, _ in pts]), np.log10([f for _, f in pts]), 1)
            fit.update({"exponent_b": round(float(b), 3), "intercept_a": round(float(a), 3)})
        report["fits"][method] = fit
    return report


def plot(q: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"adam": "#d95f02", "open_es": "#1b9e77", "lowrank_es": "#7570b3"}
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for method, fit in q["fits"].items():
        rows = [r for r in q["sizes"] if r["methods"][method]["flops_to_target_median"]]
        if not rows:
            continue
        D = np.array([r["D"] for r in rows], float)
        med = np.array([r["methods"][method]["flops_to_target_median"] for r in rows], float)
        ci = np.array(
            [
                [np.nan if v is None else v for v in r["methods"][method]["flops_to_target_ci95"]]
                for r in rows
            ],
            float,
        )
        hi = np.where(np.isfinite(ci[:, 1]), ci[:, 1], med)
        err = np.vstack([med - ci[:, 0], hi - med])
        b = fit.get("exponent_b")
        label = LABELS[method] + ("" if b is None else f", fitted exponent b = {b:.2f}")
        ax.errorbar(D, med, yerr=err, fmt="o-", color=colors[method], capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D, number of weights (MLP 64-h-h-10)")
    ax.set_ylabel("FLOPs to validation accuracy >= target (median, 95% CI)")
    t = q["task"]
    grids = {len(m["grid"]) for r in q["sizes"] for m in r["methods"].values()}
    settings = "/".join(str(n) for n in sorted(grids))
    ax.set_title(
        f"Q1: digits, target {t['target_validation_accuracy']}, {len(q['seeds'])} seeds, "
        f"{settings} learning rates each"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
