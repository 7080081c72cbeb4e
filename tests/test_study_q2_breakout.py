"""Q2's Breakout-MinAtar wiring, without training: rejax's published configuration, the same
policy network for PPO and the ES, the 5-tuple adapter, the merged figure. Cheap: nothing of
PPO's training is compiled (its full run is ``study.py --questions q2 --q2-envs
Breakout-MinAtar``)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = "Breakout-MinAtar"


@pytest.fixture()
def q2(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q2
    import study_q2_ppo

    return study_q2, study_q2_ppo


def test_breakout_config_network_and_adapter(q2) -> None:
    study_q2, ppo = q2
    spec = study_q2.ENVS[ENV]
    assert spec["methods"] == ("ppo", "ppo_blines", "open_es", "snes")
    assert spec["threshold"] == 10.0
    assert ENV not in ppo.QUICK["envs"]  # the quick test stays CartPole only
    # The PPO entry of rejax's benchmark/breakout_1m.yaml, as numbers.
    config = ppo.PPO_CONFIGS[ENV]
    assert (config["num_envs"], config["num_steps"], config["num_epochs"]) == (32, 32, 4)
    assert config["learning_rate"] == pytest.approx(2.5674e-4, rel=1e-4)
    assert (config["gamma"], config["max_grad_norm"], config["ent_coef"]) == (0.995, 1.0, 0.01)
    assert spec["ppo_chunk_steps"] % (config["num_envs"] * config["num_steps"]) == 0

    # Same network: rejax's actor (built, not trained) and the ES's MLPPolicy, 400-64-64-3.
    algo = ppo.make_ppo(ENV, config["learning_rate"], spec["ppo_chunk_steps"], quick=False)
    obs = jnp.zeros((1, 10, 10, 4))
    params = algo.actor.init(jax.random.key(0), obs, jax.random.key(1))["params"]
    shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(params))
    expected = [(3,), (64,), (64,), (64, 3), (64, 64), (400, 64)]
    assert shapes == expected and sum(x.size for x in jax.tree.leaves(params)) == 30_019
    for method in ("open_es", "snes"):
        evo = study_q2.make_evolution(ENV, method, quick=False)
        assert evo.strategy.num_dims == 30_019 and evo.strategy.population_size == 256
    assert study_q2.make_evolution(ENV, "snes", False, 64).strategy.population_size == 64
    assert study_q2.ES_GRIDS["snes"][0] == "std" and len(study_q2.ES_GRIDS["snes"][1]) == 3

    # The adapter: gymnax 1.0's (terminated, truncated) as rejax 0.1.3's single done.
    import gymnax

    genv, params_env = gymnax.make(ENV)
    env = ppo.five_tuple(genv)
    o, state = env.reset(jax.random.key(0), params_env)
    out = env.step(jax.random.key(1), state, 0, params_env)
    assert len(out) == 5 and out[0].shape == o.shape == (10, 10, 4) and out[3].dtype == bool


def test_gymnax_blines_config_and_its_own_networks_flops(q2) -> None:
    """The second PPO contender on Breakout: gymnax-blines' published configuration, with its
    256-256 relu actor and critic (built, not trained), counted with its own networks."""
    study_q2, ppo = q2
    spec = study_q2.ENVS[ENV]
    config = ppo.ppo_config(ENV, quick=False, method="ppo_blines")
    assert (config["num_envs"], config["num_steps"]) == (64, 128)
    assert (config["num_epochs"], config["num_minibatches"]) == (4, 8)
    assert (config["learning_rate"], config["gamma"], config["max_grad_norm"]) == (5e-4, 0.999, 0.5)
    assert spec["ppo_blines_chunk_steps"] % (64 * 128) == 0
    algo = ppo.make_ppo(ENV, 5e-4, spec["ppo_blines_chunk_steps"], quick=False, method="ppo_blines")
    obs = jnp.zeros((1, 10, 10, 4))
    actor = algo.actor.init(jax.random.key(0), obs, jax.random.key(1))["params"]
    shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(actor))
    assert shapes == [(3,), (256,), (256,), (256, 3), (256, 256), (400, 256)]
    assert algo.actor.activation is jax.nn.relu
    with pytest.raises(ValueError, match=r"ppo_blines has a configuration for \['Breakout"):
        ppo.ppo_config("CartPole-v1", quick=False, method="ppo_blines")
    # FLOPs per step from its own recorded networks, not the ES's 64-64 policy.
    report = _fake(ENV, 10.0)
    row = report["q2"]["envs"][ENV]
    row["methods"]["ppo_blines"] = dict(row["methods"]["ppo"], ppo_config=config)
    methods = study_q2.annotate(report["q2"], ppo.HIDDEN)["envs"][ENV]["methods"]
    a, c = 2 * (400 * 256 + 256 * 256 + 256 * 3), 2 * (400 * 256 + 256 * 256 + 256)
    assert methods["ppo_blines"]["flops"]["flops_per_env_step"] == 13 * (a + c) == 8_759_296
    assert methods["ppo"]["flops"]["flops_per_env_step"] == 1_550_848


def test_es_can_evolve_gymnax_blines_actor_and_are_counted_for_it(q2) -> None:
    """``--q2-es-network blines``: the ES evolve the ppo_blines contender's 256-256 relu actor,
    record it, and their FLOPs are counted for it; envs without that configuration are refused
    before anything runs."""
    import argparse

    study_q2, ppo = q2
    spec = study_q2.es_policy(ENV, "blines", quick=False)
    assert spec == {"hidden": [256, 256], "activation": "relu"}
    rejax = study_q2.es_policy(ENV, "rejax", quick=False)
    assert rejax == {"hidden": [64, 64], "activation": "tanh"}
    evo = study_q2.make_evolution(ENV, "snes", False, 64, spec)
    assert evo.strategy.num_dims == 400 * 256 + 256 + 256 * 256 + 256 + 256 * 3 + 3 == 169_219
    report = _fake(ENV, 10.0)
    row = report["q2"]["envs"][ENV]
    row["methods"]["snes"] = dict(row["methods"]["ppo"], policy=spec)
    methods = study_q2.annotate(report["q2"], ppo.HIDDEN)["envs"][ENV]["methods"]
    assert methods["snes"]["flops"]["flops_per_env_step"] == 2 * (400 * 256 + 256 * 256 + 256 * 3)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    study_q2.add_arguments(parser)
    args = parser.parse_args(["--q2-envs", "CartPole-v1", "--q2-es-network", "blines"])
    with pytest.raises(ValueError, match=r"blines' configuration is recorded for \['Breakout"):
        study_q2.run(args)


def test_merge_joins_one_environments_methods_of_one_budget(q2, tmp_path: Path) -> None:
    study_q2, _ = q2
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    first = _fake(ENV, 10.0)
    first["q2"]["envs"][ENV]["budget_cpu_s_per_run"] = 60.0
    a.write_text(json.dumps(first))
    second = json.loads(json.dumps(first))
    row = second["q2"]["envs"][ENV]
    row["methods"] = {"ppo_blines": dict(row["methods"]["ppo"], chosen=5e-4)}
    b.write_text(json.dumps(second))
    merged = study_q2.merge([a, b])["envs"][ENV]["methods"]
    assert list(merged) == ["ppo", "ppo_blines"] and merged["ppo_blines"]["chosen"] == 5e-4
    row["budget_cpu_s_per_run"] = 165.0
    c.write_text(json.dumps(second))
    with pytest.raises(ValueError, match=r"budget_cpu_s_per_run is 165\.0, 60\.0 in the files"):
        study_q2.merge([a, c])


def _fake(env: str, threshold: float) -> dict:
    curve = [
        {"steps": [10 * k, 12 * k], "eval_return": [k, k + 1], "cpu_s": k, "wall_s": k}
        for k in (1, 2, 3)
    ]
    method = {"label": "PPO (rejax)", "setting": "learning_rate", "chosen": 0.001}
    runs = [
        {"steps_to_threshold": None, "final_steps": 30},
        {"steps_to_threshold": 24, "final_steps": 36},
    ]
    method.update(curve=curve, runs=runs)
    row = {"threshold": threshold, "ppo_config": {"num_epochs": 4}, "methods": {"ppo": method}}
    return {"q2": {"envs": {env: row}}}


def test_plot_from_several_jsons(q2, tmp_path: Path) -> None:
    study_q2, ppo = q2
    a, b, png = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "q2.png"
    a.write_text(json.dumps(_fake("CartPole-v1", 500.0)))
    b.write_text(json.dumps(_fake(ENV, 10.0)))
    study_q2.main(["--plot-from", str(a), str(b), "--png", str(png)])
    merged = study_q2.merge([a, b])
    assert list(merged["envs"]) == ["CartPole-v1", ENV]
    # Breakout's PPO FLOPs per step from the published networks (400-64-64-3 actor, 400-64-64-1
    # critic): act and value once, then 4 epochs of forward and backward of both.
    actor, critic = 2 * (400 * 64 + 64 * 64 + 64 * 3), 2 * (400 * 64 + 64 * 64 + 64)
    flops = study_q2.annotate(merged, ppo.HIDDEN)["envs"][ENV]["methods"]["ppo"]["flops"]
    assert flops["flops_per_env_step"] == (1 + 3 * 4) * (actor + critic) == 1_550_848
    assert flops["to_threshold_per_run"] == [None, 24 * 1_550_848]
    assert flops["to_threshold_median"] is None  # one of two runs never reached it: inf
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chosen_from_names_what_is_missing_before_anything_runs(q2, tmp_path: Path) -> None:
    """``--q2-chosen-from`` reads every method's setting before the first run, and an earlier
    run without one of them is refused with what it does have."""
    import argparse

    study_q2, _ = q2
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(_fake("CartPole-v1", 500.0)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    study_q2.add_arguments(parser)
    args = parser.parse_args(["--q2-envs", ENV, "--q2-chosen-from", str(earlier)])
    with pytest.raises(ValueError, match=r"no ppo on Breakout-MinAtar; it has \{'CartPole-v1'"):
        study_q2.run(args)
    assert study_q2._chosen(study_q2.merge([earlier])["envs"], "CartPole-v1", "ppo") == 0.001
    # Methods that run on none of the environments asked for are refused, naming who runs where.
    args = parser.parse_args(["--q2-envs", "CartPole-v1", "--q2-methods", "snes", "ppo_blines"])
    with pytest.raises(ValueError, match=r"run on none of \{'CartPole-v1': \['ppo', 'open_es'\]"):
        study_q2.run(args)
    # An odd population is refused before anything runs.
    args = parser.parse_args(["--q2-envs", ENV, "--q2-population", "63"])
    with pytest.raises(ValueError, match="--q2-population must be an even integer >= 2, got 63"):
        study_q2.run(args)
    # A grid of one's own cannot be combined with settings chosen earlier, nor be non-positive.
    for extra in (["--q2-chosen-from", str(earlier)], []):
        grid = ["--q2-grid", "0.001"] if extra else ["--q2-grid", "0.0", "0.1"]
        args = parser.parse_args(["--q2-envs", ENV, *grid, *extra])
        with pytest.raises(ValueError, match=r"--q2-grid \[.*\]: positive values"):
            study_q2.run(args)


def test_returns_at_equal_flops_read_each_curve_at_the_smallest_runs_end(q2) -> None:
    """The FLOPs budget is the end of the run that spent the fewest FLOPs (here an ES run: 600
    steps x one 400-64-64-3 forward); each run's return is its last evaluation within it."""
    study_q2, ppo = q2
    report = _fake(ENV, 10.0)
    es_curve = [
        {"steps": [200 * k, 300 * k], "eval_return": [10 * k, 20 * k], "cpu_s": k, "wall_s": k}
        for k in (1, 2, 3)
    ]
    es_runs = [
        {"steps_to_threshold": 200, "final_steps": 600},
        {"steps_to_threshold": 300, "final_steps": 900},
    ]
    report["q2"]["envs"][ENV]["methods"]["open_es"] = {
        "label": "OpenAI-ES",
        "curve": es_curve,
        "runs": es_runs,
    }
    row = study_q2.annotate(report["q2"], ppo.HIDDEN)["envs"][ENV]
    actor = 2 * (400 * 64 + 64 * 64 + 64 * 3)
    eq = row["at_equal_flops"]
    assert eq["budget_flops"] == 600 * actor  # below PPO's 30 x 1,550,848
    # PPO affords 600 x actor / 1,550,848 = 23.1 steps: run 0's evaluation at 20, run 1's at 12
    assert eq["methods"]["ppo"]["return_per_run"] == [2, 2]
    assert eq["methods"]["ppo"]["steps_in_budget"] == pytest.approx(23.13, abs=0.01)
    # the ES: run 0 ends exactly at the budget (30); run 1 reads its 600-step evaluation (40)
    assert eq["methods"]["open_es"]["return_per_run"] == [30, 40]
    assert eq["methods"]["open_es"]["return_median"] == 35.0
    # a run whose first evaluation lies past the budget counts as the worst, not as missing
    es_curve[0]["steps"][1] = 2000
    es_runs[1]["final_steps"] = 5000
    for k in (1, 2):
        es_curve[k]["steps"][1] = 2000 + k
    row = study_q2.annotate(report["q2"], ppo.HIDDEN)["envs"][ENV]
    es = row["at_equal_flops"]["methods"]["open_es"]
    assert es["return_per_run"] == [30, None]
    assert es["return_median"] is None and es["return_ci95"][0] is None
