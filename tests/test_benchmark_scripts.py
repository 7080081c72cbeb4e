"""Benchmark scripts that cannot run at full size here still run end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from xla import child_env

ROOT = Path(__file__).parent.parent


def test_gpu_check_runs_on_cpu_with_quick_settings() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    for dtype in ("float32", "bfloat16"):
        row = report[dtype]
        assert row["evaluation_tflops"] > 0
        assert row["evaluation_fraction_of_measured_peak"] > 0
        assert row["generations_per_s"] > 0
        assert row["generations_per_s_with_1_gradient_steps"] > 0


def test_hybrid_minima_sine_task_runs_and_scores_r2(tmp_path: Path) -> None:
    out, png = tmp_path / "h.json", tmp_path / "h.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "hybrid.py"), "--parts", "minima"]
    cmd += ["--minima-budget", "0.3", "--minima-seeds", "1", "--out", str(out), "--png", str(png)]
    cmd += ["--minima-contenders", "adam", "lamarckian_ga"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    minima = json.loads(out.read_text())["minima"]
    assert minima["task"] == "sine" and minima["hidden"] == [2] and png.stat().st_size > 0
    for name in ("adam", "lamarckian_ga"):
        score = minima["runs"][0]["contenders"][name]["final_accuracy"]  # test R^2
        assert -10.0 < score <= 1.0
        assert minima["summary"][name]["success_rate"] in (0.0, 1.0)


def test_sweep_quick_is_one_program_and_matches_sequential(tmp_path: Path) -> None:
    # The digits workload only: CartPole's rollouts take about 30 s more to compile here.
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--quick"]
    cmd += ["--workloads", "digits", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("{\n") :]) == report
    row = report["workloads"]["digits"]
    assert len(row["configs"]) == 2 == row["num_configs"]
    assert row["compile_count"] == 1 and row["compile_count_timed_sweep_runner"] == 1
    assert row["compile_count_sequential_runner"] == 1
    assert row["max_abs_diff_vs_sequential_gen1"] <= 1e-5
    assert row["api_sweep_configs_match"] and row["api_sweep_max_abs_diff_vs_timed_sweep"] == 0.0
    assert len(row["final_fitness_sweep"]) == len(row["final_fitness_sequential"]) == 2
    assert row["sweep_s"] > 0 and row["sequential_s"] > 0 and row["ratio"] > 0


def _check_png(path: Path) -> None:
    head = path.read_bytes()[:24]  # a PNG whose header (IHDR) gives a figure-sized image
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width >= 400 and height >= 200, (width, height)


def run_quick_study(tmp_path: Path, question: str, timeout: int = 600) -> dict:
    """``study.py --quick --questions <question>`` in a child process with the suite's XLA
    flags; checks its exit status, that the JSON it prints is the one it writes, and its plot.
    Returns the whole report."""
    out, png = tmp_path / "study.json", tmp_path / f"{question}.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "--quick"]
    cmd += ["--questions", question, "--out", str(out), f"--png-{question}", str(png)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("{\n") :]) == report
    assert report["quick"] is True
    _check_png(png)
    return report


def _check_q1(q1: dict) -> None:
    """Q1's quick run: equal tuning budgets, a choice made by the recorded rule, per-seed
    values for every seed, FLOPs that follow from the recorded steps and the stated formula,
    and the reduced sizes running only the setting chosen at the largest tuned size."""
    seeds, task = q1["seeds"], q1["task"]
    P, B = task["population"], task["batch"]
    tuned_up_to = q1["tuned_up_to_hidden"]
    sizes = q1["sizes"]
    assert [r["hidden"] for r in sizes] == [8, 16, 24] and tuned_up_to == 16
    assert all(sizes[i]["D"] < sizes[i + 1]["D"] for i in range(len(sizes) - 1))
    assert len(q1["loadavg_start"]) == 3 and len(q1["loadavg_end"]) == 3
    # The quick subset: both gradient methods, OpenAI-ES and one evosax strategy.
    methods = {"adam", "sgd_momentum", "open_es", "snes"}
    assert set(q1["methods_run"]) == methods and q1["methods_reused"] == []
    population_based = {"pso", "de", "deep_ga"}
    chosen_at_tuned: dict = {}
    failed_at: dict = {}
    for size in sizes:
        h, num_weights = size["hidden"], size["D"]
        tuned = h <= tuned_up_to
        assert num_weights == h * h + 76 * h + 10  # MLP 64-h-h-10 with biases
        matrices = 64 * h + h * h + 10 * h
        forward = 2 * B * matrices
        assert set(size["methods"]) == methods
        for name, row in size["methods"].items():
            kind = q1["contenders"][name]["kind"]
            if "not_run" in row:
                # Only the labelled cuts: above the tuned sizes for the methods not kept
                # there, or a method that reached the target nowhere at a smaller size.
                assert not tuned or name in failed_at, (h, name)
                assert name not in q1["large_methods"] or name in failed_at, (h, name)
                continue
            if kind == "gradient":
                expected = 3 * forward
            elif name == "lowrank_es":
                expected = 2 * B * 64 * h + P * (
                    2 * B * (h * h + 10 * h) + 2 * B * (64 + h + h + h + h + 10)
                )
            else:  # every other evolution strategy: P forwards of a minibatch each
                expected = P * forward
            initial = P * forward if name in population_based else 0
            assert row["flops_per_step"] == expected, name
            assert row["flops_initial"] == initial, name
            upper = 3 * forward if kind == "gradient" else P * forward
            assert row["flops_per_step_upper_bound"] == upper
            grid = row["grid"]
            if tuned:  # the same number of configurations for every contender
                assert grid == q1["contenders"][name]["grid"] and len(grid) == 3
            else:  # reduced: the one setting the method chose at the largest tuned size
                assert name in q1["large_methods"] and grid == [chosen_at_tuned[name]]
            calls = 1 if row["wall_s"]["runs_per_call"] == 1 else len(grid) * len(seeds)
            assert row["wall_s"]["runs_per_call"] == calls
            if calls == 1:  # one seed per call: only for an ES above the tuned sizes
                assert not tuned and kind == "es" and len(seeds) > 1
            assert len(row["validation_median_flops_to_target"]) == len(grid)
            assert row["chosen"] in grid
            # The chosen setting has the smallest median FLOPs to target on validation.
            medians = [np.inf if v is None else v for v in row["validation_median_flops_to_target"]]
            assert medians[grid.index(row["chosen"])] == min(medians)
            if tuned:
                chosen_at_tuned[name] = row["chosen"]
                if not any(row["validation_success_per_setting"]):
                    failed_at.setdefault(name, h)
            steps = row["steps_to_target_per_seed"]
            for key in (
                "flops_to_target_per_seed",
                "wall_s_to_target_per_seed",
                "test_accuracy_at_target_per_seed",
            ):
                assert len(row[key]) == len(seeds), key
            every, stop = q1["check_every"][name], row["stopped_at_step"]
            assert len(steps) == len(seeds) and stop <= row["cap"] == q1["caps"][name]
            for s, f, w, a in zip(
                steps,
                row["flops_to_target_per_seed"],
                row["wall_s_to_target_per_seed"],
                row["test_accuracy_at_target_per_seed"],
                strict=True,
            ):
                if s is None:
                    assert f is None and w is None and a is None
                else:
                    assert s % every == 0 and every <= s <= stop
                    assert f == pytest.approx(s * row["flops_per_step"] + initial, rel=1e-3)
                    assert w > 0
                    # a test accuracy measured on the 360 test images
                    assert round(a * 360) == pytest.approx(a * 360, abs=0.2)
            reached = [s for s in steps if s is not None]
            assert row["success_rate"] == len(reached) / len(seeds)
            if len(reached) == len(seeds):
                assert row["steps_to_target_median"] == np.median(reached)
                med = row["flops_to_target_median"]
                want = np.median(reached) * row["flops_per_step"] + initial
                assert med == pytest.approx(want, rel=1e-3)
                lo, hi = row["flops_to_target_ci95"]
                assert lo <= med <= hi
        # Gradient descent reaches the (quick) target on every seed at every size.
        assert size["methods"]["adam"]["success_rate"] == 1.0
        assert size["methods"]["sgd_momentum"]["success_rate"] == 1.0
    # The reduced size ran exactly the kept methods (none of them failed in quick).
    top = sizes[-1]["methods"]
    assert {m for m, r in top.items() if "not_run" not in r} == set(q1["large_methods"])
    for name, fit in q1["fits"].items():
        for key, rows in (("", sizes), ("_tuned_sizes", sizes[:2])):
            pts = [(r["D"], r["methods"][name].get("flops_to_target_median")) for r in rows]
            pts = [(d, f) for d, f in pts if f is not None]
            assert fit["sizes_used" + key] == [d for d, _ in pts]
            if len(pts) >= 2:
                b = np.polyfit(np.log10([d for d, _ in pts]), np.log10([f for _, f in pts]), 1)[0]
                assert fit["exponent_b" + key] == pytest.approx(b, abs=1e-3)
            else:
                assert "exponent_b" + key not in fit
    assert "exponent_b" in q1["fits"]["adam"] and "exponent_b" in q1["fits"]["sgd_momentum"]


def test_study_quick_q1_and_q6_equal_budgets_and_every_contender_improves(
    tmp_path: Path,
) -> None:
    out, png, png_q1 = tmp_path / "study.json", tmp_path / "study.png", tmp_path / "q1.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "--quick"]
    cmd += ["--questions", "q1", "q6"]
    cmd += ["--out", str(out), "--png", str(png), "--png-q1", str(png_q1)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("{\n") :]) == report
    assert report["quick"] is True
    _check_png(png)
    _check_png(png_q1)
    _check_q1(report["q1"])
    q6, budget = report["q6"], report["q6"]["budget"]
    assert set(q6["contenders"]) == {"sgd", "vanilla_es", "guided_es"}
    assert len(q6["seeds"]) >= 5
    for name, row in q6["contenders"].items():
        # Equal oracle calls (f values + gradients), the same number of settings tried.
        calls = budget["function_evaluations"][name] + budget["gradient_evaluations"][name]
        per_iteration = budget["calls_per_iteration"][name]
        assert calls == budget["oracle_calls"] == row["iterations"] * per_iteration
        assert len(row["grid"]) == 4 == len(row["validation_median_final_gap"])
        assert row["chosen"] in row["grid"]
        finals = row["final_gap_per_seed"]
        assert len(finals) == len(q6["seeds"]) and all(v is not None for v in finals)
        lo, hi = row["final_gap_ci95"]
        assert lo <= row["final_gap_median"] <= hi
        # Every contender's tuned run made real progress on the test instance.
        assert 0.0 <= row["final_gap_median"] < 0.5 * row["start_gap"]


def test_lowrank_quick_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "lowrank.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lowrank.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("{\n") :]) == report
    fraction = report["fraction_of_inference"]
    assert fraction["max_abs_diff_lowrank_vs_materialised"] < 1e-4
    runs = report["digits"]["runs"]
    assert set(runs) == {"lowrank_es_rank1", "open_es"}
    for run in runs.values():  # one seed: its accuracy is the median, on the 360 test images
        (accuracy,) = run["test_accuracy"]
        assert run["median_test_accuracy"] == accuracy
        assert round(accuracy * 360) == pytest.approx(accuracy * 360, abs=0.2)
    (row,) = report["big"]
    # A 16-32-10 network at P = 16: the process holds JAX and the data, not a population.
    assert row["strategy"] == "lowrank_es" and row["peak_rss_gb"] < 2.0
    assert len(report["loadavg_end"]) == 3
