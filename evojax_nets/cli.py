"""The ``evojax-nets`` command line.

``evojax-nets run`` evolves a network on a task and writes everything about the run into one
folder (``--out``, default ``runs/<task>``):

* ``config.json``: every setting, the library versions, the device and the seed; a run can be
  repeated from it (``--config runs/x/config.json --out runs/y``);
* ``metrics.jsonl`` (or ``metrics.csv``): one row per generation, each exactly once, also
  after ``--resume``;
* ``curve.png``: fitness and test metric curves;
* ``params.npz``: the solution, one array per readable parameter path (``head/kernel``); put it
  back into your model with :func:`evojax_nets.io.load_solution`;
* ``summary.json``: what is printed at the end;
* ``checkpoints/`` (``--checkpoint-every N``), ``tensorboard/`` (``--tensorboard``),
  ``wandb/`` (``--wandb PROJECT``).

Tasks: ``digits`` (scikit-learn's, shipped), ``idx:FOLDER`` (the four MNIST-style IDX files in
FOLDER; ``mnist:FOLDER`` and ``fashion_mnist:FOLDER`` name the dataset), ``gymnax:ENV``
(``gymnax:CartPole-v1``; needs the ``rl`` extra). Models: ``mlp:64,64`` (hidden widths; for
gymnax tasks a policy MLP on the flattened observation), ``linear``, ``cnn`` or
``cnn:FEATURES,HIDDEN`` (gymnax image observations such as MinAtar's).

Every setting can also come from a config file, ``--config run.toml`` (or ``.json``), whose
keys are the option names (``population = 128``, ``checkpoint_every = 50``); options given on
the command line win over the file. ``--resume`` continues the run in ``--out`` with the
settings saved in its ``config.json`` (only ``--generations`` and the settings of how it runs,
such as ``--chunk-size`` or ``--tensorboard``, may change); a fresh run refuses a folder that
holds another run unless ``--overwrite`` is given.

Start-up: JAX's persistent compilation cache is on, in ``~/.cache/evojax_nets/jax`` (under
``$XDG_CACHE_HOME`` when set), so a repeated run skips compilation. ``--no-compile-cache`` or
``EVOJAX_NETS_COMPILE_CACHE=0`` turns it off; ``EVOJAX_NETS_COMPILE_CACHE=/some/dir`` moves it.

Progress: a bar in a terminal (``compiling`` first); elsewhere (nohup, SLURM, a redirected
log) a log line every ``--log-every`` seconds. Ctrl-C stops the run and still writes the
outputs of the generations done (and a checkpoint, with ``--checkpoint-every``).

Exit codes: 0 done, 1 runtime failure (memory, a corrupted checkpoint, ...), 2 usage error
(bad option, config file or run folder), 130 interrupted by Ctrl-C (143 by SIGTERM, as SLURM
sends before its time limit) after writing the outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evojax_nets.engine import Evolution, EvolutionState

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

log = logging.getLogger("evojax_nets.cli")

_EXIT_CODES = (
    "exit codes: 0 done, 1 runtime failure, 2 usage error, 130 interrupted by Ctrl-C, 143 by "
    "SIGTERM (the outputs of the generations done are written first)"
)


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


# -- the parser -------------------------------------------------------------------------------


class _ArgType:
    """argparse ``type=`` that keeps our message ("must be a positive integer, got '0'")."""

    def __init__(self, parse: Callable[[Any], Any], name: str):
        self.parse = parse
        self.__name__ = name

    def __call__(self, text: str) -> Any:
        try:
            return self.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None


def _version() -> str:
    from evojax_nets import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evojax-nets",
        description="Evolve Flax networks with evosax strategies.",
        epilog=_EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="evolve a network on a task (default: an MLP on scikit-learn's digits)",
        description=(
            "Evolve a network on a task and write config.json, metrics, curve.png, params.npz "
            "and summary.json into the run folder. Every option can also be given in a config "
            "file (--config), under its name with underscores; the command line wins."
        ),
        epilog=_EXIT_CODES,
    )
    run.add_argument(
        "--config", metavar="FILE", help="settings from a .toml or .json file (or a run folder)"
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its last checkpoint"
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in OUT (only the files a run writes) and start a new one",
    )
    defaults = RunConfig()
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata["help"] + ("" if default is None else f" (default: {default})")
        if f.type == "bool":
            run.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        metavar = {"task": "SPEC", "model": "SPEC", "out": "DIR", "strategy": "NAME"}.get(
            f.name, {"int": "N", "int | None": "N", "float": "X"}.get(f.type, "NAME")
        )
        kwargs: dict[str, Any] = {"metavar": metavar}
        if f.metadata.get("choices"):
            kwargs = {"choices": ("jsonl", "csv")}
        run.add_argument(
            flag,
            dest=f.name,
            type=_ArgType(f.metadata["parse"], f.name),
            default=argparse.SUPPRESS,
            help=help_text,
            **kwargs,
        )
    return parser


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


# -- environment ------------------------------------------------------------------------------


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


# -- building the run -------------------------------------------------------------------------


def build_evolution(config: RunConfig) -> Evolution:
    """The :class:`~evojax_nets.engine.Evolution` the settings describe."""
    from flax import nnx

    from evojax_nets.engine import Evolution

    kind, arg = split_task(config.task)
    model_kind, sizes = split_model(config.model or default_model(config.task))
    rngs = nnx.Rngs(config.seed)
    if kind == "gymnax":
        from evojax_nets.policies import CNNPolicy, MLPPolicy
        from evojax_nets.tasks.rl import RLTask

        task = RLTask(
            arg,
            num_episodes=config.episodes,
            episode_length=config.episode_length,
            eval_episodes=config.eval_episodes,
        )
        obs_shape, num_outputs = task.obs_shape, task.num_outputs
        if model_kind == "cnn":
            cnn = dict(zip(("features", "hidden"), sizes, strict=False))
            model = CNNPolicy(obs_shape, num_outputs, rngs=rngs, **cnn)
        else:
            model = MLPPolicy(obs_shape, num_outputs, sizes, rngs=rngs)
    else:
        from evojax_nets.models import MLP
        from evojax_nets.tasks import Supervised, load_digits, load_idx_dataset

        if model_kind == "cnn":
            raise UsageError(
                f"--model {config.model}: cnn is a policy for gymnax image observations; for "
                f"{config.task} use mlp:W,W or linear"
            )
        if kind == "digits":
            data = load_digits(seed=config.seed)
        else:
            data = load_idx_dataset(arg, _DATASET_TASKS[kind])
        model = MLP(data.x_train.shape[1], sizes, data.num_classes, rngs=rngs)
        task = Supervised.from_dataset(data, batch_size=config.batch_size)
    return Evolution(
        model,
        task,
        config.strategy,
        config.population,
        std=config.std,
        learning_rate=config.learning_rate,
    )


# -- running ----------------------------------------------------------------------------------


class _Session:
    """One invocation's callbacks over several engine calls, as a single engine callback.

    The command line calls ``Evolution.run`` once per stretch of generations (so that progress
    is reported about every half second and every checkpoint falls at a chunk end); this
    object starts the real callbacks once, keeps the clock across calls (``wall_time``
    continues the time recorded by earlier, resumed sessions), remembers the latest state, and
    holds Ctrl-C back while a callback writes, so files and checkpoints are never torn.
    """

    def __init__(self, callbacks: list, bar: Any, total: int, wall_offset: float):
        self.callbacks = callbacks
        self.bar = bar
        self.total = total
        self.wall_offset = wall_offset
        self.started = False
        self.state: Any = None
        self.rows: list[dict] = []
        self.compile_s = 0.0
        self.call_compile_s = 0.0
        self.t_begin = self.t_last = time.perf_counter()
        from evojax_nets.logging import RateClock

        self.clock = RateClock(self.t_begin)
        self._call_seen = False
        self._holding = False
        self._stopping = False
        self._pending = False
        self.signal: signal.Signals | None = None  # the first one received

    # Ctrl-C and SIGTERM ---------------------------------------------------------------------

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        if self._holding or self._stopping:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def holding(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending and not self._stopping:
            self._pending = False
            raise KeyboardInterrupt

    def stop(self) -> None:
        """From now on Ctrl-C is only noted (the outputs are being written)."""
        self._stopping = True

    # engine callback ------------------------------------------------------------------------

    def on_start(self, owner: Any, state: Any, num_steps: int) -> None:
        self._call_seen = False
        self.call_compile_s = 0.0
        if self.started:
            return
        with self.holding():
            self.started = True
            self.state = state
            self.t_begin = time.perf_counter()
            for cb in self.callbacks:
                cb.on_start(owner, state, self.total)
            if self.bar is not None:  # last: its clock starts where compilation starts
                self.bar.on_start(owner, state, self.total)
            self.clock.start()

    def on_chunk(self, owner: Any, state: Any, rows: list[dict]) -> None:
        with self.holding():
            now = time.perf_counter()
            last = rows[-1]
            if not self._call_seen:  # the engine reports this call's compilation (0 if cached)
                self._call_seen = True
                self.call_compile_s = float(last.get("compile_time") or 0.0)
                self.compile_s += self.call_compile_s
            last["compile_time"] = self.compile_s
            last["wall_time"] = self.wall_offset + (now - self.t_begin)
            self.state = state
            self.rows.extend(rows)
            self.t_last = now
            self.clock.chunk(len(rows), self.compile_s, now)
            if self.bar is not None:  # first: its clock stops where the chunk ended
                self.bar.on_chunk(owner, state, rows)
            for cb in self.callbacks:
                cb.on_chunk(owner, state, rows)

    def on_end(self, owner: Any, state: Any, history: Any) -> None:
        pass  # the session ends in finish(), after the last engine call

    def finish(self, owner: Any, history: Any) -> None:
        if not self.started:
            return
        with self.holding():
            for cb in self.callbacks:
                cb.on_end(owner, self.state, history)
            if self.bar is not None:
                self.bar.on_end(owner, self.state, history)

    @property
    def generations_per_s(self) -> float | None:
        """Generations per second, as the bar reports them (see ``logging.RateClock``)."""
        return self.clock.rate


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def next_stretch(
    generation: int,
    left: int,
    chunk_size: int,
    checkpoint_every: int,
    seconds_per_generation: float | None,
    target_s: float = 0.5,
) -> int:
    """How many generations the next engine call runs: ending on a multiple of a divisor of
    ``chunk_size`` that takes about ``target_s`` at most (one generation while the speed is
    unknown), on every multiple of ``checkpoint_every``, and at the end of the run."""
    if seconds_per_generation is None:
        step = 1
    else:
        fits = int(target_s / max(seconds_per_generation, 1e-9))
        step = _largest_divisor_at_most(chunk_size, max(1, fits))
    n = step - generation % step
    if checkpoint_every:
        n = min(n, checkpoint_every - generation % checkpoint_every)
    return max(1, min(n, left))


def _drive(
    evolution: Evolution,
    state: EvolutionState,
    left: int,
    config: RunConfig,
    every: int,
    session: _Session,
) -> EvolutionState:
    done, per_generation = 0, None
    while done < left:
        generation = int(state.generation)
        n = next_stretch(generation, left - done, config.chunk_size, every, per_generation)
        t0 = time.perf_counter()
        state, _ = evolution.run(state, n, chunk_size=config.chunk_size, callbacks=[session])
        spent = time.perf_counter() - t0 - session.call_compile_s
        per_generation = spent / n if per_generation is None else 0.5 * (per_generation + spent / n)
        done += n
    return state


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


@contextmanager
def _sigint_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


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


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns the exit code (0 done, 1 runtime failure, 2 usage error,
    130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse reported
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    ns.argv = argv
    if ns.command == "run":
        try:
            return run_command(ns)
        except KeyboardInterrupt:  # before the run started (loading data, building the model)
            print("evojax-nets: interrupted before the first generation ran", file=sys.stderr)
            return EXIT_INTERRUPTED
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
