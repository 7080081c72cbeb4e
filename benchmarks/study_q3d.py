"""Q3d of the study (issue 15): the digits hybrid claim re-measured against a fairly tuned Adam.

The earlier claim (``benchmarks/RESULTS.md``, "Correction (issue 15)") was "Lamarckian GA
98.06% vs Adam 97.22% on digits", with Adam given two learning rates, no schedule, no weight
decay and no early stopping. Here every contender is tuned the same way.

**Data and network.** ``_digits.train_val_test(0.2)``: the library's digits training set with
20% held out for validation (1,150 train / 287 validation / 360 test images). Network
``models.MLP(64, (256,), 10)``, tanh (19,210 weights, the network of the corrected claim),
every start a draw of the standard initialiser (LeCun normal kernels, zero biases). Every
gradient step and every fitness evaluation uses a minibatch of 256 training images (the task's
own sampler, ``Supervised(batch_size=256)``).

**Contenders and search spaces** (random search, ``N`` configurations each, drawn with
``numpy.random.default_rng([SPACE_SEED, index of the contender])``, ``SPACE_SEED = 2026``):

* ``adamw``: ``optax.adamw`` (decoupled weight decay, scaled by the learning rate as optax
  does), learning rate LogUniform(1e-4, 3e-2); schedule constant or cosine decay to 0 over the
  budget (``optax.cosine_decay_schedule``), each with probability 1/2; weight decay 0 with
  probability 1/3, else LogUniform(1e-6, 1e-2).
* ``sgd_momentum``: SGD with momentum 0.9 (fixed) after ``optax.add_decayed_weights`` (weight
  decay added to the gradient), learning rate LogUniform(1e-3, 3e-1), schedule and weight
  decay as for ``adamw``.
* ``lamarckian_ga``: the library's elitist GA (P = 4, 2 parents, 1 elite: ``hybrid.py``'s
  digits hybrid) with ``hybrids.gradient_steps`` (K = 50 Adam steps per member per generation,
  Lamarckian, a fresh Adam state each generation), population drawn from the standard
  initialiser, answer ``Evolution.solution_theta`` (the best member evaluated so far). Space:
  mutation std LogUniform(3e-3, 1e-1) (around hybrid.py's 0.02), inner Adam learning rate
  LogUniform(1e-4, 3e-2) (Adam's range; hybrid.py used 1e-3).

**Early stopping on validation.** Validation accuracy is read at the start and at up to
``points`` checkpoints spaced geometrically from ``E / 400`` gradient-step equivalents to the
end of the budget (each contender's units rounded to whole steps or generations, duplicates
dropped: 25 for the Adam-type contenders, fewer for the GA's 50 generations); a run's answer is
its checkpoint with the highest validation accuracy (the first such). The first full run used
25 evenly spaced checkpoints (``--q3d-spacing linear``, every 400 steps) and AdamW's best was
the first checkpoint on every test seed: its validation peak lies before 4% of the budget, so
that grid could not stop it where it peaks; hence the geometric grid.

**Tuning.** Each configuration on the tuning seeds (100-102), score = median over seeds of
the best validation accuracy; the configuration with the highest score is chosen (the first on
a tie). The chosen configuration then runs on fresh test seeds (0-4); test accuracy is read
once per run, at its best-validation checkpoint, and only there.

**Equal FLOPs.** ``F`` = forward FLOPs per example (``hybrid_race.dense_flops``), ``B = 256``.
A gradient step costs ``3 B F``, a fitness evaluation ``B F``. The budget is ``E``
gradient-step equivalents, ``3 E B F``: ``adamw`` and ``sgd_momentum`` take ``E`` steps, a GA
generation costs ``P (3 K + 1) B F`` and the GA gets the nearest whole number of generations
(within 1% at the full size). ``E = 10,000`` (about 2,200 epochs of the 1,150 images; Adam's
validation accuracy peaks well before that, so the budget is not what limits it), chosen so the
full run fits in about 30 minutes on 2 shared cores. Validation reads (the same number for
every contender) and optimizer / strategy arithmetic (O(D) per member) are not counted.

**Wall time** of each batched call (compilation apart), per run = call time / runs in the
call, with ``os.getloadavg()``; equal FLOPs is the matched axis, wall time is reported.

**Sweeps.** The gradient contenders run every (configuration, seed) in one compiled
``jit(vmap(lax.scan))``; the GA runs one ``Evolution.sweep`` per configuration over the seeds
(its inner learning rate lives in the ``gradient_steps`` operator, which the sweep cannot vary,
so each configuration is its own compiled program).

**Comparison.** Medians over test seeds with ``study.bootstrap_median`` 95% intervals; the
paired difference GA - AdamW per test seed (the same seed number; the draws differ, since the
GA's come from the engine's keys), its median and interval, and wins / ties / losses.
``--quick``: E = 256, K = 5, up to 4 checkpoints, 2 configurations, 2 tuning and 3 test seeds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import train_val_test
from flax import nnx
from hybrid_race import dense_flops
from jax.flatten_util import ravel_pytree
from study import _fmt, bootstrap_median
from study_q3_problem import _Answers

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import gradient_steps
from evojax_nets.models import MLP
from evojax_nets.nets import from_nnx

CONTENDERS = ("adamw", "sgd_momentum", "lamarckian_ga")
GRADIENT = ("adamw", "sgd_momentum")
LABELS = {
    "adamw": "AdamW, tuned lr / schedule / weight decay",
    "sgd_momentum": "SGD momentum 0.9, tuned lr / schedule / weight decay",
    "lamarckian_ga": "Lamarckian GA (P 4, 50 Adam steps / member / gen.)",
}
SPACES = {
    "adamw": "lr LogU(1e-4, 3e-2); schedule constant | cosine to 0 (1/2 each); "
    "weight decay 0 (p 1/3) | LogU(1e-6, 1e-2)",
    "sgd_momentum": "lr LogU(1e-3, 3e-1); momentum 0.9; schedule and weight decay as adamw",
    "lamarckian_ga": "mutation std LogU(3e-3, 1e-1); inner Adam lr LogU(1e-4, 3e-2)",
}
LR_RANGE = {"adamw": (1e-4, 3e-2), "sgd_momentum": (1e-3, 3e-1)}
FIRST_FRACTION = 1 / 400  # the first geometric checkpoint, as a fraction of the budget
SPACE_SEED, BATCH, MOMENTUM, GA_POP, GA_PARENTS, GA_ELITES = 2026, 256, 0.9, 4, 2, 1
SIZES = {
    "full": {"equivalents": 10_000, "ga_steps": 50, "points": 25, "configs": 6, "spacing": "log"}
    | {"tune_seeds": [100, 101, 102], "test_seeds": [0, 1, 2, 3, 4]},
    "quick": {"equivalents": 256, "ga_steps": 5, "points": 4, "configs": 2, "spacing": "log"}
    | {"tune_seeds": [100, 101], "test_seeds": [0, 1, 2]},
}


def checkpoint_units(units: int, points: int, spacing: str) -> list[int]:
    """0 and up to ``points`` checkpoints (whole units, increasing, the last ``units``):
    evenly spaced, or geometric from ``FIRST_FRACTION`` of the budget."""
    if spacing == "linear":
        grid = np.arange(1, points + 1) * units / points
    else:
        grid = np.geomspace(FIRST_FRACTION * units, units, points)
    return [0, *sorted({max(1, round(float(g))) for g in grid})]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_configs(name: str, n: int) -> list[dict[str, Any]]:
    """``n`` configurations of contender ``name``, drawn from its documented space."""
    rng = np.random.default_rng([SPACE_SEED, CONTENDERS.index(name)])
    out = []
    for _ in range(n):
        if name == "lamarckian_ga":
            std = _log_uniform(rng, 3e-3, 1e-1)
            out.append({"std": float(f"{std:.4g}"), "inner_lr": _log_uniform(rng, 1e-4, 3e-2)})
        else:
            lr = _log_uniform(rng, *LR_RANGE[name])
            schedule = str(rng.choice(["constant", "cosine"]))
            wd = 0.0 if rng.random() < 1 / 3 else _log_uniform(rng, 1e-6, 1e-2)
            out.append({"lr": lr, "schedule": schedule, "weight_decay": wd})
    return [
        {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in c.items()} for c in out
    ]


class Digits:
    """The split, the network, its initialiser draws, its loss and scorers."""

    def __init__(self):
        x, y, xv, yv, xt, yt = train_val_test(0.2)
        self.model = MLP(64, (256,), 10, rngs=nnx.Rngs(0))
        self.network = from_nnx(self.model)
        self.task = Supervised(x, y, xv, yv, batch_size=BATCH, kind="classification")
        bound = self.task.bind(self.network)
        self.loss_on, self.sample = bound.extra["loss_on"], bound.extra["sample"]
        self.sizes = {"train": len(x), "validation": len(xv), "test": len(xt)}
        self.fwd = dense_flops(self.network)
        leaves, self.treedef = jax.tree.flatten(self.network.unravel(self.network.theta0))
        self.leaves = leaves
        self.accuracy = {
            "validation": jax.jit(jax.vmap(self._scorer(xv, yv))),
            "test": jax.jit(jax.vmap(self._scorer(xt, yt))),
        }

    def _scorer(self, x, y):
        return lambda theta: jnp.mean(jnp.argmax(self.network.apply(theta, x), -1) == y)

    def draw(self, key: jax.Array) -> jax.Array:
        """One draw of nnx.Linear's initialiser: LeCun normal kernels, zero biases."""
        keys = jax.random.split(key, len(self.leaves))
        out = []
        for k, path, leaf in zip(keys, self.network.paths, self.leaves, strict=True):
            kernel = path.endswith("kernel")
            init = jax.nn.initializers.lecun_normal() if kernel else jax.nn.initializers.zeros
            out.append(init(k, leaf.shape, leaf.dtype))
        return ravel_pytree(jax.tree.unflatten(self.treedef, out))[0]


def _optimizer(name: str, lr, wd, cosine, steps: int) -> optax.GradientTransformation:
    decay = optax.cosine_decay_schedule(lr, steps)
    schedule = lambda t: jnp.where(cosine, decay(t), lr)
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=wd)
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=MOMENTUM))


def run_gradient(prob: Digits, name: str, configs, seeds, steps: int, ckpts: list[int]):
    """Every (configuration, seed), configuration-major, in one ``jit(vmap(scan))`` over the
    checkpoints ``ckpts`` (steps, from 0). Returns per run the validation curve (one value per
    checkpoint), the best checkpoint found inside the scan, its weights, the checkpoints and
    the wall times."""
    val_x = prob.accuracy["validation"]

    def one(key, lr, wd, cosine):
        k_init, k_data = jax.random.split(key)
        theta0 = prob.draw(k_init)
        opt = _optimizer(name, lr, wd, cosine, steps)
        score = lambda th: val_x(th[None])[0]

        def step(t, carry):  # step t's minibatch from the run's data key
            th, st = carry
            x, y = prob.sample(jax.random.fold_in(k_data, t))
            g = jax.grad(prob.loss_on)(th, x, y)
            u, st = opt.update(g, st, th)
            return optax.apply_updates(th, u), st

        def chunk(carry, inp):
            th, st, best_th, best_v, best_i = carry
            i, start, end = inp
            th, st = jax.lax.fori_loop(start, end, step, (th, st))
            v = score(th)
            better = v > best_v  # strict: the first checkpoint with the highest accuracy
            best_th = jnp.where(better, th, best_th)
            best_i = jnp.where(better, i, best_i)
            return (th, st, best_th, jnp.maximum(v, best_v), best_i), v

        v0 = score(theta0)
        bounds = jnp.asarray(ckpts, jnp.int32)
        carry0 = (theta0, opt.init(theta0), theta0, v0, jnp.int32(0))
        idx = jnp.arange(1, len(ckpts), dtype=jnp.int32)
        xs = (idx, bounds[:-1], bounds[1:])
        (_, _, best_th, _, best_i), vals = jax.lax.scan(chunk, carry0, xs)
        return jnp.concatenate([v0[None], vals]), best_i, best_th

    rows = [(c, s) for c in configs for s in seeds]
    keys = jax.vmap(jax.random.key)(jnp.asarray([s for _, s in rows]))
    lr = jnp.asarray([c["lr"] for c, _ in rows], jnp.float32)
    wd = jnp.asarray([c["weight_decay"] for c, _ in rows], jnp.float32)
    cos = jnp.asarray([c["schedule"] == "cosine" for c, _ in rows])
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(keys, lr, wd, cos).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves, best_i, answers = jax.block_until_ready(compiled(keys, lr, wd, cos))
    run_s = time.perf_counter() - t0
    wall = {"compile": round(compile_s, 2), "run": round(run_s, 2), "runs": len(rows)}
    return np.asarray(curves, np.float64), np.asarray(best_i), answers, ckpts, wall


def make_ga(prob: Digits, config: dict[str, Any], ga_steps: int) -> Evolution:
    def population_init(key, size):
        return jax.vmap(prob.draw)(jax.random.split(key, size))

    return Evolution(
        prob.model,
        prob.task,
        "ga",
        GA_POP,
        std=config["std"],
        population_init=population_init,
        strategy_kwargs={"num_parents": GA_PARENTS, "num_elites": GA_ELITES},
        ops=gradient_steps(optax.adam(config["inner_lr"]), ga_steps, mode="lamarckian"),
    )


def run_ga(prob: Digits, configs, seeds, generations: int, ckpts: list[int], ga_steps: int):
    """One ``Evolution.sweep`` over the seeds per configuration; the answers
    (``solution_theta``) at the start and after every generation, those at the checkpoints
    ``ckpts`` (generations) scored on validation here. The same returns as
    :func:`run_gradient`."""
    curves, best, answers, wall = [], [], [], {"compile": 0.0, "run": 0.0, "runs": 0}
    for config in configs:
        cb = _Answers()
        evo = make_ga(prob, config, ga_steps)
        result = evo.sweep(seeds, generations, chunk_size=1, callbacks=[cb], std=[config["std"]])
        assert [c["seed"] for c in result.configs] == list(seeds)
        assert cb.units[-1] == generations, (cb.units, generations)
        assert cb.units == list(range(generations + 1))
        picked = [cb.answers[u] for u in ckpts]
        vals = np.stack([np.asarray(prob.accuracy["validation"](a)) for a in picked], 1)
        i = np.argmax(vals, axis=1)  # the first checkpoint with the highest accuracy
        stacked = jnp.stack(picked, 1)  # (seeds, checkpoints, D)
        curves.append(vals.astype(np.float64))
        best.append(i)
        answers.append(stacked[jnp.arange(len(seeds)), jnp.asarray(i)])
        wall["compile"] += round(cb.compile_s, 2)
        wall["run"] += round(cb.wall - cb.compile_s - cb.overhead, 2)
        wall["runs"] += len(seeds)
    wall = {k: round(v, 2) for k, v in wall.items()}
    answers_all = jnp.concatenate(answers)
    return np.concatenate(curves), np.concatenate(best), answers_all, ckpts, wall


def budget(prob: Digits, name: str, E: int, ga_steps: int) -> tuple[int, float]:
    """(units: steps or generations, FLOPs per unit) for a budget of E gradient steps."""
    bf = BATCH * prob.fwd
    if name in GRADIENT:
        return E, 3 * bf
    per_gen = GA_POP * (3 * ga_steps + 1) * bf
    return max(1, round(3 * E * bf / per_gen)), per_gen


def run_contender(prob: Digits, name: str, size: dict[str, Any]) -> dict[str, Any]:
    load0 = [round(v, 2) for v in os.getloadavg()]
    E, K, points = size["equivalents"], size["ga_steps"], size["points"]
    tune, test = size["tune_seeds"], size["test_seeds"]
    configs = draw_configs(name, size["configs"])
    units, per_unit = budget(prob, name, E, K)
    ckpts = checkpoint_units(units, points, size["spacing"])

    def go(cfgs, seeds):
        if name in GRADIENT:
            return run_gradient(prob, name, cfgs, seeds, units, ckpts)
        return run_ga(prob, cfgs, seeds, units, ckpts, K)

    curves, _, _, _, wall_tune = go(configs, tune)
    best_val = curves.max(axis=1).reshape(len(configs), len(tune))
    score = np.median(best_val, axis=1)
    chosen = int(np.argmax(score))  # the first on a tie
    curves, best_i, answers, done, wall_test = go([configs[chosen]], test)
    test_acc = np.asarray(prob.accuracy["test"](answers), np.float64)
    answer_val = np.asarray(prob.accuracy["validation"](answers), np.float64)
    flops = np.asarray(done, np.float64) * per_unit
    row = {
        "label": LABELS[name],
        "space": SPACES[name],
        "configs": configs,
        "validation_best_per_seed": [[_fmt(v) for v in r] for r in best_val],
        "validation_score": [_fmt(v) for v in score],
        "chosen_index": chosen,
        "chosen": configs[chosen],
        "units": units,
        "unit": "steps" if name in GRADIENT else "generations",
        "flops_per_unit": per_unit,
        "flops": units * per_unit,
        "checkpoint_units": [int(u) for u in done],
        "checkpoint_flops": [float(v) for v in flops],
        "test_runs": [
            {
                "seed": s,
                "test_accuracy": _fmt(test_acc[j]),
                "best_checkpoint": int(best_i[j]),
                "answer_validation": _fmt(answer_val[j]),
                "validation_curve": [_fmt(v) for v in curves[j]],
            }
            for j, s in enumerate(test)
        ],
        "test_accuracy_per_seed": [_fmt(v) for v in test_acc],
        "test_median": _fmt(float(np.median(test_acc))),
        "test_ci95": [_fmt(v) for v in bootstrap_median(test_acc)],
        "curve_validation_median": [_fmt(v) for v in np.median(curves, axis=0)],
        "curve_validation_min": [_fmt(v) for v in curves.min(axis=0)],
        "curve_validation_max": [_fmt(v) for v in curves.max(axis=0)],
        "wall_s": {"tuning": wall_tune, "test": wall_test},
        "wall_s_per_run": round(wall_test["run"] / wall_test["runs"], 2),
        "loadavg_start": load0,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }
    print(
        f"q3d {name}: chosen {row['chosen']} (validation {row['validation_score']}), test "
        f"{row['test_accuracy_per_seed']} median {row['test_median']} {row['test_ci95']}, "
        f"wall {wall_tune} {wall_test}, load {load0}",
        flush=True,
    )
    return row


def compare(rows: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """The paired difference ``a - b`` of test accuracy per test seed."""
    x, y = (np.asarray(rows[k]["test_accuracy_per_seed"], np.float64) for k in (a, b))
    d = x - y
    return {
        "pair": f"{a} - {b}",
        "difference_per_seed": [_fmt(v) for v in d],
        "median": _fmt(float(np.median(d))),
        "ci95": [_fmt(v) for v in bootstrap_median(d)],
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
        "test_images": None,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q3d-contenders", nargs="+", default=None, choices=list(CONTENDERS))
    parser.add_argument("--q3d-equivalents", type=int, default=None, help="Q3d: budget E")
    parser.add_argument("--q3d-configs", type=int, default=None, help="Q3d: configurations")
    parser.add_argument("--q3d-spacing", default=None, choices=["log", "linear"], help="Q3d")


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = dict(SIZES["quick" if args.quick else "full"])
    size["contenders"] = args.q3d_contenders or list(CONTENDERS)
    if args.q3d_equivalents is not None:
        size["equivalents"] = args.q3d_equivalents
    if args.q3d_configs is not None:
        size["configs"] = args.q3d_configs
    if args.q3d_spacing is not None:
        size["spacing"] = args.q3d_spacing
    prob = Digits()
    report: dict[str, Any] = {
        "question": "Q3d: hybrids on digits against a tuned Adam, equal FLOPs",
        "size": size,
        "data": prob.sizes,
        "weights": prob.network.num_params,
        "forward_flops_per_example": prob.fwd,
        "batch": BATCH,
        "budget_flops": 3 * size["equivalents"] * BATCH * prob.fwd,
        "settings": {
            "space_seed": SPACE_SEED,
            "sgd_momentum": MOMENTUM,
            "ga": {"population": GA_POP, "parents": GA_PARENTS, "elites": GA_ELITES},
            "ga_mode": "lamarckian, fresh Adam state each generation",
            "choice": "highest median (over tuning seeds) best validation accuracy; first on ties",
            "answer": "the first checkpoint with the highest validation accuracy",
            "first_checkpoint_fraction": FIRST_FRACTION,
        },
        "flops_formula": {
            "gradient_step": "3 B F",
            "ga_generation": "P (3 K + 1) B F",
            "budget": "3 E B F; not counted: validation reads, O(D) optimizer arithmetic",
        },
        "contenders": {},
    }
    for name in size["contenders"]:
        report["contenders"][name] = run_contender(prob, name, size)
    rows = report["contenders"]
    report["comparisons"] = [
        compare(rows, a, b)
        for a, b in (("lamarckian_ga", "adamw"), ("lamarckian_ga", "sgd_momentum"))
        if a in rows and b in rows
    ]
    for c in report["comparisons"]:
        c["test_images"] = prob.sizes["test"]
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(CONTENDERS, ("#1f77b4", "#ff7f0e", "#d62728"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, c in report["contenders"].items():
        x = np.asarray(c["checkpoint_flops"])[1:]
        med, lo, hi = (
            np.asarray(c[k], float)[1:]
            for k in ("curve_validation_median", "curve_validation_min", "curve_validation_max")
        )
        label = f"{c['label']}: test {c['test_median']:.4f}"
        axes[0].plot(x, med, color=colors[name], label=label)
        axes[0].fill_between(x, lo, hi, color=colors[name], alpha=0.15)
        accs = np.asarray(c["test_accuracy_per_seed"], float)
        axes[1].scatter(np.full(len(accs), list(colors).index(name)), accs, color=colors[name])
        axes[1].errorbar(
            list(colors).index(name) + 0.15,
            c["test_median"],
            yerr=[[c["test_median"] - c["test_ci95"][0]], [c["test_ci95"][1] - c["test_median"]]],
            fmt="s",
            color="k",
            capsize=4,
        )
    axes[0].set_xscale("log")
    axes[0].set_ylim(0.85, 1.0)
    axes[0].set_xlabel("FLOPs (counted: 3 B F per gradient step, B F per evaluation)")
    axes[0].set_ylabel("validation accuracy (median and range over test seeds)")
    axes[0].set_title("chosen configuration of each contender")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].grid(alpha=0.3, which="both")
    axes[1].set_xticks(range(len(colors)), [k for k in colors], fontsize=8)
    axes[1].set_ylabel("test accuracy at the best-validation checkpoint (dots: seeds)")
    axes[1].set_title("test accuracy; black: median and bootstrap 95% CI")
    axes[1].grid(alpha=0.3)
    n = len(report["size"]["test_seeds"])
    fig.suptitle(
        f"Q3d: digits, MLP 64-256-10, equal FLOPs ({report['budget_flops']:.3g}); "
        f"{report['size']['configs']} configurations each, tuned on validation, {n} test seeds",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
