"""Q1's population check: FLOPs to target of every evolution strategy at several populations.

Q1 runs every evolution strategy at P = 256 (``study_q1.SETS``). ``study.py --questions q1
--q1-population P`` runs them at another P, with the cap and the check interval in generations
rescaled so the FLOPs budget and the FLOPs between checks stay those of P = 256
(``study_q1.with_population``); each P still gets Q1's three settings of the step size, 5
seeds, chosen on validation. This module gathers such runs (one study JSON per P, the P = 256
run among them) into one table and one figure, and names each method's best P per size: the
smallest median FLOPs to target, the same validation score Q1 chooses settings by.

``python benchmarks/study_q1_population.py A.json B.json ... [--out merged.json] [--png f.png]``
prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

RECORDED = ("flops_to_target_median", "flops_to_target_ci95", "success_rate", "chosen")


def gather(paths: list[str | Path]) -> dict[str, Any]:
    """One ``{"populations", "sizes", "best", "labels", "sources"}`` from study JSONs with a
    ``"q1"`` key (or bare Q1 sections), one population each; files of one population may
    hold different sizes, and a later file's run of a method, size and P replaces an earlier one.
    Runs recorded as not run and sizes run at one population are left out; a method run at one
    population at a size stays in the table but gets no best P there (nor a point in the fits).
    The gradient methods' medians are kept per size as ``"gradient"`` (a reference line)."""
    seen: set[int] = set()
    sizes: dict[int, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        q1 = data.get("q1", data)
        P = int(q1["task"]["population"])
        seen.add(P)
        for row in q1["sizes"]:
            size = sizes.setdefault(row["hidden"], {"D": row["D"], "methods": {}, "gradient": {}})
            for method, out in row["methods"].items():
                c = q1["contenders"][method]
                if "not_run" in out:
                    continue
                if c["kind"] == "gradient":  # for reference: P does not apply
                    size["gradient"][c["label"]] = out.get("flops_to_target_median")
                    continue
                labels[method] = c["label"]
                entry = {k: out.get(k) for k in RECORDED}
                entry["seeds"] = len(q1["seeds"])
                size["methods"].setdefault(method, {})[P] = entry
    # sizes run at one population only (the P = 256 run's larger sizes) compare nothing
    sizes = {
        h: s for h, s in sorted(sizes.items()) if any(len(m) > 1 for m in s["methods"].values())
    }
    best: dict[int, dict[str, Any]] = {}
    for h, size in sizes.items():
        for method, per_p in size["methods"].items():
            if len(per_p) < 2:  # run at one P at this size: it has no best P to name
                continue
            reached = {P: v["flops_to_target_median"] for P, v in per_p.items()}
            reached = {P: f for P, f in reached.items() if f is not None}
            if reached:
                P = min(reached, key=lambda p: (reached[p], p))
                best.setdefault(h, {})[method] = {"population": P, "flops": reached[P]}
    return {
        "populations": sorted(seen),
        "fits_best_population": fits(sizes, best),
        "sizes": sizes,
        "best": best,
        "labels": labels,
        "sources": [str(p) for p in paths],
    }


def fits(sizes: dict[int, Any], best: dict[int, Any]) -> dict[str, Any]:
    """Per method, the least-squares slope b of log10 FLOPs on log10 D over the sizes where it
    reached the target at its best population (Q1's exponent, each size at its own best P)."""
    from study_q1 import loglog_fit  # Q1's own fit (imports the library: only when fitting)

    out: dict[str, Any] = {}
    methods = {m for per_size in best.values() for m in per_size}
    for method in sorted(methods):
        rows = [(sizes[h]["D"], best[h][method]["flops"]) for h in sizes if method in best[h]]
        if len(rows) < 2:
            continue
        out[method] = {"sizes_used": [d for d, _ in rows], "exponent_b": loglog_fit(rows)[0]}
    return out


def table(g: dict[str, Any]) -> str:
    """Markdown: a row per size and method, a column per population (median FLOPs to target
    [95% CI], seeds at the target), the best population in bold."""
    ps = g["populations"]
    head = "| h (D) | method | " + " | ".join(f"P = {P}" for P in ps) + " |"
    lines = [head, "|---|---|" + "---|" * len(ps)]
    e = lambda v: "inf" if v is None else f"{v:.2e}"
    for h, size in g["sizes"].items():
        for method, per_p in size["methods"].items():
            best = g["best"].get(h, {}).get(method, {}).get("population")
            cells = []
            for P in ps:
                v = per_p.get(P)
                if v is None:
                    cells.append("—")
                    continue
                n = v["seeds"]
                med, ci = v["flops_to_target_median"], v["flops_to_target_ci95"] or [None, None]
                text = f"{e(med)} [{e(ci[0])}, {e(ci[1])}] {round(n * v['success_rate'])}/{n}"
                cells.append(f"**{text}**" if best == P else text)
            lines.append(f"| {h} ({size['D']:,}) | {g['labels'][method]} | " + " | ".join(cells))
    return "\n".join(line if line.endswith("|") else line + " |" for line in lines)


def plot(g: dict[str, Any], path: Path) -> None:
    """FLOPs to target against P, one panel per size, a line per method; a population where
    the median did not reach the target is drawn at the panel's top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(g["sizes"].items())
    cols = min(2, len(sizes))
    rows = -(-len(sizes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 2.6, 4.3 * rows), squeeze=False)
    panels = list(axes.flat)
    for extra in panels[len(sizes) :]:
        extra.set_visible(False)
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i % 10) for i, m in enumerate(g["labels"])}
    handles: dict[str, Any] = {}
    for ax, (h, size) in zip(panels, sizes, strict=False):
        top = max(
            (
                v["flops_to_target_median"] or 0
                for m in size["methods"].values()
                for v in m.values()
            ),
            default=1.0,
        )
        for method, per_p in size["methods"].items():
            P = np.array(sorted(per_p), float)
            med = [per_p[int(p)]["flops_to_target_median"] for p in P]
            y = np.array([2 * top if v is None else v for v in med], float)
            (line,) = ax.plot(P, y, "o-", color=color[method], lw=1.4, ms=5)
            handles[g["labels"][method]] = line
            missed = np.array([v is None for v in med])
            ax.plot(P[missed], y[missed], "x", color=color[method], ms=9, mew=2)
        for (label, flops), ls in zip(size["gradient"].items(), ("--", "-."), strict=False):
            if flops is not None:
                handles[f"{label} (no P)"] = ax.axhline(flops, color="k", lw=1.2, ls=ls)
        ax.axvline(256, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("population P (dotted: Q1's P = 256)")
        ax.set_title(f"h = {h}, D = {size['D']:,}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel("FLOPs to val. acc 0.90 (median, 5 seeds; x: not reached)")
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.suptitle("Q1: the evolution strategies' population, at equal FLOPs budgets", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="study JSONs with a q1 section, one per P")
    parser.add_argument("--out", default=None, help="write the gathered table here (JSON)")
    parser.add_argument("--png", default=None, help="write the figure here")
    args = parser.parse_args(argv)
    g = gather(args.reports)
    print(table(g))
    if args.out:
        Path(args.out).write_text(json.dumps(g, indent=1))
    if args.png:
        plot(g, Path(args.png))


if __name__ == "__main__":
    main()
