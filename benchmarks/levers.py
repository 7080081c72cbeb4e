"""Throughput levers, each measured against its baseline side by side in one process.

On the engine's reference configuration (OpenAI-ES, population 256, MLP 64-64-64-10 tanh,
digits, minibatch 256) unless said otherwise:

* ``population_forward``: the evaluation as ``vmap`` of the member forward against
  ``MLP.population_apply`` (the shared-input first layer as one matmul per group of members);
* ``prng``: 128 x 8970 normals from JAX's threefry (as lowered on this backend), the library's
  ``UNROLLED_THREEFRY`` (same bits), and JAX's cheaper ``rbg`` and ``unsafe_rbg`` (other bits);
* ``bfloat16``: the evaluation in float32 against ``Supervised(compute_dtype=jnp.bfloat16)``,
  with the population forward (``speedup``) and with ``vmap`` (``speedup_vmap``);
* ``antithetic``: OpenAI-ES ``ask`` with and without antithetic sampling, and the variance of
  its gradient estimate on the digits loss (lower is better), same population size.

Timings are medians of interleaved repeats of a compiled ``lax.scan`` of ``--loop`` calls
(fresh keys each iteration, so nothing is hoisted). Prints one JSON object.

    python benchmarks/levers.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.models import MLP
from evojax_nets.prng import unrolled_keys


def scanned(fn, loop: int):
    """jit of a scan that calls ``fn(key_i, *args)`` ``loop`` times and sums one output."""

    def run(key, *args):
        def body(carry, i):
            out = fn(jax.random.fold_in(key, i), *args)
            return carry + jnp.sum(out).astype(jnp.float32), None

        return jax.lax.scan(body, jnp.float32(0), jnp.arange(loop))[0]

    return jax.jit(run)


def race(contenders: dict[str, tuple[Any, tuple]], loop: int, repeats: int) -> dict[str, float]:
    """Median ms per call of each contender, interleaved (order reversed every other round)."""
    for f, args in contenders.values():
        jax.block_until_ready(f(*args))
    times: dict[str, list[float]] = {n: [] for n in contenders}
    names = list(contenders)
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            f, args = contenders[n]
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[n].append((time.perf_counter() - t0) / loop * 1e3)
    return {n: round(statistics.median(t), 3) for n, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    data = load_digits()
    model = MLP(64, (64, 64), 10, rngs=nnx.Rngs(0))
    evos = {}  # the population forward pinned on (whatever the backend's default) and off
    for name, dtype, forward in (
        ("population_apply", None, True),
        ("population_apply_bfloat16", jnp.bfloat16, True),
        ("vmap_member_forward_bfloat16", jnp.bfloat16, False),
    ):
        task = Supervised(
            *(data.x_train, data.y_train, data.x_test, data.y_test),
            compute_dtype=dtype,
            population_forward=forward,
        )
        evos[name] = Evolution(model, task, "open_es", 256, std=0.05)
    evo, evo16 = evos["population_apply"], evos["population_apply_bfloat16"]
    net = evo.network
    pop = net.theta0 + 0.05 * jax.random.normal(jax.random.key(0), (256, net.num_params))
    key = jax.random.key(1)
    loop, reps = args.loop, args.repeats
    report: dict[str, Any] = {
        "benchmark": "levers",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }

    vmapped = lambda k, p: jax.vmap(evo.task.fitness, in_axes=(None, 0))(k, p)
    ms = race(
        {
            "vmap_member_forward": (scanned(vmapped, loop), (key, pop)),
            **{n: (scanned(e.evaluate, loop), (key, pop)) for n, e in evos.items()},
        },
        loop,
        reps,
    )
    report["population_forward"] = {
        "ms": {k: ms[k] for k in ("vmap_member_forward", "population_apply")},
        "speedup": round(ms["vmap_member_forward"] / ms["population_apply"], 2),
    }
    f32 = np.asarray(evo.evaluate(key, pop))
    f16 = np.asarray(evo16.evaluate(key, pop))
    report["bfloat16"] = {
        "ms": {
            "float32": ms["population_apply"],
            "bfloat16": ms["population_apply_bfloat16"],
            "float32_vmap": ms["vmap_member_forward"],
            "bfloat16_vmap": ms["vmap_member_forward_bfloat16"],
        },
        "speedup": round(ms["population_apply"] / ms["population_apply_bfloat16"], 2),
        "speedup_vmap": round(ms["vmap_member_forward"] / ms["vmap_member_forward_bfloat16"], 2),
        "max_rel_fitness_diff": float(np.max(np.abs(f16 - f32) / np.abs(f32))),
        "rank_agreement_spearman": float(
            np.corrcoef(np.argsort(np.argsort(f32)), np.argsort(np.argsort(f16)))[0, 1]
        ),
    }

    shape = (128, net.num_params)
    draw = lambda k: jax.random.normal(k, shape)
    keys = {
        "threefry": key,
        "threefry_unrolled": unrolled_keys(key),
        "rbg": jax.random.key(1, impl="rbg"),
        "unsafe_rbg": jax.random.key(1, impl="unsafe_rbg"),
    }
    ms = race({n: (scanned(draw, loop), (k,)) for n, k in keys.items()}, loop, reps)
    report["prng"] = {
        "normals": list(shape),
        "ms": ms,
        "speedup_vs_threefry": {n: round(ms["threefry"] / v, 2) for n, v in ms.items()},
        "same_bits_as_threefry": {
            "threefry_unrolled": bool(
                jnp.array_equal(draw(keys["threefry_unrolled"]), draw(keys["threefry"]))
            )
        },
    }

    algo = evo.strategy.algorithm
    plain = type(algo)(
        population_size=256,
        solution=algo.solution,
        use_antithetic_sampling=False,
        optimizer=algo.optimizer,
        std_schedule=algo.std_schedule,
    )
    state = evo.init(key).strategy_state
    ask = lambda a: lambda k, s: a.ask(unrolled_keys(k), s, a.default_params)[0]
    ms = race(
        {
            "antithetic": (scanned(ask(algo), loop), (key, state)),
            "independent": (scanned(ask(plain), loop), (key, state)),
        },
        loop,
        reps,
    )

    def grad_estimates(a, n: int) -> np.ndarray:
        def one(k):
            k_ask, k_eval = jax.random.split(k)
            population, _ = a.ask(k_ask, state, a.default_params)
            fit = evo.evaluate(k_eval, population)
            shaped = a.fitness_shaping_fn(population, fit, state, a.default_params)
            return jnp.dot(shaped, (population - state.mean) / state.std)

        return np.asarray(jax.lax.map(one, jax.random.split(jax.random.key(7), n)))

    variance = {}
    for name, a in (("antithetic", algo), ("independent", plain)):
        g = grad_estimates(a, 32)
        variance[name] = float(np.mean(np.var(g, axis=0)) / np.mean(g.mean(0) ** 2))
    report["antithetic"] = {
        "ask_ms": ms,
        "ask_speedup": round(ms["independent"] / ms["antithetic"], 2),
        "gradient_relative_variance": variance,
    }
    report["loadavg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
