"""Neuroevolution of control policies on gymnax: learning curves, time to solve, rollout speed.

Sections (``--sections``, default all), one JSON object printed at the end (and written to
``--out``):

1. **throughput**: environment steps per second of our rollout against evosax's own
   ``GymnaxProblem`` (``evosax.problems.rl.gymnax``) on the same linen policy (evosax's MLP),
   population, episode length and observation normalisation, in the same process. Steps are
   counted as ``population x episodes x episode_length`` (the fixed-horizon work both do);
   ours is measured as a full-length ``lax.scan`` (the same work as ``GymnaxProblem``) and with
   early exit (the default: the loop stops once every episode has ended), whose "alive"
   steps (those inside episodes) are reported too.
2. **solve**: CartPole-v1, population 256: seconds from launching a fresh Python process
   (start-up, imports and compilation included) until the search's solution reaches a mean
   return of 500 on 16 fresh evaluation episodes; ``--seeds`` processes per strategy, median.
3. **curves**: CartPole-v1, Acrobot-v1 with OpenAI-ES, PGPE, SNES and the elitist GA: the
   solution's evaluation return (16 fresh episodes) and the population's mean return against
   generations and wall time.
4. **breakout**: MinAtar Breakout with the same four strategies: the return reached in
   ``--breakout-budget`` seconds of wall time per seed (compilation included).

The solution is the search distribution's mean for the ES (what ``Evolution.solution``
returns) and the best member so far for the GA. The CPU is shared with other jobs: load
averages are recorded with every measurement.

Usage::

    python benchmarks/rl.py                                  # everything (~50 min on 2 cores)
    python benchmarks/rl.py --sections throughput solve      # the two done criteria
    python benchmarks/rl.py --sections breakout --breakout-budget 600 --seeds 3 \\
        --breakout-strategies open_es
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from evojax_nets import Evolution  # noqa: E402
from evojax_nets.policies import CNNPolicy, MLPPolicy  # noqa: E402
from evojax_nets.tasks.rl import RLTask  # noqa: E402

STRATEGIES: dict[str, dict[str, Any]] = {
    "open_es": {"std": 0.1, "learning_rate": 0.05},
    "pgpe": {"std": 0.1, "learning_rate": 0.05},
    "snes": {"std": 0.1},
    "ga": {"std": 0.1},
}

ENVS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"hidden": (16,), "population": 256, "generations": 60},
    "Acrobot-v1": {"hidden": (16,), "population": 256, "generations": 40},
    "Breakout-MinAtar": {"cnn": True, "population": 256, "generations": 100_000},
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_policy(env: str, task: RLTask, seed: int) -> nnx.Module:
    spec = ENVS[env]
    if spec.get("cnn"):
        return CNNPolicy(task.obs_shape, task.num_outputs, rngs=nnx.Rngs(seed))
    return MLPPolicy(task.obs_shape, task.num_outputs, spec["hidden"], rngs=nnx.Rngs(seed))


def train(
    env: str,
    strategy: str,
    seed: int,
    *,
    generations: int | None = None,
    budget_s: float | None = None,
    target: float | None = None,
    chunk_size: int = 2,
) -> dict[str, Any]:
    """One run; stops at ``generations``, after ``budget_s`` seconds, or once the solution's
    evaluation return reaches ``target``. Wall times include construction and compilation."""
    spec = ENVS[env]
    t0 = time.perf_counter()
    load_start = load()
    task = RLTask(env, eval_episodes=16)
    evo = Evolution(
        make_policy(env, task, seed), task, strategy, spec["population"], **STRATEGIES[strategy]
    )
    state = evo.init(jax.random.key(seed))
    which = "best" if evo.strategy.population_based else "mean"
    curve, reached_at, gens = [], None, generations or spec["generations"]
    while int(state.generation) < gens:
        state, history = evo.run(state, min(chunk_size, gens - int(state.generation)))
        row = history.last
        point = {
            "generation": int(row["generation"]),
            "wall_s": round(time.perf_counter() - t0, 3),
            "population_mean_return": round(float(row["mean_fitness"]), 2),
            "population_best_return": round(float(row["best_fitness"]), 2),
            "eval_return_mean_policy": round(row["test_return_mean"], 2),
            "eval_return_best_member": round(row["test_return_best"], 2),
            "eval_return_solution": round(row[f"test_return_{which}"], 2),
        }
        curve.append(point)
        if target is not None and point["eval_return_solution"] >= target:
            reached_at = point
            break
        if budget_s is not None and point["wall_s"] >= budget_s:
            break
    best_eval = max(p["eval_return_solution"] for p in curve)
    return {
        "env": env,
        "strategy": strategy,
        "seed": seed,
        "population": spec["population"],
        "num_params": evo.network.num_params,
        "hyperparameters": STRATEGIES[strategy],
        "solution": f"{which} ({'best member so far' if which == 'best' else 'search mean'})",
        "generations": int(state.generation),
        "wall_s": round(time.perf_counter() - t0, 2),
        "final_eval_return": curve[-1]["eval_return_solution"],
        "best_eval_return": best_eval,
        "reached_target": reached_at,
        "load_start": load_start,
        "load_end": load(),
        "curve": curve,
    }


# -- 1. throughput against evosax's GymnaxProblem ---------------------------------------------


def throughput(
    env: str, population: int, episode_length: int, hidden: tuple[int, ...], repeats: int = 11
) -> dict[str, Any]:
    import flax.linen as nn
    from evosax.problems.networks import MLP, identity_output_fn
    from evosax.problems.rl.gymnax import GymnaxProblem

    from evojax_nets.nets import from_linen

    class Flat(nn.Module):
        """evosax's MLP on the flattened observation (MinAtar frames are 3-D)."""

        layer_sizes: tuple[int, ...]
        argmax: bool

        @nn.compact
        def __call__(self, obs, key=None):
            out = MLP(self.layer_sizes, output_fn=identity_output_fn)(obs.reshape(-1))
            return jnp.argmax(out) if self.argmax else out

    task = RLTask(env, episode_length=episode_length, early_exit=True)
    sizes = (*hidden, task.num_outputs)
    theirs = Flat(sizes, argmax=True)  # GymnaxProblem steps the env with the policy's output
    ours = Flat(sizes, argmax=False)  # our task takes the argmax of the logits itself
    key = jax.random.key(0)
    obs0 = jnp.zeros(task.obs_shape)
    variables = ours.init(key, obs0)
    network = from_linen(ours, variables)
    pop = network.theta0 + 0.1 * jax.random.normal(key, (population, network.num_params))
    problem = GymnaxProblem(env, theirs, episode_length=episode_length, num_rollouts=1)
    p_state = problem.init(key)
    solutions = jax.vmap(network.member)(pop)  # the same members, as linen variables trees

    contenders = {"evosax_gymnax_problem": lambda k: problem.eval(k, solutions, p_state)[0]}
    for name, early in (("ours_scan", False), ("ours_early_exit", True)):
        evo = Evolution(
            network,
            RLTask(env, episode_length=episode_length, early_exit=early),
            "open_es",
            population,
        )
        rollout = evo.task.extra["rollout"]
        fn = jax.jit(
            lambda k, pop, ts, rollout=rollout: jax.vmap(lambda th: rollout(k, th, ts, 1))(pop)
        )
        contenders[name] = functools.partial(fn, pop=pop, ts=evo.init(key).task_state)
    outputs = {name: jax.block_until_ready(fn(key)) for name, fn in contenders.items()}  # compile
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(repeats):  # interleaved, so that a change of load hits every contender
        for name, fn in contenders.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(100 + i)))
            times[name].append(time.perf_counter() - t)
    results = {}
    for name, ts in times.items():
        out = outputs[name]
        results[name] = {"eval_s_min": min(ts), "eval_s_median": statistics.median(ts)}
        if name == "evosax_gymnax_problem":
            results[name]["mean_return"] = float(jnp.mean(out))
        else:
            results[name]["mean_return"] = float(jnp.mean(out.ret))
            results[name]["alive_steps"] = int(jnp.sum(out.length))
    work = population * episode_length
    for r in results.values():
        r["steps_per_s_median"] = round(work / r["eval_s_median"])
        r["steps_per_s_best"] = round(work / r["eval_s_min"])
        if "alive_steps" in r:
            r["alive_steps_per_s_median"] = round(r["alive_steps"] / r["eval_s_median"])
        r["eval_s_min"] = round(r["eval_s_min"], 4)
        r["eval_s_median"] = round(r["eval_s_median"], 4)
    base = results["evosax_gymnax_problem"]["eval_s_median"]
    return {
        "env": env,
        "policy": f"evosax MLP {sizes} (linen), argmax actions, observation normalisation on",
        "population": population,
        "episodes_per_member": 1,
        "episode_length": episode_length,
        "steps_counted": population * episode_length,
        "repeats": repeats,
        "load": load(),
        "results": results,
        "speedup_ours_scan_median": round(base / results["ours_scan"]["eval_s_median"], 2),
        "speedup_ours_early_exit_median": round(
            base / results["ours_early_exit"]["eval_s_median"], 2
        ),
        "done_criterion_ours_scan_at_least_as_fast": bool(
            results["ours_scan"]["eval_s_median"] <= base
        ),
    }


# -- 2. time to solve CartPole, from process launch ---------------------------------------------


def solve(strategies: list[str], seeds: int) -> dict[str, Any]:
    out = {}
    for strategy in strategies:
        runs = []
        for seed in range(seeds):
            cmd = [sys.executable, __file__, "--child", strategy, str(seed)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            child["process_wall_s"] = round(wall, 2)
            runs.append(child)
        solved = [r["process_wall_s"] if r["reached_target"] else float("inf") for r in runs]
        med = statistics.median(solved)
        out[strategy] = {
            "median_seconds_to_500": med if np.isfinite(med) else None,
            "seconds_to_500": solved,
            "cpu_seconds_to_500": [
                r["process_cpu_s"] if r["reached_target"] else None for r in runs
            ],
            "load_during": [r["load_end"] for r in runs],
            "generations_to_500": [
                r["reached_target"]["generation"] if r["reached_target"] else None for r in runs
            ],
            "done_criterion_under_20s": bool(med < 20.0),
            "runs": runs,
        }
    return out


def child(strategy: str, seed: int) -> None:
    """One CartPole run in a fresh process, stopping once solved (``--child``)."""
    result = train("CartPole-v1", strategy, seed, target=500.0, chunk_size=2)
    result["seconds_since_process_start"] = round(time.perf_counter() - T_PROCESS, 2)
    result["process_cpu_s"] = round(time.process_time(), 2)  # user + system, all threads
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["throughput", "solve", "curves", "breakout"],
        choices=["throughput", "solve", "curves", "breakout"],
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--breakout-budget", type=float, default=600.0)
    parser.add_argument("--breakout-strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--breakout-seeds", type=int, default=None)
    parser.add_argument("--curve-envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("STRATEGY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return

    report: dict[str, Any] = {
        "benchmark": "rl",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "device": str(jax.devices()[0])},
        "versions": {"jax": jax.__version__},
        "load_start": load(),
    }
    for package in ("evosax", "gymnax", "flax"):
        try:
            report["versions"][package] = version(package)
        except PackageNotFoundError:  # pragma: no cover - informative only
            report["versions"][package] = None

    def emit(name: str, value: Any) -> None:
        report[name] = value
        print(f"[{name}] done at load {load()}", file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)

    if "throughput" in args.sections:
        emit(
            "throughput",
            [
                throughput("CartPole-v1", 256, 500, (16,)),
                throughput("Breakout-MinAtar", 256, 1000, (32,), repeats=3),
            ],
        )
    if "solve" in args.sections:
        emit("solve_cartpole", solve(args.strategies, args.seeds))
    if "curves" in args.sections:
        curves = {}
        for env in args.curve_envs:
            curves[env] = [
                train(env, s, seed, chunk_size=2 if env == "CartPole-v1" else 4)
                for s in args.strategies
                for seed in range(args.seeds)
            ]
        emit("curves", curves)
    if "breakout" in args.sections:
        seeds = args.breakout_seeds or args.seeds
        runs = [
            train("Breakout-MinAtar", s, seed, budget_s=args.breakout_budget, chunk_size=5)
            for s in args.breakout_strategies
            for seed in range(seeds)
        ]
        summary = {}
        for s in args.breakout_strategies:
            finals = [r["final_eval_return"] for r in runs if r["strategy"] == s]
            summary[s] = {
                "budget_s": args.breakout_budget,
                "median_final_eval_return": statistics.median(finals),
                "final_eval_returns": finals,
                "generations": [r["generations"] for r in runs if r["strategy"] == s],
            }
        emit("breakout", {"summary": summary, "runs": runs})
    report["load_end"] = load()
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
