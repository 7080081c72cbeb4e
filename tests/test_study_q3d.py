"""The study's Q3d (the digits hybrids against a tuned Adam) in its quick form."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from test_benchmark_scripts import run_quick_study


def _per_unit(name: str, q: dict) -> float:
    """FLOPs per step / generation from the recorded sizes and the stated formula."""
    bf = q["batch"] * q["forward_flops_per_example"]
    if name == "lamarckian_ga":
        s = q["settings"]["ga"]
        return s["population"] * (3 * q["size"]["ga_steps"] + 1) * bf
    return 3 * bf


def test_study_quick_q3d_equal_flops_validation_choice_and_early_stopping(tmp_path: Path) -> None:
    q = run_quick_study(tmp_path, "q3d")["q3d"]
    size = q["size"]
    rows = q["contenders"]
    assert list(rows) == size["contenders"] == ["adamw", "sgd_momentum", "lamarckian_ga"]
    # MLP 64-256-10 with biases, and F = 2 in out + out per dense layer.
    assert q["weights"] == 64 * 256 + 256 + 256 * 10 + 10 == 19_210
    assert q["forward_flops_per_example"] == 2 * 64 * 256 + 256 + 2 * 256 * 10 + 10
    tune, test = size["tune_seeds"], size["test_seeds"]
    assert not set(tune) & set(test) and len(test) >= len(tune)
    assert q["budget_flops"] == pytest.approx(
        3 * size["equivalents"] * q["batch"] * q["forward_flops_per_example"]
    )
    for name, row in rows.items():
        # Equal FLOPs: the budget follows from the recorded counts, within the GA's rounding.
        assert row["flops_per_unit"] == pytest.approx(_per_unit(name, q))
        assert row["flops"] == pytest.approx(row["units"] * row["flops_per_unit"])
        assert row["flops"] == pytest.approx(q["budget_flops"], rel=0.05)
        ckpts = row["checkpoint_units"]
        assert ckpts[0] == 0 and ckpts[-1] == row["units"]
        assert all(a < b for a, b in pairwise(ckpts))
        assert len(ckpts) <= size["points"] + 1
        # Geometric checkpoints: the first at the stated fraction of the budget.
        first = q["settings"]["first_checkpoint_fraction"] * row["units"]
        assert size["spacing"] == "log" and ckpts[1] == max(1, round(first))
        assert row["checkpoint_flops"] == pytest.approx(
            [u * row["flops_per_unit"] for u in row["checkpoint_units"]]
        )
        # The same number of configurations for every contender, and distinct draws.
        configs = row["configs"]
        assert len(configs) == size["configs"] == len(row["validation_score"])
        assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
        # The choice: the highest median (over tuning seeds) best validation accuracy.
        best_val = np.asarray(row["validation_best_per_seed"], float)
        assert best_val.shape == (len(configs), len(tune))
        assert row["validation_score"] == pytest.approx(np.median(best_val, axis=1), abs=1e-4)
        assert row["chosen_index"] == int(np.argmax(row["validation_score"]))
        assert row["chosen"] == configs[row["chosen_index"]]
        # Early stopping: each test run's answer is its first best-validation checkpoint, and
        # the weights handed back score that accuracy on validation.
        assert [r["seed"] for r in row["test_runs"]] == test
        for run in row["test_runs"]:
            curve = np.asarray(run["validation_curve"], float)
            assert len(curve) == len(ckpts)
            assert run["best_checkpoint"] == int(np.argmax(curve))
            assert run["answer_validation"] == pytest.approx(curve.max(), abs=1e-4)
            assert 0.0 <= run["test_accuracy"] <= 1.0
        # Medians and intervals consistent with the per-seed test accuracies.
        acc = np.asarray(row["test_accuracy_per_seed"], float)
        assert list(acc) == [r["test_accuracy"] for r in row["test_runs"]]
        assert row["test_median"] == pytest.approx(np.median(acc), abs=1e-4)
        lo, hi = row["test_ci95"]
        assert lo <= row["test_median"] <= hi
        assert row["wall_s"]["test"]["runs"] == len(test)
        assert row["wall_s"]["tuning"]["runs"] == len(tune) * len(configs)
    # The learning rate ranges are the documented ones.
    assert all(1e-4 <= c["lr"] <= 3e-2 for c in rows["adamw"]["configs"])
    assert all(3e-3 <= c["std"] <= 1e-1 for c in rows["lamarckian_ga"]["configs"])
    # The paired comparison follows from the per-seed accuracies.
    cmp = q["comparisons"][0]
    assert cmp["pair"] == "lamarckian_ga - adamw"
    d = np.asarray(rows["lamarckian_ga"]["test_accuracy_per_seed"], float) - np.asarray(
        rows["adamw"]["test_accuracy_per_seed"], float
    )
    assert cmp["difference_per_seed"] == pytest.approx(d, abs=1e-4)
    assert cmp["median"] == pytest.approx(np.median(d), abs=1e-4)
    assert cmp["wins"] + cmp["ties"] + cmp["losses"] == len(test)
    assert cmp["wins"] == int((np.round(d, 6) > 0).sum())
