"""Q3's merge of two runs of the same protocol (``--q3-reuse`` / ``study_q3.py BASE EXTRA``),
checked on the committed runs: merging them again gives the committed merged report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture()
def study_q3(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q3

    return study_q3


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_merge_reproduces_the_committed_merged_report(study_q3) -> None:
    base, extra = _load("study-q3-2026-12-02.json"), _load("study-q3-hybrids-2026-12-02.json")
    merged = study_q3.merge(base, extra)
    assert merged == _load("study-q3-merged-2026-12-02.json")
    q = merged["q3"]
    for task, t in q["tasks"].items():
        # every contender of both runs, in the protocol's order, each from its own run
        names = list(base["q3"]["tasks"][task]["contenders"]) + list(
            extra["q3"]["tasks"][task]["contenders"]
        )
        assert list(t["contenders"]) == [c for c in study_q3.CONTENDERS if c in names]
        for name, row in t["contenders"].items():
            source = extra if name in extra["q3"]["tasks"][task]["contenders"] else base
            assert row == source["q3"]["tasks"][task]["contenders"][name]
    assert base["q3"] == _load("study-q3-2026-12-02.json")["q3"]  # the inputs are not changed


def test_merge_refuses_runs_of_different_budgets(study_q3) -> None:
    base, extra = _load("study-q3-2026-12-02.json"), _load("study-q3-hybrids-2026-12-02.json")
    extra["q3"]["tasks"]["sine"]["budget_flops"] *= 2
    with pytest.raises(ValueError, match="sine: the two runs differ"):
        study_q3.merge_sections(base["q3"], extra["q3"])


def test_reuse_without_the_task_is_refused_before_running(study_q3, tmp_path: Path) -> None:
    import argparse

    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"q3": {"tasks": {"spirals": {}}}}))
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    study_q3.add_arguments(parser)
    args = parser.parse_args(["--quick", "--q3-tasks", "sine", "--q3-reuse", str(earlier)])
    with pytest.raises(ValueError, match=r"has tasks \['spirals'\]"):
        study_q3.run(args)
