"""The settings of ``evojax-nets run``: the typed :class:`RunConfig`, the parsing and
checking of every value, config files, and the precedence that merges them with a saved run
and the command line (:func:`plan_run`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# When the command line was loaded: a run's summary.json counts its wall time from here.
_T_START = time.perf_counter()

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CACHE_ENV = "EVOJAX_NETS_COMPILE_CACHE"
"""``0``/``off`` turns the persistent compilation cache off; a path moves it there."""

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "metrics.csv",
    "params.npz",
    "summary.json",
    "curve.png",
    "checkpoints",
    "tensorboard",
    "wandb",
)
"""What a run writes into its folder (and all that ``--overwrite`` deletes)."""


class UsageError(Exception):
    """A bad option, config file or run folder (exit code 2)."""


# -- settings ---------------------------------------------------------------------------------


def _bad(what: str, value: Any) -> ValueError:
    return ValueError(f"must be {what}, got {value!r}")


def _integer(value: Any, minimum: int | None, what: str) -> int:
    if isinstance(value, bool):
        raise _bad(what, value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _bad(what, value) from None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _bad(what, value)
    return value


def _positive_int(value: Any) -> int:
    return _integer(value, 1, "a positive integer")


def _nonnegative_int(value: Any) -> int:
    return _integer(value, 0, "an integer >= 0")


def _any_int(value: Any) -> int:
    return _integer(value, None, "an integer")


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _bad("a positive finite number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad("a positive finite number", value) from None
    if not (math.isfinite(number) and number > 0):
        raise _bad("a positive finite number", value)
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _bad("true or false", value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad("a non-empty string", value)
    return value.strip()


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value)

    return parse_optional


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse_choice(value: Any) -> str:
        if value not in choices:
            raise _bad(" or ".join(repr(c) for c in choices), value)
        return value

    return parse_choice


_DATASET_TASKS = {"idx": "mnist", "mnist": "mnist", "fashion_mnist": "fashion_mnist"}
_TASK_HELP = (
    "digits, idx:FOLDER (MNIST-style IDX files; also mnist:FOLDER, fashion_mnist:FOLDER) or "
    "gymnax:ENV (e.g. gymnax:CartPole-v1)"
)


def split_task(spec: str) -> tuple[str, str]:
    """``"gymnax:CartPole-v1"`` -> ``("gymnax", "CartPole-v1")``; ``"digits"`` -> ``("digits",
    "")``. Raises ``ValueError`` naming the valid forms."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind == "digits" and not arg:
        return "digits", ""
    if (kind in _DATASET_TASKS or kind == "gymnax") and arg.strip():
        return kind, arg.strip()
    raise _bad(_TASK_HELP, spec)


def _task(value: Any) -> str:
    split_task(_text(value))
    return _text(value)


_MODEL_HELP = "mlp:W,W,... (hidden widths, e.g. mlp:64,64), linear, cnn or cnn:FEATURES,HIDDEN"


def split_model(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"mlp:64,64"`` -> ``("mlp", (64, 64))``; ``"linear"`` -> ``("mlp", ())``; ``"cnn"`` ->
    ``("cnn", ())``. Raises ``ValueError`` naming the valid forms."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    try:
        sizes = tuple(int(w) for w in arg.split(",") if w.strip())
    except ValueError:
        raise _bad(_MODEL_HELP, spec) from None
    if any(w < 1 for w in sizes):
        raise _bad(_MODEL_HELP + " with positive sizes", spec)
    if kind == "linear" and not sizes:
        return "mlp", ()
    if kind == "mlp" and sizes:
        return "mlp", sizes
    if kind == "cnn" and len(sizes) in (0, 2):
        return "cnn", sizes
    raise _bad(_MODEL_HELP, spec)


def _model(value: Any) -> str:
    kind, sizes = split_model(_text(value))
    if kind == "mlp":
        return f"mlp:{','.join(map(str, sizes))}" if sizes else "linear"
    return f"cnn:{','.join(map(str, sizes))}" if sizes else "cnn"


def _setting(default: Any, parse: Callable[[Any], Any], help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help, **extra})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of ``evojax-nets run``: a command-line option ``--batch-size`` is the
    config-file key ``batch_size``. ``config.json`` in a run folder holds one under
    ``"settings"``."""

    task: str = _setting("digits", _task, f"the task: {_TASK_HELP}")
    model: str | None = _setting(
        None,
        _optional(_model),
        f"the network: {_MODEL_HELP} (default: mlp:64,64; for gymnax tasks mlp:16)",
    )
    strategy: str = _setting("open_es", _text, "evosax strategy name, e.g. snes, pgpe, cma_es, ga")
    population: int = _setting(256, _positive_int, "population size")
    generations: int = _setting(
        300, _positive_int, "generations in all (a resumed run counts the earlier ones)"
    )
    seed: int = _setting(0, _any_int, "PRNG seed (also of the model's initialisation)")
    out: str | None = _setting(None, _optional(_text), "run folder (default: runs/<task>)")
    batch_size: int = _setting(256, _positive_int, "training examples per generation")
    std: float = _setting(0.05, _positive_float, "initial search std")
    learning_rate: float = _setting(
        0.02, _positive_float, "Adam step of the gradient-style ES (open_es, pgpe, ...)"
    )
    episodes: int = _setting(1, _positive_int, "gymnax: episodes per member and generation")
    episode_length: int | None = _setting(
        None, _optional(_positive_int), "gymnax: steps per episode (default: the env's limit)"
    )
    eval_episodes: int = _setting(16, _positive_int, "gymnax: episodes of the test metrics")
    chunk_size: int = _setting(
        50,
        _positive_int,
        "generations per compiled chunk at most (chunks are cut shorter to report progress "
        "about every half second and to end at every checkpoint)",
    )
    format: str = _setting("jsonl", _choice("jsonl", "csv"), "metrics file format", choices=True)
    checkpoint_every: int = _setting(
        0,
        _nonnegative_int,
        "save a checkpoint to OUT/checkpoints every N generations (0: none, except with --resume)",
    )
    tensorboard: bool = _setting(False, _boolean, "write TensorBoard scalars to OUT/tensorboard")
    wandb: str | None = _setting(
        None, _optional(_text), "log to this Weights & Biases project (files in OUT/wandb)"
    )
    progress: bool = _setting(True, _boolean, "show progress (a bar, or log lines)")
    log_every: float = _setting(
        5.0, _positive_float, "seconds between progress log lines outside a terminal"
    )
    compile_cache: bool = _setting(
        True, _boolean, f"use JAX's persistent compilation cache (or set {CACHE_ENV}=0)"
    )


SETTINGS = {f.name: f for f in fields(RunConfig)}
IDENTITY = (
    "task",
    "model",
    "strategy",
    "population",
    "seed",
    "batch_size",
    "std",
    "learning_rate",
    "episodes",
    "episode_length",
    "eval_episodes",
    "format",
)
"""Settings that define a run: ``--resume`` refuses to change them."""


def default_model(task: str) -> str:
    return "mlp:16" if split_task(task)[0] == "gymnax" else "mlp:64,64"


def default_out(task: str) -> Path:
    kind, arg = split_task(task)
    name = kind if not arg else f"{kind}-{Path(arg).name or arg}"
    return Path("runs") / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def parse_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate a mapping of settings (a config file, a saved ``config.json``): keys may use
    ``-`` or ``_``; raises :class:`UsageError` naming the key and what would be valid."""
    out = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in ("resume", "overwrite", "config"):
            raise UsageError(
                f"{source}: {raw_key!r} is an action for the command line (--{key}), not a "
                "setting for a config file"
            )
        if key not in SETTINGS:
            raise UsageError(
                f"{source}: unknown setting {raw_key!r}; valid settings are " + ", ".join(SETTINGS)
            )
        try:
            out[key] = SETTINGS[key].metadata["parse"](value)
        except ValueError as err:
            raise UsageError(f"{source}: {key}: {err}") from None
    return out


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a ``.toml`` or ``.json`` file of ``key = value`` pairs, or from a run
    folder's ``config.json`` (its ``"settings"``, without ``out``)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(f"--config: no such file {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise UsageError(
                    f"--config {path}: reading TOML on Python 3.10 needs tomli "
                    "(pip install tomli); or write the config as JSON"
                ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"--config {path}: not valid TOML: {err}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path}: not valid JSON: {err}") from None
    else:
        raise UsageError(f"--config must name a .toml or .json file, got {path}")
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table of settings, got {type(data)}")
    if isinstance(data.get("settings"), dict):  # a run folder's config.json
        data = {k: v for k, v in data["settings"].items() if k != "out"}
    return parse_settings(data, str(path))


def _version() -> str:
    from evojax_nets import __version__

    return __version__


# -- planning: settings and the run folder ----------------------------------------------------


@dataclass
class Plan:
    """What ``evojax-nets run`` is about to do: the merged settings, the run folder, whether
    it resumes, which earlier outputs ``--overwrite`` deletes, and the saved settings."""

    config: RunConfig
    out: Path
    resume: bool
    overwrite: list[str]
    saved: dict | None
    argv: list[str] = field(default_factory=list)


def _saved_config(out: Path) -> dict | None:
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{path} is not valid JSON ({err}); repair it or use --overwrite"
        ) from None
    return data if isinstance(data, dict) else None


def plan_run(ns: argparse.Namespace) -> Plan:
    """Merge the settings (defaults < saved run < config file < command line) and check the
    run folder; raises :class:`UsageError`."""
    given = {k: v for k, v in vars(ns).items() if k in SETTINGS}
    from_file = read_config_file(ns.config) if ns.config else {}
    if ns.resume and ns.overwrite:
        raise UsageError(
            "--resume and --overwrite: give one, not both (--resume continues the run in the "
            "folder, --overwrite deletes it and starts a new one)"
        )
    first = RunConfig(**{**from_file, **given})
    out = Path(first.out) if first.out else default_out(first.task)
    found = [name for name in RUN_FILES if (out / name).exists()]
    saved = None
    if ns.resume:
        meta = _saved_config(out)
        saved_settings = meta.get("settings") if meta else None
        if isinstance(saved_settings, dict):
            known = {k: v for k, v in saved_settings.items() if k in SETTINGS}
            saved = parse_settings(known, str(out / "config.json"))
        config = RunConfig(**{**(saved or {}), **from_file, **given})
    else:
        if found and not ns.overwrite:
            raise UsageError(
                f"{out} already holds a run ({', '.join(found)}): pass --resume to continue "
                "it, --overwrite to delete it and start a new one, or choose another --out"
            )
        config = first
    config = replace(config, out=str(out), model=config.model or default_model(config.task))
    if saved is not None:
        saved = {**saved, "model": saved.get("model") or default_model(saved["task"])}
        changed = [k for k in IDENTITY if k in saved and saved[k] != getattr(config, k)]
        if changed:
            details = ", ".join(f"{k}={saved[k]!r} (now {getattr(config, k)!r})" for k in changed)
            raise UsageError(
                f"--resume: the run in {out} was started with {details}; drop those options "
                "to continue it with its own settings, or start a new run in another --out"
            )
    argv = list(getattr(ns, "argv", None) or [])
    return Plan(config, out, bool(ns.resume), found if ns.overwrite else [], saved, argv)
