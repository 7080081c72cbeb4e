"""Q2 of the study (evolution against rejax's PPO) runs end to end on its quick setting."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from test_benchmark_scripts import run_quick_study


def test_study_quick_q2_equal_cpu_budgets_and_both_learn(tmp_path: Path) -> None:
    q2 = run_quick_study(tmp_path, "q2", timeout=900)["q2"]
    (env,) = q2["envs"].values()
    budget, threshold = env["budget_cpu_s_per_run"], env["threshold"]
    assert set(env["methods"]) == {"ppo", "open_es"}
    steps_per_iteration = 2 * 16  # the quick PPO: 2 environments x 16 steps per iteration
    for name, m in env["methods"].items():
        curve, runs = m["curve"], m["runs"]
        assert m["chosen"] in m["grid"] and len(runs) == len(m["report_seeds"]) == 2
        # Equal budgets: each method stops at the first chunk that spends the CPU budget. The
        # curve records CPU seconds to 1 ms, so a chunk that ended just under the budget (say
        # 0.9996 s of 1.0) reads as the budget itself: the one before the last may equal it.
        cpu = [p["cpu_s"] for p in curve]
        assert all(b > a for a, b in itertools.pairwise(cpu))
        assert cpu[-1] >= budget >= cpu[-2]
        steps = np.array([p["steps"] for p in curve])  # (chunks, runs)
        assert (np.diff(steps, axis=0) > 0).all()
        if name == "ppo":
            assert (steps % steps_per_iteration == 0).all()
        for i, run in enumerate(runs):
            returns = [p["eval_return"][i] for p in curve]
            assert run["final_return"] == returns[-1] and run["best_return"] == max(returns)
            # Both learn: a random CartPole policy's episodes end after ~10 steps.
            assert run["best_return"] >= 3 * returns[0], (name, returns[:3], run)
            hit = next((j for j, r in enumerate(returns) if r >= threshold), None)
            if hit is None:
                assert run["steps_to_threshold"] is None
            else:
                assert run["steps_to_threshold"] == curve[hit]["steps"][i]
                assert run["cpu_s_to_threshold"] == curve[hit]["cpu_s"]
        lo, hi = m["final_return_ci95"]
        assert lo <= m["final_return_median"] <= hi
        # Counted FLOPs from the quick networks (4-8-2 actor, 4-8-1 critic, 1 PPO epoch):
        # a policy forward per ES step; PPO's forward to act and value plus one epoch of
        # forward and backward of both.
        actor, critic = 2 * (4 * 8 + 8 * 2), 2 * (4 * 8 + 8 * 1)
        per_step = (1 + 3 * 1) * (actor + critic) if name == "ppo" else actor
        flops = m["flops"]
        assert flops["flops_per_env_step"] == per_step
        assert flops["final_per_run"] == [r["final_steps"] * per_step for r in runs]
        for r, f in zip(runs, flops["to_threshold_per_run"], strict=True):
            assert f == (
                None if r["steps_to_threshold"] is None else r["steps_to_threshold"] * per_step
            )
    # The PPO configuration recorded is the one that ran (the quick one), not the published.
    assert env["ppo_config"]["num_epochs"] == 1
