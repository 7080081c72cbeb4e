"""The race of ``benchmarks/hybrid.py``: one contender is a :class:`Runner` advanced by a
number of units (generations or optimizer steps) at a time, and :func:`race` interleaves the
contenders of one seed in short slices, timing each only while it runs."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evojax_nets import Evolution
from evojax_nets.nets import Network

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
