"""Study Q5's quick run (``benchmarks/study_q5.py``): equal training FLOPs for every arm, the
same population for a search and its random-search control, a manual sweep matched to the
search's compute, choices made on validation by the stated rule, counts that agree."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from test_benchmark_scripts import run_quick_study


def _macs(sizes: list[int]) -> int:
    return sum(a * b for a, b in itertools.pairwise(sizes))


def _params_of(description: str) -> int:
    """Parameters of ``"64 -> 8 tanh -> 16 relu -> 10"`` (weights and biases)."""
    sizes = [int(m) for m in re.findall(r"\d+", description)]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def _check_summary(summary: dict, n: int, test_size: int | None = None) -> None:
    values = summary["per_seed"]
    assert len(values) == n and all(v is not None for v in values)
    lo, hi = summary["ci95"]
    assert lo <= summary["median"] <= hi
    assert summary["median"] == pytest.approx(float(np.median(values)), abs=1e-3)
    if test_size is not None:  # accuracies on the test set: whole numbers of examples
        for v in values:
            assert round(v * test_size) == pytest.approx(v * test_size, abs=0.03)


def test_study_quick_q5_equal_compute_and_choices_on_validation(tmp_path: Path) -> None:
    report = run_quick_study(tmp_path, "q5")
    q5 = report["q5"]
    n = len(q5["seeds"])
    assert n >= 2 and len(q5["loadavg_start"]) == 3

    # (a) PBT against random search: the same population, steps and FLOPs.
    hp = q5["hyperparameters"]
    t = hp["task"]
    B, H, P, S = t["batch"], int(t["model"].split("-")[1]), t["population"], t["steps_per_member"]
    assert hp["flops_per_member_step"] == 3 * 2 * B * _macs([64, H, H, 10])
    arms = hp["arms"]
    assert set(arms) == {"pbt", "random_search"}
    assert arms["pbt"]["train_flops"] == arms["random_search"]["train_flops"]
    assert arms["pbt"]["train_flops"] == P * S * hp["flops_per_member_step"]
    assert arms["pbt"]["member_steps"] == arms["random_search"]["member_steps"] == P * S
    for arm in arms.values():
        _check_summary(arm["test_accuracy"], n, test_size=t["train/validation/test"][2])
        for h in arm["chosen_hparams_per_seed"]:  # chosen inside the search space (clipped)
            assert 1e-4 * 0.999 <= h["learning_rate"] <= 1.0 * 1.001
            assert 0.0 <= h["momentum"] <= 0.99 * 1.001
            assert 1e-6 * 0.999 <= h["weight_decay"] <= 1e-2 * 1.001
    d = hp["pbt_minus_random_points"]
    assert d["wins"] + d["ties"] + d["losses"] == n
    pbt, rs = (np.asarray(arms[k]["test_accuracy"]["per_seed"]) for k in ("pbt", "random_search"))
    np.testing.assert_allclose(d["per_seed"], 100 * (pbt - rs), atol=1e-3)

    # (b) architecture search, random architecture search, manual sweep.
    ar = q5["architecture"]
    t, arms = ar["task"], ar["arms"]
    space, B, P, S = t["space"], t["batch"], t["population"], t["steps_per_member"]
    W, D, test_size = max(space["widths"]), space["max_depth"], t["train/validation/test"][2]
    dense = 3 * 2 * B * _macs([64, *[W] * D, 10])  # the maximum network, every member and step
    assert set(arms) == {"arch_search", "random_arch_search", "manual_sweep"}
    for name in ("arch_search", "random_arch_search"):
        arm = arms[name]
        assert arm["train_flops"] == P * S * dense and arm["member_steps"] == P * S
        _check_summary(arm["test_accuracy"], n, test_size)
        for desc, params in zip(arm["chosen_per_seed"], arm["params_per_seed"], strict=True):
            assert _params_of(desc) == params <= space["max_num_params"]
            assert 1 <= desc.count("->") - 1 <= D
            assert all(a in space["activations"] for a in re.findall(r"[a-z]+", desc))
        assert all(1e-3 * 0.999 <= lr <= 1e-2 * 1.001 for lr in arm["learning_rate_per_seed"])
    m = arms["manual_sweep"]
    configs = m["configs"]
    assert len(configs) == 6 == len(set(configs)) == len(m["params_per_config"])
    # Matched compute: N steps for each configuration, the most that fit the search's FLOPs.
    per_step_all = sum(m["flops_per_step_per_config"])
    assert m["search_train_flops"] == arms["arch_search"]["train_flops"]
    assert m["train_flops"] == m["steps_per_config"] * per_step_all
    assert 0 <= m["search_train_flops"] - m["train_flops"] < per_step_all
    for c, flops, params in zip(
        configs, m["flops_per_step_per_config"], m["params_per_config"], strict=True
    ):
        w = int(c.split("-")[1])
        assert flops == 3 * 2 * B * _macs([64, w, w, 10])
        assert params == _params_of(c.split(" ")[0].replace("-", " -> "))
    checkpoints = [k for k in m if k.startswith("at_")]
    assert sorted(m[k]["steps"] for k in checkpoints) == sorted([m["steps_per_config"], S])
    for k in checkpoints:
        row = m[k]
        val = np.asarray(row["validation_accuracy"], float)  # (configs, seeds)
        assert val.shape == (6, n)
        for i, (c, name) in enumerate(
            zip(row["chosen_index_per_seed"], row["chosen_per_seed"], strict=True)
        ):
            assert configs[c] == name and val[c, i] == val[:, i].max()  # the best on validation
            assert row["params_per_seed"][i] == m["params_per_config"][c]
            assert row["val_accuracy_per_seed"][i] == val[c, i]
        _check_summary(row["test_accuracy"], n, test_size)
    assert m["test_accuracy"] == m["at_equal_flops"]["test_accuracy"]
    pairs = ar["paired_points"]
    acc = {k: np.asarray(v["test_accuracy"]["per_seed"]) for k, v in arms.items()}
    for key, (a, b) in {
        "arch_minus_random": ("arch_search", "random_arch_search"),
        "arch_minus_manual": ("arch_search", "manual_sweep"),
        "random_minus_manual": ("random_arch_search", "manual_sweep"),
    }.items():
        np.testing.assert_allclose(pairs[key]["per_seed"], 100 * (acc[a] - acc[b]), atol=1e-3)
        assert pairs[key]["wins"] + pairs[key]["ties"] + pairs[key]["losses"] == n
