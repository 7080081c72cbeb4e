"""Hybrids of gradient descent and evolution against Adam alone and pure ES.

Three parts, each printing JSON (one object at the end, also written to ``--out``) and drawn
in one PNG (``--png``):

1. **digits**: test accuracy against wall time (median of ``--seeds`` seeds) for Adam alone (a
   jitted, scanned optax loop), pure ES and each hybrid, at the same wall-clock budget
   (``--budget`` seconds of run time per contender and seed; compilation is done before the
   clock starts and reported apart), and the same at equal FLOPs, read off the same curves.
2. **minima**: a task with many poor local minima, where Adam from a standard initialisation
   often gets stuck. By default a deceptive regression: ``sin(6 x)`` on ``[-pi, pi]`` with 2
   ``sin`` hidden units, whose loss has a poor local minimum about every unit of each
   frequency weight, while the standard initialisation draws frequencies near 1 (success: test
   R^2 >= 0.99 on points between the training ones). ``--minima-task parity``: 4-bit parity
   with 3 tanh units (success: all 16 patterns); ``spirals``: two interleaved spirals, 6-6 tanh
   (test accuracy >= 0.95). Success rate over ``--minima-seeds`` seeds at ``--minima-budget``
   seconds each. Population-based hybrids start from independent draws of the network's
   initialiser; Adam with best-of-8 restarts from the same draws is a reference.
3. **starts**: evolved starting points. Loss after K=20 Adam steps on held-out sinusoid
   regression instances, from the standard initialisation and from evolved ones (all weights,
   and one scale per tensor).

The CPU is shared with other jobs, so the contenders of one seed run in the same process,
interleaved in short slices (the contender with the least run time so far goes next), and
each is timed only while it runs; ``os.getloadavg()`` is recorded. FLOPs are counted
analytically: a dense layer's forward pass is ``2 * in * out + out`` per example, a gradient
step three forward passes, plus the optimizer's and strategy's elementwise work per weight.

Usage::

    python benchmarks/hybrid.py                     # the full benchmark (about 50 minutes)
    python benchmarks/hybrid.py --budget 3 --seeds 1 --minima-budget 2 --minima-seeds 1 \\
        --start-generations 10 --start-seeds 1      # a quick check (under 2 minutes)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import blended_mean_update, esgd, gradient_steps, guided_es_gradient
from evojax_nets.models import MLP
from evojax_nets.nets import Network, from_nnx
from evojax_nets.tasks import load_digits
from evojax_nets.warmstart import (
    StartingPointTask,
    adapt,
    evolve_starting_point,
    sample_sinusoid,
)

MAX_CHUNK = 256  # generations / steps compiled per call; fewer are run when a slice is short


# --------------------------------------------------------------------------------------------
# Runners: one contender, advanced by a number of units (generations or optimizer steps).


@dataclass
class Runner:
    """A contender: ``advance(n)`` runs ``n`` units (blocking), ``theta()`` is its answer."""

    name: str
    advance: Callable[[int], None]
    theta: Callable[[], jax.Array]
    flops_per_unit: float
    compile_s: float
    elapsed: float = 0.0
    units: int = 0
    rate: float = 0.0  # units per second, measured
    curve: list[tuple[float, float, int, float]] = field(default_factory=list)


def dense_flops(network: Network) -> float:
    """Forward FLOPs per example of a network of dense layers: ``2*in*out + out`` per layer."""
    total = 0.0
    for leaf in jax.tree.leaves(network.unravel(network.theta0)):
        shape = np.shape(leaf)
        total += 2 * shape[0] * shape[1] if len(shape) == 2 else shape[0]
    return total


def adam_runner(
    name: str,
    network: Network,
    loss_on: Callable,
    sample: Callable,
    lr: float,
    seed: int,
    flops_fwd: float,
    batch: int,
) -> Runner:
    """Plain optax training: a jitted ``lax.scan`` of Adam steps on minibatches."""
    opt = optax.adam(lr)

    def step(carry, i):
        theta, state, key, n = carry

        def go(args):
            theta, state, key = args
            key, k = jax.random.split(key)
            x, y = sample(k)
            grads = jax.grad(loss_on)(theta, x, y)
            updates, state = opt.update(grads, state, theta)
            return optax.apply_updates(theta, updates), state, key

        theta, state, key = jax.lax.cond(i < n, go, lambda a: a, (theta, state, key))
        return (theta, state, key, n), None

    def chunk(theta, state, key, n):
        (theta, state, key, _), _ = jax.lax.scan(
            step, (theta, state, key, n), jnp.arange(MAX_CHUNK)
        )
        return theta, state, key

    holder = {
        "theta": network.theta0,
        "state": opt.init(network.theta0),
        "key": jax.random.key(seed),
    }
    t0 = time.perf_counter()
    compiled = (
        jax.jit(chunk)
        .lower(holder["theta"], holder["state"], holder["key"], jnp.int32(1))
        .compile()
    )
    compile_s = time.perf_counter() - t0

    def advance(n: int) -> None:
        out = compiled(holder["theta"], holder["state"], holder["key"], jnp.int32(n))
        holder["theta"], holder["state"], holder["key"] = jax.block_until_ready(out)

    flops = 3 * batch * flops_fwd + 12 * network.num_params
    return Runner(name, advance, lambda: holder["theta"], flops, compile_s)


def adam_restarts_runner(
    name: str,
    network: Network,
    loss_on: Callable,
    x: np.ndarray,
    y: np.ndarray,
    inits: jax.Array,
    lr: float,
    flops_fwd: float,
) -> Runner:
    """Independent full-batch Adam runs from each row of ``inits``, vmapped, sharing the
    budget; the answer is the run with the lowest training loss (best-of-N restarts)."""
    opt = optax.adam(lr)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def one_step(theta, state):
        grads = jax.grad(loss_on)(theta, x, y)
        updates, state = opt.update(grads, state, theta)
        return optax.apply_updates(theta, updates), state

    def chunk(theta, state, n):
        def body(c, i):
            return jax.lax.cond(i < n, lambda c: jax.vmap(one_step)(*c), lambda c: c, c), None

        (theta, state), _ = jax.lax.scan(body, (theta, state), jnp.arange(MAX_CHUNK))
        return theta, state

    holder = {"theta": inits, "state": jax.vmap(opt.init)(inits)}
    t0 = time.perf_counter()
    compiled = jax.jit(chunk).lower(holder["theta"], holder["state"], jnp.int32(1)).compile()
    compile_s = time.perf_counter() - t0
    train_loss = jax.jit(jax.vmap(lambda th: loss_on(th, x, y)))

    def advance(n: int) -> None:
        out = compiled(holder["theta"], holder["state"], jnp.int32(n))
        holder["theta"], holder["state"] = jax.block_until_ready(out)

    def theta() -> jax.Array:
        losses = train_loss(holder["theta"])
        return holder["theta"][jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf))]

    size, d = inits.shape
    flops = size * (3 * x.shape[0] * flops_fwd + 12 * d)
    return Runner(name, advance, theta, flops, compile_s)


def evo_runner(name: str, evo: Evolution, seed: int, answer: str, flops_per_gen: float) -> Runner:
    """An :class:`Evolution`; ``answer`` is ``"mean"``, ``"current"`` (the best member of the
    last evaluated population, for Lamarckian population-based runs) or ``"best"``."""
    holder = {"state": evo.init(jax.random.key(seed))}
    t0 = time.perf_counter()
    compiled, _ = evo.compile(holder["state"], MAX_CHUNK)
    compile_s = time.perf_counter() - t0

    def advance(n: int) -> None:
        state, _ = compiled(holder["state"], jnp.int32(n))
        holder["state"] = jax.block_until_ready(state)

    def theta() -> jax.Array:
        state = holder["state"]
        if answer == "mean":
            return evo.mean_theta(state)
        if answer == "current":
            s = state.strategy_state
            return s.population[jnp.argmin(s.fitness)]
        return state.best_theta

    return Runner(name, advance, theta, flops_per_gen, compile_s)


def race(runners: list[Runner], budget: float, score: Callable[[jax.Array], float]) -> None:
    """Advance the runners in interleaved slices until each has run ``budget`` seconds.

    The runner with the least run time goes next; slices grow from 20 ms to 1 s so that the
    curves are dense early. Scoring (test metrics) is outside the timed region.
    """
    for r in runners:
        r.curve.append((0.0, 0.0, 0, score(r.theta())))
        t0 = time.perf_counter()
        r.advance(1)  # first call: warm caches, measure a rate
        dt = time.perf_counter() - t0
        r.elapsed, r.units, r.rate = dt, 1, 1.0 / max(dt, 1e-6)
        r.curve.append((r.elapsed, r.units * r.flops_per_unit, r.units, score(r.theta())))
    while True:
        live = [r for r in runners if r.elapsed < budget]
        if not live:
            break
        r = min(live, key=lambda r: r.elapsed)
        target = float(np.clip(0.1 * r.elapsed, 0.02, 1.0))
        target = min(target, budget - r.elapsed)
        n = int(np.clip(round(target * r.rate), 1, MAX_CHUNK))
        t0 = time.perf_counter()
        r.advance(n)
        dt = time.perf_counter() - t0
        r.elapsed += dt
        r.units += n
        r.rate = 0.5 * r.rate + 0.5 * n / max(dt, 1e-6)
        r.curve.append((r.elapsed, r.units * r.flops_per_unit, r.units, score(r.theta())))


# --------------------------------------------------------------------------------------------
# Part 1: digits.


def digits_contenders(
    seed: int, hidden: tuple[int, ...], contenders: list[str]
) -> tuple[list[Runner], Callable]:
    ds = load_digits()
    model = MLP(64, hidden, 10, rngs=nnx.Rngs(seed))
    network = from_nnx(model)
    f_fwd = dense_flops(network)
    d = network.num_params
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    @jax.jit
    def accuracy(theta):
        return jnp.mean(jnp.argmax(network.apply(theta, x_te), -1) == y_te)

    def task(batch: int) -> Supervised:
        return Supervised.from_dataset(ds, batch_size=batch)

    def es_flops(p: int, b: int) -> float:
        return p * b * f_fwd + 6 * p * d

    def grad_op_flops(p: int, k: int, steps: int, b: int, pre: bool, post: bool) -> float:
        return (
            k * steps * (3 * b * f_fwd + 12 * d)
            + (p * b * f_fwd if pre else 0)
            + (k * b * f_fwd if post else 0)
        )

    make: dict[str, Callable[[], Runner]] = {}
    bound = task(64).bind(network)
    make["adam"] = lambda: adam_runner(
        "adam", network, bound.extra["loss_on"], bound.extra["sample"], 1e-3, seed, f_fwd, 64
    )
    for lr in (3e-4, 1e-4):  # Adam's step for long runs (1e-3 is best for short ones)
        make[f"adam_lr{lr:g}"] = lambda lr=lr: adam_runner(
            f"adam_lr{lr:g}",
            network,
            bound.extra["loss_on"],
            bound.extra["sample"],
            lr,
            seed,
            f_fwd,
            64,
        )
    make["open_es"] = lambda: evo_runner(
        "open_es",
        Evolution(model, task(256), "open_es", 128, std=0.02, learning_rate=0.01),
        seed,
        "mean",
        es_flops(128, 256),
    )
    make["pgpe"] = lambda: evo_runner(
        "pgpe",
        Evolution(model, task(256), "pgpe", 128, std=0.02, learning_rate=0.01),
        seed,
        "mean",
        es_flops(128, 256),
    )
    make["snes"] = lambda: evo_runner(
        "snes",
        Evolution(model, task(256), "snes", 128, std=0.02),
        seed,
        "mean",
        es_flops(128, 256),
    )
    # Hybrids. The gradient optimizer is Adam with Adam-alone's tuned step everywhere. Small
    # populations with long gradient phases did best in a sweep (P in 4..32, K in 10..100).
    pop, steps, b, mut = 4, 50, 64, 0.02
    # Lamarckian answers with the best trained member, Baldwinian with its best genome ever.
    for mode, answer in (("lamarckian", "current"), ("baldwinian", "best")):
        make[f"{mode}_ga"] = lambda mode=mode, answer=answer: evo_runner(
            f"{mode}_ga",
            Evolution(
                model,
                task(b),
                "ga",
                pop,
                std=mut,
                ops=gradient_steps(optax.adam(1e-3), steps, mode=mode),
            ),
            seed,
            answer,
            es_flops(pop, b) + grad_op_flops(pop, pop, steps, b, False, False),
        )
    strategy, op = esgd(model, pop, optax.adam(1e-3), steps, num_parents=2, std=mut)
    make["esgd"] = lambda: evo_runner(
        "esgd",
        Evolution(model, task(b), strategy, pop, ops=op, std=mut),
        seed,
        "current",
        es_flops(pop, b) + grad_op_flops(pop, pop, steps, b, True, True),
    )
    make["guided_es"] = lambda: evo_runner(
        "guided_es",
        Evolution(
            model,
            task(256),
            "guided_es",
            32,
            std=1.0,
            learning_rate=1e-3,
            ops=guided_es_gradient(),
            strategy_kwargs={"subspace_dims": 4},
            strategy_params={"alpha": 0.5},
        ),
        seed,
        "mean",
        es_flops(32, 256) + 3 * 256 * f_fwd,
    )
    make["blended_es"] = lambda: evo_runner(
        "blended_es",
        Evolution(
            model,
            task(256),
            "open_es",
            32,
            std=0.02,
            learning_rate=0.01,
            ops=blended_mean_update(optax.adam(1e-3), weight=0.9),
        ),
        seed,
        "mean",
        es_flops(32, 256) + 3 * 256 * f_fwd + 12 * d,
    )
    unknown = set(contenders) - set(make)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)}; valid: {sorted(make)}")
    return [make[c]() for c in contenders], lambda th: float(accuracy(th))


def value_at(curve: list, index: int, limit: float) -> float:
    """The score of the last point of ``curve`` whose ``index`` (0 time, 1 FLOPs) <= limit."""
    best = curve[0][3]
    for point in curve:
        if point[index] <= limit * (1 + 1e-9):
            best = point[3]
    return best


def run_digits(args) -> dict:
    out: dict[str, Any] = {"budget_s": args.budget, "seeds": args.seeds, "runs": []}
    for seed in range(args.seeds):
        load0 = os.getloadavg()
        runners, score = digits_contenders(seed, tuple(args.hidden), args.contenders)
        race(runners, args.budget, score)
        flops_common = min(r.curve[-1][1] for r in runners)
        run = {
            "seed": seed,
            "load_before": load0,
            "load_after": os.getloadavg(),
            "flops_common": flops_common,
            "contenders": {},
        }
        for r in runners:
            run["contenders"][r.name] = {
                "final_accuracy": r.curve[-1][3],
                "max_accuracy": max(p[3] for p in r.curve),
                "accuracy_at_common_flops": value_at(r.curve, 1, flops_common),
                "units": r.units,
                "run_s": r.elapsed,
                "compile_s": r.compile_s,
                "flops": r.curve[-1][1],
                "flops_per_unit": r.flops_per_unit,
                "curve": [
                    [round(a, 4), float(f"{b:.4g}"), c, round(d, 5)] for a, b, c, d in r.curve
                ],
            }
        out["runs"].append(run)
        line = {n: round(c["final_accuracy"], 4) for n, c in run["contenders"].items()}
        print(f"[digits] seed {seed} load {load0[0]:.1f}: {line}", file=sys.stderr, flush=True)
    names = list(out["runs"][0]["contenders"])
    summary = {}
    for n in names:

        def med(key: str, n: str = n) -> float:
            return float(np.median([run["contenders"][n][key] for run in out["runs"]]))

        summary[n] = {
            "median_final_accuracy": med("final_accuracy"),
            "median_max_accuracy": med("max_accuracy"),
            "median_accuracy_at_common_flops": med("accuracy_at_common_flops"),
            "median_units": med("units"),
            "median_flops": med("flops"),
            "median_compile_s": med("compile_s"),
        }
    out["summary"] = summary
    out["median_flops_common"] = float(np.median([r["flops_common"] for r in out["runs"]]))
    return out


# --------------------------------------------------------------------------------------------
# Part 2: a task with many local minima.


def two_spirals(n: int, turns: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on two interleaved spirals of ``turns`` turns, labels 0 and 1."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * turns * 2 * np.pi
    r = t / (turns * 2 * np.pi)
    arm = rng.integers(0, 2, n)
    angle = t + np.pi * arm
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], 1) + noise * rng.normal(size=(n, 2))
    return (x * 2.0).astype(np.float32), arm.astype(np.int32)


def parity(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``2**bits`` inputs in ``{-1, 1}**bits`` and their parity (number of +1s mod 2)."""
    x = np.array(list(itertools.product([-1.0, 1.0], repeat=bits)), np.float32)
    return x, ((x > 0).sum(1) % 2).astype(np.int32)


def sine_wave(n: int, frequency: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of ``sin(frequency * x)`` on a grid over ``[-pi, pi]``, shifted by ``offset``
    of a grid step (0 for training, 0.5 for test points between the training ones)."""
    x = -np.pi + (np.arange(n) + offset) * (2 * np.pi / n)
    return x[:, None].astype(np.float32), np.sin(frequency * x).astype(np.float32)


def minima_data(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Train and test data and the success threshold on the test score (accuracy; R^2 for
    the sine task)."""
    if args.minima_task == "parity":
        x, y = parity(args.parity_bits)
        return x, y, x, y, 1.0  # an optimisation problem: solve all patterns
    if args.minima_task == "sine":
        x, y = sine_wave(256, args.sine_frequency, 0.0)
        xt, yt = sine_wave(256, args.sine_frequency, 0.5)
        return x, y, xt, yt, 0.99
    x, y = two_spirals(400, args.spiral_turns, 0.0, 0)
    xt, yt = two_spirals(400, args.spiral_turns, 0.0, 1)
    return x, y, xt, yt, 0.95


def minima_contenders(seed: int, args) -> tuple[list[Runner], Callable]:
    x, y, xt, yt, _ = minima_data(args)
    hidden = tuple(args.minima_hidden)
    width_in = x.shape[1]
    regression = args.minima_task == "sine"
    # The sine task's network has sin activations: its loss oscillates in each frequency weight
    # (on [-pi, pi], a poor local minimum about every unit away from the target frequency).
    mlp_kwargs = {"activation": jnp.sin} if regression else {}
    width_out = 1 if regression else 2
    model = MLP(width_in, hidden, width_out, rngs=nnx.Rngs(seed), **mlp_kwargs)
    network = from_nnx(model)
    f_fwd = dense_flops(network)
    d = network.num_params
    task = Supervised(
        x, y, xt, yt, batch_size=None, kind="regression" if regression else "classification"
    )
    bound = task.bind(network)
    n = len(x)
    xt_, yt_ = jnp.asarray(xt), jnp.asarray(yt)

    @jax.jit
    def accuracy(theta):
        out = network.apply(theta, xt_)
        if regression:  # R^2 on the test points
            return 1.0 - jnp.mean((out[:, 0] - yt_) ** 2) / jnp.var(yt_)
        return jnp.mean(jnp.argmax(out, -1) == yt_)

    # Population-based hybrids start from independent draws of the network's own initialiser
    # (member 0 is the draw Adam starts from): their diversity is the point of a population.
    # Adam with restarts gets the same draws.
    pop, steps, lr = 8, args.minima_steps, args.minima_lr
    bank = [network.theta0] + [
        from_nnx(
            MLP(width_in, hidden, width_out, rngs=nnx.Rngs(1000 * (seed + 1) + i), **mlp_kwargs)
        ).theta0
        for i in range(1, pop)
    ]
    bank = jnp.stack(bank)

    def adam_at(name: str, learning_rate: float) -> Runner:
        loss_on, sample = bound.extra["loss_on"], bound.extra["sample"]
        return adam_runner(name, network, loss_on, sample, learning_rate, seed, f_fwd, n)

    def inits(key: jax.Array, size: int) -> jax.Array:
        return bank[jnp.arange(size) % bank.shape[0]]

    def es_flops(p: int) -> float:
        return p * n * f_fwd + 6 * p * d

    def gflops(k: int, pre: bool, post: bool) -> float:
        train = k * steps * (3 * n * f_fwd + 12 * d)
        return train + pop * n * f_fwd * pre + k * n * f_fwd * post

    def ga(mode: str) -> Evolution:
        return Evolution(
            model,
            task,
            "ga",
            pop,
            std=args.minima_std,
            population_init=inits,
            strategy_kwargs={"num_parents": pop // 2, "num_elites": args.minima_elites},
            ops=gradient_steps(optax.adam(lr), steps, mode=mode),
        )

    strategy, op = esgd(
        model,
        pop,
        optax.adam(lr),
        steps,
        num_parents=pop // 2,
        num_elites=min(args.minima_elites, pop // 2),
        std=args.minima_std,
    )
    make: dict[str, Callable[[], Runner]] = {
        "adam": lambda: adam_at("adam", lr),
        "adam_restarts": lambda: adam_restarts_runner(
            "adam_restarts", network, bound.extra["loss_on"], x, y, bank, lr, f_fwd
        ),
        "open_es": lambda: evo_runner(
            "open_es",
            Evolution(model, task, "open_es", 64, std=0.1, learning_rate=0.03),
            seed,
            "mean",
            es_flops(64),
        ),
        "lamarckian_ga": lambda: evo_runner(
            "lamarckian_ga",
            ga("lamarckian"),
            seed,
            "current",
            es_flops(pop) + gflops(pop, False, False),
        ),
        "baldwinian_ga": lambda: evo_runner(
            "baldwinian_ga",
            ga("baldwinian"),
            seed,
            "best",
            es_flops(pop) + gflops(pop, False, False),
        ),
        "esgd": lambda: evo_runner(
            "esgd",
            Evolution(model, task, strategy, pop, ops=op, population_init=inits),
            seed,
            "current",
            es_flops(pop) + gflops(pop, True, True),
        ),
        "guided_es": lambda: evo_runner(
            "guided_es",
            Evolution(
                model,
                task,
                "guided_es",
                16,
                std=0.5,
                learning_rate=lr,
                ops=guided_es_gradient(),
                strategy_kwargs={"subspace_dims": 4},
            ),
            seed,
            "mean",
            es_flops(16) + 3 * n * f_fwd,
        ),
        "blended_es": lambda: evo_runner(
            "blended_es",
            Evolution(
                model,
                task,
                "open_es",
                16,
                std=0.1,
                learning_rate=0.03,
                ops=blended_mean_update(optax.adam(lr), weight=0.5),
            ),
            seed,
            "mean",
            es_flops(16) + 3 * n * f_fwd + 12 * d,
        ),
    }
    for lr_ in (1e-3, 3e-2, 1e-1, 3e-1):  # is Adam stuck whatever its step size?
        make[f"adam_lr{lr_:g}"] = lambda lr_=lr_: adam_at(f"adam_lr{lr_:g}", lr_)
    unknown = set(args.minima_contenders) - set(make)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)}; valid: {sorted(make)}")
    return [make[c]() for c in args.minima_contenders], lambda th: float(accuracy(th))


def run_minima(args) -> dict:
    threshold = minima_data(args)[4]
    out: dict[str, Any] = {
        "task": args.minima_task,
        "budget_s": args.minima_budget,
        "seeds": args.minima_seeds,
        "hidden": list(args.minima_hidden),
        "success_threshold": threshold,
        "runs": [],
    }
    if args.minima_task == "parity":
        out["bits"] = args.parity_bits
    elif args.minima_task == "sine":
        out["frequency"] = args.sine_frequency
    else:
        out["turns"] = args.spiral_turns
    for seed in range(args.minima_seeds):
        load0 = os.getloadavg()
        runners, score = minima_contenders(seed, args)
        race(runners, args.minima_budget, score)
        run = {"seed": seed, "load_before": load0, "load_after": os.getloadavg(), "contenders": {}}
        for r in runners:
            run["contenders"][r.name] = {
                "final_accuracy": r.curve[-1][3],
                "units": r.units,
                "run_s": r.elapsed,
                "compile_s": r.compile_s,
                "flops": r.curve[-1][1],
                # first run time at which the success threshold was reached (None: never)
                "time_to_success": next(
                    (round(p[0], 3) for p in r.curve if p[3] >= threshold - 1e-6), None
                ),
            }
        out["runs"].append(run)
        line = {k: round(c["final_accuracy"], 3) for k, c in run["contenders"].items()}
        print(f"[minima] seed {seed} load {load0[0]:.1f}: {line}", file=sys.stderr, flush=True)
    summary = {}
    for name in out["runs"][0]["contenders"]:
        accs = [run["contenders"][name]["final_accuracy"] for run in out["runs"]]
        summary[name] = {
            "success_rate": float(np.mean([a >= threshold - 1e-6 for a in accs])),
            "median_accuracy": float(np.median(accs)),
        }
    out["summary"] = summary
    return out


# --------------------------------------------------------------------------------------------
# Part 3: evolved starting points.


def run_starts(args) -> dict:
    k_steps = 20
    inner = optax.adam(1e-2)
    task = StartingPointTask(sample_sinusoid, inner, num_steps=k_steps, num_instances=8)
    held_out = jax.random.split(jax.random.key(123_456), args.start_test_instances)

    def make(seed: int) -> MLP:
        return MLP(1, (40, 40), 1, rngs=nnx.Rngs(seed), activation=jax.nn.relu)

    network = from_nnx(make(0))

    @jax.jit
    def losses(theta: jax.Array) -> jax.Array:
        def one(k):
            x, y, xv, yv = sample_sinusoid(k)
            th = adapt(network, theta, x, y, inner, k_steps)
            return jnp.mean((network.apply(th, xv)[:, 0] - yv) ** 2)

        return jax.vmap(one)(held_out)

    out: dict[str, Any] = {
        "inner": f"adam(1e-2) x {k_steps} steps, 10 support / 50 query points",
        "held_out_instances": args.start_test_instances,
        "generations": args.start_generations,
        "runs": [],
    }
    for seed in range(args.start_seeds):
        load0 = os.getloadavg()
        standard = from_nnx(make(seed)).theta0
        row: dict[str, Any] = {"seed": seed, "load_before": load0}
        row["standard_median_loss"] = float(jnp.median(losses(standard)))
        for label, scales, std in (("evolved_weights", False, 0.05), ("evolved_scales", True, 0.1)):
            t0 = time.perf_counter()
            res = evolve_starting_point(
                make(seed),
                task,
                "open_es",
                64,
                args.start_generations,
                scales=scales,
                seed=seed,
                std=std,
                learning_rate=0.01,
                chunk_size=50,
            )
            row[f"{label}_median_loss"] = float(jnp.median(losses(res.theta)))
            row[f"{label}_seconds"] = time.perf_counter() - t0
        row["load_after"] = os.getloadavg()
        out["runs"].append(row)
        print(f"[starts] {row}", file=sys.stderr, flush=True)
    out["summary"] = {
        k: float(np.median([r[k] for r in out["runs"]]))
        for k in (
            "standard_median_loss",
            "evolved_weights_median_loss",
            "evolved_scales_median_loss",
        )
    }
    return out


# --------------------------------------------------------------------------------------------


def median_curve(runs: list, name: str, index: int, grid: np.ndarray) -> np.ndarray:
    rows = []
    for run in runs:
        curve = run["contenders"][name]["curve"]
        rows.append([value_at(curve, index, g) for g in grid])
    return np.median(np.asarray(rows), axis=0)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    digits = result.get("digits")
    if digits:
        runs = digits["runs"]
        names = list(runs[0]["contenders"])
        tgrid = np.geomspace(0.05, digits["budget_s"], 200)
        fmax = max(c["flops"] for run in runs for c in run["contenders"].values())
        fgrid = np.geomspace(fmax * 1e-5, fmax, 200)
        for n in names:
            axes[0, 0].plot(tgrid, median_curve(runs, n, 0, tgrid), label=n)
            axes[0, 1].plot(fgrid, median_curve(runs, n, 1, fgrid), label=n)
        axes[0, 1].axvline(digits["median_flops_common"], color="k", ls=":", lw=1)
        for ax, xl in ((axes[0, 0], "run time (s)"), (axes[0, 1], "FLOPs")):
            ax.set_xscale("log")
            ax.set_ylim(0.8, 1.0)
            ax.set_xlabel(xl)
            ax.set_ylabel(f"test accuracy (median of {len(runs)} seeds)")
            ax.grid(alpha=0.3)
        axes[0, 0].set_title("digits: accuracy vs wall time")
        axes[0, 1].set_title("digits: accuracy vs FLOPs (dotted: common budget)")
        axes[0, 0].legend(fontsize=8)
    minima = result.get("minima")
    if minima:
        s = minima["summary"]
        axes[1, 0].bar(list(s), [v["success_rate"] for v in s.values()])
        score = "test R^2" if minima["task"] == "sine" else "accuracy"
        axes[1, 0].set_ylabel(f"success rate ({score} >= {minima['success_threshold']})")
        what = {
            "parity": lambda: f"{minima['bits']}-bit parity",
            "sine": lambda: f"sin({minima['frequency']:g} x), sin units",
            "spirals": lambda: f"two spirals ({minima['turns']} turns)",
        }[minima["task"]]()
        axes[1, 0].set_title(
            f"{what}, hidden {minima['hidden']}, {minima['seeds']} seeds, "
            f"{minima['budget_s']} s each"
        )
        axes[1, 0].tick_params(axis="x", rotation=30)
    starts = result.get("starts")
    if starts:
        labels = ["standard", "evolved_weights", "evolved_scales"]
        vals = [[r[f"{k}_median_loss"] for r in starts["runs"]] for k in labels]
        axes[1, 1].boxplot(vals, tick_labels=labels)
        axes[1, 1].set_yscale("log")
        axes[1, 1].set_ylabel("median held-out MSE after 20 Adam steps")
        axes[1, 1].set_title("sinusoids: evolved vs standard initialisation")
    for ax, part in ((axes[0, 0], digits), (axes[0, 1], digits), (axes[1, 0], minima)):
        if not part:
            ax.axis("off")
    if not starts:
        axes[1, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="digits,minima,starts")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per contender and seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[512, 512],
        help="digits MLP hidden widths (512 512: 301,066 weights; 256: 19,210)",
    )
    p.add_argument(
        "--contenders",
        nargs="+",
        default=["adam", "adam_lr0.0001", "open_es", "pgpe", "lamarckian_ga", "esgd"],
        help="also: snes, adam_lr0.0003, baldwinian_ga, guided_es, blended_es",
    )
    p.add_argument("--minima-task", choices=["sine", "parity", "spirals"], default="sine")
    p.add_argument("--minima-budget", type=float, default=10.0)
    p.add_argument("--minima-seeds", type=int, default=10)
    p.add_argument(
        "--minima-hidden",
        type=int,
        nargs="+",
        default=None,
        help="hidden widths (default: sine 2, parity 3, spirals 6 6)",
    )
    p.add_argument("--minima-lr", type=float, default=1e-2)
    p.add_argument("--minima-steps", type=int, default=100, help="hybrids' steps per generation")
    p.add_argument("--minima-std", type=float, default=0.5, help="hybrids' mutation scale")
    p.add_argument(
        "--minima-elites",
        type=int,
        default=1,
        help="hybrids' members kept unmutated (and training on) each generation",
    )
    p.add_argument("--parity-bits", type=int, default=4)
    p.add_argument("--spiral-turns", type=float, default=3.0)
    p.add_argument(
        "--sine-frequency", type=float, default=6.0, help="target frequency of the sine task"
    )
    p.add_argument(
        "--minima-contenders",
        nargs="+",
        default=[
            "adam",
            "adam_restarts",
            "open_es",
            "lamarckian_ga",
            "baldwinian_ga",
            "esgd",
            "guided_es",
            "blended_es",
        ],
    )
    p.add_argument("--start-generations", type=int, default=300)
    p.add_argument("--start-seeds", type=int, default=3)
    p.add_argument("--start-test-instances", type=int, default=100)
    today = datetime.date.today().isoformat()
    p.add_argument("--out", default=f"benchmarks/results/hybrid-{today}.json")
    p.add_argument("--png", default="benchmarks/out/hybrid.png")
    p.add_argument(
        "--replot", action="store_true", help="redraw --png from the JSON at --out, run nothing"
    )
    args = p.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            result = json.load(f)
        plot(result, args.png)
        return result
    if args.minima_hidden is None:
        args.minima_hidden = {"sine": [2], "parity": [3], "spirals": [6, 6]}[args.minima_task]

    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/hybrid.py", *(argv or sys.argv[1:])]),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "load_start": os.getloadavg(),
    }
    parts = args.parts.split(",")
    if "digits" in parts:
        result["digits"] = run_digits(args)
    if "minima" in parts:
        result["minima"] = run_minima(args)
    if "starts" in parts:
        result["starts"] = run_starts(args)
    result["load_end"] = os.getloadavg()
    for path in (args.out, args.png):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f)
    plot(result, args.png)
    brief = {k: v for k, v in result.items() if k not in ("digits", "minima", "starts")}
    for part in ("digits", "minima", "starts"):
        if part in result:
            brief[part] = {k: v for k, v in result[part].items() if k != "runs"}
    print(json.dumps(brief, indent=1))
    return result


if __name__ == "__main__":
    main()
