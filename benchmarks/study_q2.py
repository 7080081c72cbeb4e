"""Q2 of ``benchmarks/ANSWER.md``: where evolution wins and loses in RL, against PPO.

Run through ``benchmarks/study.py --questions q2`` (``--q2-envs`` picks environments); this
module holds the question's protocol, the ES side, the choosing and the plot, and
``benchmarks/study_q2_ppo.py`` the PPO side and the per-run clock.
``python benchmarks/study_q2.py --plot-from A.json B.json --png P`` draws one figure from
several runs; ``benchmarks/study_q2_flops.py`` counts each method's network FLOPs per
environment step, so every figure can also be read at equal FLOPs (third row of the plot).

* Environments (gymnax): **CartPole-v1** (threshold: a mean evaluation return of 500),
  **MountainCarContinuous-v0** (threshold 90, the classic "solved" level) and
  **Breakout-MinAtar** (threshold 10: a third of PPO's published 28 after 10M steps, above
  OpenAI-ES's published 4 and below a tuned SNES's 15; fixed after an 8-CPU-second pilot whose
  returns were 1-6, before the full run). Breakout's budget is **far below the published
  10M steps**: 60 CPU seconds per run (the pilot measured about 74k, 61k and 16k steps per
  CPU second for PPO, OpenAI-ES and SNES); the full run simulated 3.7M PPO steps, 4.0-6.5M
  OpenAI-ES steps and 2.9-3.6M SNES steps per run. Its figures are early-training figures,
  not the published asymptotes: PPO, published at 28 only after 10M steps, is judged before
  its time.
* The gradient baseline is **PPO from rejax** (``rejax.get_algo("ppo")``), not written here,
  with rejax's own published configuration for each environment (its repository's
  ``configs/gymnax/cartpole.yaml`` and ``continuous_mountaincar.yaml``; for Breakout, which has
  no file there, the PPO entry of its ``benchmark/breakout_1m.yaml``; copied as numbers into
  ``study_q2_ppo.PPO_CONFIGS``). rejax 0.1.3 reads gymnax's older step signature (a 5-tuple
  with one ``done``); ``FiveTuple`` adapts gymnax >= 1.0's ``(terminated, truncated)`` to it.
  On Breakout a second PPO contender, ``"ppo_blines"``, runs gymnax-blines' own published
  configuration (the one behind gymnax's 28; ``study_q2_ppo.PPO_BLINES_CONFIGS``), with its own
  256-256 relu actor and critic, through the same rejax PPO, and is tuned the same way.
* Contenders and their tuning, the same number of configurations (3) each: PPO's learning rate
  (rejax's value x 1/3, 1, 3); OpenAI-ES (``"open_es"``, population 256, std 0.1, learning
  rate 0.01 / 0.03 / 0.1); on MountainCar also the elitist GA (``"ga"``, population 256,
  mutation std 0.03 / 0.1 / 0.3); on Breakout also SNES (``"snes"``, the library's ``SNES``,
  population 256, initial std 0.03 / 0.1 / 0.3: its mean moves by std times the weighted sum
  of the unit draws with a step of 1.0 that is part of the algorithm, so the std is its step
  size). Every method trains the **same policy network**: rejax's default actor, an MLP with
  two hidden layers of 64 (tanh on CartPole and Breakout, relu on MountainCar, as rejax's
  configurations choose; on Breakout on the flattened 10x10x4 frame, 30,019 weights); the ES
  evolve ``policies.MLPPolicy`` of that shape (PPO also trains a critic of the same size).
  The ES normalise observations (the library's ``RLTask`` default), PPO does not (rejax's
  configurations leave it off).
* Choosing: each configuration runs on two **tuning seeds** (100, 101); the one with the
  highest median final evaluation return is chosen (ties: the earlier median time to the
  threshold) and run again on five fresh **report seeds** (0-4); only those are reported. RL
  has no held-out split; fresh seeds play its part. ``--q2-chosen-from PATH`` skips the tuning
  and runs each method's setting chosen in an earlier run (recorded as ``chosen_from``), for a
  longer budget whose tuning would not fit. ``--q2-grid V ...`` replaces the grid (recorded as
  ``grid_from``); with one value it runs only the report seeds, to check a grid's edge.
  ``--q2-population P`` runs every ES at population P instead of 256 (recorded per method),
  with its chunk of generations scaled by 256 / P so evaluations stay the same number of
  member-episodes apart. ``--q2-es-network blines`` has the ES evolve the ``ppo_blines``
  contender's actor instead (256-256 relu on Breakout, 169,219 weights; recorded per method as
  ``policy``, and its FLOPs counted for that network).
* Equal compute, measured as **CPU seconds per run**: every method gets the same budget of
  process CPU time per run (``--q2-budget``, per environment), which is robust to other jobs on
  this shared machine in a way wall time is not; wall seconds are recorded next to it. The
  runs of one method run batched (``Evolution.sweep`` for the ES, ``jit(vmap(...))`` of
  rejax's train for PPO, 5 report seeds each), and a run's share is the batch's time divided by
  its size. Compilation is excluded (and recorded). Training is run in chunks; after each
  chunk the solution (the ES mean / the GA's best member / PPO's actor) is evaluated on 16
  fresh episodes with deterministic actions (argmax of the logits, or the action mean clipped
  to the box for PPO; the library's tanh squashing for the ES). PPO's evaluation runs apart
  and is not counted in its time; the ES's (inside the library's chunk) is, at under 1% of
  its work.
* Steps are environment steps actually simulated for training: PPO's ``global_step``
  (``num_envs x num_steps`` per iteration), the ES's observation count (every member's episode
  up to its end; ended episodes are not simulated further). Evaluation episodes are not
  counted for either.
* Reported per method and environment: the final evaluation return (median over report seeds
  with a bootstrap 95% interval), how many seeds reached the threshold, and the median steps,
  CPU seconds and wall seconds to the first evaluation at or above it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from study import _fmt, bootstrap_median, generations_at_population
from study_q2_flops import annotate
from study_q2_ppo import (
    EVAL_EPISODES,
    EVAL_SEED,
    HIDDEN,
    PPO_SOURCES,
    QUICK,
    Clock,
    curve_point,
    hidden_of,
    ppo_config,
    run_ppo,
)

METHODS = ("ppo", "ppo_blines", "open_es", "ga", "snes")
LABELS = {
    "ppo": "PPO (rejax)",
    "ppo_blines": "PPO (rejax), gymnax-blines' config",
    "open_es": "OpenAI-ES",
    "ga": "elitist GA",
    "snes": "SNES",
}
ENVS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "threshold": 500.0,
        "methods": ("ppo", "open_es"),
        "budget_cpu_s": 10.0,
        "ppo_chunk_steps": 5_000,
        "es_chunk_generations": 2,
        "published": "OpenAI-ES first reaches 500 after about 42M steps, PPO after about 96k "
        "(as issue 15 cites them)",
    },
    "MountainCarContinuous-v0": {
        "threshold": 90.0,
        "methods": ("ppo", "open_es", "ga"),
        "budget_cpu_s": 20.0,
        "ppo_chunk_steps": 10_000,
        "es_chunk_generations": 2,
        "published": "a GA reaches 97 where PPO stays near 0 (gymnax-blines, as issue 15 cites it)",
    },
    "Breakout-MinAtar": {
        "threshold": 10.0,
        "methods": ("ppo", "ppo_blines", "open_es", "snes"),
        "budget_cpu_s": 60.0,
        "ppo_chunk_steps": 32 * 32 * 50,  # 50 of rejax's 32 x 32 iterations
        "ppo_blines_chunk_steps": 64 * 128 * 6,  # 6 of gymnax-blines' 64 x 128 iterations
        "es_chunk_generations": 10,
        "published": "PPO 28 after 10M steps (gymnax's table); a tuned SNES about 15 and "
        "OpenAI-ES about 4 (NeuroEvoBench), as issue 15 cites them",
    },
}
GRID_FACTORS = (1 / 3, 1.0, 3.0)
ES_GRIDS = {
    "open_es": ("learning_rate", [0.01, 0.03, 0.1]),
    "ga": ("std", [0.03, 0.1, 0.3]),
    # SNES's mean moves by std * (weighted sum of the unit draws) with its step of 1.0 (part
    # of the algorithm, evosax's and the library's default): the initial std is its step size.
    "snes": ("std", [0.03, 0.1, 0.3]),
}
TUNE_SEEDS, REPORT_SEEDS = [100, 101], [0, 1, 2, 3, 4]
POPULATION = 256  # every ES's population unless --q2-population says otherwise


class _Budget(Exception):
    """Raised by the ES callback once the per-run CPU budget is spent."""


# -- the library's ES and GA -----------------------------------------------------------------


# --q2-es-network: whose PPO actor the ES evolve (the PPO contender that trains it, and whose
# configuration that is)
ES_NETWORKS = {"rejax": ("ppo", "rejax's"), "blines": ("ppo_blines", "gymnax-blines'")}


def es_policy(env_name: str, network: str, quick: bool) -> dict[str, Any]:
    """The hidden layers and activation of the policy the ES evolve on ``env_name``: the actor
    of ``ppo_config`` for the PPO contender of ``ES_NETWORKS[network]`` (``"rejax"``, the default,
    is every contender's network; ``"blines"`` the ``ppo_blines`` contender's; its quick size
    with ``quick``)."""
    if network not in ES_NETWORKS:
        raise ValueError(f"--q2-es-network {network!r}: one of {sorted(ES_NETWORKS)}")
    contender, whose = ES_NETWORKS[network]
    if env_name not in PPO_SOURCES[contender]:
        raise ValueError(
            f"--q2-es-network {network}: {whose} configuration is recorded for "
            f"{sorted(PPO_SOURCES[contender])} only, not {env_name!r}"
        )
    config = ppo_config(env_name, quick, contender)
    return {"hidden": list(hidden_of(config)), "activation": config["agent_kwargs"]["activation"]}


def make_evolution(
    env_name: str,
    method: str,
    quick: bool,
    population: int = POPULATION,
    policy_spec: dict[str, Any] | None = None,
):
    """``method`` on ``env_name`` at ``population``, evolving ``policy_spec``'s policy (default
    ``es_policy(env_name, "rejax", quick)``, the one every contender trains)."""
    from flax import nnx

    from evojax_nets import Evolution
    from evojax_nets.policies import MLPPolicy
    from evojax_nets.tasks.rl import RLTask

    task = RLTask(env_name, eval_episodes=EVAL_EPISODES, eval_seed=EVAL_SEED)
    spec = policy_spec or es_policy(env_name, "rejax", quick)
    policy = MLPPolicy(
        task.obs_shape,
        task.num_outputs,
        tuple(spec["hidden"]),
        activation=getattr(jax.nn, spec["activation"]),
        rngs=nnx.Rngs(0),
    )
    kwargs = {"std": 0.1, "learning_rate": 0.03} if method == "open_es" else {"std": 0.1}
    return Evolution(policy, task, method, population, **kwargs)


def run_es(evo, method: str, values: list[float], seeds: list[int], spec: dict, quick: bool):
    """Every seed x value of ``method``'s tuned setting as one ``Evolution.sweep``, stopped
    once the per-run CPU budget is spent."""
    from evojax_nets import Callback

    setting = ES_GRIDS[method][0]
    budget = QUICK["budget_cpu_s"] if quick else spec["budget_cpu_s"]
    which = "test_return_best" if evo.strategy.population_based else "test_return_mean"
    size = len(seeds) * len(values)

    class Record(Callback):
        """Each chunk's evaluation, on the clock started before the timed sweep."""

        def __init__(self):
            self.clock, self.curve = Clock(size), []

        def on_chunk(self, owner, state, rows):
            self.clock.pause()
            steps = np.asarray(state.task_state.obs_stats.count)
            self.curve.append(curve_point(steps, rows[-1][which], self.clock))
            if self.clock.cpu >= budget:
                raise _Budget
            self.clock.resume()

    # Compile (and run one chunk) first: the timed sweep below reuses the compiled chunk, so
    # every timed chunk is run time only.
    chunk = spec["es_chunk_generations"]
    warm = evo.sweep(seeds, chunk, chunk_size=chunk, **{setting: values})
    compile_s = warm.histories[0].rows[-1]["compile_time"]
    record = Record()
    try:
        result = evo.sweep(
            seeds, 1_000_000, chunk_size=chunk, callbacks=[record], **{setting: values}
        )
        raise RuntimeError(f"{method} ran {len(result.histories[0].rows)} generations")
    except _Budget:
        pass
    return {"curve": record.curve, "compile_s": round(float(compile_s), 2)}


# -- choosing and summarising -----------------------------------------------------------------


def per_run(curve: list[dict], threshold: float) -> list[dict[str, Any]]:
    """Each run's final return and its steps / CPU / wall seconds to the threshold."""
    runs = []
    for i in range(len(curve[0]["eval_return"])):
        hit = next((p for p in curve if p["eval_return"][i] >= threshold), None)
        runs.append(
            {
                "final_return": curve[-1]["eval_return"][i],
                "best_return": max(p["eval_return"][i] for p in curve),
                "steps_to_threshold": hit["steps"][i] if hit else None,
                "cpu_s_to_threshold": hit["cpu_s"] if hit else None,
                "wall_s_to_threshold": hit["wall_s"] if hit else None,
                "final_steps": curve[-1]["steps"][i],
            }
        )
    return runs


def _median(values: list) -> float:
    return float(np.median([np.inf if v is None else v for v in values]))


def choose(runs_by_value: dict[float, list[dict]]) -> float:
    """The value with the highest median final return over the tuning seeds; ties: the
    earlier median CPU time to the threshold."""
    return max(
        runs_by_value,
        key=lambda v: (
            _median([r["final_return"] for r in runs_by_value[v]]),
            -_median([r["cpu_s_to_threshold"] for r in runs_by_value[v]]),
        ),
    )


def summarise(runs: list[dict], threshold: float) -> dict[str, Any]:
    finals = np.array([r["final_return"] for r in runs])
    reached = [r for r in runs if r["steps_to_threshold"] is not None]
    out = {
        "final_return_median": _fmt(float(np.median(finals))),
        "final_return_ci95": [_fmt(v) for v in bootstrap_median(finals)],
        "reached": f"{len(reached)}/{len(runs)}",
    }
    for key in ("steps_to_threshold", "cpu_s_to_threshold", "wall_s_to_threshold"):
        med = _median([r[key] for r in runs])  # a run that never reached it counts as inf
        out[f"{key}_median"] = None if not np.isfinite(med) else _fmt(med)
    return out


def run_method(
    env_name: str,
    method: str,
    spec: dict,
    quick: bool,
    chosen: float | None = None,
    values: list[float] | None = None,
) -> dict[str, Any]:
    """One method on one environment: tuning on the tuning seeds, then the chosen setting on the
    report seeds. With ``chosen`` (a setting an earlier run chose) the tuning is skipped;
    ``values`` replace the method's grid (one value: nothing to choose, report seeds only)."""
    threshold = spec["threshold"]
    # --quick checks the pipeline, not the tuning: one configuration per method (every PPO
    # learning rate is its own compilation, ~30 s each here), no tuning phase.
    single = chosen is not None or (values is not None and len(values) == 1)
    tune = [] if quick or single else TUNE_SEEDS
    report = REPORT_SEEDS[:2] if quick else REPORT_SEEDS
    if method in PPO_SOURCES:
        base = PPO_SOURCES[method][env_name]["learning_rate"]
        grid = [float(f"{base * f:.3g}") for f in GRID_FACTORS]
        setting = "learning_rate"
    else:
        setting, grid = ES_GRIDS[method]
    if chosen is not None:
        grid = [chosen]
    elif values is not None:
        grid = list(values)
    elif quick:
        grid = grid[1:2]
    runs_by_value: dict[float, list[dict]] = {v: [] for v in grid}
    compile_s: list[float] = []
    if tune and method in PPO_SOURCES:
        tuning = {v: run_ppo(env_name, v, tune, spec, quick, method) for v in grid}
        runs_by_value = {v: per_run(t["curve"], threshold) for v, t in tuning.items()}
        compile_s = [t["compile_s"] for t in tuning.values()]
    elif tune:
        evo = make_evolution(env_name, method, quick, spec["es_population"], spec["es_policy"])
        tuned = run_es(evo, method, grid, tune, spec, quick)
        # The sweep's order is seed-major: configuration c is (tune[c // G], grid[c % G]).
        runs = per_run(tuned["curve"], threshold)
        runs_by_value = {v: runs[i :: len(grid)] for i, v in enumerate(grid)}
        compile_s = [tuned["compile_s"]]
    chosen = choose(runs_by_value) if tune else grid[0]
    if tune:
        medians = {
            v: _median([r["final_return"] for r in runs]) for v, runs in runs_by_value.items()
        }
        print(
            f"[q2] {env_name} {method}: tuning medians {medians}, chosen {chosen}; report runs",
            file=sys.stderr,
            flush=True,
        )
    if method in PPO_SOURCES:
        final = run_ppo(env_name, chosen, report, spec, quick, method)
    else:
        evo = make_evolution(env_name, method, quick, spec["es_population"], spec["es_policy"])
        final = run_es(evo, method, [chosen], report, spec, quick)
    runs = per_run(final["curve"], threshold)
    return {
        "label": LABELS[method],
        "setting": setting,
        "grid": grid,
        "tuning_median_final_return": [
            _fmt(_median([r["final_return"] for r in runs_by_value[v]])) if tune else None
            for v in grid
        ],
        "chosen": chosen,
        "tuning_seeds": tune,
        "report_seeds": report,
        "runs": runs,
        **summarise(runs, threshold),
        "curve": final["curve"],
        "compile_s": {"tuning": compile_s, "report": final["compile_s"]},
        **(
            {
                "eval_cpu_s_not_counted": final["eval_cpu_s"],
                "ppo_config": ppo_config(env_name, quick, method),
            }
            if method in PPO_SOURCES
            else {"population": spec["es_population"], "policy": spec["es_policy"]}
        ),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q2-envs", nargs="+", default=None, choices=list(ENVS))
    parser.add_argument("--q2-methods", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument(
        "--q2-budget", type=float, default=None, help="Q2: CPU seconds per run, every env"
    )
    parser.add_argument(
        "--q2-population",
        type=int,
        default=None,
        help=f"Q2: every ES's population (default {POPULATION}, --quick {QUICK['population']}); "
        "its chunk of generations is scaled to keep the member-episodes between evaluations",
    )
    parser.add_argument(
        "--q2-es-network",
        default="rejax",
        choices=sorted(ES_NETWORKS),
        help="Q2: the ES evolve the actor of rejax's configuration (default; the network every "
        "contender trains) or of gymnax-blines' (the ppo_blines contender's, Breakout only)",
    )
    parser.add_argument(
        "--q2-grid",
        type=float,
        nargs="+",
        default=None,
        help="Q2: these values of each method's tuned setting in place of its grid (one value: "
        "no tuning, the report seeds only; for checking a grid's edge)",
    )
    parser.add_argument(
        "--q2-chosen-from",
        nargs="+",
        default=None,
        help="Q2: earlier JSONs (merged); each method runs the setting chosen there, untuned",
    )


def _chosen(earlier: dict | None, env_name: str, method: str) -> float | None:
    """The setting ``method`` chose on ``env_name`` in an earlier run, if one is given."""
    if earlier is None:
        return None
    chosen = earlier.get(env_name, {}).get("methods", {}).get(method, {}).get("chosen")
    if chosen is None:
        have = {e: sorted(r["methods"]) for e, r in earlier.items()}
        raise ValueError(f"--q2-chosen-from has no {method} on {env_name}; it has {have}")
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    envs = args.q2_envs or (QUICK["envs"] if quick else list(ENVS))
    out: dict[str, Any] = {"design": __doc__.split("\n\n", 1)[1].strip(), "envs": {}}
    values = args.q2_grid
    if values is not None and (args.q2_chosen_from or min(values) <= 0):
        raise ValueError(
            f"--q2-grid {values}: positive values, and not with --q2-chosen-from (which fixes "
            "each method's setting already)"
        )
    default = QUICK["population"] if quick else POPULATION  # the chunks are set for it
    population = args.q2_population or default
    earlier = merge(args.q2_chosen_from)["envs"] if args.q2_chosen_from else None
    methods_of = {
        e: [m for m in ENVS[e]["methods"] if args.q2_methods is None or m in args.q2_methods]
        for e in envs
    }
    methods_of = {e: ms for e, ms in methods_of.items() if ms}  # an env none of them runs on
    if not methods_of:
        runs_on = {e: list(ENVS[e]["methods"]) for e in envs}
        raise ValueError(f"--q2-methods {args.q2_methods} run on none of {runs_on}")
    policies = {}
    for env_name, methods in methods_of.items():  # before anything runs
        policies[env_name] = es_policy(env_name, args.q2_es_network, quick)
        for method in methods:
            _chosen(earlier, env_name, method)
    for env_name in methods_of:
        spec = dict(ENVS[env_name], es_population=population, es_policy=policies[env_name])
        # the same member-episodes between two evaluations at every population (an odd or
        # tiny population is refused here, before the first environment runs)
        spec["es_chunk_generations"] = generations_at_population(
            spec["es_chunk_generations"], population, default, "--q2-population"
        )
        if args.q2_budget is not None:
            spec["budget_cpu_s"] = args.q2_budget
        methods = methods_of[env_name]
        row: dict[str, Any] = {
            "threshold": spec["threshold"],
            "budget_cpu_s_per_run": QUICK["budget_cpu_s"] if quick else spec["budget_cpu_s"],
            "published": spec["published"],
            "ppo_config": ppo_config(env_name, quick),
            "methods": {},
        }
        for method in methods:
            load0 = [round(v, 2) for v in os.getloadavg()]
            chosen = _chosen(earlier, env_name, method)
            m = row["methods"][method] = run_method(env_name, method, spec, quick, chosen, values)
            if chosen is not None:
                m["chosen_from"] = args.q2_chosen_from  # no tuning in this run
            if values is not None:
                m["grid_from"] = "--q2-grid"  # not the method's own grid
            m["loadavg"] = [load0, [round(v, 2) for v in os.getloadavg()]]
            print(
                f"[q2] {env_name} {method}: chosen {m['setting']} {m['chosen']}, final return "
                f"{m['final_return_median']} {m['final_return_ci95']}, reached {m['reached']}, "
                f"load {load0[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )
        out["envs"][env_name] = row
    return annotate(out, QUICK["hidden"] if quick else HIDDEN)


def plot(q: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "ppo": "#d95f02",
        "ppo_blines": "#a6761d",
        "open_es": "#1b9e77",
        "ga": "#7570b3",
        "snes": "#e7298a",
    }
    envs = q["envs"]
    rows = 3 if all("flops" in m for r in envs.values() for m in r["methods"].values()) else 2
    fig, axes = plt.subplots(rows, len(envs), figsize=(6.5 * len(envs), 4.5 * rows), squeeze=False)
    for j, (env_name, row) in enumerate(envs.items()):
        for name, m in row["methods"].items():
            curve = m["curve"]
            returns = np.array([p["eval_return"] for p in curve])  # (chunks, seeds)
            med, lo, hi = np.median(returns, 1), returns.min(1), returns.max(1)
            label = f"{m['label']} ({m['setting']} {m['chosen']:g})"
            cpu = [p["cpu_s"] for p in curve]
            steps = np.median(np.array([p["steps"] for p in curve]), 1)
            xs = [cpu, steps]
            if rows == 3:  # counted network FLOPs (study_q2_flops), per step x steps
                xs.append(steps * m["flops"]["flops_per_env_step"])
            for ax, x in zip(axes[:, j], xs, strict=True):
                ax.plot(x, med, color=colors[name], label=label)
                ax.fill_between(x, lo, hi, color=colors[name], alpha=0.2)
        xlabels = ["CPU seconds per run", "environment steps", "counted network FLOPs"]
        for ax, xlabel in zip(axes[:, j], xlabels, strict=False):
            ax.axhline(row["threshold"], color="grey", ls="--", lw=1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("evaluation return (16 episodes)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in axes[1:, j]:
            ax.set_xscale("log")
        n = len(next(iter(row["methods"].values()))["runs"])
        axes[0, j].set_title(f"{env_name}: median and range of {n} seeds")
    fig.suptitle("Q2: evolution against PPO (rejax) at equal CPU time per run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[str | Path]) -> dict[str, Any]:
    """One Q2 section from several study JSONs (each a whole report with a ``"q2"`` key), the
    environments in the order the files give them. Where two files hold the same environment
    their methods are joined (a later file's method replaces an earlier one's), which needs the
    same threshold and CPU budget per run in both: runs at other budgets are refused."""
    import json

    merged: dict[str, Any] = {"envs": {}, "sources": []}
    for path in paths:
        report = json.loads(Path(path).read_text())
        for env_name, row in report["q2"]["envs"].items():
            have = merged["envs"].get(env_name)
            if have is None:
                merged["envs"][env_name] = dict(row, methods=dict(row["methods"]))
                continue
            for key in ("threshold", "budget_cpu_s_per_run"):
                if have.get(key) != row.get(key):
                    raise ValueError(
                        f"{path}: {env_name}'s {key} is {row.get(key)}, {have.get(key)} in "
                        "the files before it; merge only runs of one protocol and budget"
                    )
            have["methods"].update(row["methods"])
        merged["sources"].append(str(path))
    return merged


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/study_q2.py --plot-from A.json B.json --png out.png``: the Q2 figure
    of several runs (CartPole and MountainCar from one, Breakout from another)."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--plot-from", nargs="+", required=True, help="study JSONs with q2")
    parser.add_argument("--png", required=True)
    args = parser.parse_args(argv)
    merged = annotate(merge(args.plot_from), HIDDEN)  # runs recorded before FLOPs were
    plot(merged, Path(args.png))
    print(f"[q2] {', '.join(merged['envs'])} -> {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
