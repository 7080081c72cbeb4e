"""Running ``evojax-nets run``: the environment (compilation cache, logging, versions),
the run folder (overwrite, resume from its checkpoints, ``config.json``), the outputs, and the
exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evojax_nets.cli.config import (
    _T_START,
    CACHE_ENV,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Plan,
    RunConfig,
    UsageError,
    _saved_config,
    _version,
    plan_run,
)
from evojax_nets.cli.session import _drive, _Session, _sigint_to
from evojax_nets.cli.tasks import build_evolution

if TYPE_CHECKING:
    from evojax_nets.engine import Evolution, EvolutionState

log = logging.getLogger("evojax_nets.cli")


def configure_compile_cache(enabled: bool) -> str | None:
    """Turn JAX's persistent compilation cache on (returns its folder) or off (None).

    The folder is ``$EVOJAX_NETS_COMPILE_CACHE`` when that is a path, else JAX's own
    ``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/evojax_nets/jax``. Every compilation is
    cached (the minimum compile time is 0 s), so the run's chunk is too.
    """
    import jax

    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("0", "off", "false", "no"):
        enabled = False
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if env and env.lower() not in ("1", "on", "true", "yes"):
        directory = Path(env).expanduser()
    elif os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        directory = Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        directory = Path(base) / "evojax_nets" / "jax"
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(directory)


def _environment(cache_dir: str | None) -> dict[str, Any]:
    import importlib.metadata as metadata
    import platform

    import jax

    versions = {"python": platform.python_version(), "evojax_nets": _version()}
    for dist in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "evosax",
        "numpy",
        "orbax-checkpoint",
        "scikit-learn",
        "gymnax",
        "tensorboardX",
        "wandb",
    ):
        with suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    devices = jax.devices()
    return {
        "versions": versions,
        "device": {
            "backend": jax.default_backend(),
            "count": len(devices),
            "kinds": sorted({d.device_kind for d in devices}),
            "process_count": jax.process_count(),
            "host": platform.platform(),
        },
        "compile_cache": cache_dir,
    }


def _configure_logging() -> None:
    package = logging.getLogger("evojax_nets")
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package.addHandler(handler)


def _number(text: str) -> Any:
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _read_metric_file(path: Path) -> list[dict]:
    if not path.exists():
        return []
    if path.suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return rows


def rows_until(generation: int, checkpoint_rows: list[dict], metrics: Path) -> list[dict]:
    """The metric rows of generations 1..``generation``, each once: the checkpoint's history,
    or (when that is incomplete) what the metrics file holds of them."""
    rows = [r for r in checkpoint_rows if int(r.get("generation", 0)) <= generation]
    if [int(r.get("generation", 0)) for r in rows] == list(range(1, generation + 1)):
        return rows
    by_generation: dict[int, dict] = {}
    for row in _read_metric_file(metrics):
        g = row.get("generation")
        if isinstance(g, int) and 1 <= g <= generation:
            by_generation.setdefault(g, row)
    return [by_generation[g] for g in sorted(by_generation)]


def _solution_metrics(evolution: Evolution, rows: list[dict]) -> dict[str, float]:
    """The test metrics of the run's solution: the mean's for distribution-based strategies,
    the best member's for population-based ones (as the engine computed at the last chunk)."""
    which = "best" if evolution.strategy.population_based else "mean"
    for row in reversed(rows):
        found = {
            k[len("test_") : -len(which) - 1]: v
            for k, v in row.items()
            if k.startswith("test_") and k.endswith(f"_{which}")
        }
        if found:
            return found
    return {}


def write_outputs(
    out: Path,
    evolution: Evolution,
    state: EvolutionState,
    rows: list[dict],
    config: RunConfig,
    session: _Session | None,
    resumed_from: int | None,
    interrupted: bool,
) -> dict[str, Any]:
    """params.npz, curve.png and (last, so that its presence means "complete") summary.json."""
    from evojax_nets import logging as ev_logging
    from evojax_nets.engine import History
    from evojax_nets.io import save_solution

    generation = int(state.generation)
    history = History(rows=list(rows))
    if generation > 0:
        save_solution(out / "params.npz", evolution.network, evolution.solution_theta(state))
        ev_logging.plot_history(history, out / "curve.png", metric=evolution.task.metric)
    test = _solution_metrics(evolution, rows)
    ran = session.rows if session is not None else []
    summary = {
        "task": config.task,
        "model": config.model,
        "strategy": evolution.strategy.name,
        "population": evolution.population_size,
        "generations": config.generations,
        "generations_done": generation,
        "resumed_from": resumed_from,
        "interrupted": interrupted,
        "num_params": evolution.network.num_params,
        "solution": "best member" if evolution.strategy.population_based else "mean",
        "metric": evolution.task.metric,
        **{f"test_{name}": value for name, value in test.items()},
        "wall_time_s": time.perf_counter() - _T_START,
        "run_time_s": (session.t_last - session.t_begin) if ran else 0.0,
        "compile_time_s": session.compile_s if session is not None else 0.0,
        "generations_run": len(ran),
        "generations_per_s": session.generations_per_s if session is not None else None,
        "total_wall_time_s": history.last_with("wall_time").get("wall_time"),
        "output": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_config(plan: Plan, cache_dir: str | None, resumed_from: int | None) -> None:
    path = plan.out / "config.json"
    previous = _saved_config(plan.out) if plan.resume else None
    sessions = list(previous.get("sessions", [])) if previous else []
    sessions.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": plan.argv,
            "resumed_from": resumed_from,
        }
    )
    data = {
        "settings": asdict(plan.config),
        "seed": plan.config.seed,
        **_environment(cache_dir),
        "sessions": sessions,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def _remove_run_files(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def execute(
    plan: Plan, evolution: Evolution, cache_dir: str | None
) -> tuple[dict[str, Any], int | None]:
    """Run (or resume) the planned run and write its outputs; returns the summary and the
    signal that stopped it (Ctrl-C's SIGINT, SIGTERM) or None."""
    import jax

    from evojax_nets.checkpoint import Checkpointer, available_steps, resume
    from evojax_nets.engine import History
    from evojax_nets.logging import MetricWriter, ProgressBar, TensorBoardWriter, WandbLogger

    config, out = plan.config, plan.out
    if plan.overwrite:
        log.info("--overwrite: deleting %s from %s", ", ".join(plan.overwrite), out)
        _remove_run_files(out, plan.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / f"metrics.{config.format}"
    ckpt_dir = out / "checkpoints"
    every = config.checkpoint_every or (config.chunk_size if plan.resume else 0)

    earlier: list[dict] = []
    resumed_from = None
    if plan.resume and available_steps(ckpt_dir):
        state, previous = resume(evolution, ckpt_dir)
        resumed_from = int(state.generation)
        earlier = rows_until(resumed_from, previous.rows, metrics)
        log.info("resuming %s from its checkpoint at generation %d", out, resumed_from)
    else:
        if plan.resume:
            log.info("--resume: no checkpoint in %s; starting the run from generation 0", ckpt_dir)
        state = evolution.init(jax.random.key(config.seed))
    generation = int(state.generation)
    left = config.generations - generation
    if left < 0:
        raise UsageError(
            f"--generations {config.generations}: the run in {out} is already at generation "
            f"{generation}; ask for at least that many (--generations {generation} only "
            "writes its outputs)"
        )
    _write_config(plan, cache_dir, resumed_from)

    # Rows up to the checkpoint, written again (what a killed run logged after it goes away),
    # into a new file that replaces the old one whole: a kill here loses nothing either.
    fresh = out / f".metrics-rewrite.{config.format}"
    start_file = MetricWriter(fresh)
    start_file.on_start(evolution, state, left)
    if earlier:
        start_file.on_chunk(evolution, state, earlier)
    os.replace(fresh, metrics)
    callbacks: list[Any] = [MetricWriter(metrics, append=True)]
    if config.tensorboard:
        purge = generation + 1 if generation else None
        callbacks.append(TensorBoardWriter(out / "tensorboard", purge_step=purge))
    if config.wandb:
        (out / "wandb").mkdir(exist_ok=True)
        callbacks.append(
            WandbLogger(config.wandb, config=asdict(config), dir=str(out / "wandb"), name=out.name)
        )
    if every:
        callbacks.append(Checkpointer(ckpt_dir, every=every, keep=3))
        log.info("checkpoints every %d generations in %s (chunks end there)", every, ckpt_dir)
    bar = None
    if config.progress:
        bar = ProgressBar(
            desc=f"{evolution.strategy.name} P={config.population}", log_every=config.log_every
        )
    wall_offset = float(next((r["wall_time"] for r in reversed(earlier) if "wall_time" in r), 0.0))
    session = _Session(callbacks, bar, left, wall_offset)

    interrupted = False
    with _sigint_to(session.on_sigint):
        if left:
            try:
                state = _drive(evolution, state, left, config, every, session)
            except KeyboardInterrupt:
                interrupted = True
                state = session.state if session.state is not None else state
            except BaseException:
                if bar is not None:  # stop its clock thread; the error is reported above us
                    bar.close()
                raise
            session.stop()
            rows = [*earlier, *session.rows]
            session.finish(evolution, History(rows=rows))
        else:
            session.stop()
            rows = earlier
            log.info(
                "the run in %s is complete at generation %d; writing its outputs", out, generation
            )
        summary = write_outputs(
            out, evolution, state, rows, config, session, resumed_from, interrupted
        )
    return summary, (int(session.signal or signal.SIGINT) if interrupted else None)


def _error(message: Any) -> None:
    print(f"evojax-nets: error: {message}", file=sys.stderr)


def run_command(ns: argparse.Namespace) -> int:
    """``evojax-nets run``: returns the exit code."""
    _configure_logging()
    try:
        plan = plan_run(ns)
    except UsageError as err:
        _error(err)
        return EXIT_USAGE
    cache_dir = configure_compile_cache(plan.config.compile_cache)
    try:
        evolution = build_evolution(plan.config)
    except (UsageError, ValueError, FileNotFoundError) as err:
        _error(err)
        return EXIT_USAGE
    except (MemoryError, ImportError, OSError) as err:
        _error(err)
        return EXIT_FAILURE
    from evojax_nets.checkpoint import CheckpointError

    try:
        summary, stopped_by = execute(plan, evolution, cache_dir)
    except UsageError as err:
        _error(err)
        return EXIT_USAGE
    except (CheckpointError, MemoryError, OSError, RuntimeError, ValueError) as err:
        _error(err)
        return EXIT_FAILURE
    metric = summary.get("metric")
    parts = []
    if metric and f"test_{metric}" in summary:
        parts.append(f"test {metric} {summary[f'test_{metric}']:.4f} ({summary['solution']})")
    parts.append(
        f"wall time {summary['wall_time_s']:.1f} s (compile {summary['compile_time_s']:.1f} s)"
    )
    rate = summary["generations_per_s"]
    parts.append(f"{rate:.3g} generations/s" if rate is not None else "no generations run")
    parts.append(f"outputs in {summary['output']}")
    print(" | ".join(parts))
    if stopped_by is not None:
        print(
            f"evojax-nets: interrupted ({signal.Signals(stopped_by).name}) at generation "
            f"{summary['generations_done']}; the outputs of the generations done are in "
            f"{summary['output']}"
            + (" (continue with --resume)" if plan.config.checkpoint_every else ""),
            file=sys.stderr,
        )
        return 128 + stopped_by
    return EXIT_OK
