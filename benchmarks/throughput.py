"""Generations per second: our engine against evosax (Python loop and lax.scan), and FLOPs.

All contenders run the same strategy (OpenAI-ES: antithetic sampling, centered ranks, Adam with
learning rate 0.02, constant std 0.05), the same network (``evojax_nets.models.MLP``, by default
64-64-64-10 with tanh), the same minibatch size and the same population, in the same process:

* **engine**: ``evojax_nets.Evolution(...)``; its chunk of ``--generations`` generations (one
  ``lax.scan``, what ``Evolution.run`` calls) is compiled once with ``Evolution.compile``,
  warmed up, then timed. ``engine_run`` times ``Evolution.run`` itself (the same compiled chunk
  plus the host's work between chunks: test metrics and history rows).
* **user_model**: the same engine on the MLP a user would write (``nnx.Sequential`` of
  ``nnx.Linear`` and ``nnx.tanh``, the same widths), whose population forward is the rewrite
  of its forward every model gets (``Network.population_apply``, features-major
  activations); **user_model_vmap** is that model with ``population_forward=False``
  (``vmap`` of the member forward, what a user's own model ran on before).
* **documented evosax loop**: the usage evosax documents, a Python loop that calls the jitted
  ``strategy.ask``, a ``jax.jit(jax.vmap(...))`` evaluation of the Flax MLP over the population
  pytree, and the jitted ``strategy.tell``, with the strategy built on the Flax params pytree:
  ``Open_ES(population_size=P, solution=params, optimizer=optax.adam(0.02),
  std_schedule=optax.constant_schedule(0.05))``.
* **evosax inside lax.scan**: the same strategy, ask, evaluation and tell, but one generation
  per step of ``jax.lax.scan`` over ``--generations`` generations under one ``jax.jit``, as
  evosax's own example notebooks drive it. This is the fair baseline for the engine's scanned
  chunk: the ratio against the Python loop is mostly the loop's dispatch cost.

Each repeat times every contender once, the order reversed every other repeat, and the report
gives medians (and the spread), since a shared machine is noisy; it also says what share of
the CPUs other processes used meanwhile. It reports the achieved GFLOP/s of the evaluation alone
(forward pass: ``2 * B * sum(fan_in * fan_out)`` FLOPs per member, times P), measured inside one
compiled loop over 8 populations as the engine's scan runs it, and per jitted call as the
documented loop runs it (a call also pays for fresh buffers), against the machine's own float32
matmul rate, measured in the same run on chained square matmuls and on chained per-member
batched matmuls of the first hidden layer's shape.

Run from the repository root::

    python benchmarks/throughput.py                      # defaults: P=256, B=256, 50 gens, 5x
    python benchmarks/throughput.py --population 1024 --batch 128 --generations 20 --repeats 7

It prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import Open_ES
from flax import nnx
from jax.flatten_util import ravel_pytree
from lowrank import mlp as user_mlp  # benchmarks/lowrank.py: the MLP a user would write

from evojax_nets import Evolution
from evojax_nets.models import MLP
from evojax_nets.tasks import Supervised, load_digits

STD = 0.05
LEARNING_RATE = 0.02
GOAL_SPEEDUP = 2.5
# issue 14: a user's own NNX MLP at least this share of models.MLP's generations per second
USER_MODEL_GOAL = 0.9


def _wall(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes, its results ready."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


class ChunkTimer:
    """An ``Evolution``'s compiled chunk of ``generations`` generations (what ``run`` calls),
    compiled ahead of time and warmed up; each call runs one more chunk on its own state."""

    def __init__(self, evo: Evolution, seed: int, generations: int):
        self.state = evo.init(jax.random.key(seed))
        self.chunk, self.compile_s = evo.compile(self.state, generations)
        self.num_active = jnp.int32(generations)
        jax.block_until_ready(self())  # warm-up

    def __call__(self) -> Any:
        self.state, metrics = self.chunk(self.state, self.num_active)
        return self.state, metrics


def _per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls."""
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def _busy_seconds() -> float | None:
    """CPU-seconds used by all processes since boot (Linux ``/proc/stat``), or ``None``."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _summary(values: list[float], digits: int = 2) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "all": [round(v, digits) for v in values],
    }


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_documented(model: nnx.Module, x_train, y_train, population: int, batch: int):
    """The documented evosax usage: strategy on the Flax params pytree, jit(vmap) evaluation,
    Python loop. Returns ``(strategy, es_params, params_tree, evaluate, run)``."""
    graphdef, params_tree = nnx.split(model)
    strategy = Open_ES(
        population_size=population,
        solution=params_tree,
        optimizer=optax.adam(LEARNING_RATE),
        std_schedule=optax.constant_schedule(STD),
    )
    es_params = strategy.default_params
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    n = x_train.shape[0]

    def member_loss(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def evaluate(population_tree, key):
        idx = jax.random.randint(key, (batch,), 0, n)
        x, y = x_train[idx], y_train[idx]
        return jax.vmap(member_loss, in_axes=(0, None, None))(population_tree, x, y)

    def run(es_state, key, num_generations: int):
        for _ in range(num_generations):
            key, k_ask, k_eval, k_tell = jax.random.split(key, 4)
            population_tree, es_state = strategy.ask(k_ask, es_state, es_params)
            fitness = evaluate(population_tree, k_eval)
            es_state, _ = strategy.tell(k_tell, population_tree, fitness, es_state, es_params)
        return es_state, key

    return strategy, es_params, params_tree, evaluate, run


def build_scanned(strategy, es_params, evaluate, num_generations: int):
    """evosax's own fast usage: the same ask / evaluate / tell, one generation a step of
    ``jax.lax.scan`` and the whole loop under one ``jax.jit`` (as evosax's example notebooks
    drive it). Returns ``run(es_state, key) -> (es_state, key)`` for ``num_generations``."""

    def generation(carry, _):
        es_state, key = carry
        key, k_ask, k_eval, k_tell = jax.random.split(key, 4)
        population_tree, es_state = strategy.ask(k_ask, es_state, es_params)
        fitness = evaluate(population_tree, k_eval)
        es_state, _ = strategy.tell(k_tell, population_tree, fitness, es_state, es_params)
        return (es_state, key), None

    @jax.jit
    def run(es_state, key):
        return jax.lax.scan(generation, (es_state, key), None, length=num_generations)[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=256, help="members per generation")
    parser.add_argument("--batch", type=int, default=256, help="minibatch size per generation")
    parser.add_argument(
        "--generations", type=int, default=50, help="generations per timed run (one chunk)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each contender")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="hidden widths")
    parser.add_argument("--matmul-size", type=int, default=2048, help="reference square matmul")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.population < 2 or args.population % 2:
        parser.error("--population must be even (OpenAI-ES samples antithetic pairs)")
    if min(args.batch, args.generations, args.repeats, args.matmul_size, *args.hidden) < 1:
        parser.error("--batch, --generations, --repeats, --hidden and --matmul-size must be >= 1")
    loadavg_start = os.getloadavg()
    P, B, N = args.population, args.batch, args.generations

    data = load_digits()
    num_inputs, num_classes = data.x_train.shape[1], data.num_classes
    widths = [num_inputs, *args.hidden, num_classes]
    model = MLP(num_inputs, tuple(args.hidden), num_classes, rngs=nnx.Rngs(args.seed))

    # -- our engine ---------------------------------------------------------------------------
    evo = Evolution(
        model,
        Supervised.from_dataset(data, batch_size=B),
        "open_es",
        P,
        std=STD,
        learning_rate=LEARNING_RATE,
    )
    D = evo.network.num_params
    engine_chunk = ChunkTimer(evo, args.seed, N)
    engine_compile_s = engine_chunk.compile_s

    def engine_run():
        engine_chunk.state, _ = evo.run(engine_chunk.state, N, chunk_size=N)
        return engine_chunk.state

    # -- the same engine on a user's own NNX MLP (nnx.Sequential of the same shape) -----------
    # with the population forward every model gets (Network.population_apply) and with vmap of
    # the member forward (what a user's model ran on before it), both on the same minibatches.
    def user_chunk(population_forward: bool) -> ChunkTimer:
        user = Evolution(
            user_mlp(tuple(widths), args.seed, activation=nnx.tanh),
            Supervised.from_dataset(data, batch_size=B, population_forward=population_forward),
            "open_es",
            P,
            std=STD,
            learning_rate=LEARNING_RATE,
        )
        return ChunkTimer(user, args.seed, N)

    user_model_chunk, user_model_vmap_chunk = user_chunk(True), user_chunk(False)

    # -- the documented evosax loop -----------------------------------------------------------
    strategy, es_params, params_tree, doc_evaluate, doc_run = build_documented(
        model, data.x_train, data.y_train, P, B
    )
    es_state = strategy.init(jax.random.key(args.seed), params_tree, es_params)
    doc_key = jax.random.key(args.seed + 1)
    doc_compile_s = _wall(lambda: doc_run(es_state, doc_key, 1))  # compiles ask, eval, tell
    es_state, doc_key = doc_run(es_state, doc_key, N)  # warm-up
    jax.block_until_ready(es_state)

    def documented_loop():
        nonlocal es_state, doc_key
        es_state, doc_key = doc_run(es_state, doc_key, N)
        return es_state

    # -- evosax inside lax.scan: the same strategy and evaluation, compiled as one loop ----------
    scan_run = build_scanned(strategy, es_params, doc_evaluate, N)
    scan_state = strategy.init(jax.random.key(args.seed), params_tree, es_params)
    scan_key = jax.random.key(args.seed + 3)
    scan_compile_s = _wall(lambda: scan_run(scan_state, scan_key))  # compiles, first chunk
    scan_state, scan_key = scan_run(scan_state, scan_key)  # warm-up
    jax.block_until_ready(scan_state)

    def scanned_evosax():
        nonlocal scan_state, scan_key
        scan_state, scan_key = scan_run(scan_state, scan_key)
        return scan_state

    # -- evaluation alone, and the machine's matmul rates -------------------------------------
    # Rates are measured inside one compiled loop of K steps, with nothing loop-invariant to
    # hoist (K different populations; chained matmuls), as the engine's scan runs them: a
    # separate jitted call also pays for fresh output and scratch buffers (page faults), which
    # the documented loop pays three times per generation ("documented_eval_per_call").
    K = 8
    k_pop, k_eval, k_a, k_b = jax.random.split(jax.random.key(args.seed + 2), 4)
    theta0 = evo.network.theta0
    populations = theta0 + STD * jax.random.normal(k_pop, (K, P, D), theta0.dtype)
    eval_keys = jax.random.split(k_eval, K)
    _, unravel = ravel_pytree(params_tree)
    population_trees = jax.vmap(jax.vmap(unravel))(populations)
    first_tree = jax.tree.map(lambda x: x[0], population_trees)

    def scanned(fitness_fn):
        def loop(keys, pops):
            step = lambda acc, kp: (acc + fitness_fn(*kp), None)
            return jax.lax.scan(step, jnp.zeros((P,), jnp.float32), (keys, pops))[0]

        return jax.jit(loop)

    engine_eval = scanned(evo.evaluate)
    doc_eval_scanned = scanned(lambda k, tree: doc_evaluate(tree, k))
    fitness_diff = float(
        jnp.max(
            jnp.abs(
                evo.evaluate(eval_keys[0], populations[0]) - doc_evaluate(first_tree, eval_keys[0])
            )
        )
    )

    m, h = args.matmul_size, args.hidden[0]
    a = jax.random.normal(k_a, (m, m), jnp.float32)
    b = jax.random.normal(k_b, (m, m), jnp.float32) / m**0.5
    acts = jax.random.normal(k_a, (P, B, h), jnp.float32)
    kernels = jax.random.normal(k_b, (P, h, h), jnp.float32) / h**0.5

    def chained(fn, steps):
        return jax.jit(lambda x, w: jax.lax.fori_loop(0, steps, lambda _, y: fn(y, w), x))

    matmul = chained(jnp.matmul, 3)
    batched = chained(lambda u, w: jnp.einsum("pbi,pio->pbo", u, w), K)
    runs = (
        engine_eval(eval_keys, populations),
        doc_eval_scanned(eval_keys, population_trees),
        matmul(a, b),
        batched(acts, kernels),
    )
    jax.block_until_ready(runs)

    eval_flops = 2 * B * P * sum(i * o for i, o in itertools.pairwise(widths))
    contenders: dict[str, Callable[[], float]] = {
        "engine": lambda: N / _wall(engine_chunk),
        "documented_evosax": lambda: N / _wall(documented_loop),
        "evosax_scan": lambda: N / _wall(scanned_evosax),
        "engine_run": lambda: N / _wall(engine_run),
        "user_model": lambda: N / _wall(user_model_chunk),
        "user_model_vmap": lambda: N / _wall(user_model_vmap_chunk),
        "engine_eval": lambda: (
            K * eval_flops / 1e9 / _wall(lambda: engine_eval(eval_keys, populations))
        ),
        "documented_eval": lambda: (
            K * eval_flops / 1e9 / _wall(lambda: doc_eval_scanned(eval_keys, population_trees))
        ),
        "documented_eval_per_call": lambda: (
            eval_flops / 1e9 / _per_call(lambda: doc_evaluate(first_tree, eval_keys[0]), K)
        ),
        "matmul": lambda: 3 * 2 * m**3 / 1e9 / _wall(lambda: matmul(a, b)),
        "batched_matmul": lambda: (
            K * 2 * P * B * h * h / 1e9 / _wall(lambda: batched(acts, kernels))
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    busy0, own0, wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(contenders[name]())
    busy1, own1, wall1 = _busy_seconds(), _own_seconds(), time.perf_counter()
    others = None  # the share of the machine other processes used while we measured
    if busy0 is not None and busy1 is not None:
        spare = (busy1 - busy0) - (own1 - own0)
        others = round(max(0.0, spare) / ((wall1 - wall0) * (os.cpu_count() or 1)), 3)

    med = {name: statistics.median(v) for name, v in samples.items()}
    paired = [e / d for e, d in zip(samples["engine"], samples["documented_evosax"], strict=True)]
    speedup = med["engine"] / med["documented_evosax"]
    paired_scan = [e / d for e, d in zip(samples["engine"], samples["evosax_scan"], strict=True)]
    paired_user = [u / e for u, e in zip(samples["user_model"], samples["engine"], strict=True)]
    report = {
        "benchmark": "throughput",
        "config": {
            "strategy": "OpenAI-ES (antithetic, centered ranks, Adam)",
            "population": P,
            "batch": B,
            "network": "MLP " + "-".join(map(str, widths)) + " tanh",
            "num_params": D,
            "dataset": data.name,
            "generations_per_timed_run": N,
            "repeats": args.repeats,
            "std": STD,
            "learning_rate": LEARNING_RATE,
        },
        "generations_per_s": {
            "engine": _summary(samples["engine"]),
            "engine_run": _summary(samples["engine_run"]),
            "documented_evosax": _summary(samples["documented_evosax"]),
            "evosax_scan": _summary(samples["evosax_scan"]),
            "user_model": _summary(samples["user_model"]),
            "user_model_vmap": _summary(samples["user_model_vmap"]),
        },
        "ms_per_generation": {
            name: round(1e3 / med[name], 2)
            for name in (
                "engine",
                "engine_run",
                "documented_evosax",
                "evosax_scan",
                "user_model",
                "user_model_vmap",
            )
        },
        "speedup": {
            "engine_vs_documented": round(speedup, 3),
            "engine_run_vs_documented": round(med["engine_run"] / med["documented_evosax"], 3),
            "paired_median": round(statistics.median(paired), 3),
            "goal": GOAL_SPEEDUP,
            "goal_met": bool(speedup >= GOAL_SPEEDUP),
            "engine_vs_evosax_scan": round(med["engine"] / med["evosax_scan"], 3),
            "engine_vs_evosax_scan_paired_median": round(statistics.median(paired_scan), 3),
            "evosax_scan_vs_documented": round(med["evosax_scan"] / med["documented_evosax"], 3),
            # a user's nnx.Sequential MLP against the library's models.MLP, same engine
            "user_model_vs_engine": round(med["user_model"] / med["engine"], 3),
            "user_model_vs_engine_paired_median": round(statistics.median(paired_user), 3),
            "user_model_vmap_vs_engine": round(med["user_model_vmap"] / med["engine"], 3),
            "user_model_vs_evosax_scan": round(med["user_model"] / med["evosax_scan"], 3),
            "user_model_goal": USER_MODEL_GOAL,
            "user_model_goal_met": bool(med["user_model"] / med["engine"] >= USER_MODEL_GOAL),
        },
        "evaluation": {
            "flops_per_generation": eval_flops,
            "engine_gflops": _summary(samples["engine_eval"], 1),
            "documented_gflops": _summary(samples["documented_eval"], 1),
            "documented_per_call_gflops": _summary(samples["documented_eval_per_call"], 1),
            "engine_generation_effective_gflops": round(eval_flops * med["engine"] / 1e9, 1),
            "fitness_max_abs_diff_engine_vs_documented": fitness_diff,
        },
        "machine": {
            f"matmul_{m}x{m}_gflops": _summary(samples["matmul"], 1),
            f"batched_matmul_{P}x({B}x{h})@({h}x{h})_gflops": _summary(
                samples["batched_matmul"], 1
            ),
            "engine_eval_fraction_of_matmul": round(med["engine_eval"] / med["matmul"], 3),
            "engine_eval_fraction_of_batched_matmul": round(
                med["engine_eval"] / med["batched_matmul"], 3
            ),
        },
        "compile_seconds": {
            "engine_chunk": round(engine_compile_s, 2),
            "documented_first_generation": round(doc_compile_s, 2),
            "evosax_scan_first_chunk": round(scan_compile_s, 2),
        },
        "environment": {
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "evosax": _version("evosax"),
            "flax": _version("flax"),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "other_processes_cpu_share": others,
            "loadavg_start": [round(x, 2) for x in loadavg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
