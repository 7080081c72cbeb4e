"""Host-side callbacks (metric files, progress bar, plots, TensorBoard) and the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.cli import main
from evojax_nets.logging import MetricWriter, ProgressBar, TensorBoardWriter, plot_history
from evojax_nets.models import MLP


@pytest.fixture(scope="module")
def evolution() -> Evolution:
    return Evolution(
        MLP(64, (8,), 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(load_digits(), 64), "snes", 8
    )


def test_metric_files_progress_plot_and_tensorboard(evolution: Evolution, tmp_path: Path) -> None:
    jsonl, table = tmp_path / "m.jsonl", tmp_path / "m.csv"
    callbacks = [
        ProgressBar(disable=True),
        MetricWriter(jsonl),
        MetricWriter(table),
        TensorBoardWriter(tmp_path / "tb"),
    ]
    state, history = evolution.run(
        evolution.init(jax.random.key(0)), 6, chunk_size=4, callbacks=callbacks
    )
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["generation"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == [{k: (None if v != v else v) for k, v in row.items()} for row in history.rows]
    assert "test_accuracy_mean" in rows[3] and "test_accuracy_mean" in rows[5]
    assert "test_accuracy_mean" not in rows[0]
    with table.open() as f:
        table_rows = list(csv.DictReader(f))
    assert len(table_rows) == 6
    assert float(table_rows[5]["best_so_far"]) == pytest.approx(history.rows[5]["best_so_far"])
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and b"best_so_far" in events[0].read_bytes()

    # A resumed run appends to the same files instead of starting them over.
    more = MetricWriter(table, append=True)
    evolution.run(state, 2, chunk_size=2, callbacks=[more])
    with table.open() as f:
        assert [int(r["generation"]) for r in csv.DictReader(f)] == list(range(1, 9))

    png = tmp_path / "curve.png"
    plot_history(history, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_writer_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        MetricWriter(tmp_path / "m.txt")


def test_cli_run_writes_outputs_and_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    common = ["run", "--out", str(out), "--population", "8", "--model", "mlp:8", "--no-progress"]
    assert (
        main([*common, "--generations", "4", "--chunk-size", "2", "--checkpoint-every", "2"]) == 0
    )
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "generations/s" in printed
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["generations"] == 4 and [r["generation"] for r in rows] == [1, 2, 3, 4]
    assert summary["test_accuracy"] == next(
        r["test_accuracy_mean"] for r in reversed(rows) if "test_accuracy_mean" in r
    )
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "params.npz") as params:  # one array per parameter path
        assert len(params.files) == 4 and all(params[k].size for k in params.files)
    assert main([*common, "--generations", "6", "--chunk-size", "2", "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_cli_reports_bad_input(tmp_path: Path, capsys) -> None:
    args = ["run", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--strategy", "nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(["run", "--population", "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err
