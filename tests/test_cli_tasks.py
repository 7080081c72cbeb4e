"""Issue 16, items 3-5: the command line for real work (tasks, models, config files,
config.json, TensorBoard, --version, exit codes, loading a solution back), progress everywhere
(the bar, log lines, one generations-per-second figure, Weights & Biases) and fast start-up
(the compilation cache, light imports)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import evojax_nets
from evojax_nets.cli import configure_compile_cache, main, next_stretch
from evojax_nets.io import load_solution
from evojax_nets.logging import ProgressBar, WandbLogger
from evojax_nets.models import MLP
from evojax_nets.tasks import write_idx

FAST = ["--population", "8", "--no-progress"]


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(evojax_nets.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _idx_folder(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for stem, n in (("train", 40), ("t10k", 20)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 6, 6), np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


def test_issue16_idx_task_writes_config_and_a_loadable_solution(tmp_path):
    data, out = _idx_folder(tmp_path / "mnist"), tmp_path / "run"
    args = ["run", "--task", f"idx:{data}", "--model", "mlp:8", "--batch-size", "16"]
    assert main([*args, *FAST, "--generations", "2", "--out", str(out), "--tensorboard"]) == 0

    config = json.loads((out / "config.json").read_text())
    settings = config["settings"]
    assert settings["task"] == f"idx:{data}" and settings["model"] == "mlp:8"
    assert settings["population"] == 8 and settings["generations"] == 2
    assert settings["std"] == 0.05 and settings["out"] == str(out)
    assert config["seed"] == 0
    for name in ("python", "evojax_nets", "jax", "jaxlib", "flax", "optax", "evosax"):
        assert config["versions"][name]
    assert config["device"]["backend"] == jax.default_backend()
    assert config["device"]["count"] == len(jax.devices())
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    with np.load(out / "params.npz") as saved:
        keys = set(saved.files)
        kernel = saved["hidden/0/kernel"]
    assert keys == {"head/bias", "head/kernel", "hidden/0/bias", "hidden/0/kernel"}
    loaded = load_solution(out, MLP(36, (8,), 10, rngs=nnx.Rngs(123)))
    assert isinstance(loaded, MLP)
    np.testing.assert_array_equal(np.asarray(loaded.hidden[0].kernel[...]), kernel)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and 0.0 <= summary["test_accuracy"] <= 1.0

    with pytest.raises(
        ValueError, match=r"'head/kernel' has shape \(8, 10\), the model expects \(4, 10\)"
    ):
        load_solution(out, MLP(36, (4,), 10, rngs=nnx.Rngs(0)))


def test_issue16_gymnax_task_with_a_policy_mlp(tmp_path):
    pytest.importorskip("gymnax")
    from evojax_nets.policies import MLPPolicy

    out = tmp_path / "cartpole"
    args = ["run", "--task", "gymnax:CartPole-v1", "--model", "mlp:4", *FAST, "--out", str(out)]
    args += ["--generations", "2", "--episode-length", "20", "--eval-episodes", "2"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "return" and 0.0 < summary["test_return"] <= 20.0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["episode_length"] == 20 and settings["task"] == "gymnax:CartPole-v1"
    policy = load_solution(out, MLPPolicy((4,), 2, (4,), rngs=nnx.Rngs(0)))
    assert policy(jax.numpy.zeros(4)).shape == (2,)


def test_issue16_config_file_settings_and_precedence(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'model = "mlp:8"\npopulation = 8\ngenerations = 5\nstd = 0.1\n'
        "progress = false\ncompile_cache = false\nchunk-size = 2\n"
    )
    out = tmp_path / "a"
    assert main(["run", "--config", str(toml), "--generations", "2", "--out", str(out)]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["population"] == 8 and settings["std"] == 0.1 and settings["chunk_size"] == 2
    assert settings["generations"] == 2  # the command line wins over the file
    assert settings["progress"] is False

    # A run folder's config.json is a config file too: the same run again, elsewhere.
    again = tmp_path / "b"
    assert main(["run", "--config", str(out / "config.json"), "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text())["settings"] == {
        **settings,
        "out": str(again),
    }
    first = json.loads((out / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    assert first["test_accuracy"] == second["test_accuracy"]

    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"populaton": 8}))
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'populaton'" in err and "population" in err
    bad.write_text(json.dumps({"population": 0}))
    assert main(["run", "--config", str(bad)]) == 2
    assert "population: must be a positive integer, got 0" in capsys.readouterr().err
    bad.write_text(json.dumps({"resume": True}))
    assert main(["run", "--config", str(bad)]) == 2
    assert "action for the command line" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_issue16_version_and_exit_codes(tmp_path, capsys, monkeypatch):
    assert main(["--version"]) == 0
    assert evojax_nets.__version__ in capsys.readouterr().out

    out = str(tmp_path / "run")
    usage = [
        (["--population", "0"], "argument --population: must be a positive integer, got 0"),
        (["--std", "inf"], "must be a positive finite number"),
        (["--task", "nope"], "gymnax:ENV"),
        (["--model", "mlp:x"], "mlp:W,W"),
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--task", f"idx:{tmp_path / 'nowhere'}"], "does not exist"),
        (["--task", "digits", "--model", "cnn"], "cnn is a policy"),
    ]
    for args, message in usage:
        assert main(["run", "--out", out, *FAST, "--model", "mlp:8", *args]) == 2, args
        assert message in capsys.readouterr().err, args

    from evojax_nets.engine import Evolution

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError("this run needs about 3.00 GiB per chunk")

    monkeypatch.setattr(Evolution, "run", out_of_memory)
    assert main(["run", "--out", out, *FAST, "--model", "mlp:8", "--generations", "2"]) == 1
    assert "needs about 3.00 GiB" in capsys.readouterr().err


def test_issue16_resume_keeps_the_runs_own_settings(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *FAST, "--model", "mlp:8", "--std", "0.1"]
    assert main([*args, "--generations", "2", "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--resume", "--population", "16"]) == 2
    assert "population=8 (now 16)" in capsys.readouterr().err
    # Only --generations (and how the run runs) changes: the rest comes from config.json.
    assert main(["run", "--out", str(out), "--resume", "--generations", "3", *FAST[2:]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generations_done"] == 3 and summary["population"] == 8
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["std"] == 0.1
    assert [s["resumed_from"] for s in config["sessions"]] == [None, 2]


def test_issue16_progress_bar_says_compiling_then_counts(capsys):
    bar = ProgressBar(disable=False, desc="snes P=8", refresh_every=0.05)
    bar.on_start(object(), None, 4)  # an owner without a task (PBT, ArchSearch) is fine
    assert bar._bar.desc == "snes P=8 (compiling)"
    time.sleep(0.2)  # the clock thread redraws the bar while it compiles
    rows = [{"round": 1, "best_so_far": 1.5}, {"round": 2, "compile_time": 0.01}]
    bar.on_chunk(object(), None, rows)
    assert bar._bar.desc == "snes P=8" and bar._bar.n == 2
    assert "gen/s" in bar._bar.postfix and bar.generations_per_s > 0
    bar.on_end(object(), None, None)
    assert "compiling" in capsys.readouterr().err


def test_issue16_log_lines_outside_a_terminal_and_one_rate(tmp_path, caplog):
    bar = ProgressBar(log_every=0.05, refresh_every=0.05)  # pytest's stderr is no terminal
    with caplog.at_level(logging.INFO, logger="evojax_nets"):
        bar.on_start(None, None, 3)
        time.sleep(0.3)
        bar.on_end(None, None, None)
    assert "compiling; 3 generations to run" in caplog.text
    assert "still compiling" in caplog.text

    caplog.clear()
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *FAST[:2], "--model", "mlp:8", "--no-compile-cache"]
    with caplog.at_level(logging.INFO, logger="evojax_nets"):
        assert main([*args, "--generations", "6", "--log-every", "0.01"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "evojax_nets.progress"]
    assert "compiling" in lines[0] and any("generation 6 (6/6)" in line for line in lines)
    done = re.search(r"done, 6 generations .* ([0-9.e+]+) generations/s", lines[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert done and float(done.group(1)) == pytest.approx(summary["generations_per_s"], rel=0.05)


def test_issue16_chunks_report_about_twice_a_second():
    assert next_stretch(0, 100, 50, 0, None) == 1  # speed unknown: one generation first
    assert next_stretch(1, 99, 50, 0, 0.001) == 49  # fast: back on the chunk grid
    assert next_stretch(0, 100, 50, 0, 0.1) == 5  # 0.1 s a generation: 5 per call
    assert next_stretch(7, 100, 50, 0, 0.1) == 3
    assert next_stretch(0, 100, 50, 10, 0.001) == 10  # every checkpoint ends a chunk
    assert next_stretch(13, 100, 50, 10, 0.001) == 7
    assert next_stretch(0, 3, 50, 0, 0.001) == 3
    assert next_stretch(0, 100, 50, 0, 5.0) == 1


def test_issue16_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import jax.numpy as jnp

    from evojax_nets import Evolution

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    fitness = lambda key, m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
    evo = Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "snes", 4, maximize=False)
    logger = WandbLogger(project="evojax-nets-test", config={"population": 4}, dir=str(tmp_path))
    evo.run(evo.init(jax.random.key(0)), 3, chunk_size=2, callbacks=[logger])
    assert logger.run is None  # it started the run, so it finished it
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    deadline = time.monotonic() + 60  # wandb's service may still be flushing the file
    while b"best_so_far" not in files[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"best_so_far" in files[0].read_bytes()


def test_issue16_light_imports_and_help():
    probe = (
        "import sys, time; t = time.perf_counter(); import evojax_nets.cli as c; "
        "c.build_parser().format_help(); "
        "print(sorted(m for m in ('jax', 'numpy', 'flax', 'evosax') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=_child_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    probe = (
        "import sys; import evojax_nets.logging; "
        "print(sorted(m for m in ('matplotlib', 'tensorboardX', 'wandb', 'gymnax', 'tqdm') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=_child_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_issue16_compile_cache_on_by_default_and_off_by_flag_or_env(tmp_path, monkeypatch):
    names = (
        "jax_enable_compilation_cache",
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    try:
        monkeypatch.setenv("EVOJAX_NETS_COMPILE_CACHE", str(tmp_path / "cache"))
        assert configure_compile_cache(True) == str(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        assert configure_compile_cache(False) is None
        assert jax.config.jax_enable_compilation_cache is False
        monkeypatch.setenv("EVOJAX_NETS_COMPILE_CACHE", "0")
        assert configure_compile_cache(True) is None
        monkeypatch.delenv("EVOJAX_NETS_COMPILE_CACHE")
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert configure_compile_cache(True) == str(tmp_path / "xdg" / "evojax_nets" / "jax")
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)

    # A real run filling the cache is checked by the Ctrl-C test of test_faults_cli.py, which
    # runs the command line in a process of its own with the cache on.
