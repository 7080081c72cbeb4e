"""Q2's network FLOPs: what an environment step costs each method, counted from the networks.

Q2 matches **CPU seconds** per run (``benchmarks/study_q2.py``); this module adds the second
axis, counted network FLOPs, from the environment steps each run simulated, so every figure
can be read at equal FLOPs too. The convention is Q1's: a dense layer's forward costs
2 x fan_in x fan_out (biases, activations, the environment's own arithmetic, optimizer and
strategy updates not counted), a backward pass twice its forward.

* **Evolution** (OpenAI-ES, the GA, SNES): one forward of the policy per simulated step, the
  only network work there is: ``F_actor`` per step. The ES's steps are every member's episode
  up to its end (``study_q2``'s step count).
* **PPO** (rejax): per collected step, one actor and one critic forward to act and to value
  the state, then ``num_epochs`` passes of the batch, each a forward and a backward of both
  networks (rejax's ``update_actor`` / ``update_critic``): ``(1 + 3 num_epochs)
  (F_actor + F_critic)`` per step. The critic has the actor's hidden layers and one output
  (rejax's ``VNetwork``); the bootstrap value of the last observation (one per
  ``num_envs x num_steps`` steps) is not counted.

``python benchmarks/study_q2_flops.py A.json [B.json ...]`` prints the FLOPs of recorded runs
(each a study JSON with a ``"q2"`` key) as a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from study_q2_ppo import HIDDEN, PPO_SOURCES, hidden_of


def dense_flops(sizes: list[int]) -> int:
    """Forward FLOPs of an MLP with layer widths ``sizes`` (input first), 2 per multiply-add."""
    return 2 * sum(i * o for i, o in itertools.pairwise(sizes))


def env_io(env_name: str) -> tuple[int, int]:
    """The flattened observation size and the policy's outputs (``RLTask``'s, which the ES's
    policy uses; rejax's actor has the same: logits per action, or the action mean)."""
    from evojax_nets.tasks.rl import RLTask

    task = RLTask(env_name)
    return math.prod(task.obs_shape), task.num_outputs


def flops_per_env_step(
    method: str, obs: int, outputs: int, hidden: tuple[int, ...], num_epochs: int
) -> dict[str, Any]:
    actor = dense_flops([obs, *hidden, outputs])
    if method not in PPO_SOURCES:
        return {"flops_per_env_step": actor, "formula": "F_actor (one policy forward)"}
    critic = dense_flops([obs, *hidden, 1])
    return {
        "flops_per_env_step": (1 + 3 * num_epochs) * (actor + critic),
        "formula": f"(1 + 3 x {num_epochs} epochs) x (F_actor + F_critic)",
        "critic_forward_flops": critic,
    }


def _scaled(value: float | None, per_step: float) -> float | None:
    return None if value is None else float(value) * per_step


def annotate(q2: dict[str, Any], hidden: tuple[int, ...]) -> dict[str, Any]:
    """Adds counted FLOPs to every method of every environment of a Q2 section, in place:
    per step, to the threshold and at the end of each run, and their medians (an unreached run
    counts as infinite, as for the steps). An ES is counted for its recorded ``policy``
    (``hidden`` for runs recorded before ES recorded one); a PPO contender's networks and epochs
    are its own recorded configuration's (runs recorded before there was more than one PPO
    contender: the environment's ``ppo_config``)."""
    for env_name, row in q2["envs"].items():
        obs, outputs = env_io(env_name)
        for name, m in row["methods"].items():
            config = m.get("ppo_config", row["ppo_config"])
            if name in PPO_SOURCES:
                layers = hidden_of(config)
            else:  # the ES's own recorded policy (runs recorded before it: ``hidden``)
                layers = tuple(m.get("policy", {}).get("hidden", hidden))
            per = flops_per_env_step(name, obs, outputs, layers, config["num_epochs"])
            f = per["flops_per_env_step"]
            m["flops"] = {
                **per,
                "actor_forward_flops": dense_flops([obs, *layers, outputs]),
                "to_threshold_per_run": [_scaled(r["steps_to_threshold"], f) for r in m["runs"]],
                "final_per_run": [_scaled(r["final_steps"], f) for r in m["runs"]],
            }
            to = [np.inf if v is None else v for v in m["flops"]["to_threshold_per_run"]]
            med = float(np.median(to))
            m["flops"]["to_threshold_median"] = med if np.isfinite(med) else None
            m["flops"]["final_median"] = float(np.median(m["flops"]["final_per_run"]))
        row["at_equal_flops"] = at_equal_flops(row)
    return q2


def at_equal_flops(row: dict[str, Any]) -> dict[str, Any]:
    """Every method's return at one FLOPs budget for an environment (a row of ``annotate``'s):
    the end of the run that spent the fewest FLOPs, so every run of every method got that far.
    A run's return there is its last evaluation at or below the budget (its recorded curve;
    none if its first evaluation came later); medians with bootstrap 95% intervals."""
    from study import _fmt, bootstrap_median

    methods = row["methods"]
    budget = min(min(m["flops"]["final_per_run"]) for m in methods.values())
    out: dict[str, Any] = {"budget_flops": budget, "methods": {}}
    for name, m in methods.items():
        f = m["flops"]["flops_per_env_step"]
        per_run = []
        for i in range(len(m["runs"])):
            seen = [p["eval_return"][i] for p in m["curve"] if p["steps"][i] * f <= budget]
            per_run.append(seen[-1] if seen else None)
        values = np.array([np.nan if v is None else v for v in per_run], dtype=float)
        # a run with no evaluation inside the budget counts as the worst (-inf), not as missing
        finite = np.where(np.isnan(values), -np.inf, values)
        with np.errstate(invalid="ignore"):  # a median between -inf and a value: NaN -> None
            med = float(np.median(finite))
            lo, hi = bootstrap_median(-finite)  # it ranks NaN / inf as the worst
        out["methods"][name] = {
            "steps_in_budget": budget / f,
            "return_per_run": per_run,
            "return_median": _fmt(med) if np.isfinite(med) else None,
            "return_ci95": [_fmt(-hi), _fmt(-lo)],
        }
    return out


def table(q2: dict[str, Any]) -> str:
    """A Markdown table of the counted FLOPs next to the steps and CPU seconds."""
    lines = [
        "| environment | method | FLOPs per env step | reached | steps to threshold (median) "
        "| FLOPs to threshold (median) | CPU s to threshold (median) | FLOPs per run at the "
        "end (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    e = lambda v: "—" if v is None else f"{v:.2e}"
    for env_name, row in q2["envs"].items():
        for m in row["methods"].values():
            fl = m["flops"]
            lines.append(
                f"| {env_name} | {m['label']} | {fl['flops_per_env_step']:,} | {m['reached']} "
                f"| {e(m['steps_to_threshold_median'])} | {e(fl['to_threshold_median'])} "
                f"| {m['cpu_s_to_threshold_median'] or '—'} | {e(fl['final_median'])} |"
            )
    lines += [
        "",
        "| environment | FLOPs budget (the smallest run's end) | method | steps in the budget "
        "| return there (median [95% CI]) |",
        "|---|---|---|---|---|",
    ]
    for env_name, row in q2["envs"].items():
        eq = row["at_equal_flops"]
        for name, m in eq["methods"].items():
            lines.append(
                f"| {env_name} | {eq['budget_flops']:.2e} | {row['methods'][name]['label']} "
                f"| {m['steps_in_budget']:.3g} | {m['return_median']} {m['return_ci95']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from study_q2 import merge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="study JSONs with a q2 section")
    parser.add_argument("--out", default=None, help="write the annotated Q2 section here")
    args = parser.parse_args(argv)
    q2 = annotate(merge(args.reports), HIDDEN)
    print(table(q2))
    if args.out:
        Path(args.out).write_text(json.dumps(q2, indent=1))


if __name__ == "__main__":
    main()
