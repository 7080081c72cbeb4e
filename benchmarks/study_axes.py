"""The FLOPs-matched questions of ``benchmarks/ANSWER.md`` (Q3, Q3d, Q4, Q5) read on the other
axis, wall time.

Those questions give every contender the same counted FLOPs and record each one's wall time.
This module reads each comparison again at **equal wall time**: every contender is cut at the
smallest wall time per run that any contender of the comparison used (``W``), and its figure
is read there from its own recorded curve. Q2 is the mirror image (CPU seconds matched, FLOPs
read: ``study_q2_flops.at_equal_flops``); Q1 records both to its target.

* **Q4** records the wall time of every chunk, so each contender's curve is read at the last
  checkpoint whose cumulative wall time (chunks / runs per call) is at most ``W``.
* **Q3** records one wall time per run. A run is a compiled scan with the same work in every
  step, so its wall time is taken as proportional to its FLOPs: at ``W`` a contender has spent
  ``W / wall x`` its FLOPs. Its successes at ``W`` are the seeds whose recorded FLOPs to
  success are within that, and its score the median test curve's last checkpoint within it.
* **Q3d and Q5** record no test curve (the test set is read once, at the chosen checkpoint or
  network), so nothing is re-read; the walls are listed with their spread (largest / smallest),
  which says how far the FLOPs match is from a wall match.

Wall times were measured on a shared 2-core machine, one contender after another, under the
load recorded in each JSON; a cross-contender wall comparison is only as good as that load was
steady, which is why the FLOPs axis is the one matched by design.

``python benchmarks/study_axes.py`` reads the JSONs ANSWER.md names and prints a JSON report
(``--out`` writes it) and the Markdown tables ANSWER.md quotes (``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {
    "q3": RESULTS / "study-q3-merged-2026-12-02.json",
    "q3d": RESULTS / "study-q3d-2026-12-02.json",
    "q4": RESULTS / "study-q4-2026-12-02.json",
    "q5": RESULTS / "study-q5-2026-12-02.json",
}


def read_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """``ys`` at the last of the ascending ``xs`` at or below ``x`` (None before the first)."""
    i = int(np.searchsorted(np.asarray(xs, dtype=float), x, side="right")) - 1
    return None if i < 0 else float(ys[i])


def _spread(walls: dict[str, float]) -> dict[str, Any]:
    lo = min(walls, key=walls.get)
    return {
        "wall_s_per_run": walls,
        "smallest": lo,
        "W": walls[lo],
        "spread": round(max(walls.values()) / walls[lo], 3),
    }


def q3(q: dict[str, Any]) -> dict[str, Any]:
    """Each Q3 task's contenders at the smallest wall time per run of any of them."""
    out = {}
    for task, t in q["tasks"].items():
        cs = t["contenders"]
        walls = {
            c: v["wall_s"]["test"]["run"] / v["wall_s"]["runs_per_call"] for c, v in cs.items()
        }
        row = _spread({c: round(w, 3) for c, w in walls.items()})
        row["contenders"] = {}
        for c, v in cs.items():
            fraction = min(1.0, row["W"] / walls[c])
            flops = fraction * v["flops"]
            hits = [f for f in v["flops_to_success_per_seed"] if f is not None]
            row["contenders"][c] = {
                "label": v["label"],
                "fraction_of_budget": round(fraction, 3),
                "flops_at_W": flops,
                "successes_at_W": sum(f <= flops for f in hits),
                "successes_full": len(hits),
                "seeds": len(v["flops_to_success_per_seed"]),
                "test_median_at_W": read_at(v["curve_flops"], v["curve_test_median"], flops),
                "test_median_full": v["test_median"],
            }
        out[task] = row
    return out


def q4(q: dict[str, Any]) -> dict[str, Any]:
    """Q4's meta-trained starts at the smallest wall time per run of any of them, each read at
    its last checkpoint within it (cumulative chunk wall times / runs per call)."""
    cs = {c: v for c, v in q["contenders"].items() if "curve_median" in v}
    cum = {
        c: list(np.cumsum(v["wall_s"]["chunks_all_configurations"]) / v["wall_s"]["runs_per_call"])
        for c, v in cs.items()
    }
    row = _spread({c: round(float(w[-1]), 3) for c, w in cum.items()})
    row["contenders"] = {
        c: {
            "label": v["label"],
            "checkpoint_wall_s": [round(float(w), 3) for w in cum[c]],
            "test_loss_median_at_W": read_at(cum[c], v["curve_median"], row["W"]),
            "flops_at_W": read_at(cum[c], v["curve_flops"], row["W"]),
            "test_loss_median_full": v["test_loss_after_k_median"],
        }
        for c, v in cs.items()
    }
    return row


def q3d(q: dict[str, Any]) -> dict[str, Any]:
    return _spread({c: v["wall_s_per_run"] for c, v in q["contenders"].items()})


def q5(q: dict[str, Any]) -> dict[str, Any]:
    def per_run(arm: dict[str, Any]) -> float:
        wall = arm["wall_s"]
        return wall["run_s_median"] if "run_s_median" in wall else wall["run_s_per_seed"]

    return {
        part: _spread({a: per_run(v) for a, v in q[part]["arms"].items()})
        for part in ("hyperparameters", "architecture")
    }


def report(paths: dict[str, Path]) -> dict[str, Any]:
    readers = {"q3": q3, "q3d": q3d, "q4": q4, "q5": q5}
    out: dict[str, Any] = {
        "design": __doc__.split("\n\n", 1)[1].strip(),
        "sources": {},
        "loadavg": {},  # per question: at its start and its end
    }
    for key, path in paths.items():
        q = json.loads(Path(path).read_text())[key]
        out[key] = readers[key](q)
        out["loadavg"][key] = [q.get("loadavg_start"), q.get("loadavg_end")]
        out["sources"][key] = str(path)
    return out


def _g(x: float | None, fmt: str = ".3g") -> str:
    return "never" if x is None else format(x, fmt)


def markdown(r: dict[str, Any]) -> str:
    lines = []
    if "q3" in r:
        lines += [
            "| task | contender | wall s per run | share of its FLOPs at W | successes at W "
            "(full budget) | median test score at W (full budget) |",
            "|---|---|---|---|---|---|",
        ]
        for task, row in r["q3"].items():
            for c, v in row["contenders"].items():
                lines.append(
                    f"| {task} (W = {row['W']:.2f} s) | {v['label']} | "
                    f"{row['wall_s_per_run'][c]:.2f} | {v['fraction_of_budget']:.0%} | "
                    f"{v['successes_at_W']}/{v['seeds']} ({v['successes_full']}/{v['seeds']}) | "
                    f"{_g(v['test_median_at_W'], '.4g')} ({v['test_median_full']:.4g}) |"
                )
        lines.append("")
    if "q4" in r:
        row = r["q4"]
        lines += [
            f"| Q4 start (W = {row['W']:.2f} s) | wall s per run | FLOPs at W | test MSE at W "
            "(full budget) |",
            "|---|---|---|---|",
        ]
        for c, v in row["contenders"].items():
            lines.append(
                f"| {v['label']} | {row['wall_s_per_run'][c]:.2f} | {_g(v['flops_at_W'])} | "
                f"{_g(v['test_loss_median_at_W'], '.3f')} ({v['test_loss_median_full']:.3f}) |"
            )
        lines.append("")
    walls = [("Q3d", r.get("q3d"))]
    walls += [(f"Q5 {k}", v) for k, v in r.get("q5", {}).items()]
    if any(v for _, v in walls):
        lines += ["| comparison | wall s per run | largest / smallest |", "|---|---|---|"]
        for name, v in walls:
            if v:
                each = ", ".join(f"{c} {w:.2f}" for c, w in v["wall_s_per_run"].items())
                lines.append(f"| {name} | {each} | {v['spread']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, path in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=Path, default=path, help=f"{key.upper()} JSON")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--markdown", action="store_true", help="print the tables too")
    args = parser.parse_args(argv)
    r = report({k: getattr(args, k) for k in DEFAULTS})
    text = json.dumps(r, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(markdown(r) if args.markdown else text)
    print(f"[axes] {', '.join(r['sources'])}", file=sys.stderr)


if __name__ == "__main__":
    main()
