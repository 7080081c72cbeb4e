"""Q3 of the study (issue 15): many minima, with controls, at equal FLOPs.

**Tasks.** (a) *sine*, the library's own deceptive regression (``hybrid.py`` part "minima"):
``sin(6 x)`` on ``[-pi, pi]``, an MLP 1-2-1 with ``sin`` hidden units (7 weights), whose loss
has a poor local minimum about every unit of each frequency weight while the standard
initialisation draws frequencies near 1. **Designed by the library after seeing results**, so it
gets the control below. Splits: 256 training points on a grid, validation on the same grid
shifted by a quarter step, test shifted by half a step (``hybrid.sine_wave``); success = test
R^2 >= 0.99 (hybrid.py's threshold). (b) *spirals*, a **published** benchmark the library did
not design: two interleaved spirals (Lang & Witbrock 1988, "Learning to tell two spirals
apart", a classic that is hard for backprop), 3 turns, drawn by ``hybrid.two_spirals``: 400
random points on the spirals per split, training draw 0, validation draw 2, test draw 1 (not
the paper's fixed 194 points; no noise). MLP 2-16-16-2 tanh (354 weights, chosen before any
run; the paper's net had 2-5-5-5-1 with shortcuts, 138 weights); success = test accuracy >=
0.95 (hybrid.py's; both thresholds with hybrid.py's tolerance of 1e-6).

**Contenders** (each from the network's standard initialisation, LeCun normal kernels and zero
biases, unless said): ``adam``, one full-batch Adam run; ``restarts``, best-of-8 Adam runs,
the answer the run with the lowest training loss; ``restarts_wide``, **the control**: the same 8
draws (the same keys) with the first-layer kernel scaled x4; ``lamarckian_ga`` and
``baldwinian_ga``: the library's GA (P = 8, 4 parents, 1 elite) with ``hybrids.gradient_steps``
(100 Adam steps at lr 0.01 per member per generation), the population drawn from the standard
initialiser, the answer ``Evolution.solution_theta`` (the best member evaluated so far);
``open_es``: OpenAI-ES (P = 64, Adam on the estimate at lr 0.03), from the model's one
initialisation (the sweep varies the noise, not the start), the answer its mean. The other
hybrids: ``esgd``, ESGD (``hybrids.esgd``: P = 8, 4 parents, 1 elite, intermediate
recombination, the same 100 Adam steps at lr 0.01 per member with back-off), drawn and answered
as the GAs; ``guided_es``, evosax's Guided ES (P = 64, lr 0.03, a subspace of the last 4
full-batch gradients at the mean, ``hybrids.guided_es_gradient``); ``blended_es``, OpenAI-ES
(P = 64, lr 0.03) whose mean update is blended half and half with an Adam step (lr 0.01) on the
full-batch gradient at the mean (``hybrids.blended_mean_update``), both answered by the mean.
Left out: Adam schedules and weight decay (only the learning rate is tuned).

**Search spaces, 3 configurations each**: every Adam contender the learning rate 0.01 / 0.03 /
0.1; both GAs and ESGD the mutation std 0.25 / 0.5 / 1.0; OpenAI-ES, Guided ES and the blend
their std 0.1 / 0.3 / 1.0. Tuning runs:
3 configurations x 3 seeds (100-102), scored on **validation** at the end of the budget; the
chosen one has the most validation successes, ties broken by the higher median validation
score (then the first in the grid). It is then run with 9 fresh seeds (0-8), the only runs
reported, scored on **test** (tuning and test sweeps have one shape: one compilation).

**Equal FLOPs.** ``F`` = forward FLOPs per example (``hybrid.dense_flops``: ``2 in out + out``
per dense layer), ``n`` training points, every pass full-batch. A gradient step costs ``3 n F``
(forward and backward), a fitness evaluation ``n F``. Every contender gets a budget of ``E``
gradient-step equivalents, ``3 E n F`` FLOPs: ``adam`` ``E`` steps, each restart ``E / 8``,
a GA generation ``8 (3 K + 1) n F`` (K = 100 steps and one evaluation per member), an ESGD
generation ``8 (3 K + 3) n F`` (its back-off evaluates each member before and after the
steps), an OpenAI-ES generation ``64 n F``, a Guided ES or blended generation ``64 n F + 3 n F``
(one gradient at the mean); Adam's steps are rounded to a multiple of the checkpoints and
generations to a whole number, so budgets differ by < 2% (the JSON has each exact figure).
Optimizer and strategy arithmetic (O(D) per member) is not counted. FLOPs to success: the
first of 24 checkpoints whose test score met the threshold. Budgets: E = 120,000 for the sine
(150 GA generations: the old race's GA needed ~120 at the median), 12,000 for the spirals
(whose steps cost ~100x more FLOPs and ~10x more time), to fit the full run in ~15 minutes on
2 shared cores. Wall time: run time of each batched sweep (compilation apart), with
``os.getloadavg()``. ``--quick``: the sine only, E = 1,240, K = 10, 2 + 6 seeds, the three
Adam contenders, the Lamarckian GA, ESGD, Guided ES and the blend.

Medians over seeds with bootstrap 95% intervals (``study.bootstrap_median``). The three Adam
variants pair (``adam`` is restart 0 of ``restarts``; ``restarts_wide`` rescales the same
draws); the GAs' and ES's draws come from the engine's keys, so they compare by counts only
(Fisher's exact test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from scipy.stats import fisher_exact
from study import _fmt, bootstrap_median
from study_q3_problem import Problem, _Answers, run_adam

from evojax_nets import Evolution
from evojax_nets.hybrids import blended_mean_update, esgd, gradient_steps, guided_es_gradient

CONTENDERS = (
    *("adam", "restarts", "restarts_wide", "lamarckian_ga", "baldwinian_ga", "open_es"),
    *("esgd", "guided_es", "blended_es"),
)
LABELS = {
    "adam": "Adam, one run",
    "restarts": "Adam, best of 8 restarts",
    "restarts_wide": "Adam, best of 8, first layer x4 (control)",
    "lamarckian_ga": "Lamarckian GA (P 8, Adam steps)",
    "baldwinian_ga": "Baldwinian GA (P 8, Adam steps)",
    "open_es": "OpenAI-ES (P 64)",
    "esgd": "ESGD (P 8, Adam steps, back-off)",
    "guided_es": "Guided ES (P 64, gradient subspace)",
    "blended_es": "OpenAI-ES + Adam step on the mean (P 64)",
}
ADAMS, GAS = ("adam", "restarts", "restarts_wide"), ("lamarckian_ga", "baldwinian_ga", "esgd")
MEANS = ("open_es", "guided_es", "blended_es")  # distribution-based: P forwards per generation
GRIDS = {
    **{k: [0.01, 0.03, 0.1] for k in ADAMS},
    **{k: [0.25, 0.5, 1.0] for k in GAS},
    **{k: [0.1, 0.3, 1.0] for k in MEANS},
}
MEANING = {"adam": "learning rate", "ga": "mutation std", "mean": "std (lr 0.03)"}
RESTARTS, WIDE, GA_POP, GA_LR, ES_POP, ES_LR = 8, 4.0, 8, 0.01, 64, 0.03
SUBSPACE, BLEND = 4, 0.5  # Guided ES's gradient subspace (hybrid.py's); the blend weight
# Budgets in gradient-step equivalents E per task (see the docstring), sized to this 2-core
# CPU's ~15-minute limit for the full run; the spirals' step costs ~10x the sine's.
SIZES = {
    "full": {"equivalents": {"sine": 120_000, "spirals": 12_000}, "ga_steps": 100, "points": 24}
    | {"tune_seeds": 3, "tasks": ["sine", "spirals"], "contenders": list(CONTENDERS)},
    "quick": {"equivalents": {"sine": 1_240, "spirals": 1_240}, "ga_steps": 10, "points": 2}
    | {"tune_seeds": 2, "tasks": ["sine"], "contenders": [*ADAMS, *GAS[::2], *MEANS[1:]]},
}


def make_evolution(prob: Problem, name: str, ga_steps: int) -> Evolution:
    if name in MEANS:
        kw: dict[str, Any] = {"std": 0.1, "learning_rate": ES_LR}
        if name == "guided_es":
            kw |= {"ops": guided_es_gradient(), "strategy_kwargs": {"subspace_dims": SUBSPACE}}
        elif name == "blended_es":
            kw["ops"] = blended_mean_update(optax.adam(GA_LR), weight=BLEND)
        strategy = "guided_es" if name == "guided_es" else "open_es"
        return Evolution(prob.model, prob.task, strategy, ES_POP, **kw)

    def population_init(key, size):
        return jax.vmap(prob.draw)(jax.random.split(key, size))

    if name == "esgd":
        strategy, op = esgd(
            prob.model, GA_POP, optax.adam(GA_LR), ga_steps, num_parents=GA_POP // 2, std=0.5
        )
        return Evolution(
            prob.model, prob.task, strategy, GA_POP, ops=op, population_init=population_init
        )
    return Evolution(
        prob.model,
        prob.task,
        "ga",
        GA_POP,
        std=0.5,
        population_init=population_init,
        strategy_kwargs={"num_parents": GA_POP // 2, "num_elites": 1},
        ops=gradient_steps(optax.adam(GA_LR), ga_steps, mode=name.split("_")[0]),
    )


def units_and_flops(prob: Problem, name: str, E: int, ga_steps: int, points: int):
    """(units: steps or generations, FLOPs per unit) for a budget of E gradient steps."""
    nF = prob.n * prob.fwd
    per_unit = {"adam": 3 * nF, "open_es": ES_POP * nF}.get(name, 3 * nF * RESTARTS)
    if name in GAS:  # K steps and one evaluation per member; ESGD's back-off two more
        per_unit = GA_POP * (3 * ga_steps + 1 + 2 * (name == "esgd")) * nF
    elif name in MEANS[1:]:  # one gradient at the mean per generation
        per_unit = ES_POP * nF + 3 * nF
    units = 3 * E * nF / per_unit
    if name in ADAMS:  # thousands of steps: a fixed chunk
        return max(points, points * round(units / points)), per_unit
    return max(1, round(units)), per_unit  # generations: the last chunk may be shorter


def run_contender(prob, name, grid, seeds, units, points, ga_steps):
    """Every (seed, setting) of ``grid`` in one batched run, seed-major; returns the answers
    at each checkpoint and the wall times."""
    configs = [(s, v) for s in seeds for v in grid]
    if name in ADAMS:
        scale = WIDE if name == "restarts_wide" else 1.0
        draws = prob.draws([s for s, _ in configs], RESTARTS, scale)
        inits = draws[:, :1] if name == "adam" else draws
        return run_adam(prob, inits, np.array([v for _, v in configs]), units, points)
    if name not in prob.evos:
        prob.evos[name] = make_evolution(prob, name, ga_steps)
    evo = prob.evos[name]
    cb = _Answers()
    chunk = -(-units // points)
    result = evo.sweep(seeds, units, chunk_size=chunk, callbacks=[cb], std=grid)
    assert [(c["seed"], c["std"]) for c in result.configs] == configs
    assert cb.units[-1] == units, (cb.units, units)
    run_s = cb.wall - cb.compile_s - cb.overhead
    return cb.answers, cb.units, {"compile": round(cb.compile_s, 2), "run": round(run_s, 2)}


def _scores(prob: Problem, split: str, answers) -> np.ndarray:
    """(configurations, checkpoints) scores; NaN (a diverged run) counts as -inf."""
    s = np.stack([np.asarray(prob.score[split](a), np.float64) for a in answers], axis=1)
    return np.where(np.isfinite(s), s, -np.inf)


def run_task(task: str, size: dict) -> dict[str, Any]:
    load0, t0 = [round(v, 2) for v in os.getloadavg()], time.perf_counter()
    prob = Problem(task)
    E, K, points = size["equivalents"][task], size["ga_steps"], size["points"]
    tune = [100 + i for i in range(size["tune_seeds"])]
    test = list(range(3 * size["tune_seeds"]))
    # As hybrid.py: a score within 1e-6 of the threshold meets it (380 / 400 in float32 is
    # 0.94999999).
    thr = prob.data["threshold"] - 1e-6
    out: dict[str, Any] = {
        "published": task == "spirals",
        "score": prob.data["score"],
        "threshold": prob.data["threshold"],
        "threshold_tolerance": 1e-6,
        "hidden": list(prob.data["hidden"]),
        "weights": prob.network.num_params,
        "forward_flops_per_example": prob.fwd,
        "train_points": prob.n,
        "budget_flops": 3 * E * prob.n * prob.fwd,
        "tuning_seeds": tune,
        "test_seeds": test,
        "contenders": {},
    }
    for name in size["contenders"]:
        grid = GRIDS[name]
        units, per_unit = units_and_flops(prob, name, E, K, points)
        ans, _, wall_tune = run_contender(prob, name, grid, tune, units, points, K)
        val = _scores(prob, "validation", ans)[:, -1].reshape(len(tune), len(grid)).T
        wins = (val >= thr).sum(axis=1)
        med = np.median(val, axis=1)
        best = max(range(len(grid)), key=lambda i: (wins[i], med[i]))
        # The same (seed, setting) shape as tuning, with 3 x as many fresh seeds, one setting.
        ans, done, wall_test = run_contender(prob, name, [grid[best]], test, units, points, K)
        curves = _scores(prob, "test", ans)  # (test seeds, checkpoints)
        final = curves[:, -1]
        ok = final >= thr
        first = [int(np.argmax(c >= thr)) if (c >= thr).any() else None for c in curves]
        xs = np.asarray(done, float) * per_unit  # FLOPs at each checkpoint
        fl = [None if i is None else float(xs[i]) for i in first]
        fl_arr = np.array([np.inf if v is None else v for v in fl])
        out["contenders"][name] = {
            "label": LABELS[name],
            "grid": grid,
            "grid_meaning": MEANING["mean" if name in MEANS else "ga" if name in GAS else "adam"],
            "validation_successes": [int(w) for w in wins],
            "validation_median": [_fmt(v) for v in med],
            "chosen": grid[best],
            "units": units,
            "unit": "steps" if name in ADAMS else "generations",
            "flops_per_unit": per_unit,
            "flops": units * per_unit,
            "test_score_per_seed": [_fmt(v) for v in final],
            "test_median": _fmt(float(np.median(final))),
            "test_ci95": [_fmt(v) for v in bootstrap_median(final)],
            "successes": int(ok.sum()),
            "success_rate": float(ok.mean()),
            "flops_to_success_per_seed": [None if v is None else _fmt(v) for v in fl],
            "flops_to_success_median": _fmt(float(np.median(fl_arr))),
            "flops_to_success_ci95": [_fmt(v) for v in bootstrap_median(fl_arr)],
            "curve_flops": [float(v) for v in xs],
            "curve_test_median": [_fmt(v) for v in np.median(curves, axis=0)],
            "curve_test_q25": [_fmt(v) for v in np.percentile(curves, 25, axis=0)],
            "curve_test_q75": [_fmt(v) for v in np.percentile(curves, 75, axis=0)],
            "wall_s": {"tuning": wall_tune, "test": wall_test, "runs_per_call": len(test)},
        }
        c = out["contenders"][name]
        print(
            f"q3 {task} {name}: chosen {c['chosen']}, {c['successes']}/{len(test)} succeed, "
            f"median {c['test_median']} {c['test_ci95']}, wall {wall_tune} {wall_test}",
            flush=True,
        )
    out["loadavg_start"], out["loadavg_end"] = load0, [round(v, 2) for v in os.getloadavg()]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    compare(out)
    return out


def compare(out: dict[str, Any]) -> None:
    """The best GA-type hybrid against the wide-restart control, by test successes (Fisher's
    exact test), and the paired narrow/wide restarts; into ``out["comparison"]``."""
    c, n = out["contenders"], len(out["test_seeds"])
    thr = out["threshold"] - out["threshold_tolerance"]
    gas = [k for k in GAS if k in c]
    if not gas or not {"restarts", "restarts_wide"} <= set(c):
        return
    ga = max(gas, key=lambda k: c[k]["successes"])
    wide, narrow = (
        np.array(c[k]["test_score_per_seed"], float) >= thr for k in ("restarts_wide", "restarts")
    )
    table = [[c[ga]["successes"], n - c[ga]["successes"]], [int(wide.sum()), n - int(wide.sum())]]
    out["comparison"] = {
        "best_ga": ga,
        "best_ga_successes": c[ga]["successes"],
        "restarts_wide_successes": int(wide.sum()),
        "fisher_exact_p_ga_vs_wide": round(float(fisher_exact(table)[1]), 4),
        "paired_wide_only_seeds": int((wide & ~narrow).sum()),
        "paired_narrow_only_seeds": int((narrow & ~wide).sum()),
        "note": "adam / restarts / restarts_wide pair seed by seed (the same keys); the GAs' "
        "and the ES's draws come from the engine's keys, so they compare by counts",
    }


def merge_sections(earlier: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """One Q3 section from two of the same protocol whose contenders differ (for example the
    hybrids added to an earlier run): the tasks' contenders of both in ``CONTENDERS`` order (a
    contender in both: the later run's), each keeping its run's wall times and loads, and the
    comparison redone. Refused when budgets, seeds, thresholds or shared settings differ."""
    q = json.loads(json.dumps(earlier))
    if any(q["settings"][k] != v for k, v in more["settings"].items() if k in q["settings"]):
        raise ValueError("the two runs differ in their shared settings; they cannot be merged")
    q["settings"] |= more["settings"]
    q["flops_formula"] = more["flops_formula"]  # the later one names every contender
    for task, t in more["tasks"].items():
        mine = q["tasks"][task]
        same = ("budget_flops", "tuning_seeds", "test_seeds", "threshold", "weights")
        if any(mine[k] != t[k] for k in same):
            raise ValueError(f"{task}: the two runs differ in {same}; they cannot be merged")
        both = mine["contenders"] | t["contenders"]
        mine["contenders"] = {k: both[k] for k in CONTENDERS if k in both}
        mine.setdefault(
            "runs", [{"loadavg_start": mine["loadavg_start"], "wall_s": mine["wall_s"]}]
        )
        mine["runs"].append({"loadavg_start": t["loadavg_start"], "wall_s": t["wall_s"]})
        compare(mine)
    q["size"]["contenders"] = [
        k for k in CONTENDERS if k in q["size"]["contenders"] or k in more["size"]["contenders"]
    ]
    q["left_out"] = more["left_out"]
    return q


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """:func:`merge_sections` of two whole ``study.py`` reports; both commands are kept."""
    q = merge_sections(base["q3"], extra["q3"])
    merged = {**base, "q3": q, "commands": [base["command"], extra["command"]]}
    merged["environments"] = [base["environment"], extra["environment"]]
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q3-tasks", nargs="+", default=None, choices=["sine", "spirals"])
    parser.add_argument("--q3-contenders", nargs="+", default=None, choices=list(CONTENDERS))
    parser.add_argument("--q3-equivalents", type=int, default=None, help="Q3: budget E")
    parser.add_argument("--q3-tune-seeds", type=int, default=None, help="Q3: tuning seeds")
    parser.add_argument(
        "--q3-reuse",
        default=None,
        help="Q3: an earlier JSON; contenders not run here come from it (merge_sections)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.q3_equivalents is not None:
        size["equivalents"] = dict.fromkeys(size["equivalents"], args.q3_equivalents)
    for key in ("tune_seeds", "tasks", "contenders"):
        if getattr(args, f"q3_{key}") is not None:
            size[key] = getattr(args, f"q3_{key}")
    report: dict[str, Any] = {
        "question": "Q3: many minima, with a wide-initialisation restart control, equal FLOPs",
        "size": size,
        "settings": {
            "restarts": RESTARTS,
            "wide_first_layer_scale": WIDE,
            "ga": {"population": GA_POP, "parents": GA_POP // 2, "elites": 1, "adam_lr": GA_LR},
            "open_es": {"population": ES_POP, "learning_rate": ES_LR},
            "guided_es": {"population": ES_POP, "learning_rate": ES_LR, "subspace": SUBSPACE},
            "blended_es": {"population": ES_POP, "es_lr": ES_LR, "adam_lr": GA_LR, "w": BLEND},
            "esgd": {"population": GA_POP, "parents": GA_POP // 2, "elites": 1, "backoff": True},
            "choice": "most validation successes, ties by the higher median validation score",
        },
        "flops_formula": {
            "forward": "n F, F = hybrid.dense_flops; a full-batch gradient step 3 n F",
            "per_unit": "adam 3 n F, restarts 8 x that; GA P (3 K + 1) n F, ESGD P (3 K + 3) n F; "
            "OpenAI-ES P n F, Guided ES and the blend P n F + 3 n F",
            "budget": "3 E n F for every contender; not counted: O(D) optimizer arithmetic",
        },
        "left_out": ["Adam schedules and weight decay (only the learning rate is tuned)"],
        "tasks": {},
    }
    earlier = json.loads(Path(args.q3_reuse).read_text())["q3"] if args.q3_reuse else None
    if earlier is not None and not set(size["tasks"]) <= set(earlier["tasks"]):
        raise ValueError(f"--q3-reuse {args.q3_reuse} has tasks {sorted(earlier['tasks'])}")
    for task in size["tasks"]:
        report["tasks"][task] = run_task(task, size)
    if earlier is None:
        return report
    earlier["tasks"] = {k: v for k, v in earlier["tasks"].items() if k in size["tasks"]}
    return {**merge_sections(earlier, report), "reused_from": args.q3_reuse}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = ("#1f77b4", "#ff7f0e", "#7570b3", "#d62728", "#2ca02c", "#8c564b")
    palette += ("#e377c2", "#17becf", "#bcbd22")
    colors = dict(zip(CONTENDERS, palette, strict=True))
    tasks = report["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 6.5), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items(), strict=True):
        for name, c in t["contenders"].items():
            x = np.asarray(c["curve_flops"])[1:]
            med, lo, hi = (
                np.asarray(c[k], float)[1:]
                for k in ("curve_test_median", "curve_test_q25", "curve_test_q75")
            )
            n = len(c["test_score_per_seed"])
            label = f"{c['label']} ({c['chosen']:g}): {c['successes']}/{n}"
            ax.plot(x, med, color=colors[name], label=label, lw=2 if "wide" in name else 1.3)
            ax.fill_between(x, lo, hi, color=colors[name], alpha=0.15)
        ax.axhline(t["threshold"], color="k", ls=":", lw=1)
        ax.set_xscale("log")
        lo_y = 0.4 if t["score"] == "accuracy" else -0.1
        ax.set_ylim(lo_y, 1.02)
        ax.set_xlabel("FLOPs (counted: forward/backward passes x dense FLOPs)")
        ax.set_ylabel(f"test {t['score']} (median, 25-75% band)")
        kind = "published: Lang & Witbrock 1988" if t["published"] else "designed by the library"
        ax.set_title(f"{task} ({kind}), {t['weights']} weights")
        ax.grid(alpha=0.3, which="both")
        title = "chosen setting: test successes"
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), title=title)
    seeds = len(next(iter(tasks.values()))["test_seeds"])
    what = f"{seeds} test seeds; 3 settings each, chosen on validation"
    fig.suptitle(f"Q3: many minima at equal FLOPs\n{what}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# python benchmarks/study_q3.py BASE.json EXTRA.json OUT.json [PNG]: two finished runs merged
# (``study.py --questions q3 --q3-contenders ... --q3-reuse BASE.json`` does it in one run).
if __name__ == "__main__":
    import sys

    base_path, extra_path, out_path, *png = sys.argv[1:]
    report = merge(*(json.loads(Path(p).read_text()) for p in (base_path, extra_path)))
    Path(out_path).write_text(json.dumps(report, indent=1) + "\n")
    if png:
        plot(report["q3"], Path(png[0]))
