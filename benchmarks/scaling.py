"""How cost grows with population size P and parameter count D, with and without bounded memory.

Each configuration runs in its own process (so peak memory is its own: ``ru_maxrss``) on
synthetic classification data (64 inputs, 10 classes, minibatch 32), an MLP 64-h-10 whose
hidden width h sets D, and OpenAI-ES in three modes:

* ``vmap``: the whole population in one ``vmap`` (evosax's Open_ES holds P x D);
* ``chunked``: ``eval_batch_size=64`` (``lax.map`` over batches of members);
* ``lowmem``: ``low_memory_open_es``: noise regenerated from per-pair keys, P x D never held.

A configuration the engine refuses before running (the memory estimate) is reported as such.

    python benchmarks/scaling.py                 # the grid, JSON to stdout, PNG next to --out
    python benchmarks/scaling.py --big           # D = 10 million, P = 1024, low-memory ES
    python benchmarks/scaling.py --big --platform cuda   # the same on a GPU (device peak too)

The ``--big`` case is the issue's target: 10 million parameters, population 1024, a few
generations, peak memory under 8 GB where the population matrix alone would be 40 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, os, resource, sys, time
cfg = json.loads(sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from evojax_nets import Evolution, Supervised
from evojax_nets.models import MLP

rng = np.random.default_rng(0)
n_in = cfg["inputs"]
x = rng.normal(size=(2048, n_in)).astype(np.float32)
y = (x[:, :10].argmax(1)).astype(np.int32)
model = MLP(n_in, cfg["hidden"], 10, rngs=nnx.Rngs(0))
kwargs = {}
strategy = "open_es"
if cfg["mode"] == "chunked":
    kwargs["eval_batch_size"] = cfg["chunk"]
if cfg["mode"] == "lowmem":
    strategy = "low_memory_open_es"
    kwargs["eval_batch_size"] = cfg["chunk"]
task = Supervised(x, y, x[:256], y[:256], batch_size=cfg["batch"])
out = {"num_params": None}
try:
    evo = Evolution(model, task, strategy, cfg["population"], **kwargs)
    out["num_params"] = evo.network.num_params
    state = evo.init(jax.random.key(0))
    t0 = time.perf_counter()
    state, hist = evo.run(state, cfg["generations"], chunk_size=cfg["generations"])
    total = time.perf_counter() - t0
    compile_s = hist.last["compile_time"]
    out.update(
        status="ok",
        compile_s=compile_s,
        run_s=total - compile_s,
        generations_per_s=cfg["generations"] / max(total - compile_s, 1e-9),
        test_accuracy=hist.last.get("test_accuracy_mean"),
    )
except MemoryError as err:
    out.update(status="refused", reason=str(err)[:300])
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
stats = jax.devices()[0].memory_stats() or {}
if "peak_bytes_in_use" in stats:  # accelerators: the device's own peak, apart from host RSS
    out["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
out["device"] = jax.devices()[0].device_kind
out["population_matrix_gb"] = (out["num_params"] or 0) * cfg["population"] * 4 / 2**30
print("RESULT " + json.dumps(out), flush=True)
"""


def run_config(cfg: dict, timeout: float, platform: str = "cpu") -> dict:
    env = {**os.environ, "JAX_PLATFORMS": platform}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**cfg, "status": "timeout", "wall_s": timeout}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {**cfg, "status": "crashed", "returncode": proc.returncode, "stderr": tail}
    return {**cfg, **json.loads(lines[-1][7:]), "wall_s": time.perf_counter() - t0}


def hidden_for(num_params: int, inputs: int = 64) -> int:
    """Hidden width h of MLP inputs-h-10 with about ``num_params`` parameters."""
    return max(1, round((num_params - 10) / (inputs + 11)))


def grid(args: argparse.Namespace) -> list[dict]:
    base = {"inputs": 64, "batch": 32, "chunk": 64, "generations": args.generations}
    configs = []
    for p in args.populations:
        for mode in ("vmap", "chunked", "lowmem"):
            configs.append({**base, "population": p, "hidden": [hidden_for(10_000)], "mode": mode})
    for d in args.dims:
        for mode in ("vmap", "chunked", "lowmem"):
            configs.append({**base, "population": 256, "hidden": [hidden_for(d)], "mode": mode})
    return configs


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (key, label) in enumerate((("population", "population P"), ("num_params", "D"))):
        fixed = [r for r in results if r.get("status") == "ok"]
        fixed = [
            r
            for r in fixed
            if (key == "population" and r["hidden"] == [hidden_for(10_000)])
            or (key == "num_params" and r["population"] == 256)
        ]
        for mode, marker in (("vmap", "o"), ("chunked", "s"), ("lowmem", "^")):
            rows = sorted((r for r in fixed if r["mode"] == mode), key=lambda r: r[key])
            xs = [r[key] for r in rows]
            axes[0, col].loglog(
                xs, [r["generations_per_s"] for r in rows], marker, ls="-", label=mode
            )
            axes[1, col].loglog(xs, [r["peak_rss_gb"] for r in rows], marker, ls="-", label=mode)
        ok = sorted((r for r in fixed if r["mode"] == "vmap"), key=lambda r: r[key])
        if ok:  # the linear-cost reference: generations/s proportional to 1 / x
            last = ok[-1]
            xs = np.array([r[key] for r in ok], float)
            ref = last["generations_per_s"] * last[key] / xs
            axes[0, col].loglog(xs, ref, "k:", alpha=0.6, label="cost linear in " + label)
        refused = [
            r
            for r in results
            if r.get("status") == "refused"
            and (
                (key == "population" and r["hidden"] == [hidden_for(10_000)])
                or (key == "num_params" and r["population"] == 256)
            )
        ]
        by_x: dict[float, list[dict]] = {}
        for r in refused:
            by_x.setdefault(r[key] or r["population"], []).append(r)
        for x, rows in by_x.items():
            modes = ", ".join(r["mode"] for r in rows)
            axes[1, col].annotate(
                f"{modes}: refused\nby the memory estimate",
                (x, rows[0]["peak_rss_gb"]),
                fontsize=8,
                ha="right",
            )
        axes[0, col].set_ylabel("generations / s")
        axes[1, col].set_ylabel("peak RSS (GB)")
        for row in range(2):
            axes[row, col].set_xlabel(label)
            axes[row, col].grid(alpha=0.3, which="both")
            axes[row, col].legend()
    axes[0, 0].set_title("D ~ 10^4, P varies")
    axes[0, 1].set_title("P = 256, D varies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--big", action="store_true", help="only the 10M-parameter, P=1024 case")
    parser.add_argument(
        "--platform", default="cpu", help="JAX platform of the workers (cpu, cuda, tpu)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scaling.json"))
    parser.add_argument(
        "--replot", action="store_true", help="redraw the PNG from the JSON at --out, run nothing"
    )
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text())["results"], args.out.with_suffix(".png"))
        return

    if args.big:
        cfg = {
            "inputs": 1024,
            "hidden": [4096, 1536],
            "batch": 16,
            "chunk": 16,
            "generations": 3,
            "population": 1024,
            "mode": "lowmem",
        }
        results = [run_config(cfg, args.timeout * 3, args.platform)]
    else:
        results = []
        for cfg in grid(args):
            results.append(run_config(cfg, args.timeout, args.platform))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "platform": args.platform,
        "loadavg": os.getloadavg(),
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.big:
        args.out = args.out.with_name(args.out.stem + "_big.json")
    args.out.write_text(text + "\n")
    if not args.big:
        plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
