"""Hybrids of gradient descent and evolution against Adam alone and pure ES.

Three parts, each printing JSON (one object at the end, also written to ``--out``) and drawn
in one PNG (``--png``):

1. **digits**: test accuracy against wall time (median of ``--seeds`` seeds) for Adam alone (a
   jitted, scanned optax loop), pure ES and each hybrid, at the same wall-clock budget
   (``--budget`` seconds of run time per contender and seed; compilation is done before the
   clock starts and reported apart), and the same at equal FLOPs, read off the same curves.
2. **minima**: a task with many poor local minima, where Adam from a standard initialisation
   often gets stuck. By default a deceptive regression: ``sin(6 x)`` on ``[-pi, pi]`` with 2
   ``sin`` hidden units, whose loss has a poor local minimum about every unit of each
   frequency weight, while the standard initialisation draws frequencies near 1 (success: test
   R^2 >= 0.99 on points between the training ones). ``--minima-task parity``: 4-bit parity
   with 3 tanh units (success: all 16 patterns); ``spirals``: two interleaved spirals, 6-6 tanh
   (test accuracy >= 0.95). Success rate over ``--minima-seeds`` seeds at ``--minima-budget``
   seconds each. Population-based hybrids start from independent draws of the network's
   initialiser; Adam with best-of-8 restarts from the same draws is a reference.
3. **starts**: evolved starting points. Loss after K=20 Adam steps on held-out sinusoid
   regression instances, from the standard initialisation and from evolved ones (all weights,
   and one scale per tensor).

The CPU is shared with other jobs, so the contenders of one seed run in the same process,
interleaved in short slices (the contender with the least run time so far goes next), and
each is timed only while it runs; ``os.getloadavg()`` is recorded. FLOPs are counted
analytically: a dense layer's forward pass is ``2 * in * out + out`` per example, a gradient
step three forward passes, plus the optimizer's and strategy's elementwise work per weight.

Usage::

    python benchmarks/hybrid.py                     # the full benchmark (about 50 minutes)
    python benchmarks/hybrid.py --budget 3 --seeds 1 --minima-budget 2 --minima-seeds 1 \\
        --start-generations 10 --start-seeds 1      # a quick check (under 2 minutes)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hybrid_minima import run_minima, run_starts
from hybrid_race import Runner, adam_runner, dense_flops, evo_runner, race

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import blended_mean_update, esgd, gradient_steps, guided_es_gradient
from evojax_nets.models import MLP
from evojax_nets.nets import from_nnx
from evojax_nets.tasks import load_digits

# --------------------------------------------------------------------------------------------
# Part 1: digits.


def digits_contenders(
    seed: int, hidden: tuple[int, ...], contenders: list[str]
) -> tuple[list[Runner], Callable]:
    ds = load_digits()
    model = MLP(64, hidden, 10, rngs=nnx.Rngs(seed))
    network = from_nnx(model)
    f_fwd = dense_flops(network)
    d = network.num_params
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    @jax.jit
    def accuracy(theta):
        return jnp.mean(jnp.argmax(network.apply(theta, x_te), -1) == y_te)

    def task(batch: int) -> Supervised:
        return Supervised.from_dataset(ds, batch_size=batch)

    def es_flops(p: int, b: int) -> float:
        return p * b * f_fwd + 6 * p * d

    def grad_op_flops(p: int, k: int, steps: int, b: int, pre: bool, post: bool) -> float:
        return (
            k * steps * (3 * b * f_fwd + 12 * d)
            + (p * b * f_fwd if pre else 0)
            + (k * b * f_fwd if post else 0)
        )

    make: dict[str, Callable[[], Runner]] = {}
    bound = task(64).bind(network)
    make["adam"] = lambda: adam_runner(
        "adam", network, bound.extra["loss_on"], bound.extra["sample"], 1e-3, seed, f_fwd, 64
    )
    for lr in (3e-4, 1e-4):  # Adam's step for long runs (1e-3 is best for short ones)
        make[f"adam_lr{lr:g}"] = lambda lr=lr: adam_runner(
            f"adam_lr{lr:g}",
            network,
            bound.extra["loss_on"],
            bound.extra["sample"],
            lr,
            seed,
            f_fwd,
            64,
        )
    make["open_es"] = lambda: evo_runner(
        "open_es",
        Evolution(model, task(256), "open_es", 128, std=0.02, learning_rate=0.01),
        seed,
        "mean",
        es_flops(128, 256),
    )
    make["pgpe"] = lambda: evo_runner(
        "pgpe",
        Evolution(model, task(256), "pgpe", 128, std=0.02, learning_rate=0.01),
        seed,
        "mean",
        es_flops(128, 256),
    )
    make["snes"] = lambda: evo_runner(
        "snes",
        Evolution(model, task(256), "snes", 128, std=0.02),
        seed,
        "mean",
        es_flops(128, 256),
    )
    # Hybrids. The gradient optimizer is Adam with Adam-alone's tuned step everywhere. Small
    # populations with long gradient phases did best in a sweep (P in 4..32, K in 10..100).
    pop, steps, b, mut = 4, 50, 64, 0.02
    # Lamarckian answers with the best trained member, Baldwinian with its best genome ever.
    for mode, answer in (("lamarckian", "current"), ("baldwinian", "best")):
        make[f"{mode}_ga"] = lambda mode=mode, answer=answer: evo_runner(
            f"{mode}_ga",
            Evolution(
                model,
                task(b),
                "ga",
                pop,
                std=mut,
                ops=gradient_steps(optax.adam(1e-3), steps, mode=mode),
            ),
            seed,
            answer,
            es_flops(pop, b) + grad_op_flops(pop, pop, steps, b, False, False),
        )
    strategy, op = esgd(model, pop, optax.adam(1e-3), steps, num_parents=2, std=mut)
    make["esgd"] = lambda: evo_runner(
        "esgd",
        Evolution(model, task(b), strategy, pop, ops=op, std=mut),
        seed,
        "current",
        es_flops(pop, b) + grad_op_flops(pop, pop, steps, b, True, True),
    )
    make["guided_es"] = lambda: evo_runner(
        "guided_es",
        Evolution(
            model,
            task(256),
            "guided_es",
            32,
            std=1.0,
            learning_rate=1e-3,
            ops=guided_es_gradient(),
            strategy_kwargs={"subspace_dims": 4},
            strategy_params={"alpha": 0.5},
        ),
        seed,
        "mean",
        es_flops(32, 256) + 3 * 256 * f_fwd,
    )
    make["blended_es"] = lambda: evo_runner(
        "blended_es",
        Evolution(
            model,
            task(256),
            "open_es",
            32,
            std=0.02,
            learning_rate=0.01,
            ops=blended_mean_update(optax.adam(1e-3), weight=0.9),
        ),
        seed,
        "mean",
        es_flops(32, 256) + 3 * 256 * f_fwd + 12 * d,
    )
    unknown = set(contenders) - set(make)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)}; valid: {sorted(make)}")
    return [make[c]() for c in contenders], lambda th: float(accuracy(th))


def value_at(curve: list, index: int, limit: float) -> float:
    """The score of the last point of ``curve`` whose ``index`` (0 time, 1 FLOPs) <= limit."""
    best = curve[0][3]
    for point in curve:
        if point[index] <= limit * (1 + 1e-9):
            best = point[3]
    return best


def run_digits(args) -> dict:
    out: dict[str, Any] = {"budget_s": args.budget, "seeds": args.seeds, "runs": []}
    for seed in range(args.seeds):
        load0 = os.getloadavg()
        runners, score = digits_contenders(seed, tuple(args.hidden), args.contenders)
        race(runners, args.budget, score)
        flops_common = min(r.curve[-1][1] for r in runners)
        run = {
            "seed": seed,
            "load_before": load0,
            "load_after": os.getloadavg(),
            "flops_common": flops_common,
            "contenders": {},
        }
        for r in runners:
            run["contenders"][r.name] = {
                "final_accuracy": r.curve[-1][3],
                "max_accuracy": max(p[3] for p in r.curve),
                "accuracy_at_common_flops": value_at(r.curve, 1, flops_common),
                "units": r.units,
                "run_s": r.elapsed,
                "compile_s": r.compile_s,
                "flops": r.curve[-1][1],
                "flops_per_unit": r.flops_per_unit,
                "curve": [
                    [round(a, 4), float(f"{b:.4g}"), c, round(d, 5)] for a, b, c, d in r.curve
                ],
            }
        out["runs"].append(run)
        line = {n: round(c["final_accuracy"], 4) for n, c in run["contenders"].items()}
        print(f"[digits] seed {seed} load {load0[0]:.1f}: {line}", file=sys.stderr, flush=True)
    names = list(out["runs"][0]["contenders"])
    summary = {}
    for n in names:

        def med(key: str, n: str = n) -> float:
            return float(np.median([run["contenders"][n][key] for run in out["runs"]]))

        summary[n] = {
            "median_final_accuracy": med("final_accuracy"),
            "median_max_accuracy": med("max_accuracy"),
            "median_accuracy_at_common_flops": med("accuracy_at_common_flops"),
            "median_units": med("units"),
            "median_flops": med("flops"),
            "median_compile_s": med("compile_s"),
        }
    out["summary"] = summary
    out["median_flops_common"] = float(np.median([r["flops_common"] for r in out["runs"]]))
    return out


# --------------------------------------------------------------------------------------------


def median_curve(runs: list, name: str, index: int, grid: np.ndarray) -> np.ndarray:
    rows = []
    for run in runs:
        curve = run["contenders"][name]["curve"]
        rows.append([value_at(curve, index, g) for g in grid])
    return np.median(np.asarray(rows), axis=0)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    digits = result.get("digits")
    if digits:
        runs = digits["runs"]
        names = list(runs[0]["contenders"])
        tgrid = np.geomspace(0.05, digits["budget_s"], 200)
        fmax = max(c["flops"] for run in runs for c in run["contenders"].values())
        fgrid = np.geomspace(fmax * 1e-5, fmax, 200)
        for n in names:
            axes[0, 0].plot(tgrid, median_curve(runs, n, 0, tgrid), label=n)
            axes[0, 1].plot(fgrid, median_curve(runs, n, 1, fgrid), label=n)
        axes[0, 1].axvline(digits["median_flops_common"], color="k", ls=":", lw=1)
        for ax, xl in ((axes[0, 0], "run time (s)"), (axes[0, 1], "FLOPs")):
            ax.set_xscale("log")
            ax.set_ylim(0.8, 1.0)
            ax.set_xlabel(xl)
            ax.set_ylabel(f"test accuracy (median of {len(runs)} seeds)")
            ax.grid(alpha=0.3)
        axes[0, 0].set_title("digits: accuracy vs wall time")
        axes[0, 1].set_title("digits: accuracy vs FLOPs (dotted: common budget)")
        axes[0, 0].legend(fontsize=8)
    minima = result.get("minima")
    if minima:
        s = minima["summary"]
        axes[1, 0].bar(list(s), [v["success_rate"] for v in s.values()])
        score = "test R^2" if minima["task"] == "sine" else "accuracy"
        axes[1, 0].set_ylabel(f"success rate ({score} >= {minima['success_threshold']})")
        what = {
            "parity": lambda: f"{minima['bits']}-bit parity",
            "sine": lambda: f"sin({minima['frequency']:g} x), sin units",
            "spirals": lambda: f"two spirals ({minima['turns']} turns)",
        }[minima["task"]]()
        axes[1, 0].set_title(
            f"{what}, hidden {minima['hidden']}, {minima['seeds']} seeds, "
            f"{minima['budget_s']} s each"
        )
        axes[1, 0].tick_params(axis="x", rotation=30)
    starts = result.get("starts")
    if starts:
        labels = ["standard", "evolved_weights", "evolved_scales"]
        vals = [[r[f"{k}_median_loss"] for r in starts["runs"]] for k in labels]
        axes[1, 1].boxplot(vals, tick_labels=labels)
        axes[1, 1].set_yscale("log")
        axes[1, 1].set_ylabel("median held-out MSE after 20 Adam steps")
        axes[1, 1].set_title("sinusoids: evolved vs standard initialisation")
    for ax, part in ((axes[0, 0], digits), (axes[0, 1], digits), (axes[1, 0], minima)):
        if not part:
            ax.axis("off")
    if not starts:
        axes[1, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="digits,minima,starts")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per contender and seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[512, 512],
        help="digits MLP hidden widths (512 512: 301,066 weights; 256: 19,210)",
    )
    p.add_argument(
        "--contenders",
        nargs="+",
        default=["adam", "adam_lr0.0001", "open_es", "pgpe", "lamarckian_ga", "esgd"],
        help="also: snes, adam_lr0.0003, baldwinian_ga, guided_es, blended_es",
    )
    p.add_argument("--minima-task", choices=["sine", "parity", "spirals"], default="sine")
    p.add_argument("--minima-budget", type=float, default=10.0)
    p.add_argument("--minima-seeds", type=int, default=10)
    p.add_argument(
        "--minima-hidden",
        type=int,
        nargs="+",
        default=None,
        help="hidden widths (default: sine 2, parity 3, spirals 6 6)",
    )
    p.add_argument("--minima-lr", type=float, default=1e-2)
    p.add_argument("--minima-steps", type=int, default=100, help="hybrids' steps per generation")
    p.add_argument("--minima-std", type=float, default=0.5, help="hybrids' mutation scale")
    p.add_argument(
        "--minima-elites",
        type=int,
        default=1,
        help="hybrids' members kept unmutated (and training on) each generation",
    )
    p.add_argument("--parity-bits", type=int, default=4)
    p.add_argument("--spiral-turns", type=float, default=3.0)
    p.add_argument(
        "--sine-frequency", type=float, default=6.0, help="target frequency of the sine task"
    )
    p.add_argument(
        "--minima-contenders",
        nargs="+",
        default=[
            "adam",
            "adam_restarts",
            "open_es",
            "lamarckian_ga",
            "baldwinian_ga",
            "esgd",
            "guided_es",
            "blended_es",
        ],
    )
    p.add_argument("--start-generations", type=int, default=300)
    p.add_argument("--start-seeds", type=int, default=3)
    p.add_argument("--start-test-instances", type=int, default=100)
    today = datetime.date.today().isoformat()
    p.add_argument("--out", default=f"benchmarks/results/hybrid-{today}.json")
    p.add_argument("--png", default="benchmarks/out/hybrid.png")
    p.add_argument(
        "--replot", action="store_true", help="redraw --png from the JSON at --out, run nothing"
    )
    args = p.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            result = json.load(f)
        plot(result, args.png)
        return result
    if args.minima_hidden is None:
        args.minima_hidden = {"sine": [2], "parity": [3], "spirals": [6, 6]}[args.minima_task]

    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/hybrid.py", *(argv or sys.argv[1:])]),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "load_start": os.getloadavg(),
    }
    parts = args.parts.split(",")
    if "digits" in parts:
        result["digits"] = run_digits(args)
    if "minima" in parts:
        result["minima"] = run_minima(args)
    if "starts" in parts:
        result["starts"] = run_starts(args)
    result["load_end"] = os.getloadavg()
    for path in (args.out, args.png):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f)
    plot(result, args.png)
    brief = {k: v for k, v in result.items() if k not in ("digits", "minima", "starts")}
    for part in ("digits", "minima", "starts"):
        if part in result:
            brief[part] = {k: v for k, v in result[part].items() if k != "runs"}
    print(json.dumps(brief, indent=1))
    return result


if __name__ == "__main__":
    main()
