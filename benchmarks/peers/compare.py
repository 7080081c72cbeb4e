"""Side-by-side report: evojax_nets against EvoJAX and EvoTorch, in one run on this machine.

    bash benchmarks/peers/setup.sh                         # once: the peers' environments
    .venv/bin/python benchmarks/peers/compare.py           # JSON to stdout, PNG + JSON files

For each task (``digits``, ``cartpole``; see ``common.py``) and each repeat, the contenders run
one after another in a rotating order (ours, EvoJAX, EvoTorch; then EvoJAX, EvoTorch, ours;
...), each in a fresh process of its own environment, so slow and fast moments of this shared
machine fall on every contender alike. Each runner prints one JSON record (``common.emit``).

Reported per task and contender (medians over repeats): time to target (wall seconds from the
start of building the library's objects, so construction, compilation and the periodic tests
of the centre are included), generations to target, generations per second in a steady-state
phase after warm-up. Ratios are the peer's over ours for times and ours over the peer's for
generations per second: above 1 means we are faster. ``os.getloadavg()`` is recorded around
every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

CONTENDERS = {
    "evojax_nets": (REPO / ".venv" / "bin" / "python", HERE / "run_ours.py"),
    "evojax": (HERE / ".venvs" / "evojax" / "bin" / "python", HERE / "run_evojax.py"),
    "evotorch": (HERE / ".venvs" / "evotorch" / "bin" / "python", HERE / "run_evotorch.py"),
}
COLORS = {"evojax_nets": "tab:blue", "evojax": "tab:orange", "evotorch": "tab:green"}


def run_one(name: str, task: str, seed: int, extra: list[str], timeout: float) -> dict:
    python, script = CONTENDERS[name]
    cmd = [str(python), str(script), "--task", task, "--seed", str(seed), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)  # one CPU device for both JAX contenders
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = "timeout"
    process_s = time.perf_counter() - t0
    record = next(
        (json.loads(line[7:]) for line in out.splitlines()[::-1] if line.startswith("RESULT ")),
        None,
    )
    if record is None:
        record = {"library": name, "task": task, "seed": seed, "error": f"rc={rc}"}
        record["stderr_tail"] = err[-2000:]
    record["process_s"] = process_s
    record["loadavg_before"] = load_before
    record["loadavg_after"] = os.getloadavg()
    return record


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], contenders: list[str]) -> dict:
    out: dict = {}
    for name in contenders:
        mine = [r for r in runs if r.get("library") == name and "error" not in r]
        failed = [r for r in runs if r.get("library") == name and "error" in r]
        reached = [r for r in mine if r["reached"]]
        out[name] = {
            "runs": len(mine),
            "failed": len(failed),
            "reached": len(reached),
            "time_to_target_s": _median([r["time_to_target_s"] for r in reached]),
            "time_to_target_s_all": [r["time_to_target_s"] for r in mine],
            "generations_to_target": _median([r["generations_to_target"] for r in reached]),
            "generations_per_s": _median([r["generations_per_s"] for r in mine]),
            "generations_per_s_all": [r["generations_per_s"] for r in mine],
            "setup_s": _median([r["setup_s"] for r in mine]),
            "first_chunk_s": _median([r["first_chunk_s"] for r in mine]),
            "final_metric": _median([r["final_metric"] for r in mine]),
        }
    ours = out.get("evojax_nets", {})
    for name in contenders:
        if name == "evojax_nets":
            continue
        peer = out[name]
        ratio = {}
        if ours.get("time_to_target_s") and peer.get("time_to_target_s"):
            ratio["time_to_target_peer_over_ours"] = (
                peer["time_to_target_s"] / ours["time_to_target_s"]
            )
        elif ours.get("time_to_target_s") and not peer.get("reached"):
            ratio["time_to_target_peer_over_ours"] = None
            ratio["note"] = "the peer did not reach the target within its budget"
        if ours.get("generations_per_s") and peer.get("generations_per_s"):
            ratio["generations_per_s_ours_over_peer"] = (
                ours["generations_per_s"] / peer["generations_per_s"]
            )
        peer["vs_ours"] = ratio
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(report["tasks"])
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        info = report["tasks"][task]
        ax = axes[row][0]
        for r in info["runs"]:
            if "curve" not in r or not r["curve"]:
                continue
            xs = [p["wall_s"] for p in r["curve"]]
            ys = [p["metric"] for p in r["curve"]]
            ax.plot(xs, ys, color=COLORS[r["library"]], alpha=0.8, lw=1.2)
        for name in info["summary"]:
            ax.plot([], [], color=COLORS[name], label=name)
        ax.axhline(info["config"]["target"], color="k", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("wall seconds since the run started (log)")
        ax.set_ylabel("test accuracy of the centre" if task == "digits" else "mean test return")
        ax.set_title(f"{task}: test metric against wall time (each line a run)")
        ax.legend(loc="lower right", fontsize=8)

        ax = axes[row][1]
        names = list(info["summary"])
        gps = [info["summary"][n]["generations_per_s"] or 0 for n in names]
        ttt = [info["summary"][n]["time_to_target_s"] for n in names]
        bars = ax.bar(names, gps, color=[COLORS[n] for n in names])
        for bar, t in zip(bars, ttt, strict=True):
            label = f"{bar.get_height():.2f} gen/s\n" + (
                f"target in {t:.0f} s" if t else "target not reached"
            )
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, 1.3 * max([*gps, 1e-9]))
        ax.set_ylabel("generations per second (median)")
        ax.set_title(f"{task}: steady-state throughput, population {info['config']['population']}")
    load = report["loadavg_start"]
    fig.suptitle(
        f"evojax_nets vs EvoJAX vs EvoTorch, PGPE, {report['date']}, "
        f"{os.cpu_count()} CPUs, load average at start {load[0]:.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "cartpole"])
    parser.add_argument("--peers", nargs="+", default=["evojax", "evotorch"])
    parser.add_argument("--repeats", type=int, default=3, help="digits repeats")
    parser.add_argument("--cartpole-repeats", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, help="per-run budget to reach the target")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    parser.add_argument("--png", type=Path, default=HERE / "peers.png")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the PNG from an existing --json"
    )
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.json.read_text()), args.png)
        return

    contenders = ["evojax_nets", *args.peers]
    for name in contenders:
        python, _ = CONTENDERS[name]
        if not python.exists():
            sys.exit(f"{python} is missing: run `bash benchmarks/peers/setup.sh` first")

    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "loadavg_start": os.getloadavg(),
        "strategy": "PGPE (symmetric, centred ranks, Adam on the centre) on every side",
        "tasks": {},
    }
    extra = [] if args.max_seconds is None else ["--max-seconds", str(args.max_seconds)]
    for task in args.tasks:
        cfg = common.config(task, max_seconds=args.max_seconds)
        repeats = args.repeats if task == "digits" else args.cartpole_repeats
        timeout = cfg.max_seconds * 2 + 600
        runs = []
        for rep in range(repeats):
            order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
            for name in order:
                print(f"[{task} repeat {rep}] {name} ...", file=sys.stderr, flush=True)
                record = run_one(name, task, rep, extra, timeout)
                record["repeat"] = rep
                runs.append(record)
                brief = {k: record.get(k) for k in ("time_to_target_s", "generations_per_s")}
                print(f"    {brief} {record.get('error', '')}", file=sys.stderr, flush=True)
        prints = {r.get("data_fingerprint") for r in runs if r.get("data_fingerprint")}
        report["tasks"][task] = {
            "config": common.CONFIGS[task].__dict__ | {"max_seconds": cfg.max_seconds},
            "same_data": len(prints) <= 1,
            "summary": summarize(runs, contenders),
            "runs": runs,
        }
    report["loadavg_end"] = os.getloadavg()
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.png)
    slim = {k: v for k, v in report.items() if k != "tasks"} | {
        "tasks": {
            t: {k: v for k, v in info.items() if k != "runs"} for t, info in report["tasks"].items()
        },
        "json": str(args.json),
        "png": str(args.png),
    }
    print(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
