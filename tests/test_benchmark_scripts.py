"""Benchmark scripts that cannot run at full size here still run end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
