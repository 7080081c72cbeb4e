"""Sweeps in one compiled program against the same configurations run one after another.

Two workloads (``--workloads``, default both), one JSON object printed at the end (and written
to ``--out``):

* ``cartpole``: CartPole-v1, an MLP policy (4-16-2, tanh), OpenAI-ES, population 64,
  8 seeds x std in [0.05, 0.1] (16 configurations), 30 generations;
* ``digits``: ``evojax_nets.models.MLP(64, (64, 64), 10)``, OpenAI-ES, population 256,
  minibatch 256, 4 seeds x learning rate in [0.01, 0.03] (8 configurations), 100 generations.

Both contenders run every generation of a configuration in one compiled chunk:

* **sweep**: the program ``Evolution.sweep`` runs (``evo.program.batched()``: ``vmap`` over
  keys, params and states) in one :class:`~evojax_nets.runner.Runner`, compiled once and
  reused by every repeat. ``Evolution.sweep`` itself is called once too, for its
  ``compile_count``, and its result is checked against the timed runner's.
* **sequential**: the strongest honest way to run the configurations one after another: one
  ``Evolution``, whose compiled chunk is reused for every configuration
  (``evo.run(evo.init(key, params_i), n, params=params_i, chunk_size=n)``); nothing
  recompiles per configuration.

Compilation is excluded from both timed figures and reported separately. Each repeat times
both (``time.perf_counter`` around work that ends in ``jax.block_until_ready``), the order
reversed every other repeat; the report gives medians. The process's CPU time
(``time.process_time``, all threads) is reported too: on a shared machine it is steadier than
wall time. Correctness: every configuration's per-generation ``best_fitness`` and
``mean_fitness`` and its mean genome (``evo.mean_theta``) after the first and after the last
generation, sweep against the same configuration run alone (the state after one generation
comes from the same compiled chunks run for one active step).

Usage::

    python benchmarks/sweep.py --out benchmarks/results/sweep-2026-12-01.json
    python benchmarks/sweep.py --quick                    # tiny versions, for the test suite
    python benchmarks/sweep.py --workloads digits --repeats 5
    python benchmarks/sweep.py --one-generation --workloads digits   # one generation only

``--one-generation`` times one generation of each workload (the configurations one after
another against the sweep, best of at least 5), for finding where a sweep's time goes (see
``benchmarks/RESULTS.md``, "Sweeps in one program").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets import Evolution
from evojax_nets.runner import Runner
from evojax_nets.sweep import grid, stack_trees, take

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("best_fitness", "mean_fitness")

WORKLOADS: dict[str, dict[str, Any]] = {
    "cartpole": {
        "full": {
            "population": 64,
            "seeds": list(range(8)),
            "settings": {"std": [0.05, 0.1]},
            "generations": 30,
            "hidden": (16,),
            "learning_rate": 0.05,
            "episode_length": None,  # the environment's own limit (500)
            "eval_episodes": 16,
        },
        "quick": {
            "population": 8,
            "seeds": [0],
            "settings": {"std": [0.05, 0.1]},
            "generations": 3,
            "hidden": (4,),
            "learning_rate": 0.05,
            "episode_length": 20,
            "eval_episodes": 2,
        },
    },
    "digits": {
        "full": {
            "population": 256,
            "batch": 256,
            "seeds": list(range(4)),
            "settings": {"learning_rate": [0.01, 0.03]},
            "generations": 100,
            "hidden": (64, 64),
            "std": 0.05,
        },
        "quick": {
            "population": 8,
            "batch": 32,
            "seeds": [0],
            "settings": {"learning_rate": [0.01, 0.03]},
            "generations": 3,
            "hidden": (8,),
            "std": 0.05,
        },
    },
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build(name: str, spec: dict[str, Any]) -> tuple[Evolution, dict[str, Any]]:
    if name == "cartpole":
        from evojax_nets.policies import MLPPolicy
        from evojax_nets.tasks.rl import RLTask

        task = RLTask(
            "CartPole-v1",
            episode_length=spec["episode_length"],
            eval_episodes=spec["eval_episodes"],
        )
        policy = MLPPolicy(task.obs_shape, task.num_outputs, spec["hidden"], rngs=nnx.Rngs(0))
        lr = spec["learning_rate"]
        evo = Evolution(policy, task, "open_es", spec["population"], std=0.1, learning_rate=lr)
        info = {
            "env": "CartPole-v1",
            "episode_length": task.length,
            "early_exit": task.early_exit,
            "policy": f"MLPPolicy 4-{'-'.join(map(str, spec['hidden']))}-2 tanh",
        }
    elif name == "digits":
        from evojax_nets.models import MLP
        from evojax_nets.tasks import Supervised, load_digits

        task = Supervised.from_dataset(load_digits(), batch_size=spec["batch"])
        model = MLP(64, spec["hidden"], 10, rngs=nnx.Rngs(0))
        evo = Evolution(model, task, "open_es", spec["population"], std=spec["std"])
        info = {
            "batch": spec["batch"],
            "model": f"MLP 64-{'-'.join(map(str, spec['hidden']))}-10 tanh",
            "population_forward": evo.task.population_fitness is not None,
        }
    else:
        raise ValueError(f"unknown workload {name!r}; valid: {sorted(WORKLOADS)}")
    info.update(
        {
            "strategy": "open_es",
            "population": spec["population"],
            "num_params": evo.network.num_params,
            "default_std": evo.std,
            "default_learning_rate": float(evo.params.strategy.learning_rate),
        }
    )
    return evo, info


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of ``fn()`` (which must end in ``jax.block_until_ready``)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def _as_numbers(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x, np.float64)


def max_abs(a: Any, b: Any) -> float:
    """The largest abs difference between two pytrees of the same structure."""
    diffs = [
        float(np.max(np.abs(_as_numbers(x) - _as_numbers(y)))) if np.size(x) else 0.0
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(diffs, default=0.0)


def metric_diffs(sweep_rows: list[dict], seq_rows: list[dict]) -> list[float]:
    """Per generation, the largest abs difference of ``METRICS`` between two histories."""
    return [
        max(abs(float(r1[m]) - float(r2[m])) for m in METRICS)
        for r1, r2 in zip(sweep_rows, seq_rows, strict=True)
    ]


def run_workload(name: str, spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    load_start = load()
    t_build = time.perf_counter()
    evo, info = build(name, spec)
    gens = spec["generations"]
    configs = grid(spec["seeds"], spec["settings"])
    per_config = [evo.params_with(**{k: v for k, v in c.items() if k != "seed"}) for c in configs]
    keys = [jax.random.key(c["seed"]) for c in configs]
    stacked = stack_trees(per_config)
    stacked_keys = jnp.stack(keys)
    build_s = time.perf_counter() - t_build

    # -- the sweep program, compiled once -----------------------------------------------------
    program = evo.program.batched()
    runner = Runner(program, owner=evo, max_memory_bytes=evo.max_memory_bytes)
    init = jax.jit(program.init)

    def sweep(num_generations: int) -> tuple[Any, Any]:
        states = init(stacked_keys, stacked)
        states, history = runner.run(states, stacked, num_generations, chunk_size=gens)
        return jax.block_until_ready(states), history

    # Compile the chunk, then a warm-up run of ONE active generation through it (this also
    # compiles the jitted init and the end-of-chunk report): the state after the first
    # generation, from the same executable the full runs use.
    t0 = time.perf_counter()
    states0 = jax.block_until_ready(init(stacked_keys, stacked))
    _, sweep_compile_s = runner.compile(states0, stacked, gens)
    sweep_first_s, _, (sweep_gen1, _) = timed(lambda: sweep(1))
    sweep_setup_s = time.perf_counter() - t0

    # -- sequential: one Evolution, its compiled chunk reused for every configuration ---------
    per_config_s: list[list[float]] = []  # wall seconds of each configuration, each repeat

    def sequential(num_generations: int) -> list[tuple[Any, Any]]:
        out, times = [], []
        for key, params in zip(keys, per_config, strict=True):
            t = time.perf_counter()
            state = evo.init(key, params)
            state, history = evo.run(state, num_generations, params=params, chunk_size=gens)
            out.append((jax.block_until_ready(state), history))
            times.append(time.perf_counter() - t)
        per_config_s.append(times)
        return out

    t0 = time.perf_counter()
    state0 = jax.block_until_ready(evo.init(keys[0], per_config[0]))
    _, sequential_compile_s = evo.compile(state0, gens)
    sequential_first_s, _, seq_gen1_runs = timed(lambda: sequential(1))
    sequential_setup_s = time.perf_counter() - t0
    seq_gen1 = [state for state, _ in seq_gen1_runs]

    # -- the timed part: interleaved repeats, order reversed every other repeat; every repeat
    # must reproduce the first one exactly --------------------------------------------------
    sweep_wall, sweep_cpu, seq_wall, seq_cpu, loads = [], [], [], [], []
    sweep_run: Any = None
    seq_runs: Any = None
    for r in range(repeats):
        order = ("sweep", "sequential") if r % 2 == 0 else ("sequential", "sweep")
        for which in order:
            if which == "sweep":
                w, c, result = timed(lambda: sweep(gens))
                sweep_wall.append(w)
                sweep_cpu.append(c)
                sweep_run = sweep_run or result
                repeat_diff = max_abs(result[0], sweep_run[0])
            else:
                w, c, runs = timed(lambda: sequential(gens))
                seq_wall.append(w)
                seq_cpu.append(c)
                seq_runs = seq_runs or runs
                pairs = zip(runs, seq_runs, strict=True)
                repeat_diff = max(max_abs(x[0], y[0]) for x, y in pairs)
            if repeat_diff != 0.0:
                raise AssertionError(f"{which} repeat {r} differs from repeat 0 ({repeat_diff})")
        loads.append(load())
    timed_per_config = per_config_s[-repeats:]  # the timed repeats (not the warm-up)
    sweep_states, sweep_history = sweep_run
    sweep_histories = sweep_history.split(len(configs))

    # -- correctness: after the first generation and after the last --------------------------
    mean_gen1 = [
        max_abs(evo.mean_theta(take(sweep_gen1, i)), evo.mean_theta(s))
        for i, s in enumerate(seq_gen1)
    ]
    mean_final = [
        max_abs(evo.mean_theta(take(sweep_states, i)), evo.mean_theta(s))
        for i, (s, _) in enumerate(seq_runs)
    ]
    by_gen = [
        metric_diffs(h.rows, seq_h.rows)
        for h, (_, seq_h) in zip(sweep_histories, seq_runs, strict=True)
    ]
    metrics_gen1 = max(d[0] for d in by_gen)
    metrics_final = max(d[-1] for d in by_gen)
    metrics_by_generation = [max(d[g] for d in by_gen) for g in range(gens)]

    # -- the library's own Evolution.sweep, once: its compile count, and the same answer -----
    api_wall, _, api = timed(
        lambda: evo.sweep(spec["seeds"], gens, chunk_size=gens, **spec["settings"])
    )
    api_matches = api.configs == configs
    api_diff = max_abs(jax.device_get(api.states), jax.device_get(sweep_states))

    metric = getattr(evo.task, "metric", None)
    test_name = f"test_{metric}_mean" if metric else None  # the solution's held-out metric

    def finals(histories: list[Any], metric: str) -> list[float]:
        return [round(float(h.last_with(metric).get(metric, np.nan)), 6) for h in histories]

    seq_histories = [h for _, h in seq_runs]
    sweep_s, sequential_s = statistics.median(sweep_wall), statistics.median(seq_wall)
    sweep_cpu_s, sequential_cpu_s = statistics.median(sweep_cpu), statistics.median(seq_cpu)
    out: dict[str, Any] = {
        "workload": name,
        **info,
        "generations": gens,
        "seeds": spec["seeds"],
        "settings": spec["settings"],
        "configs": configs,
        "num_configs": len(configs),
        "compile_count": api.compile_count,
        "compile_count_timed_sweep_runner": runner.compile_count,
        "compile_count_sequential_runner": evo.runner.compile_count,
        "api_sweep_configs_match": bool(api_matches),
        "api_sweep_max_abs_diff_vs_timed_sweep": api_diff,
        "api_sweep_wall_s_with_compile": round(api_wall, 3),
        "max_abs_diff_vs_sequential_gen1": max(metrics_gen1, max(mean_gen1)),
        "max_abs_diff_vs_sequential_final": max(metrics_final, max(mean_final)),
        "diff_detail": {
            "metrics_gen1": metrics_gen1,
            "mean_theta_gen1": max(mean_gen1),
            "metrics_final": metrics_final,
            "mean_theta_final": max(mean_final),
            "mean_theta_final_per_config": mean_final,
            "metrics_max_over_configs_by_generation": metrics_by_generation,
            "first_generation_over_1e-5_per_config": [
                next((g + 1 for g, v in enumerate(d) if v > 1e-5), None) for d in by_gen
            ],
        },
        "final_fitness_sweep": finals(sweep_histories, "mean_fitness"),
        "final_fitness_sequential": finals(seq_histories, "mean_fitness"),
        "final_best_fitness_sweep": finals(sweep_histories, "best_fitness"),
        "final_best_fitness_sequential": finals(seq_histories, "best_fitness"),
        "final_fitness_metric": "mean_fitness of the last generation (population mean)",
        "sweep_s": round(sweep_s, 4),
        "sequential_s": round(sequential_s, 4),
        "ratio": round(sequential_s / sweep_s, 3),
        "sweep_cpu_s": round(sweep_cpu_s, 4),
        "sequential_cpu_s": round(sequential_cpu_s, 4),
        "cpu_ratio": round(sequential_cpu_s / sweep_cpu_s, 3),
        "sweep_s_all": [round(x, 4) for x in sweep_wall],
        "sequential_s_all": [round(x, 4) for x in seq_wall],
        "sweep_cpu_s_all": [round(x, 4) for x in sweep_cpu],
        "sequential_cpu_s_all": [round(x, 4) for x in seq_cpu],
        "sequential_per_config_s": [
            round(statistics.median(ts), 4) for ts in zip(*timed_per_config, strict=True)
        ],
        "sweep_compile_s": round(sweep_compile_s, 3),
        "sequential_compile_s": round(sequential_compile_s, 3),
        "sweep_first_run_s": round(sweep_first_s, 3),
        "sequential_first_run_s": round(sequential_first_s, 3),
        "sweep_setup_s": round(sweep_setup_s, 3),
        "sequential_setup_s": round(sequential_setup_s, 3),
        "build_s": round(build_s, 3),
        "repeats": repeats,
        "load_start": load_start,
        "load_after_each_repeat": loads,
        "load_end": load(),
    }
    if test_name and test_name in sweep_histories[0].last:
        out[f"final_{test_name}_sweep"] = finals(sweep_histories, test_name)
        out[f"final_{test_name}_sequential"] = finals(seq_histories, test_name)
    if name == "cartpole":
        # One episode per member and a reward of 1 per step: a generation's best return is its
        # longest episode, the number of time-loop iterations its early-exit while_loop runs.
        # Alone, configuration c runs L_c of them on P episodes; in the sweep every
        # configuration runs max_c L_c (one while_loop over all configurations' episodes).
        best = np.stack([h.column("best_fitness") for h in sweep_histories])  # (C, G)
        out["while_loop_iterations_sequential"] = int(best.sum())
        out["while_loop_iterations_sweep"] = int(best.max(axis=0).sum())
        out["while_loop_lockstep_work_factor"] = round(
            float(len(configs) * best.max(axis=0).sum() / best.sum()), 3
        )
        # Member-steps: the mean return is the mean episode length, so P * mean_fitness steps
        # of a generation are alive; alone a configuration computes P * L_c, the sweep
        # C * P * max_c L_c (the rest are masked steps of episodes that already ended).
        mean = np.stack([h.column("mean_fitness") for h in sweep_histories])
        pop = spec["population"]
        alive, alone = pop * float(mean.sum()), pop * float(best.sum())
        lockstep = len(configs) * pop * float(best.max(axis=0).sum())
        out["member_steps_alive"] = round(alive)
        out["member_steps_computed_sequential"] = int(alone)
        out["member_steps_computed_sweep"] = int(lockstep)
        out["sweep_share_after_own_longest_episode"] = round(1 - alone / lockstep, 3)
        out["sweep_share_of_ended_episodes"] = round(1 - alive / lockstep, 3)
    return out


# -- --one-generation: where a sweep's generation spends its time ---------------------------


def _one_generation(name: str, spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    evo, _ = build(name, spec)
    configs = grid(spec["seeds"], spec["settings"])
    per_config = [evo.params_with(**{k: v for k, v in c.items() if k != "seed"}) for c in configs]
    keys = [jax.random.key(c["seed"]) for c in configs]
    pairs = [(evo.init(k, p), p) for k, p in zip(keys, per_config, strict=True)]
    program = evo.program.batched()
    stacked = stack_trees(per_config)
    states = jax.jit(program.init)(jnp.stack(keys), stacked)
    one = jax.jit(lambda s, p: evo.program.step(s, p, None))
    many = jax.jit(lambda s, p: program.step(s, p, None))

    def sequential() -> Any:
        return jax.block_until_ready([one(s, p) for s, p in pairs])

    def sweep() -> Any:
        return jax.block_until_ready(many(states, stacked))

    seq_out, sweep_out = sequential(), sweep()
    diff = max(max_abs(take(sweep_out, i), o) for i, o in enumerate(seq_out))
    seq, swp = [], []
    for _ in range(repeats):
        seq.append(timed(sequential))
        swp.append(timed(sweep))
    seq_cpu, sweep_cpu = min(t[1] for t in seq), min(t[1] for t in swp)
    return {
        "sequential_cpu_ms": round(1e3 * seq_cpu, 1),
        "sweep_cpu_ms": round(1e3 * sweep_cpu, 1),
        "cpu_ratio": round(seq_cpu / sweep_cpu, 3),
        "sequential_wall_ms": round(1e3 * min(t[0] for t in seq), 1),
        "sweep_wall_ms": round(1e3 * min(t[0] for t in swp), 1),
        "max_abs_diff_sweep_vs_sequential": diff,
    }


def one_generation(names: list[str], repeats: int) -> dict[str, Any]:
    """CPU and wall time of ONE generation of each workload (best of ``repeats``): the
    configurations one after another against the sweep, with the library as it is."""
    out: dict[str, Any] = {"load_start": load()}
    for name in names:
        out[name] = _one_generation(name, WORKLOADS[name]["full"], repeats)
    out["load_end"] = load()
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):  # pragma: no cover - informative only
            return ""

    modified = git("status", "--porcelain", "--", "evojax_nets")
    return {
        "commit": git("rev-parse", "HEAD"),
        "library_files_modified_in_working_tree": [line[3:] for line in modified.splitlines()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="cartpole,digits")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny versions, for the tests")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--one-generation",
        action="store_true",
        help="only time one generation of each workload, configurations alone against the sweep",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    for n in names:
        if n not in WORKLOADS:
            parser.error(f"unknown workload {n!r}; valid: {', '.join(WORKLOADS)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    report: dict[str, Any] = {
        "benchmark": "sweep",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "device": str(jax.devices()[0]),
            "backend": jax.default_backend(),
            "platform": platform.platform(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "git": git_state(),
        "load_start": load(),
        "workloads": {},
    }
    for package in ("jaxlib", "evosax", "flax", "gymnax"):
        try:
            report["versions"][package] = version(package)
        except PackageNotFoundError:  # pragma: no cover - informative only
            report["versions"][package] = None
    t0 = time.perf_counter()
    if args.one_generation:
        report["one_generation"] = one_generation(names, max(repeats, 5))
        names = []
    for name in names:
        spec = WORKLOADS[name]["quick" if args.quick else "full"]
        result = run_workload(name, spec, repeats)
        report["workloads"][name] = result
        print(
            f"[{name}] ratio {result['ratio']} (cpu {result['cpu_ratio']}), compile_count "
            f"{result['compile_count']}, gen1 diff {result['max_abs_diff_vs_sequential_gen1']:.2e}"
            f", load {load()}",
            file=sys.stderr,
            flush=True,
        )
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    report["load_end"] = load()
    report["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
