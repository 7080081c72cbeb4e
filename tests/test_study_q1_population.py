"""Q1's population check (``benchmarks/study_q1_population.py``): runs at several P gathered
into one table, each method's best P by the median FLOPs to target, the figure written."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report(P: int, flops: dict[str, float | None], gradient: float) -> dict:
    contenders = {
        "adam": {"label": "Adam", "kind": "gradient"},
        "open_es": {"label": "OpenAI-ES", "kind": "es"},
        "deep_ga": {"label": "GA", "kind": "es"},
    }
    methods = {"adam": {"flops_to_target_median": gradient}}
    for m, f in flops.items():
        methods[m] = (
            {"not_run": "fail-fast"}
            if f == "skip"
            else {
                "flops_to_target_median": f,
                "flops_to_target_ci95": [None, None] if f is None else [f / 2, 2 * f],
                "success_rate": 0.0 if f is None else 1.0,
                "chosen": 0.03,
            }
        )
    sizes = [{"hidden": 12, "D": 1066, "methods": methods}]
    if P == 256:  # a larger size run at one population only: left out
        sizes.append({"hidden": 1000, "D": 1076010, "methods": {"open_es": methods["open_es"]}})
    if P in (64, 256):  # a size where one method ran at two P, the other at P = 256 only
        larger = {"open_es": methods["open_es"]} | (
            {"deep_ga": methods["open_es"]} if P == 256 else {}
        )
        sizes.append({"hidden": 320, "D": 126730, "methods": larger})
    return {
        "q1": {
            "task": {"population": P},
            "seeds": [0, 1, 2, 3, 4],
            "contenders": contenders,
            "sizes": sizes,
        }
    }


def test_gather_picks_the_best_population_and_plots(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q1_population as pop

    paths = []
    for P, flops in (
        (256, {"open_es": 6e9, "deep_ga": None}),
        (64, {"open_es": 3e9, "deep_ga": 1.5e10}),
        (16, {"open_es": 3e9, "deep_ga": "skip"}),
    ):
        path = tmp_path / f"p{P}.json"
        path.write_text(json.dumps(_report(P, flops, gradient=4e7)))
        paths.append(path)
    g = pop.gather(paths)
    assert g["populations"] == [16, 64, 256]
    assert list(g["sizes"]) == [12, 320]  # h = 1000 was run at P = 256 only
    # at h = 320 only OpenAI-ES ran at two P: the GA's lone P = 256 is no "best" P
    assert g["best"][320] == {"open_es": {"population": 64, "flops": 3e9}}
    assert set(g["sizes"][320]["methods"]["deep_ga"]) == {256}
    size = g["sizes"][12]
    assert size["gradient"] == {"Adam": 4e7}
    assert set(size["methods"]["deep_ga"]) == {64, 256}  # not run at 16: absent, not a miss
    # a tie (3e9 at P = 16 and 64) goes to the smaller population; a miss never wins
    assert g["best"][12] == {
        "open_es": {"population": 16, "flops": 3e9},
        "deep_ga": {"population": 64, "flops": 1.5e10},
    }
    text = pop.table(g)
    ga_row = next(line for line in text.splitlines() if "| GA |" in line)
    assert ga_row.split(" | ")[2:] == [
        "—",
        "**1.50e+10 [7.50e+09, 3.00e+10] 5/5**",
        "inf [inf, inf] 0/5 |",
    ]
    # a later file of the same population replaces that population's run of a method and size
    again = tmp_path / "p64-again.json"
    again.write_text(json.dumps(_report(64, {"open_es": 2e9, "deep_ga": 1.5e10}, gradient=4e7)))
    assert pop.gather([*paths, again])["best"][12]["open_es"] == {"population": 64, "flops": 2e9}
    png = tmp_path / "pop.png"
    pop.main([*map(str, paths), "--png", str(png), "--out", str(tmp_path / "g.json")])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((tmp_path / "g.json").read_text())["best"]["12"]["open_es"]["population"] == 16
    )


def test_fit_uses_each_sizes_best_population(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q1_population as pop

    sizes = {12: {"D": 10}, 32: {"D": 1000}, 80: {"D": 10**5}}
    best = {
        12: {"m": {"population": 16, "flops": 1e2}},
        32: {"m": {"population": 64, "flops": 1e4}, "one_size_only": {"population": 8, "flops": 1}},
        80: {},
    }
    assert pop.fits(sizes, best) == {"m": {"sizes_used": [10, 1000], "exponent_b": 1.0}}
