"""The study behind ``benchmarks/ANSWER.md`` (issue 15): each question's figures, JSON and plot.

**Q1** (cost to a fixed target against the number of weights; its code and design are in
``benchmarks/study_q1.py``) and **Q6** are implemented (Q2-Q5 are listed in ANSWER.md as not
yet measured).

**Q6, a published experiment reproduced**: the biased-gradient least-squares problem of
Maheswaranathan et al. (2019), "Guided evolutionary strategies: augmenting random search with
surrogate gradients" (ICML), as its authors' demo notebook sets it up
(github.com/brain-research/guided-evolutionary-strategies):

* ``f(x) = ||A x - b||^2 / (2 m)`` with ``A`` (m x n) and ``b`` standard normal, n = 1000
  parameters, m = 2000 rows, ``x`` starting at 0; the figure is ``f(x) - f*`` (``f*`` from
  ``numpy.linalg.lstsq``), as the demo plots it.
* The surrogate gradient is the true gradient plus a bias along a fixed random unit direction
  ``u`` and noise: ``g + bias * |g| * u + noise * |g| * xi / sqrt(n)``, ``xi`` standard normal
  drawn afresh every iteration. The demo uses ``bias = 1`` and no noise; the paper speaks of
  bias and noise without constants we could find, so ``noise = 0.5`` (noise of about half the
  gradient's norm) is our choice (``--bias``, ``--noise``).
* Contenders: **SGD** on the surrogate gradient; **vanilla ES** (one antithetic pair per
  iteration, perturbations of total scale ``sigma = 0.1``, update ``beta / (2 sigma^2) (f+ -
  f-) eps``, plain SGD on it: the demo's algorithm); **Guided ES** (the same, with half the
  perturbation variance in the subspace of the last surrogate gradient: ``alpha = 0.5``,
  ``k = 1``, the paper's defaults). Both ES are the library's ``"guided_es"`` strategy
  (``evojax_nets.strategies.make_strategy``, evosax's ``GuidedES``; vanilla ES is
  ``alpha = 1``, no subspace), given the surrogate gradient the way
  ``hybrids.guided_es_gradient`` gives it the true one (written into the state before
  ``ask``).
* Equal evaluations: a function value and a (surrogate) gradient count as one oracle call
  each. Guided ES uses 3 per iteration (2 values, 1 gradient), vanilla ES 2, SGD 1; every
  contender gets ``3 T`` calls (``T`` = ``--iterations`` Guided ES iterations), so vanilla ES
  runs ``1.5 T`` iterations and SGD ``3 T``. Wall time of each contender's runs is reported
  next to it (compilation excluded and reported apart).
* Tuning: each contender gets the same number of configurations (4 step sizes: SGD's learning
  rate, the ES's ``beta`` with SGD step 1, which is the ES's learning rate), each run with
  ``--seeds`` seeds on a **validation instance** (a second draw of ``A, b, u``), chosen on the
  median of ``f - f*`` there at the end of the budget. Held-out rows of the same ``A`` would
  not do: ``b`` is independent of ``A``, so a held-out row's loss is smallest at ``x = 0``
  whatever the method. The chosen setting is then run with fresh seeds on the **test
  instance** (seed 0, the demo's); only those runs are reported (all four settings run there
  in the same compiled call, and are kept in the JSON for transparency, not for choosing).
* Medians over seeds with bootstrap 95% intervals (10,000 resamples of the median).

Usage::

    python benchmarks/study.py                  # Q1 and Q6 at full size: JSON, plots
    python benchmarks/study.py --questions q1   # one question
    python benchmarks/study.py --quick          # tiny, for the tests (~45 s CPU)

Defaults write ``benchmarks/results/study-<q>-<date>.json`` (one per question, each with the
run's command and environment) and ``benchmarks/out/study_<q>.png``; ``--out`` writes one JSON
holding every question asked, ``--png`` / ``--png-q1`` the plots. ``--quick`` writes nothing
unless asked. The JSON is also printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evojax_nets.strategies import make_strategy

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("sgd", "vanilla_es", "guided_es")
LABELS = {"sgd": "SGD on the surrogate", "vanilla_es": "vanilla ES", "guided_es": "Guided ES"}
CALLS_PER_ITERATION = {"sgd": 1, "vanilla_es": 2, "guided_es": 3}
# Four step sizes per contender, a factor of about 3 apart, around the demo's choices (SGD 5e-3,
# ES 0.2). SGD on the true gradient is stable below 2 / L, L = the largest eigenvalue of
# A^T A / m, about (1 + sqrt(n / m))^2 = 2.9; the ES's expected step is beta g / n in the full
# space and, for Guided ES, about beta (1 - alpha) along the surrogate direction.
GRIDS = {
    "sgd": [0.003, 0.01, 0.03, 0.1],
    "vanilla_es": [0.1, 0.3, 1.0, 3.0],
    "guided_es": [0.1, 0.3, 1.0, 3.0],
}
SIGMA, ALPHA, SUBSPACE_DIMS = 0.1, 0.5, 1
SIZES = {
    "full": {"n": 1000, "m": 2000, "iterations": 10_000, "every": 100},
    "quick": {"n": 100, "m": 200, "iterations": 400, "every": 20},
}


class Instance(NamedTuple):
    """One least-squares problem: ``A`` (m, n), ``b`` (m,), the bias direction ``u`` (n,)."""

    A: jax.Array
    b: jax.Array
    u: jax.Array


def make_instance(seed: int, n: int, m: int) -> tuple[Instance, float]:
    """A problem drawn as the demo draws it (``numpy`` ``RandomState(seed)``), and ``f*``."""
    rs = np.random.RandomState(seed)
    A = rs.randn(m, n)
    b = rs.randn(m)
    u = rs.randn(n)
    u /= np.linalg.norm(u)
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    f_star = 0.5 * float(np.sum((A @ x_star - b) ** 2)) / m
    arrays = (jnp.asarray(v, jnp.float32) for v in (A, b, u))
    return Instance(*arrays), f_star


def loss(inst: Instance, x: jax.Array) -> jax.Array:
    r = inst.A @ x - inst.b
    return 0.5 * jnp.dot(r, r) / inst.A.shape[0]


def surrogate_gradient(
    inst: Instance, x: jax.Array, key: jax.Array, bias: float, noise: float
) -> jax.Array:
    """True gradient + ``bias |g|`` along ``u`` + noise of expected norm about ``noise |g|``."""
    g = jax.grad(loss, argnums=1)(inst, x)
    norm = jnp.linalg.norm(g)
    xi = jax.random.normal(key, g.shape, g.dtype) / jnp.sqrt(g.shape[0])
    return g + norm * (bias * inst.u + noise * xi)


def _curve(step: Callable, carry0: Any, x_of: Callable, inst: Instance, key, iters, every):
    """Run ``iters`` steps of ``step(carry, key) -> carry``; ``f`` at ``x_of(carry)`` every
    ``every`` steps (and at the start): an array of ``iters // every + 1`` losses."""

    def chunk(carry, keys):
        carry = jax.lax.fori_loop(0, every, lambda i, c: step(c, keys[i]), carry)
        return carry, loss(inst, x_of(carry))

    keys = jax.random.split(key, iters).reshape(iters // every, every)
    _, losses = jax.lax.scan(chunk, carry0, keys)
    return jnp.concatenate([loss(inst, x_of(carry0))[None], losses])


def build_runners(n: int, bias: float, noise: float):
    """``{name: run(inst, step_sizes (R,), keys (R,), iters, every) -> (R, points)}``, each
    one ``jit(vmap(...))`` over configurations; the instance is an argument, so the validation
    and the test instance share one compilation."""
    strategy = make_strategy(
        "guided_es",
        2,
        n,
        std=SIGMA,
        strategy_kwargs={"optimizer": optax.sgd(1.0), "subspace_dims": SUBSPACE_DIMS},
    )

    def sgd(inst, lr, key, iters, every):
        def step(x, k):
            return x - lr * surrogate_gradient(inst, x, k, bias, noise)

        return _curve(step, jnp.zeros(n), lambda x: x, inst, key, iters, every)

    def es(guided: bool):
        alpha = ALPHA if guided else 1.0

        def run(inst, beta, key, iters, every):
            inner = strategy.params.inner.replace(alpha=jnp.float32(alpha), beta=beta)
            params = strategy.params.replace(inner=inner)
            k_init, k_run = jax.random.split(key)
            state0 = strategy.init(k_init, jnp.zeros(n), None, params)

            def step(state, k):
                k_grad, k_ask, k_tell = jax.random.split(k, 3)
                if guided:  # what hybrids.guided_es_gradient does, with the surrogate
                    grad = surrogate_gradient(inst, state.mean, k_grad, bias, noise)
                    state = state.replace(grad=grad)
                population, state = strategy.ask(k_ask, state, params)
                fitness = jax.vmap(loss, in_axes=(None, 0))(inst, population)
                state, _ = strategy.tell(k_tell, population, fitness, state, params)
                return state

            return _curve(step, state0, lambda s: s.mean, inst, k_run, iters, every)

        return run

    fns = {"sgd": sgd, "vanilla_es": es(False), "guided_es": es(True)}
    return {
        name: jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, None, None)), static_argnums=(3, 4))
        for name, fn in fns.items()
    }


def bootstrap_median(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> list[float]:
    """95% percentile interval of the median of ``values`` (NaN-safe: NaN counts as worst)."""
    v = np.where(np.isfinite(values), values, np.inf)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(resamples, len(v)))
    meds = np.median(v[idx], axis=1)
    return [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def generations_at_population(generations: int, P: int, default: int, flag: str) -> int:
    """``generations`` of a population of ``default`` rescaled for population ``P`` (at least
    one), so that they hold the same member-evaluations; ``P`` must be an even integer >= 2
    (``flag``, the option that set it, is named in the error)."""
    if P < 2 or P % 2:
        raise ValueError(f"{flag} must be an even integer >= 2, got {P}")
    return max(1, round(generations * default / P))


def _fmt(x: float) -> float | None:
    """4 significant digits; ``None`` (JSON null) for a diverged run's inf or NaN."""
    return float(f"{x:.4g}") if np.isfinite(x) else None


def run_q6(args: argparse.Namespace) -> dict[str, Any]:
    size = SIZES["quick" if args.quick else "full"]
    n, m, T, every = size["n"], size["m"], args.iterations or size["iterations"], size["every"]
    every = min(every, T)
    if T % every or (3 * T // 2) % every:
        raise SystemExit(f"--iterations {T} must be a multiple of {2 * every}")
    calls = 3 * T
    iters = {name: calls // CALLS_PER_ITERATION[name] for name in CONTENDERS}
    seeds = args.seeds
    val_inst, val_star = make_instance(1, n, m)
    test_inst, test_star = make_instance(0, n, m)
    runners = build_runners(n, args.bias, args.noise)
    report: dict[str, Any] = {
        "question": "Q6: Guided ES paper's biased-gradient least squares, reproduced",
        "problem": {
            "n": n,
            "m": m,
            "f_star_test": test_star,
            "f_star_validation": val_star,
            "test_instance_seed": 0,
            "validation_instance_seed": 1,
            "surrogate": "g + bias*|g|*u + noise*|g|*xi/sqrt(n), u fixed unit, xi ~ N(0, I)",
            "bias": args.bias,
            "noise": args.noise,
            "sigma": SIGMA,
            "alpha": ALPHA,
            "subspace_dims": SUBSPACE_DIMS,
        },
        "budget": {
            "oracle_calls": calls,
            "guided_es_iterations": T,
            "iterations": iters,
            "calls_per_iteration": CALLS_PER_ITERATION,
            "function_evaluations": {
                "sgd": 0,
                "vanilla_es": 2 * iters["vanilla_es"],
                "guided_es": 2 * iters["guided_es"],
            },
            "gradient_evaluations": {
                "sgd": iters["sgd"],
                "vanilla_es": 0,
                "guided_es": iters["guided_es"],
            },
            "curve_every": every,
            "note": "f at the iterate for the curves is measured, not counted or timed apart",
        },
        "seeds": seeds,
        "contenders": {},
    }
    R = len(seeds)
    for name in CONTENDERS:
        grid = GRIDS[name]
        sizes = jnp.asarray(np.repeat(grid, R), jnp.float32)
        # Tuning seeds differ from the reported ones; configurations are grid-major.
        seed_grid = np.tile(np.asarray(seeds), len(grid))
        tune_keys = jax.vmap(jax.random.key)(jnp.asarray(seed_grid + 1000))
        test_keys = jax.vmap(jax.random.key)(jnp.asarray(seed_grid))
        run = runners[name]
        t0 = time.perf_counter()
        compiled = run.lower(val_inst, sizes, tune_keys, iters[name], every).compile()
        compile_s = time.perf_counter() - t0
        val, val_s = _timed(lambda: compiled(val_inst, sizes, tune_keys))  # noqa: B023
        test, test_s = _timed(lambda: compiled(test_inst, sizes, test_keys))  # noqa: B023
        val_gap = np.asarray(val, np.float64).reshape(len(grid), R, -1) - val_star
        test_gap = np.asarray(test, np.float64).reshape(len(grid), R, -1) - test_star
        final_val = np.where(np.isfinite(val_gap[:, :, -1]), val_gap[:, :, -1], np.inf)
        val_medians = np.median(final_val, axis=1)
        best = int(np.argmin(val_medians))
        chosen = test_gap[best]  # (seeds, points)
        finals = chosen[:, -1]
        points = chosen.shape[1]
        iterations_axis = [i * every for i in range(points)]
        at_T = chosen[:, T // every] if T // every < points else chosen[:, -1]
        report["contenders"][name] = {
            "label": LABELS[name],
            "grid": grid,
            "grid_meaning": "learning rate" if name == "sgd" else "beta (ES learning rate)",
            "validation_median_final_gap": [_fmt(v) for v in val_medians],
            "chosen": grid[best],
            "final_gap_per_seed": [_fmt(v) for v in finals],
            "final_gap_median": _fmt(float(np.median(finals))),
            "final_gap_ci95": [_fmt(v) for v in bootstrap_median(finals)],
            "gap_at_T_iterations_median": _fmt(float(np.median(at_T))),
            "gap_at_T_iterations_ci95": [_fmt(v) for v in bootstrap_median(at_T)],
            "start_gap": _fmt(float(chosen[0, 0])),
            "iterations": iters[name],
            "curve_iterations": iterations_axis,
            "curve_oracle_calls": [i * CALLS_PER_ITERATION[name] for i in iterations_axis],
            "curve_gap_median": [_fmt(v) for v in np.median(chosen, axis=0)],
            "curve_gap_min": [_fmt(v) for v in chosen.min(axis=0)],
            "curve_gap_max": [_fmt(v) for v in chosen.max(axis=0)],
            "test_final_gap_median_all_settings": [
                _fmt(float(np.median(test_gap[i, :, -1]))) for i in range(len(grid))
            ],
            "wall_s": {
                "compile": round(compile_s, 2),
                "validation_runs": round(val_s, 2),
                "test_runs": round(test_s, 2),
                "runs_per_call": len(grid) * R,
                "test_ms_per_iteration_per_run": round(
                    1e3 * test_s / (iters[name] * len(grid) * R), 4
                ),
            },
        }
    c = report["contenders"]
    ges, ves, sgd = (
        [np.inf if v is None else v for v in c[k]["final_gap_per_seed"]]
        for k in ("guided_es", "vanilla_es", "sgd")
    )
    report["comparison"] = {
        "guided_below_vanilla_seeds": int(sum(g < v for g, v in zip(ges, ves, strict=True))),
        "guided_below_sgd_seeds": int(sum(g < s for g, s in zip(ges, sgd, strict=True))),
        "num_seeds": R,
        "note": "seeds pair only the run's own randomness; the instance is the same for all",
        "published": (
            "the paper reports Guided ES improving over both vanilla ES and SGD on the "
            "surrogate gradient on this problem (its Figure 1 and demo notebook: f - f* over "
            "10,000 iterations)"
        ),
    }
    return report


def plot_q6(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = report
    colors = {"sgd": "#d95f02", "vanilla_es": "#1b9e77", "guided_es": "#7570b3"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    T = q["budget"]["guided_es_iterations"]
    for name, row in q["contenders"].items():
        label = f"{row['label']} ({'lr' if name == 'sgd' else 'beta'} {row['chosen']})"
        for ax, xs in ((axes[0], row["curve_iterations"]), (axes[1], row["curve_oracle_calls"])):
            keep = [i for i, x in enumerate(xs) if ax is axes[1] or x <= T]
            x = np.asarray(xs)[keep]
            med, lo, hi = (
                np.asarray(row[k], dtype=float)[keep]  # None (diverged) -> NaN, not drawn
                for k in ("curve_gap_median", "curve_gap_min", "curve_gap_max")
            )
            ax.plot(x, med, color=colors[name], label=label)
            ax.fill_between(x, lo, hi, color=colors[name], alpha=0.2)
    p = q["problem"]
    for ax, xlabel in ((axes[0], "iteration"), (axes[1], "oracle calls (f values + gradients)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("f(x) - f*  (test instance)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(f"per iteration, as the paper plots it (n={p['n']}, m={p['m']})")
    axes[1].set_title("at equal evaluations")
    fig.suptitle(
        f"Q6: Guided ES on biased-gradient least squares; median and range of "
        f"{len(q['seeds'])} seeds; bias {p['bias']}, noise {p['noise']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# The questions, in the order they run. Q6 lives here; every other question is a module
# ``benchmarks/study_<q>.py`` with ``add_arguments(parser)``, ``run(args) -> dict`` (its JSON
# section) and ``plot(report, path)``; its flags are prefixed ``--<q>-``.
QUESTIONS = ("q1", "q2", "q3", "q3d", "q4", "q5", "q6")


def _question(q: str) -> Any:
    """The module of question ``q`` (imported here, not at the top: each imports this one's
    helpers), or ``None`` for Q6 and for a question whose module is not written yet."""
    import importlib

    if q == "q6":
        return None
    try:
        return importlib.import_module(f"study_{q}")
    except ModuleNotFoundError as err:
        if err.name != f"study_{q}":
            raise
        return None


def available_questions() -> list[str]:
    return [q for q in QUESTIONS if q == "q6" or _question(q) is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny problem, for the tests")
    available = available_questions()
    parser.add_argument("--questions", nargs="+", default=available, choices=available)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Q6")
    parser.add_argument("--iterations", type=int, default=None, help="Q6: Guided ES iterations T")
    parser.add_argument("--bias", type=float, default=1.0, help="Q6: bias norm, units of |g|")
    parser.add_argument("--noise", type=float, default=0.5, help="Q6: noise norm, units of |g|")
    parser.add_argument("--out", default=None, help="one JSON path for every question asked")
    parser.add_argument("--png", default=None, help="Q6 plot path")
    for q in available:
        if q != "q6":
            _question(q).add_arguments(parser)
            parser.add_argument(f"--png-{q}", default=None, help=f"{q.upper()} plot path")
    args = parser.parse_args(argv)
    today = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "study",
        "issue": 15,
        "command": "python benchmarks/study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": today.isoformat(timespec="seconds"),
        "quick": args.quick,
    }
    questions = [q for q in QUESTIONS if q in args.questions]
    pngs = {q: getattr(args, f"png_{q}", None) for q in questions}
    pngs["q6"] = args.png
    for q in questions:
        t_q = time.perf_counter()
        q_load = [round(v, 2) for v in os.getloadavg()]
        module = _question(q)
        report[q] = run_q6(args) if module is None else module.run(args)
        report[q]["loadavg_start"] = q_load
        report[q]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        report[q]["wall_s"] = round(time.perf_counter() - t_q, 1)
        png = pngs[q] or (None if args.quick else ROOT / f"benchmarks/out/study_{q}.png")
        if png is not None:
            (plot_q6 if module is None else module.plot)(report[q], Path(png))
            report[q]["png"] = os.path.relpath(Path(png).resolve(), ROOT)
    report["wall_s_total"] = round(time.perf_counter() - t0, 1)
    report["environment"] = {
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "evosax": _version("evosax"),
    }
    text = json.dumps(report, indent=1)
    if args.out is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    elif not args.quick:  # one file per question, each with the run's command and environment
        for q in questions:
            one = {k: v for k, v in report.items() if k not in questions or k == q}
            path = ROOT / f"benchmarks/results/study-{q}-{today:%Y-%m-%d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(one, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
