"""Q4 of the study (evolved starting points against Reptile and multi-task pretraining), its
``--quick`` run: equal counted FLOPs, equal tuning budgets, choices made on validation by the
recorded rule, per-seed figures consistent with their summaries."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from test_benchmark_scripts import run_quick_study

METHODS = ("evolved", "reptile", "pretrain")


def _inf(values):
    return np.asarray([np.inf if v is None else v for v in values], float)


def test_study_quick_q4_equal_flops_and_choices_on_validation(tmp_path: Path) -> None:
    report = run_quick_study(tmp_path, "q4")
    q4 = report["q4"]
    assert len(q4["loadavg_start"]) == 3 and len(q4["loadavg_end"]) == 3
    settings, budget, seeds = q4["settings"], q4["budget"], q4["seeds"]
    R, cp = len(seeds), settings["checkpoints"]
    assert R >= 2 and set(q4["contenders"]) == {"standard", *METHODS}

    # The counted FLOPs follow from the recorded sizes and the stated formulas.
    widths = (1, *settings["hidden"], 1)
    f1 = 2 * sum(a * b for a, b in itertools.pairwise(widths))
    adaptation = settings["k"] * 3 * 10 * f1
    per_step = {
        "evolved": settings["population"] * settings["es_instances"] * (adaptation + 50 * f1),
        "reptile": settings["reptile_batch"] * adaptation,
        "pretrain": 3 * settings["pretrain_batch"] * 10 * f1,
    }
    assert budget["flops_per"] == {
        "forward_per_point": f1,
        "adaptation": adaptation,
        **per_step,
    }
    target = budget["target_flops"]
    assert target == settings["generations"] * per_step["evolved"]
    assert budget["steps"]["evolved"] == settings["generations"]

    grid_sizes = set()
    for name in METHODS:
        row = q4["contenders"][name]
        steps = row["steps"]
        # Equal FLOPs: the steps that come closest to the ES's budget in multiples of cp.
        assert steps == budget["steps"][name] and steps % cp == 0
        assert row["meta_flops"] == steps * per_step[name] == budget["meta_flops"][name]
        assert abs(row["meta_flops"] - target) <= cp * per_step[name] / 2
        assert row["curve_flops"][-1] == row["meta_flops"]
        assert np.all(np.diff(row["curve_flops"]) > 0) and len(row["curve_flops"]) == cp
        # The same number of configurations; the choice is the smallest validation median.
        grid = row["grid"]
        grid_sizes.add(len(grid))
        val = np.asarray([_inf(r) for r in row["validation_loss_per_seed_and_setting"]])
        assert val.shape == (R, len(grid))
        np.testing.assert_allclose(
            np.median(val, axis=0), _inf(row["validation_loss_per_setting_median"]), rtol=2e-3
        )
        assert row["chosen"] == grid[int(np.argmin(np.median(val, axis=0)))]
        # Per-seed test figures for every seed; the summary is their median, inside its CI.
        finals = _inf(row["test_loss_after_k_per_seed"])
        assert finals.shape == (R,) and np.all(np.isfinite(finals))
        assert row["test_loss_after_k_median"] == pytest.approx(np.median(finals), rel=2e-3)
        lo, hi = row["test_loss_after_k_ci95"]
        assert lo <= row["test_loss_after_k_median"] <= hi
        assert row["curve_median"][-1] == pytest.approx(row["test_loss_after_k_median"], rel=2e-3)
        assert len(row["curve_median"]) == len(row["curve_ci95"]) == cp
        wall = row["wall_s"]
        assert (
            wall["runs_per_call"] == R * len(grid) and len(wall["chunks_all_configurations"]) == cp
        )
        # Meta-training helps: the chosen start adapts better than the standard one.
        assert row["test_loss_after_k_median"] < q4["contenders"]["standard"]["test_loss_after_k"]
    assert grid_sizes == {3}

    paired, c = q4["paired"], q4["contenders"]
    assert paired["num_seeds"] == R
    ev = _inf(c["evolved"]["test_loss_after_k_per_seed"])
    for other in ("reptile", "pretrain"):
        o = _inf(c[other]["test_loss_after_k_per_seed"])
        pair = paired[f"evolved_vs_{other}"]
        assert pair["evolved_lower_seeds"] == int(np.sum(ev < o))
        np.testing.assert_allclose(
            _inf(pair["ratio_evolved_over_other_per_seed"]), ev / o, rtol=2e-3
        )
