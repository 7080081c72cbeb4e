"""The built wheel: what it ships, and that the installed copy runs ``evojax-nets run``.

The wheel is built from a copy of the sources (so the build never writes into the checkout),
installed without dependencies into a folder of its own, and run from there against this
environment's JAX, Flax and evosax: a fresh virtual environment would have to download them.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from xla import child_env

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "evojax_nets"


def _source_version() -> str:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("evojax_nets/__init__.py has no __version__")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        PACKAGE, src / "evojax_nets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
        timeout=300,
    )
    (built,) = dist.glob("evojax_nets-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    version = _source_version()
    assert wheel.name.startswith(f"evojax_nets-{version}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"evojax_nets-{version}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "evojax_nets/py.typed" in names
    packages = sorted(
        p.parent.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in p.parts
    )
    assert len(packages) > 1
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages missing from the wheel: {missing}"
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert not [m for m in modules if m not in names]
    assert any(n.startswith(f"{info}/") and n.endswith("LICENSE") for n in names)
    headers = dict(
        line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line
    )
    assert headers["Version"] == version
    assert headers["License-Expression"] == "Apache-2.0"
    assert "[console_scripts]" in entry_points
    assert "evojax-nets = evojax_nets.cli:main" in entry_points


def test_installed_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet"]
    _run([*pip, "--target", str(target), str(wheel)], timeout=120)
    env = child_env(
        PYTHONPATH=str(target),
        MPLBACKEND="Agg",
        # Keep any compilation cache of the command line out of the user's home.
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    where = _run(
        [sys.executable, "-c", "import evojax_nets; print(evojax_nets.__file__)"],
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(target), "imported the checkout, not the wheel"

    script = target / "bin" / "evojax-nets"
    assert script.is_file(), "the wheel installed no evojax-nets script"
    out = tmp_path / "run"
    _run(
        [sys.executable, str(script), "run", "--generations", "5", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(row["best_fitness"]) for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["population"] > 0 and summary["generations"] == 5
    with np.load(out / "params.npz") as params:
        assert len(params.files) > 0
        assert all(np.all(np.isfinite(params[k])) for k in params.files)
