"""The study's Q3 (many minima, with a wide-initialisation control) in its quick form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import fisher_exact
from test_benchmark_scripts import run_quick_study


def _per_unit(name: str, t: dict, ga_steps: int) -> float:
    """FLOPs per step / generation from the recorded network size and the stated formula."""
    nF = t["train_points"] * t["forward_flops_per_example"]
    if name == "adam":
        return 3 * nF
    if name.startswith("restarts"):
        return 3 * nF * 8
    if name.endswith("_ga"):
        return 8 * (3 * ga_steps + 1) * nF
    if name == "esgd":  # the back-off's evaluations before and after the steps
        return 8 * (3 * ga_steps + 3) * nF
    if name in ("guided_es", "blended_es"):  # one gradient at the mean
        return 64 * nF + 3 * nF
    return 64 * nF


def test_study_quick_q3_equal_flops_and_choices_on_validation(tmp_path: Path) -> None:
    report = run_quick_study(tmp_path, "q3")
    q3 = report["q3"]
    size = q3["size"]
    assert list(q3["tasks"]) == size["tasks"]
    for task, t in q3["tasks"].items():
        rows = t["contenders"]
        assert list(rows) == size["contenders"]
        tune, test = t["tuning_seeds"], t["test_seeds"]
        assert len(test) == 3 * len(tune) and not set(tune) & set(test)
        for name, row in rows.items():
            # Equal FLOPs: each budget is the task's, to the rounding of units to checkpoints.
            assert row["flops_per_unit"] == pytest.approx(_per_unit(name, t, size["ga_steps"]))
            assert row["flops"] == pytest.approx(row["units"] * row["flops_per_unit"])
            assert row["flops"] == pytest.approx(t["budget_flops"], rel=0.02)
            assert row["curve_flops"][-1] == pytest.approx(row["flops"])
            # The same number of settings, the choice made on validation by the stated rule.
            grid = row["grid"]
            assert len(grid) == 3 == len(row["validation_median"])
            assert len(row["validation_successes"]) == 3
            assert all(0 <= w <= len(tune) for w in row["validation_successes"])
            key = [
                (w, m)
                for w, m in zip(row["validation_successes"], row["validation_median"], strict=True)
            ]
            assert row["chosen"] == grid[key.index(max(key))]
            # Counts and intervals consistent with the per-seed test scores.
            scores = np.array([np.nan if v is None else v for v in row["test_score_per_seed"]])
            assert len(scores) == len(test)
            ok = scores >= t["threshold"] - t["threshold_tolerance"]
            assert row["successes"] == int(ok.sum())
            assert row["success_rate"] == pytest.approx(ok.mean())
            lo, hi = row["test_ci95"]
            assert lo <= row["test_median"] <= hi
            assert row["test_median"] == pytest.approx(np.median(scores), abs=1e-3)
            assert row["curve_test_median"][-1] == pytest.approx(row["test_median"], abs=1e-3)
            for fin, fl in zip(ok, row["flops_to_success_per_seed"], strict=True):
                assert fl is None or 0 <= fl <= row["flops"] * 1.0001
                assert not fin or fl is not None  # a final success was met at some checkpoint
        # The control does what it is there for: on the sine task the wide first layer puts
        # frequencies near the target's, which the narrow restarts (the same draws) cannot.
        if task == "sine":
            assert rows["restarts_wide"]["test_median"] > rows["restarts"]["test_median"] + 0.3
            cmp = t["comparison"]
            assert cmp["restarts_wide_successes"] == rows["restarts_wide"]["successes"]
            assert cmp["paired_wide_only_seeds"] >= cmp["paired_narrow_only_seeds"]
            ga, n = rows[cmp["best_ga"]]["successes"], len(test)
            wide = cmp["restarts_wide_successes"]
            p = fisher_exact([[ga, n - ga], [wide, n - wide]])[1]
            assert cmp["fisher_exact_p_ga_vs_wide"] == pytest.approx(p, abs=1e-4)
