"""Start-up of the command line: ``evojax-nets --help``, and a cold then a warm run.

1. **help**: wall time of ``evojax-nets --help`` and ``evojax-nets --version`` in fresh
   processes (median of ``--repeats``); the target is under one second.
2. **cold / warm**: two identical ``evojax-nets run --generations 20`` (the default job
   otherwise: MLP 64-64-10 on digits, OpenAI-ES, P=256), each in a new run folder, sharing a
   persistent compilation cache that is empty before the first. The first compiles everything
   and fills the cache; the second finds every program there. The target is a warm/cold wall
   time ratio of at most 0.7. ``--reference`` adds a third run with ``--no-compile-cache``.

Wall times are of the whole process, from launch to exit, as a user sees them. The machine is
shared: the load averages before and after are recorded.

Run from the repository root::

    python benchmarks/cli_startup.py                   # defaults: 20 generations, 5 repeats
    python benchmarks/cli_startup.py --generations 50 --reference

It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command() -> list[str]:
    """The installed console script when it sits next to this Python, else ``-m``."""
    script = Path(sys.executable).with_name("evojax-nets")
    return [str(script)] if script.exists() else [sys.executable, "-m", "evojax_nets.cli"]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, proc


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="runs of --help and --version")
    parser.add_argument("--reference", action="store_true", help="also run without the cache")
    args = parser.parse_args()

    cli = command()
    report: dict = {"command": " ".join(cli), "load_before": load()}
    with tempfile.TemporaryDirectory(prefix="evojax_nets_startup_") as tmp:
        env = dict(os.environ)
        env["EVOJAX_NETS_COMPILE_CACHE"] = str(Path(tmp) / "cache")
        for name, extra in (("help", ["--help"]), ("version", ["--version"])):
            walls = [timed([*cli, *extra], env)[0] for _ in range(args.repeats)]
            report[f"{name}_s"] = {
                "median": round(statistics.median(walls), 3),
                "min": round(min(walls), 3),
                "max": round(max(walls), 3),
            }

        run = [*cli, "run", "--generations", str(args.generations), "--no-progress"]
        runs = {}
        for name, extra in (("cold", []), ("warm", [])) + (
            (("no_cache", ["--no-compile-cache"]),) if args.reference else ()
        ):
            out = Path(tmp) / name
            wall, _ = timed([*run, "--out", str(out), *extra], env)
            summary = json.loads((out / "summary.json").read_text())
            runs[name] = {
                "wall_s": round(wall, 2),
                "compile_time_s": round(summary["compile_time_s"], 3),
                "in_process_wall_s": round(summary["wall_time_s"], 2),
                "test_accuracy": summary["test_accuracy"],
            }
        cache = Path(tmp) / "cache"
        report["cache_entries"] = sum(1 for _ in cache.rglob("*") if _.is_file())
        shutil.rmtree(cache, ignore_errors=True)
    report["runs"] = runs
    report["warm_over_cold"] = round(runs["warm"]["wall_s"] / runs["cold"]["wall_s"], 3)
    report["same_result"] = runs["warm"]["test_accuracy"] == runs["cold"]["test_accuracy"]
    report["load_after"] = load()
    report["cpus"] = os.cpu_count()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
