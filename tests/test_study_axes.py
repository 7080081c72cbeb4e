"""``benchmarks/study_axes.py``: the FLOPs-matched questions re-read at equal wall time, on
small hand-made reports (the real ones are the JSONs ANSWER.md names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def axes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_axes

    return study_axes


def test_read_at_takes_the_last_checkpoint_within(axes) -> None:
    assert axes.read_at([1.0, 2.0, 3.0], [10, 20, 30], 2.5) == 20
    assert axes.read_at([1.0, 2.0, 3.0], [10, 20, 30], 2.0) == 20
    assert axes.read_at([1.0, 2.0, 3.0], [10, 20, 30], 0.5) is None


def _q3_contender(label, run_s, flops_to_success, curve):
    return {
        "label": label,
        "wall_s": {"test": {"run": run_s}, "runs_per_call": 2},
        "flops": 100.0,
        "flops_to_success_per_seed": flops_to_success,
        "curve_flops": [0.0, 25.0, 50.0, 75.0, 100.0],
        "curve_test_median": curve,
        "test_median": curve[-1],
    }


def test_q3_cuts_every_contender_at_the_fastest_ones_wall_time(axes) -> None:
    fast = _q3_contender("fast", 2.0, [None, 50.0], [0, 0.2, 0.4, 0.6, 0.8])  # 1 s per run
    slow = _q3_contender("slow", 4.0, [30.0, 60.0], [0, 0.5, 0.9, 0.95, 0.99])  # 2 s per run
    row = axes.q3({"tasks": {"t": {"contenders": {"fast": fast, "slow": slow}}}})["t"]
    assert (row["W"], row["smallest"], row["spread"]) == (1.0, "fast", 2.0)
    s = row["contenders"]["slow"]
    # At half its wall time the slow one has spent half its FLOPs: one success (30 <= 50, not 60).
    assert (s["fraction_of_budget"], s["flops_at_W"]) == (0.5, 50.0)
    assert (s["successes_at_W"], s["successes_full"], s["test_median_at_W"]) == (1, 2, 0.9)
    f = row["contenders"]["fast"]
    assert (f["fraction_of_budget"], f["successes_at_W"], f["test_median_at_W"]) == (1.0, 1, 0.8)


def test_q4_reads_each_curve_at_its_cumulative_chunk_wall_time(axes, tmp_path: Path) -> None:
    def start(label, chunks, curve):
        return {
            "label": label,
            "wall_s": {"chunks_all_configurations": chunks, "runs_per_call": 2},
            "curve_flops": [10.0, 20.0, 30.0],
            "curve_median": curve,
            "test_loss_after_k_median": curve[-1],
        }

    q = {
        "contenders": {
            "standard": {"label": "no training", "test_loss_after_k": 6.0},  # no curve: left out
            "a": start("a", [2.0, 2.0, 2.0], [3.0, 2.0, 1.0]),  # 1, 2, 3 s per run
            "b": start("b", [1.0, 1.0, 2.0], [5.0, 4.0, 3.5]),  # 0.5, 1, 2 s per run
        },
        "loadavg_start": [1, 1, 1],
        "loadavg_end": [2, 2, 2],
    }
    row = axes.q4(q)
    assert (row["W"], row["smallest"]) == (2.0, "b") and set(row["contenders"]) == {"a", "b"}
    assert row["contenders"]["a"]["test_loss_median_at_W"] == 2.0  # its second checkpoint, 2 s
    assert row["contenders"]["a"]["flops_at_W"] == 20.0
    assert row["contenders"]["b"]["test_loss_median_at_W"] == 3.5  # its whole run
    path = tmp_path / "q4.json"
    path.write_text(json.dumps({"q4": q}))
    r = axes.report({"q4": path})
    assert r["loadavg"]["q4"] == [[1, 1, 1], [2, 2, 2]]
    assert "| a | 3.00 | 20 | 2.000 (1.000) |" in axes.markdown(r)
