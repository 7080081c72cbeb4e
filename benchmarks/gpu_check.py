"""One short accelerator check: achieved TFLOP/s of the population evaluation against the
device's own peak, generations per second with and without gradient mutation, and compile
times apart. Prints one JSON object.

The configuration is the issue's: population 1024, MLP 784-128-10, minibatch 1024 (synthetic
MNIST-shaped data, since the machine may have no datasets), OpenAI-ES, float32 and bfloat16
evaluation. The peak is measured on the same device (chained square matmuls in each dtype), and
the vendor's nominal dense peak is added where the device is known.

    python benchmarks/gpu_check.py            # on the GPU machine (see gpu_check.sh)
    python benchmarks/gpu_check.py --quick    # a CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.hybrids import gradient_steps
from evojax_nets.models import MLP

# Nominal dense peaks in TFLOP/s (vendor datasheets; no sparsity). For float32 the reference is
# the TF32 tensor-core rate: XLA runs float32 matmuls on NVIDIA GPUs in TF32 at JAX's default
# matmul precision (on an H200 the measured float32 matmul rate, 337-339 TFLOP/s, is 5x the
# 67 TFLOP/s of plain float32 arithmetic). The measured peak is the first reference anyway.
NOMINAL_TFLOPS = {
    "H200": {"float32": 495.0, "bfloat16": 989.0},
    "H100": {"float32": 495.0, "bfloat16": 989.0},
    "A100": {"float32": 156.0, "bfloat16": 312.0},
}


def _timed(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(dtype: Any, size: int, chain: int, repeats: int) -> float:
    """TFLOP/s of ``chain`` back-to-back ``size``-square matmuls in ``dtype``."""
    a = (jax.random.normal(jax.random.key(0), (size, size)) / np.sqrt(size)).astype(dtype)

    @jax.jit
    def run(x):
        return jax.lax.fori_loop(0, chain, lambda _, y: (y @ a).astype(dtype), x)

    seconds = _timed(run, a, repeats=repeats)
    return 2 * size**3 * chain / seconds / 1e12


def build(args: argparse.Namespace, dtype: Any, ops: Any = None) -> Evolution:
    rng = np.random.default_rng(0)
    x = rng.random((8192, 784), dtype=np.float32)
    y = rng.integers(0, 10, 8192).astype(np.int32)
    task = Supervised(x, y, x[:1024], y[:1024], batch_size=args.batch, compute_dtype=dtype)
    model = MLP(784, (args.hidden,), 10, rngs=nnx.Rngs(0))
    return Evolution(model, task, "open_es", args.population, ops=ops)


def evaluation_tflops(evo: Evolution, args: argparse.Namespace) -> dict[str, float]:
    """Achieved TFLOP/s of the population forward pass alone, in a scanned loop."""
    net = evo.network
    flops = 2 * args.population * args.batch * (784 * args.hidden + args.hidden * 10)
    pop = net.theta0 + 0.01 * jax.random.normal(
        jax.random.key(1), (args.population, net.num_params)
    )

    @jax.jit
    def loop(key, population):
        def body(carry, i):
            return carry + evo.evaluate(jax.random.fold_in(key, i), population).sum(), None

        return jax.lax.scan(body, 0.0, jnp.arange(args.eval_loop))[0]

    t0 = time.perf_counter()
    compiled = loop.lower(jax.random.key(0), pop).compile()
    compile_s = time.perf_counter() - t0
    seconds = _timed(compiled, jax.random.key(0), pop, repeats=args.repeats) / args.eval_loop
    return {"tflops": flops / seconds / 1e12, "ms": seconds * 1e3, "compile_s": compile_s}


def generations_per_second(evo: Evolution, args: argparse.Namespace) -> dict[str, float]:
    state = evo.init(jax.random.key(0))
    chunk, compile_s = evo.compile(state, args.generations)
    steps = jnp.int32(args.generations)
    state, _ = chunk(state, steps)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, _ = chunk(state, steps)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return {
        "generations_per_s": args.generations / float(np.median(times)),
        "compile_s": compile_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--generations", type=int, default=50, help="generations per timed chunk")
    p.add_argument("--eval-loop", type=int, default=50, help="evaluations per timed loop")
    p.add_argument("--grad-steps", type=int, default=1, help="gradient-mutation steps")
    p.add_argument("--matmul", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny settings (CPU smoke test)")
    args = p.parse_args()
    if args.quick:
        args.population, args.batch, args.generations, args.eval_loop = 16, 32, 2, 2
        args.matmul, args.repeats = 256, 2

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    nominal = next((v for k, v in NOMINAL_TFLOPS.items() if k in kind), None)
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "config": {k: getattr(args, k) for k in ("population", "hidden", "batch", "generations")},
    }
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        peak = matmul_peak(dtype, args.matmul, 10, args.repeats)
        evo = build(args, dtype)
        ev = evaluation_tflops(evo, args)
        plain = generations_per_second(evo, args)
        grad = generations_per_second(
            build(args, dtype, gradient_steps(optax.adam(1e-3), args.grad_steps)), args
        )
        report[name] = {
            "measured_matmul_peak_tflops": round(peak, 2),
            "nominal_peak_tflops": nominal[name] if nominal else None,
            "evaluation_tflops": round(ev["tflops"], 3),
            "evaluation_fraction_of_measured_peak": round(ev["tflops"] / peak, 3),
            "evaluation_fraction_of_nominal_peak": (
                round(ev["tflops"] / nominal[name], 4) if nominal else None
            ),
            "evaluation_ms": round(ev["ms"], 3),
            "evaluation_compile_s": round(ev["compile_s"], 2),
            "generations_per_s": round(plain["generations_per_s"], 1),
            "generation_compile_s": round(plain["compile_s"], 2),
            f"generations_per_s_with_{args.grad_steps}_gradient_steps": round(
                grad["generations_per_s"], 1
            ),
            "gradient_mutation_compile_s": round(grad["compile_s"], 2),
        }
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
