"""The ``evojax-nets`` command line.

``evojax-nets run`` evolves the embedded default: an MLP 64-64-10 on scikit-learn's digits with
OpenAI-ES, population 256. It shows a progress bar and writes to the output folder:

* ``metrics.jsonl`` (or ``metrics.csv``): one row per generation;
* ``curve.png``: fitness and test accuracy curves;
* ``params.npz``: the solution's parameters, one array per parameter path, plus ``theta``;
* ``summary.json``: what is printed at the end;
* ``checkpoints/``: with ``--checkpoint-every N``; ``--resume`` continues from the latest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_T_START = time.perf_counter()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated layer widths like 64,64; got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evojax-nets", description="Evolve Flax networks with evosax strategies."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="evolve an MLP on scikit-learn's digits (the embedded default)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument(
        "--strategy", default="open_es", help="evosax strategy name, e.g. snes, pgpe, ga"
    )
    run.add_argument("--population", type=_positive_int, default=256, help="population size")
    run.add_argument("--generations", type=_positive_int, default=300, help="generations")
    run.add_argument("--seed", type=int, default=0, help="PRNG seed")
    run.add_argument("--out", type=Path, default=Path("runs/digits"), help="output folder")
    run.add_argument(
        "--batch-size", type=_positive_int, default=256, help="examples per generation"
    )
    run.add_argument("--hidden", type=_widths, default=(64, 64), help="hidden layer widths")
    run.add_argument("--std", type=_positive_float, default=0.05, help="initial search std")
    run.add_argument(
        "--learning-rate", type=_positive_float, default=0.02, help="Adam step of gradient-style ES"
    )
    run.add_argument("--chunk-size", type=_positive_int, default=50, help="generations per scan")
    run.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="metrics file")
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="save a checkpoint to OUT/checkpoints every N generations (0: only with --resume)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in OUT"
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _save_params(evolution, theta, path: Path) -> None:
    import jax
    import numpy as np

    tree = evolution.network.unravel(theta)
    arrays = {
        jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    np.savez(path, theta=np.asarray(theta), **arrays)


def run_default(args: argparse.Namespace) -> dict:
    """Evolve the embedded default and write the outputs; returns the summary."""
    import jax
    from flax import nnx

    from evojax_nets.checkpoint import Checkpointer, resume
    from evojax_nets.engine import Evolution, History
    from evojax_nets.logging import MetricWriter, ProgressBar, plot_history
    from evojax_nets.models import MLP
    from evojax_nets.tasks import Supervised, load_digits

    data = load_digits(seed=args.seed)
    model = MLP(data.x_train.shape[1], args.hidden, data.num_classes, rngs=nnx.Rngs(args.seed))
    evolution = Evolution(
        model,
        Supervised.from_dataset(data, batch_size=args.batch_size),
        args.strategy,
        args.population,
        std=args.std,
        learning_rate=args.learning_rate,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [MetricWriter(out / f"metrics.{args.format}", append=args.resume)]
    if not args.no_progress:
        callbacks.insert(0, ProgressBar(desc=f"{evolution.strategy.name} P={args.population}"))
    ckpt_dir = out / "checkpoints"
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.checkpoint_every or args.resume:
        every = args.checkpoint_every or args.chunk_size
        callbacks.append(Checkpointer(ckpt_dir, every=every, keep=3))
    earlier = []
    if args.resume:
        state, previous = resume(evolution, ckpt_dir)
        earlier = previous.rows
    else:
        state = evolution.init(jax.random.key(args.seed))
    left = args.generations - int(state.generation)
    if left < 1:
        raise ValueError(
            f"the checkpoint is at generation {int(state.generation)}; ask for more "
            f"--generations than that to continue"
        )
    t_run = time.perf_counter()
    state, history = evolution.run(state, left, chunk_size=args.chunk_size, callbacks=callbacks)
    run_s = time.perf_counter() - t_run
    history = History(rows=[*earlier, *history.rows])
    theta = evolution.solution_theta(state)
    test = {k: float(v) for k, v in evolution.task.test_metrics(theta).items()}
    plot_history(history, out / "curve.png", metric="accuracy")
    _save_params(evolution, theta, out / "params.npz")
    compile_s = history.rows[-1]["compile_time"]
    summary = {
        "strategy": evolution.strategy.name,
        "population": evolution.population_size,
        "generations": args.generations,
        "num_params": evolution.network.num_params,
        "solution": "best member" if evolution.strategy.population_based else "mean",
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "wall_time_s": time.perf_counter() - _T_START,
        "run_time_s": run_s,
        "compile_time_s": compile_s,
        "generations_per_s": left / max(run_s - compile_s, 1e-9),
        "output": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from evojax_nets.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    if args.command == "run":
        try:
            summary = run_default(args)
        except (ValueError, TypeError, MemoryError, CheckpointError) as err:
            print(f"evojax-nets: error: {err}", file=sys.stderr)
            return 2
        print(
            f"test accuracy {summary['test_accuracy']:.4f} ({summary['solution']}) | "
            f"wall time {summary['wall_time_s']:.1f} s "
            f"(compile {summary['compile_time_s']:.1f} s) | "
            f"{summary['generations_per_s']:.1f} generations/s | outputs in {summary['output']}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
