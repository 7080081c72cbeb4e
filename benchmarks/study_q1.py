"""Q1 of ``benchmarks/ANSWER.md``: cost to reach a fixed target against the number of weights.

Run through ``benchmarks/study.py --questions q1``; this module holds the protocol, the
contenders (their grids, FLOPs and runners) are in ``benchmarks/study_q1_contenders.py``.

* Task: scikit-learn's digits (``evojax_nets.load_digits``, its train/test split), a fixed
  20% of the training set held out for validation (``_digits.train_val_test``, seed 0). The
  target, validation accuracy >= 0.90, is the same for every size and method; the test set is
  read only to report the test accuracy of the chosen configurations where they reached it.
* Networks: ``models.MLP(64, (h, h), 10)``, tanh, one initialisation (``nnx.Rngs(0)``) shared
  by every method and seed; ``h`` in ``SETS`` gives D from 1,066 (h = 12) to 1,086,010
  (h = 1000) weights.
* Contenders, three settings each of their step size (a factor of about 3 apart, the grids
  and the reasons for each swept parameter in ``study_q1_contenders.CONTENDERS``), nothing
  else tuned, minibatch 256 for all, population P = 256 for every evolution strategy:
  **Adam** and **SGD with momentum 0.9** (``optax.scale_by_adam`` / ``optax.trace``, the
  learning rate swept; the latter is ``optax.sgd(lr, momentum=0.9)``); **OpenAI-ES**,
  **low-rank ES** (rank 1) and **PGPE** (the library's Adam on their gradient estimate,
  its learning rate swept, std 0.05); **SNES**, **sep-CMA-ES** and **CMA-ES** (the initial
  search std swept: SNES's mean step is std x the weighted noise with its natural-gradient
  rate of 1, the CMA family's sigma is its step); **PSO**, **DE** and the elitist GA
  (``DeepGA``) (the initial population's spread ``std`` around the initialisation swept: it
  sets the scale of every PSO / DE step, and it is the GA's mutation scale). Full CMA-ES holds
  and decomposes a D x D covariance per configuration, 15 configurations batched: it runs
  only where D <= ``MAX_D_FULL_COVARIANCE`` (h = 12, D = 1,066, in the full run) and is
  recorded as "not run, D too large" above it (the costs measured are in ``CMA_NOT_RUN``).
  Every seed x setting of one method runs as one compiled program: ``Evolution.sweep`` for
  the ES, ``jit(vmap(...))`` of a ``lax.scan`` chunk for the gradient methods.
  Seeds draw the minibatches (and the ES noise).
* Checks of what is not tuned above: ``--q1-population P`` reruns every ES at population P
  (its cap and check interval rescaled to the FLOPs budget of P = 256,
  ``with_population``; ``study_q1_population.py`` gathers such runs), ``--q1-std`` the ES
  whose learning rate is swept at another search std.
* Validation accuracy is checked every ``every`` steps, of the search mean for the
  distribution-based strategies and of the run's solution (the best member evaluated so far,
  ``Evolution.solution_theta``) for PSO, DE and the GA; a run's steps to target is the first
  checked step at or above the target. A configuration's score is the median over seeds of
  its FLOPs to target (a seed that never reaches it counts as infinite); the smallest score is
  chosen.
* **Reduced tuning above h = 160** (a budget cut, labelled in the JSON: ``tuning`` per size):
  at h = 320 and 1000 only ``large_methods`` run (Adam, SGD + momentum, OpenAI-ES; also
  low-rank ES, PGPE, SNES and sep-CMA-ES, ``large_methods_extra``), each with
  the one setting it chose at h = 160, 5 seeds (gradient methods too, for an equal tuning
  budget). An OpenAI-ES generation costs about 0.5 s per run at h = 320 and several seconds
  at h = 1000 on this machine's 2 shared cores, so 15 runs x up to 200 generations per method
  do not fit. At h = 1000 each ES seed runs as its own call (the population of 5 batched runs
  would be 5.5 GB); its time to target is then its own call's time.
* FLOPs are forward-pass multiply-adds of the weight matrices, 2 per multiply-add (biases and
  activations not counted); F(B) = 2 B sum(fan_in fan_out). A gradient step = 3 F(256)
  (forward and backward). A generation of every evolution strategy = P F(256) (P members each
  on one minibatch), except low-rank ES, counted exactly for this network: the first layer's
  x W once for the population (its input and W are shared), each member's rank-1 terms
  (x a) b^T for every matrix, and each member's own later layers in full; the upper bound
  P F(256) is recorded next to it. PSO, DE and the GA also evaluate their initial population
  once (P F(256), ``flops_initial`` in the JSON), added to their FLOPs to target. The
  strategies' own updates, noise, covariance work (CMA-ES's eigendecomposition too) and the
  optimizers' updates are not counted (O(P D) per generation, against O(P B D) for the
  forwards; CMA-ES's O(D^3) is the exception, which its wall time shows).
* Early stop: a method's sweep stops at a check once its chosen configuration is certain: the
  best configuration has every seed at the target, and every other configuration's median
  cannot come below it (its unresolved seeds would reach the target at the next check at the
  earliest). Those configurations' results are then censored at the stop step (recorded). A
  run that never reaches the target within its cap is "not reached" (censored at the cap).
* Wall time excludes compilation. Every configuration of a method runs in one batched
  program; a run's time to target is the batched program's run time up to the check where it
  reached the target, divided by the number of configurations in the batch (the run's share),
  measured per chunk; host-side bookkeeping between chunks (the test-accuracy evaluation) is
  subtracted, the validation check is included.
* **Fail-fast** (a budget cut, labelled per entry): a method none of whose 15 runs reached
  the target at a tuned size is not run at the larger sizes (recorded as not run, with the
  size where it failed); the recorded failure is censored at its cap, never extrapolated.
* ``--q1-deadline-s`` starts no method after that many seconds (recorded "out of time").
* ``--q1-gradient-space`` tunes Adam and SGD + momentum over their 3 learning rates x a
  schedule (constant, or cosine decay to 0 over the cap) x a weight decay (0, 1e-4, 1e-3;
  AdamW's decoupled decay for Adam, L2 for SGD): 18 configurations, a check that more tuning
  of the winners does not change the answer (it breaks the equal budget in their favour).
* ``--q1-reuse PATH`` takes the methods this run does not run from an earlier Q1 JSON (each
  such entry is marked ``reused_from``), so a run of new contenders gives one table and plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _digits import train_val_test
from flax import nnx
from study import _fmt, bootstrap_median, generations_at_population
from study_q1_contenders import (
    CMA_NOT_RUN,
    CONTENDERS,
    GRADIENT,
    MAX_D_FULL_COVARIANCE,
    METHODS,
    RANK,
    STD,
    accuracy_fn,
    flops_per_step,
    gradient_space,
    run_es,
    run_gradient,
)

from evojax_nets import Evolution
from evojax_nets.models import MLP
from evojax_nets.nets import as_network
from evojax_nets.tasks import Supervised

SETS = {
    "full": {
        "hidden": (12, 32, 80, 160, 320, 1000),
        "tuned_up_to": 160,  # above: the setting chosen at this size only
        "large_methods": ("adam", "sgd_momentum", "open_es"),
        # the other distribution-based strategies fit the budget too, one seed per call at
        # h = 1000 (D = 1,076,010) as OpenAI-ES
        "large_methods_extra": {
            h: ("lowrank_es", "pgpe", "snes", "sep_cma_es") for h in (320, 1000)
        },
        "one_seed_per_call_above_D": 500_000,
        "population": 256,
        "batch": 256,
        "target": 0.90,
        "caps": {"gradient": 2000, "es": 200},
        "every": {"gradient": 5, "es": 5},
        "seeds": [0, 1, 2, 3, 4],
        "methods": METHODS,
    },
    "quick": {
        "hidden": (8, 16, 24),
        "tuned_up_to": 16,
        "large_methods": ("adam", "sgd_momentum", "open_es"),
        "one_seed_per_call_above_D": 2_000,  # h = 24 (D = 2,410): exercised in the tests
        "population": 32,
        "batch": 64,
        "target": 0.40,
        "caps": {"gradient": 60, "es": 40},
        "every": {"gradient": 5, "es": 5},
        "seeds": [0, 1],
        # a subset, to keep the test suite's run short: both gradient methods, OpenAI-ES,
        # SNES for the evosax strategies (low-rank ES compiles for ~30 s; its own quick test
        # is test_lowrank_quick_runs_every_section).
        "methods": ("adam", "sgd_momentum", "open_es", "snes"),
    },
}


def summarise(tracker, grid, seeds, flops: float, initial: float, cap: int) -> dict[str, Any]:
    R = len(seeds)
    steps = tracker.steps.reshape(R, len(grid)).T  # (setting, seed)
    secs = tracker.seconds.reshape(R, len(grid)).T / tracker.runs_per_call  # a run's share
    fl = np.where(steps >= 0, steps * flops + initial, np.inf)
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
        "flops_to_target_per_seed": [
            _fmt(s * flops + initial) if s is not None else None for s in per_seed
        ],
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
        "--q1-lrs", type=float, nargs="+", default=None, help="Q1: these settings, every method"
    )
    parser.add_argument(
        "--q1-deadline-s", type=float, default=None, help="Q1: start no method after this"
    )
    parser.add_argument(
        "--q1-reuse", default=None, help="Q1: an earlier JSON; methods not run here come from it"
    )
    parser.add_argument(
        "--q1-population",
        type=int,
        default=None,
        help="Q1: this population for every evolution strategy (default 256); the ES cap and "
        "check interval in generations scale by 256 / P, so the FLOPs budget and the FLOPs "
        "between checks stay those of P = 256",
    )
    parser.add_argument(
        "--q1-std",
        type=float,
        default=None,
        help=f"Q1: the search std of the ES whose learning rate is swept (OpenAI-ES, low-rank "
        f"ES, PGPE; default {STD}); the others sweep their std",
    )
    parser.add_argument(
        "--q1-cma-max-d",
        type=int,
        default=MAX_D_FULL_COVARIANCE,
        help="Q1: run full CMA-ES up to this D; above MAX_D_FULL_COVARIANCE with only the "
        "setting it chose at the last size it was tuned at (labelled reduced tuning)",
    )
    parser.add_argument(
        "--q1-gradient-space",
        action="store_true",
        help="Q1: Adam / SGD over learning rate x schedule x weight decay (18 configurations)",
    )


def with_population(cfg: dict[str, Any], P: int | None) -> dict[str, Any]:
    """``cfg`` with every evolution strategy at population ``P``: its cap and check interval in
    generations scaled by the default population / ``P`` (at least 1), so that the FLOPs it may
    spend and the FLOPs between two checks stay as they are."""
    if P is None or cfg["population"] == P:
        return cfg
    rescale = lambda g: generations_at_population(g, P, cfg["population"], "--q1-population")
    scaled = lambda d: {**d, "es": rescale(d["es"])}
    return {**cfg, "population": P, "caps": scaled(cfg["caps"]), "every": scaled(cfg["every"])}


def _reused(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    data = json.loads(Path(path).read_text())
    return data.get("q1", data)


def _extra(cfg: dict[str, Any]) -> dict[int, tuple[str, ...]]:
    return cfg.get("large_methods_extra", {})


def _large(cfg: dict[str, Any], h: int) -> tuple[str, ...]:
    """The methods run at a reduced size ``h``: ``large_methods`` and that size's extras."""
    return tuple(cfg["large_methods"]) + tuple(_extra(cfg).get(h, ()))


def _kind(method: str) -> str:
    return CONTENDERS[method]["kind"] if CONTENDERS[method]["kind"] == "gradient" else "es"


def run_one(method, h, model, task, val, test_fn, grid, seeds, cfg, one_seed):
    """One method at one size: the tracker of its sweep and its wall times."""
    cap, every, target = cfg["caps"][_kind(method)], cfg["every"][_kind(method)], cfg["target"]
    common = (grid, seeds, cap, every, target, test_fn)
    if method in GRADIENT:
        return run_gradient(method, as_network(model), task, val, *common)
    kw = {"strategy_kwargs": {"rank": RANK}} if method == "lowrank_es" else {}
    strategy, P = CONTENDERS[method]["strategy"], cfg["population"]
    evo = Evolution(model, task, strategy, P, std=cfg["std"], **kw)
    return run_es(evo, method, *common, one_seed_per_call=one_seed)


def _note(method, h, out, tuned, chosen_at, dropped) -> None:
    """The setting a method chose at a tuned size; the fail-fast rule: a method none of whose
    runs reached the target at a tuned size is not run at the larger sizes."""
    if not tuned or "not_run" in out:
        return
    chosen_at[method] = out["chosen"]
    if not any(out["validation_success_per_setting"]):
        dropped.setdefault(method, h)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = with_population(SETS["quick" if args.quick else "full"], args.q1_population)
    if args.q1_std is not None and not args.q1_std > 0:
        raise ValueError(f"--q1-std must be > 0, got {args.q1_std}")
    cfg = {**cfg, "std": STD if args.q1_std is None else args.q1_std}
    P, B, target = cfg["population"], cfg["batch"], cfg["target"]
    seeds = cfg["seeds"] if args.q1_seeds is None else args.q1_seeds
    hidden = cfg["hidden"] if args.q1_hidden is None else tuple(args.q1_hidden)
    methods = tuple(args.q1_methods or cfg["methods"])
    reuse = _reused(args.q1_reuse)
    reuse_rows = {r["hidden"]: r for r in reuse["sizes"]} if reuse else {}
    x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(0.2)
    task = Supervised(x_tr, y_tr, x_val, y_val, batch_size=B, num_classes=10)
    listed = [
        m for m in METHODS if m in methods or any(m in r["methods"] for r in reuse_rows.values())
    ]
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
            "std": cfg["std"],
            "lowrank_rank": RANK,
        },
        "seeds": list(seeds),
        "methods_run": list(methods),
        "methods_reused": [m for m in listed if m not in methods],
        "reused_from": args.q1_reuse,
        "gradient_space": (
            "Adam and SGD + momentum tuned over learning rate x schedule (constant, cosine to 0 "
            "over the cap) x weight decay (0, 1e-4, 1e-3): 18 configurations, more than the "
            "3 of every other contender"
            if args.q1_gradient_space
            else None
        ),
        "contenders": {
            m: {k: CONTENDERS[m][k] for k in ("label", "kind", "param", "grid")} for m in listed
        },
        "caps": {m: cfg["caps"][_kind(m)] for m in listed},
        "check_every": {m: cfg["every"][_kind(m)] for m in listed},
        "tuned_up_to_hidden": cfg["tuned_up_to"],
        "large_methods": list(cfg["large_methods"]),
        "large_methods_extra": {str(h): list(m) for h, m in _extra(cfg).items()},
        "max_D_full_covariance": args.q1_cma_max_d,
        "flops_formula": {
            "forward": "F(B) = 2 * B * sum(fan_in * fan_out) over the 3 weight matrices",
            "gradient": "3 * F(B) per step (forward + backward): adam, sgd_momentum",
            "evolution": "P * F(B) per generation: every evosax strategy and open_es",
            "lowrank_es": (
                "exact: 2*B*64*h (first layer, shared) + P * (2*B*(h*h + h*10) + "
                "2*B*rank*sum(fan_in + fan_out)); upper bound P * F(B) also recorded"
            ),
            "initial": "P * F(B) once for population-based strategies (pso, de, deep_ga)",
            "flops_to_target": "steps_to_target * flops_per_step + flops_initial",
            "not_counted": "strategy updates, noise, covariance work, optimizer updates",
        },
        "wall_time_note": (
            "compilation excluded; batched run time up to the check where a run reached the "
            "target, divided by the configurations in the batch"
        ),
        "sizes": [],
    }
    chosen_at: dict[str, Any] = {}  # each method's setting at the largest tuned size
    dropped: dict[str, int] = {}  # methods that reached the target nowhere, and where
    deadline, t_start = args.q1_deadline_s, time.perf_counter()
    for h in hidden:
        model = MLP(64, (h, h), 10, rngs=nnx.Rngs(0))
        network = as_network(model)
        D = network.num_params
        tuned = h <= cfg["tuned_up_to"]
        row: dict[str, Any] = {"hidden": h, "D": D, "methods": {}}
        row["tuning"] = (
            "3 settings x seeds, chosen on validation"
            if tuned
            else f"reduced: only {', '.join(_large(cfg, h))}, each with the setting it "
            f"chose at h = {cfg['tuned_up_to']}"
        )
        test_fn = accuracy_fn(network, x_te, y_te)
        for method in listed:
            old = reuse_rows.get(h, {}).get("methods", {}).get(method)
            if old is not None and ("not_run" not in old or method not in methods):
                row["methods"][method] = {"reused_from": args.q1_reuse, **old}  # first source
                _note(method, h, old, tuned, chosen_at, dropped)
                continue
            if method not in methods:
                continue
            reason = None
            # full CMA-ES above MAX_D_FULL_COVARIANCE (only with --q1-cma-max-d): the setting
            # it chose where it was tuned, one setting for 5 seeds instead of 3 (its cost)
            cma_reduced = method == "cma_es" and D > MAX_D_FULL_COVARIANCE
            if method == "cma_es" and args.q1_cma_max_d < D:
                reason = CMA_NOT_RUN
            elif cma_reduced and method not in chosen_at:
                reason = "full CMA-ES above the tuned D needs its setting from a tuned size"
            elif method in dropped:
                reason = f"reached the target with no setting at h = {dropped[method]} (fail-fast)"
            elif not tuned and (method not in _large(cfg, h) or method not in chosen_at):
                reason = "reduced budget above the tuned sizes"
            elif deadline is not None and time.perf_counter() - t_start > deadline:
                reason = f"out of time (--q1-deadline-s {deadline:g})"
            if reason is not None:
                row["methods"][method] = {"not_run": reason}
                continue
            if args.q1_lrs:
                grid = list(args.q1_lrs)  # a sensitivity check
            elif tuned and args.q1_gradient_space and method in GRADIENT:
                grid = gradient_space(CONTENDERS[method]["grid"])  # a check on the winners
            else:
                full_grid = tuned and not cma_reduced
                grid = CONTENDERS[method]["grid"] if full_grid else [chosen_at[method]]
            limit = cfg["one_seed_per_call_above_D"]
            one_seed = not tuned and method not in GRADIENT and limit < D
            print(f"q1 h={h} D={D} {method} {grid} ...", file=sys.stderr, flush=True)
            tracker, wall = run_one(
                method, h, model, task, (x_val, y_val), test_fn, grid, seeds, cfg, one_seed
            )
            flops = flops_per_step(method, h, P, B)
            cap = cfg["caps"][_kind(method)]
            out = summarise(tracker, grid, seeds, flops["counted"], flops["initial"], cap)
            _note(method, h, out, tuned, chosen_at, dropped)
            if cma_reduced:
                out["tuning"] = (
                    f"reduced: only the setting chosen at D <= {MAX_D_FULL_COVARIANCE:,} "
                    "(full covariance: one eigendecomposition per generation per run)"
                )
            out["flops_per_step"] = flops["counted"]
            out["flops_per_step_upper_bound"] = flops["upper_bound"]
            out["flops_initial"] = flops["initial"]
            steps_run = tracker.last_step * len(tracker.steps)
            out["wall_s"] = {
                **wall,
                "runs_per_call": tracker.runs_per_call,
                "ms_per_step_per_run": round(1e3 * tracker.run_s / max(steps_run, 1), 3),
            }
            row["methods"][method] = out
            print(
                f"q1 h={h} D={D} {method}: {out['flops_to_target_median']} FLOPs, chosen "
                f"{out['chosen']}, success {out['success_rate']}, wall {out['wall_s']}",
                file=sys.stderr,
                flush=True,
            )
            print("q1 partial " + json.dumps(row), file=sys.stderr, flush=True)
        report["sizes"].append(row)
    report["fits"] = fits(report)
    return report


def fits(report: dict[str, Any]) -> dict[str, Any]:
    """Least squares of log10 FLOPs-to-target median on log10 D, per method, over the sizes
    where the median reached the target; also over the fully tuned sizes only."""
    out = {}
    for method in report["contenders"]:
        fit: dict[str, Any] = {}
        for key, rows in (
            ("", report["sizes"]),
            (
                "_tuned_sizes",
                [r for r in report["sizes"] if r["hidden"] <= report["tuned_up_to_hidden"]],
            ),
        ):
            pts = [
                (r["D"], r["methods"][method]["flops_to_target_median"])
                for r in rows
                if r["methods"].get(method, {}).get("flops_to_target_median") is not None
            ]
            fit["sizes_used" + key] = [d for d, _ in pts]
            if len(pts) >= 2:
                b, a = loglog_fit(pts)
                fit["exponent_b" + key] = b
                fit["intercept_a" + key] = a
        out[method] = fit
    return out


def loglog_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``log10 FLOPs = a + b log10 D`` over ``(D, FLOPs)`` points (at least 2):
    ``(b, a)``, each rounded to 3 decimals."""
    x, y = np.log10(np.asarray(points, float)).T
    b, a = np.polyfit(x, y, 1)
    return round(float(b), 3), round(float(a), 3)


def plot(q: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9.5, 6.5))
    missing: list[str] = []
    for i, (method, fit) in enumerate(q["fits"].items()):
        rows = [r for r in q["sizes"] if r["methods"].get(method, {}).get("flops_to_target_median")]
        if not rows:
            missing.append(q["contenders"][method]["label"])
            continue
        m = [r["methods"][method] for r in rows]
        D = np.array([r["D"] for r in rows], float)
        med = np.array([v["flops_to_target_median"] for v in m], float)
        ci = np.array(
            [[np.nan if x is None else x for x in v["flops_to_target_ci95"]] for v in m], float
        )
        hi = np.where(np.isfinite(ci[:, 1]), ci[:, 1], med)
        err = np.vstack([med - ci[:, 0], hi - med])
        b = fit.get("exponent_b")
        label = q["contenders"][method]["label"] + ("" if b is None else f", b = {b:.2f}")
        gradient = q["contenders"][method]["kind"] == "gradient"
        ax.errorbar(
            D,
            med,
            yerr=err,
            fmt="o-" if gradient else "s--",
            color=cmap(2 * i % 20 + i // 10),
            capsize=3,
            label=label,
            lw=2.2 if gradient else 1.3,
            ms=5,
        )
        reduced = np.array(
            [
                r["hidden"] > q["tuned_up_to_hidden"] or "tuning" in r["methods"][method]
                for r in rows
            ]
        )
        if reduced.any():
            ax.plot(D[reduced], med[reduced], "o", mfc="white", mec="k", ms=7, zorder=5)
    if missing:
        text = "reached the target at no size tried (or not run):\n" + ", ".join(missing)
        ax.text(0.01, 0.99, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D, number of weights (MLP 64-h-h-10)")
    ax.set_ylabel("FLOPs to validation accuracy >= target (median, 95% CI)")
    t = q["task"]
    ax.set_title(
        f"Q1: digits, target {t['target_validation_accuracy']}, {len(q['seeds'])} seeds, 3 "
        "settings each (white: reduced tuning, the setting chosen at a smaller size)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(
        fontsize=8,
        ncol=2,
        title="solid: gradient, dashed: evolution; b = fitted exponent",
        title_fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
