"""Parts 2 and 3 of ``benchmarks/hybrid.py``: the tasks with many poor local minima (the
deceptive sine, parity, two spirals) and their contenders, and the evolved starting points on
sinusoid regression. ``benchmarks/hybrid.py`` holds the command line and the plot."""

import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hybrid_race import Runner, adam_restarts_runner, adam_runner, dense_flops, evo_runner, race

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import blended_mean_update, esgd, gradient_steps, guided_es_gradient
from evojax_nets.models import MLP
from evojax_nets.nets import from_nnx
from evojax_nets.warmstart import (
    StartingPointTask,
    adapt,
    evolve_starting_point,
    sample_sinusoid,
)

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
