"""Low-rank ES (``lowrank_es``) against inference, OpenAI-ES and the low-memory OpenAI-ES.

Three sections (``--sections``, default all), one JSON object printed at the end (and written
to ``--out``):

* ``fraction_of_inference``: MLP 784-1024-1024-10 (an ``nnx.Sequential`` a user would write),
  P = 256 members, B = 32 examples each. The time of one forward pass of the unperturbed
  network on the P x B examples, divided by the time of the low-rank population forward
  (rank 1; every member on its own B examples), and the same ratio for the full-rank
  population forward (``vmap`` of the forward over the materialised ``(P, D)`` members). Also
  the low-rank forward with all members on the same B examples (what ``Supervised`` does:
  the first layer's ``x W`` is then computed once). Best of ``--repeats`` timings each,
  interleaved, in one process.
* ``digits``: MLP 64-64-10 on digits, population 256, minibatch 256, 5 seeds, 400 generations:
  test accuracy of the mean (the held-out split, measured every 20 generations) and the first
  generation at which it reaches 0.95, for ``lowrank_es`` rank 1 and 4 against ``open_es``,
  all at the library's defaults (std 0.05, Adam 0.02).
* ``big``: seconds per generation and peak RSS, each in its own subprocess: MLP
  1024-4096-1536-10 (10.5M weights), P = 1024, minibatch 32, ``lowrank_es`` against
  ``low_memory_open_es`` (one generation each: the latter takes minutes here); and one
  generation of MLP 1024-8192-8192-4096-10 (109M weights), P = 256, minibatch 8,
  ``lowrank_es``. Timed: one call of the compiled generation (``program.step``, compiled
  ahead of time; compilation reported separately).

Usage::

    python benchmarks/lowrank.py --out benchmarks/results/lowrank-2026-12-02.json
    python benchmarks/lowrank.py --quick                 # tiny versions, for the test suite
    python benchmarks/lowrank.py --sections digits
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.lowrank import Batched, LowRankES, layout_of, lowrank_call
from evojax_nets.nets import from_nnx

ROOT = Path(__file__).resolve().parent.parent

SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "fraction": {"widths": (784, 1024, 1024, 10), "population": 256, "batch": 32},
        "digits": {
            "hidden": 64,
            "population": 256,
            "batch": 256,
            "seeds": 5,
            "generations": 400,
            "chunk": 20,
        },
        "big": [
            {
                "widths": (1024, 4096, 1536, 10),
                "population": 1024,
                "batch": 32,
                "strategies": ["lowrank_es", "low_memory_open_es"],
            },
            {
                "widths": (1024, 8192, 8192, 4096, 10),
                "population": 256,
                "batch": 8,
                "strategies": ["lowrank_es"],
            },
        ],
    },
    "quick": {
        "fraction": {"widths": (32, 64, 64, 10), "population": 16, "batch": 4},
        "digits": {
            "hidden": 16,
            "population": 16,
            "batch": 64,
            "seeds": 1,
            "generations": 2,
            "chunk": 2,
            "runs": ["lowrank_es_rank1", "open_es"],
        },
        "big": [
            {
                "widths": (16, 32, 10),
                "population": 16,
                "batch": 4,
                "strategies": ["lowrank_es"],
            }
        ],
    },
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def mlp(widths: tuple[int, ...], seed: int = 0, activation: Any = nnx.relu) -> nnx.Module:
    """The MLP a user would write: Linear layers with ``activation`` (ReLU) between them."""
    rngs = nnx.Rngs(seed)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nnx.Linear(a, b, rngs=rngs))
        if i < len(widths) - 2:
            layers.append(activation)
    return nnx.Sequential(*layers)


def best_time(fn: Any, *args: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def fraction_of_inference(spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    widths, p, b = spec["widths"], spec["population"], spec["batch"]
    net = from_nnx(mlp(widths))
    es = LowRankES(p, net.theta0, rank=1, layout=layout_of(net))
    state = es.init(jax.random.key(0), net.theta0, es.default_params)
    population, state = es.ask(jax.random.key(1), state, es.default_params)
    x = jax.random.normal(jax.random.key(2), (p, b, widths[0]))

    def forward(x: jax.Array, theta: jax.Array) -> jax.Array:
        return net.apply(theta, x)

    inference = jax.jit(lambda theta, x: net.apply(theta, x.reshape(p * b, -1)))
    lowrank = jax.jit(lambda pop, x: lowrank_call(forward, [Batched(x), pop.genome()], p))
    lowrank_shared = jax.jit(lambda pop, x: pop.call(forward, x[0]))
    full = jax.jit(lambda thetas, x: jax.vmap(net.apply)(thetas, x))
    thetas = jax.jit(lambda pop: pop.materialize())(population)
    # Correctness first: the low-rank forward equals the forward of the materialised members.
    diff = float(jnp.max(jnp.abs(lowrank(population, x) - full(thetas, x))))
    cases = {
        "inference": (inference, net.theta0, x),
        "lowrank": (lowrank, population, x),
        "lowrank_shared_examples": (lowrank_shared, population, x),
        "full_rank_vmap": (full, thetas, x),
    }
    for fn, *args in cases.values():
        jax.block_until_ready(fn(*args))  # compile
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):  # interleaved rounds
        for name, (fn, *args) in cases.items():
            times[name].append(best_time(fn, *args, repeats=repeats))
    t = {name: min(v) for name, v in times.items()}
    return {
        "widths": list(widths),
        "population": p,
        "batch": b,
        "num_params": net.num_params,
        "seconds": {k: round(v, 5) for k, v in t.items()},
        "fraction_lowrank": round(t["inference"] / t["lowrank"], 3),
        "fraction_lowrank_shared_examples": round(t["inference"] / t["lowrank_shared_examples"], 3),
        "fraction_full_rank_vmap": round(t["inference"] / t["full_rank_vmap"], 3),
        "max_abs_diff_lowrank_vs_materialised": diff,
        "loadavg": load(),
    }


def digits(spec: dict[str, Any]) -> dict[str, Any]:
    data = load_digits()
    runs = {"lowrank_es_rank1": 1, "lowrank_es_rank4": 4, "open_es": None}
    out: dict[str, Any] = {}
    runs = {k: v for k, v in runs.items() if k in spec.get("runs", runs)}
    for name, rank in runs.items():
        strategy = "open_es" if rank is None else "lowrank_es"
        kwargs = {} if rank is None else {"strategy_kwargs": {"rank": rank}}
        model = mlp((64, spec["hidden"], 10))
        task = Supervised.from_dataset(data, spec["batch"])
        evo = Evolution(model, task, strategy, spec["population"], **kwargs)
        accuracies, reached, seconds = [], [], []
        for seed in range(spec["seeds"]):
            state = evo.init(jax.random.key(seed))
            start = time.perf_counter()
            state, history = evo.run(state, spec["generations"], chunk_size=spec["chunk"])
            seconds.append(time.perf_counter() - start)
            curve = [
                (r["generation"], r["test_accuracy_mean"])
                for r in history.rows
                if "test_accuracy_mean" in r
            ]
            accuracies.append(float(curve[-1][1]))
            hit = next((g for g, a in curve if a >= 0.95), None)
            reached.append(hit)
        hits = [g for g in reached if g is not None]
        out[name] = {
            "test_accuracy": [round(a, 4) for a in accuracies],
            "median_test_accuracy": round(statistics.median(accuracies), 4),
            "generations_to_0.95": reached,
            "median_generations_to_0.95": (
                statistics.median(hits) if len(hits) * 2 > len(reached) else None
            ),
            "seconds_per_run_incl_first_compile": [round(s, 2) for s in seconds],
        }
    return {
        "hidden": spec["hidden"],
        "population": spec["population"],
        "batch": spec["batch"],
        "generations": spec["generations"],
        "test_every": spec["chunk"],
        "runs": out,
        "loadavg": load(),
    }


def one_big(widths: list[int], population: int, batch: int, strategy: str) -> dict[str, Any]:
    """One configuration, run in its own process (for its peak RSS)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * batch, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], size=4 * batch)
    task = Supervised(x, y, x[:8], y[:8], batch_size=batch, num_classes=widths[-1])
    start = time.perf_counter()
    model = mlp(tuple(widths))
    evo = Evolution(model, task, strategy, population)
    state = evo.init(jax.random.key(0))
    jax.block_until_ready(state)
    build = time.perf_counter() - start
    start = time.perf_counter()
    step = jax.jit(evo.program.step).lower(state, evo.params).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = step(state, evo.params)  # one generation, compiled
    jax.block_until_ready(state)
    timed = time.perf_counter() - start
    return {
        "strategy": strategy,
        "widths": widths,
        "num_params": evo.network.num_params,
        "population": population,
        "batch": batch,
        "build_s": round(build, 2),
        "compile_s": round(compile_s, 2),
        "seconds_per_generation": round(timed, 3),
        "mean_loss_generation_1": float(metrics["mean_fitness"]),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "loadavg": load(),
    }


def big(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        for strategy in spec["strategies"]:
            cmd = [
                sys.executable,
                __file__,
                "--one-big",
                json.dumps({**spec, "strategy": strategy}),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                rows.append(
                    {
                        "strategy": strategy,
                        "widths": list(spec["widths"]),
                        "error": proc.stderr.strip().splitlines()[-1:],
                    }
                )
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    by = {(tuple(r["widths"]), r["strategy"]): r for r in rows if "error" not in r}
    for r in rows:
        other = by.get((tuple(r["widths"]), "low_memory_open_es"))
        if r["strategy"] == "lowrank_es" and other is not None and "error" not in r:
            r["speedup_vs_low_memory_open_es"] = round(
                other["seconds_per_generation"] / r["seconds_per_generation"], 2
            )
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("jax", "flax", "evosax", "optax")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny versions, for the tests")
    parser.add_argument("--sections", default="fraction_of_inference,digits,big")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one-big", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_big is not None:
        spec = json.loads(args.one_big)
        row = one_big(list(spec["widths"]), spec["population"], spec["batch"], spec["strategy"])
        print(json.dumps(row))
        return
    settings = SETTINGS["quick" if args.quick else "full"]
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    report: dict[str, Any] = {
        "benchmark": "lowrank",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "devices": len(jax.devices()),
        },
        "versions": versions(),
        "loadavg_start": load(),
    }
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in sections:
        start = time.perf_counter()
        if name == "fraction_of_inference":
            report[name] = fraction_of_inference(settings["fraction"], repeats)
        elif name == "digits":
            report[name] = digits(settings["digits"])
        elif name == "big":
            report[name] = big(settings["big"])
        else:
            raise SystemExit(f"unknown section {name!r}")
        report[name + "_wall_s"] = round(time.perf_counter() - start, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    report["loadavg_end"] = load()
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
