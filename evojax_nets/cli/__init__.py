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
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from evojax_nets.cli.config import (
    CACHE_ENV,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    IDENTITY,
    RUN_FILES,
    SETTINGS,
    Plan,
    RunConfig,
    UsageError,
    _version,
    default_model,
    default_out,
    parse_settings,
    plan_run,
    read_config_file,
    split_model,
    split_task,
)
from evojax_nets.cli.run import (
    configure_compile_cache,
    execute,
    log,
    rows_until,
    run_command,
    write_outputs,
)
from evojax_nets.cli.session import next_stretch
from evojax_nets.cli.tasks import build_evolution

__all__ = [
    "CACHE_ENV",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "IDENTITY",
    "RUN_FILES",
    "SETTINGS",
    "Plan",
    "RunConfig",
    "UsageError",
    "build_evolution",
    "build_parser",
    "configure_compile_cache",
    "default_model",
    "default_out",
    "execute",
    "log",
    "main",
    "next_stretch",
    "parse_settings",
    "plan_run",
    "read_config_file",
    "rows_until",
    "run_command",
    "split_model",
    "split_task",
    "write_outputs",
]

_EXIT_CODES = (
    "exit codes: 0 done, 1 runtime failure, 2 usage error, 130 interrupted by Ctrl-C, 143 by "
    "SIGTERM (the outputs of the generations done are written first)"
)


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
