"""Issue 13, items 6, 7, 8 and 15: the command line loses nothing and mixes nothing when a run
is killed, interrupted, resumed or started again in the same folder.

A SIGKILL is simulated in-process by an exception that nothing in the command line catches
(it runs no output-writing code, as a real kill would not); Ctrl-C is a real SIGINT sent to a
real ``evojax-nets`` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evojax_nets
from evojax_nets import logging as ev_logging
from evojax_nets.checkpoint import available_steps
from evojax_nets.cli import build_parser, main, plan_run

# The command line's compile cache is the suite's (JAX_COMPILATION_CACHE_DIR, tests/conftest.py).
TINY = ["--population", "8", "--model", "mlp:8", "--no-progress"]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` handler sees it."""


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_issue13_item6_resume_after_kill_keeps_each_generation_once(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *TINY, "--chunk-size", "1", "--checkpoint-every", "2"]
    write = ev_logging.MetricWriter.on_chunk

    def write_then_die(self, owner, state, rows):
        write(self, owner, state, rows)
        if rows[-1]["generation"] >= 5:  # rows 1..5 are on disk, the checkpoint is at 4
            raise Killed

    monkeypatch.setattr(ev_logging.MetricWriter, "on_chunk", write_then_die)
    with pytest.raises(Killed):
        main([*args, "--generations", "8"])
    monkeypatch.undo()
    assert available_steps(out / "checkpoints")[-1] == 4
    assert [r["generation"] for r in _rows(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    before = {r["generation"]: r for r in _rows(out / "metrics.jsonl")}
    with (out / "metrics.jsonl").open("a") as f:  # a kill can also tear the last line
        f.write('{"generation": 6, "best_fi')

    assert main([*args, "--generations", "8", "--resume"]) == 0
    rows = _rows(out / "metrics.jsonl")
    assert [r["generation"] for r in rows] == list(range(1, 9))
    assert rows[:4] == [before[g] for g in range(1, 5)]
    timed = [r for r in rows if "wall_time" in r]
    walls = [r["wall_time"] for r in timed]
    assert walls == sorted(walls) and len(set(walls)) == len(walls)
    # The resumed rows continue the clock: past the checkpoint's time plus their own compile.
    resumed = next(r for r in timed if r["generation"] >= 5)
    assert resumed["wall_time"] >= before[4]["wall_time"] + resumed["compile_time"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generations_done"] == 8 and summary["resumed_from"] == 4


def test_issue13_item7_refuses_an_existing_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *TINY, "--generations", "2", "--checkpoint-every", "2"]
    assert main(args) == 0
    assert available_steps(out / "checkpoints") == [2]
    capsys.readouterr()

    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert "checkpoints" in err  # says what it found

    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err

    (out / "notes.txt").write_text("mine")  # not ours: --overwrite leaves it alone
    assert main([*args[:-2], "--overwrite"]) == 0  # without checkpoints this time
    assert not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["generations_done"] == 2

    empty = tmp_path / "empty"  # an existing but empty folder is fine
    empty.mkdir()
    plan = plan_run(build_parser().parse_args(["run", "--out", str(empty)]))
    assert plan.out == empty and not plan.resume and not plan.overwrite


def test_issue13_item8_resume_writes_outputs_after_a_kill_past_the_final_checkpoint(
    tmp_path, monkeypatch
):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *TINY, "--generations", "4", "--checkpoint-every", "2"]

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(ev_logging, "plot_history", die)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    assert available_steps(out / "checkpoints")[-1] == 4
    assert not (out / "summary.json").exists()

    assert main([*args, "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generations_done"] == 4 and summary["resumed_from"] == 4
    assert summary["generations_per_s"] is None  # nothing ran in this process
    for name in ("params.npz", "curve.png", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0
    assert [r["generation"] for r in _rows(out / "metrics.jsonl")] == [1, 2, 3, 4]

    # Asking for fewer generations than the run already has is a usage error.
    assert main([*args[:-4], "--generations", "3", "--resume"]) == 2


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(evojax_nets.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def test_issue13_item8_ctrl_c_writes_the_outputs_of_the_generations_done(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [sys.executable, "-m", "evojax_nets.cli", "run", "--out", str(out), *TINY[:-1]]
    cmd += ["--generations", "100000", "--chunk-size", "1", "--checkpoint-every", "1000"]
    env = _child_env()
    env["EVOJAX_NETS_COMPILE_CACHE"] = str(cache)  # and issue 16: the cache is on by default
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "test accuracy" in stdout
    assert "interrupted" in stderr
    summary = json.loads((out / "summary.json").read_text())
    done = summary["generations_done"]
    assert summary["interrupted"] is True and 3 <= done < 100000
    assert [r["generation"] for r in _rows(metrics)] == list(range(1, done + 1))
    assert (out / "params.npz").stat().st_size > 0
    assert any(cache.iterdir())
    assert json.loads((out / "config.json").read_text())["compile_cache"] == str(cache)
    # The interrupted run saved a checkpoint of where it stopped, so it can go on.
    assert available_steps(out / "checkpoints")[-1] == done
    assert main(["run", "--out", str(out), *TINY, "--generations", str(done + 2), "--resume"]) == 0
    assert [r["generation"] for r in _rows(metrics)] == list(range(1, done + 3))


def test_issue13_item15_checkpoints_fall_on_every_multiple_of_the_interval(tmp_path, caplog):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *TINY, "--generations", "6", "--chunk-size", "50"]
    with caplog.at_level("INFO", logger="evojax_nets"):
        assert main([*args, "--checkpoint-every", "2"]) == 0
    # keep=3: the last three of the checkpoints taken at 2, 4 and 6 (not only at 6).
    assert available_steps(out / "checkpoints") == [2, 4, 6]
    assert "every 2 generations" in caplog.text
