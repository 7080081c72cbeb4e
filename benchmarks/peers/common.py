"""What every contender of the peer comparison shares: the tasks, the network, the strategy's
hyperparameters and the initial weights.

This module imports only numpy and scikit-learn, so the runners import it in every virtual
environment (ours, EvoJAX's, EvoTorch's). Each runner builds the same network in its own
library, loads the same initial weights (:func:`initial_weights`) and prints one JSON object
(:func:`emit`).

Cart-pole swing-up: the classic cart-pole of Barto, Sutton and Anderson (1983) with the
swing-up objective of Doya (2000), in the form popularised by Ha's ``cartpole_swingup``
environment and shipped by EvoJAX as ``CartPoleSwingUp``. The constants below are that task's,
so every contender solves the same problem. Equations of motion (force ``F``, friction ``b``
on the cart, cart mass ``M``, pole mass ``m``, pole half-length-free form ``l``, ``g``)::

    x''  = (-2 m l th'^2 sin + 3 m g sin cos + 4 F - 4 b x') / (4 (M + m) - 3 m cos^2)
    th'' = (-3 m l th'^2 sin cos + 6 (M + m) g sin + 6 (F - b x') cos)
           / (4 l (M + m) - 3 m l cos^2)

integrated with explicit Euler (positions from the old velocities). The reward of a step is
``(1 + cos th) / 2 * cos(x / x_limit * pi / 2)`` on the new state; the episode ends when the
cart leaves ``|x| <= x_limit`` or after ``max_steps`` steps. The "easy" start is
``N(0, 0.2^2)`` around ``(0, 0, pi, 0)`` (pole hanging down).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

# -- digits ---------------------------------------------------------------------------------

DIGITS_HIDDEN = (64, 64)
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# -- cart-pole swing-up (EvoJAX's constants) -------------------------------------------------

GRAVITY = 9.82
CART_MASS = 0.5
POLE_MASS = 0.5
POLE_LEN = 0.6
FRICTION = 0.1
FORCE_SCALING = 10.0
DELTA_T = 0.01
CART_X_LIMIT = 2.4
INIT_STD = 0.2  # the "easy" start
CARTPOLE_HIDDEN = (64, 64)
CARTPOLE_OBS = 5  # x, x', cos th, sin th, th'
CARTPOLE_ACT = 1


def cartpole_step(x, x_dot, th, th_dot, force, sin, cos):
    """One Euler step of the swing-up dynamics, for any array library (NumPy, JAX, torch):
    ``sin``/``cos`` are that library's functions. Returns ``(x, x_dot, th, th_dot)``."""
    total_m = CART_MASS + POLE_MASS
    m_p_l = POLE_MASS * POLE_LEN
    s, c = sin(th), cos(th)
    x_acc = (
        -2 * m_p_l * th_dot**2 * s
        + 3 * POLE_MASS * GRAVITY * s * c
        + 4 * force
        - 4 * FRICTION * x_dot
    ) / (4 * total_m - 3 * POLE_MASS * c**2)
    th_acc = (
        -3 * m_p_l * th_dot**2 * s * c
        + 6 * total_m * GRAVITY * s
        + 6 * (force - FRICTION * x_dot) * c
    ) / (4 * POLE_LEN * total_m - 3 * m_p_l * c**2)
    return (
        x + x_dot * DELTA_T,
        x_dot + x_acc * DELTA_T,
        th + th_dot * DELTA_T,
        th_dot + th_acc * DELTA_T,
    )


@dataclass(frozen=True)
class Config:
    """One task's shared settings. Every contender runs PGPE (Sehnke et al. 2010) with
    symmetric sampling, centred-rank fitness shaping, Adam on the centre, a plain step on the
    standard deviations clipped to ``stdev_max_change`` of their value: the same update in
    evosax 0.3.2, EvoJAX 0.2.17 and EvoTorch 0.6.1 (checked against their sources)."""

    task: str
    population: int
    center_lr: float
    stdev_lr: float
    init_std: float
    stdev_max_change: float
    target: float  # test accuracy (digits) or mean test return (cart-pole) of the centre
    max_generations: int
    test_interval: int  # generations between tests of the centre
    throughput_generations: int  # generations of the timed steady-state phase
    max_seconds: float = 600.0  # a run that has not reached the target by then stops
    batch_size: int = 0  # digits: examples per generation (common to the population)
    n_repeats: int = 0  # cart-pole: training episodes per member (common seeds)
    max_steps: int = 0  # cart-pole: episode length
    test_episodes: int = 0  # cart-pole: episodes of a test


CONFIGS = {
    "digits": Config(
        task="digits",
        population=256,
        center_lr=0.02,
        stdev_lr=0.1,
        init_std=0.05,
        stdev_max_change=0.2,
        target=0.95,
        max_generations=600,
        test_interval=10,
        throughput_generations=100,
        batch_size=256,
    ),
    "cartpole": Config(
        task="cartpole",
        population=256,
        center_lr=0.05,
        stdev_lr=0.1,
        init_std=0.1,
        stdev_max_change=0.2,
        target=900.0,
        max_generations=400,
        test_interval=10,
        throughput_generations=10,
        n_repeats=1,
        max_steps=1000,
        test_episodes=64,
    ),
}


def parse_args(description: str, extra=None):
    """The runners' shared command line; ``extra(parser)`` adds a runner's own options.
    Returns ``(args, config)``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-generations", type=int)
    parser.add_argument("--throughput-generations", type=int)
    parser.add_argument("--target", type=float)
    parser.add_argument("--max-seconds", type=float)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    cfg = config(
        args.task,
        max_generations=args.max_generations,
        throughput_generations=args.throughput_generations,
        target=args.target,
        max_seconds=args.max_seconds,
    )
    return args, cfg


def version(name: str) -> str:
    """The installed version of distribution ``name``."""
    from importlib.metadata import version as _version

    return _version(name)


def config(task: str, **overrides) -> Config:
    """The shared config of ``task``, with ``overrides`` (from the command line) applied."""
    base = asdict(CONFIGS[task])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**base)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as 64 features in [0, 1], split 80/20 with stratification: the same
    split as ``evojax_nets.load_digits()`` (same arguments to ``train_test_split``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of arrays, so the driver can check that every contender saw the same data."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def layer_sizes(task: str) -> list[int]:
    if task == "digits":
        return [64, *DIGITS_HIDDEN, 10]
    return [CARTPOLE_OBS, *CARTPOLE_HIDDEN, CARTPOLE_ACT]


def initial_weights(task: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The starting network (the search distribution's centre) of every contender:
    ``[(kernel (in, out), bias (out,)), ...]``, kernels LeCun-normal, biases zero."""
    rng = np.random.default_rng(1000 + seed)
    sizes = layer_sizes(task)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            np.zeros((b,), np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def num_params(task: str) -> int:
    sizes = layer_sizes(task)
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


class Clock:
    """Wall time since construction, and the time spent in tests (excluded from training)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.test_s = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0


def emit(result: dict) -> None:
    """Print the runner's result as the last line of stdout (the driver reads that line)."""
    result.setdefault("pid", os.getpid())
    result.setdefault("python", sys.version.split()[0])
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def summarize(
    *,
    library: str,
    versions: dict,
    cfg: Config,
    seed: int,
    setup_s: float,
    first_chunk_s: float,
    curve: list[dict],
    throughput_s: float,
    data_fingerprint: str = "",
) -> dict:
    """The common result record.

    ``curve`` holds one row per test: ``generation``, ``wall_s`` (since the runner started
    building its objects: construction, compilation, training and tests) and ``metric``.
    """
    hit = next((row for row in curve if row["metric"] >= cfg.target), None)
    return {
        "library": library,
        "versions": versions,
        "task": cfg.task,
        "config": asdict(cfg),
        "seed": seed,
        "num_params": num_params(cfg.task),
        "setup_s": setup_s,
        "first_chunk_s": first_chunk_s,
        "reached": hit is not None,
        "generations_to_target": hit["generation"] if hit else None,
        "time_to_target_s": hit["wall_s"] if hit else None,
        "final_metric": curve[-1]["metric"] if curve else None,
        "final_generation": curve[-1]["generation"] if curve else 0,
        "final_wall_s": curve[-1]["wall_s"] if curve else None,
        "throughput_generations": cfg.throughput_generations,
        "throughput_s": throughput_s,
        "generations_per_s": cfg.throughput_generations / throughput_s,
        "curve": curve,
        "data_fingerprint": data_fingerprint,
    }
