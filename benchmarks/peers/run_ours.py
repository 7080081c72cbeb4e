"""Our side of the peer comparison: evojax_nets' public API only.

    .venv/bin/python benchmarks/peers/run_ours.py --task digits --seed 0

Digits: an ``MLP(64, (64, 64), 10)`` (``evojax_nets.models``) on ``Supervised.from_dataset(
load_digits(), batch_size=256)``. Cart-pole: the same MLP shape 5-64-64-1 with a ``tanh`` on the
action, and a ``FunctionTask`` whose ``fitness(key, member)`` rolls out the swing-up dynamics of
``common.py`` in JAX (``lax.scan`` over time, ``vmap`` over episodes), ``maximize=True``.
Strategy: ``"pgpe"`` with the shared hyperparameters. Both start from ``common.initial_weights``.

Time to target: ``Evolution.run`` in chunks of ``test_interval`` generations (one compiled
``lax.scan`` per chunk); after each chunk the engine's own test metrics of the distribution
mean are read. Throughput: a further ``throughput_generations`` generations in one ``run`` call
with an already compiled chunk size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def build_model(task: str, seed: int):
    import jax.numpy as jnp
    from flax import nnx

    from evojax_nets.models import MLP

    sizes = common.layer_sizes(task)
    model = MLP(sizes[0], tuple(sizes[1:-1]), sizes[-1], rngs=nnx.Rngs(seed))
    layers = [*model.hidden, model.head]
    for layer, (kernel, bias) in zip(layers, common.initial_weights(task, seed), strict=True):
        layer.kernel.value = jnp.asarray(kernel)
        layer.bias.value = jnp.asarray(bias)
    return model


def cartpole_fns(cfg: common.Config):
    """``fitness(key, member)`` and ``test_metrics(member)`` for the swing-up task."""
    import jax
    import jax.numpy as jnp

    c = common

    def physics(s, force):
        return jnp.stack(common.cartpole_step(*s, force, jnp.sin, jnp.cos))

    def episode(member, key):
        s0 = jnp.array([0.0, 0.0, jnp.pi, 0.0]) + c.INIT_STD * jax.random.normal(key, (4,))

        def step(carry, _):
            s, alive, ret = carry
            obs = jnp.stack([s[0], s[1], jnp.cos(s[2]), jnp.sin(s[2]), s[3]])
            action = jnp.tanh(member(obs[None])[0, 0])
            s = physics(s, jnp.clip(action, -1.0, 1.0) * c.FORCE_SCALING)
            reward = (jnp.cos(s[2]) + 1.0) / 2.0 * jnp.cos(s[0] / c.CART_X_LIMIT * jnp.pi / 2)
            ret = ret + alive * reward
            alive = alive * (jnp.abs(s[0]) <= c.CART_X_LIMIT)
            return (s, alive, ret), None

        (_, _, ret), _ = jax.lax.scan(
            step, (s0, jnp.float32(1.0), jnp.float32(0.0)), None, length=cfg.max_steps
        )
        return ret

    def fitness(key, member):
        keys = jax.random.split(key, cfg.n_repeats)
        return jnp.mean(jax.vmap(lambda k: episode(member, k))(keys))

    test_keys = jax.random.split(jax.random.key(12345), cfg.test_episodes)

    def test_metrics(member):
        return {"return": jnp.mean(jax.vmap(lambda k: episode(member, k))(test_keys))}

    return fitness, test_metrics


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--strategy", default="pgpe")

    args, cfg = common.parse_args(__doc__.splitlines()[0], options)

    import flax
    import jax
    import numpy as np

    import evojax_nets
    from evojax_nets import Evolution, FunctionTask, Supervised, load_digits

    fingerprint = ""
    if cfg.task == "digits":
        data = load_digits(test_fraction=common.DIGITS_TEST_FRACTION, seed=common.DIGITS_SPLIT_SEED)
        fingerprint = common.fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
        metric = "test_accuracy_mean"
    else:
        metric = "test_return_mean"

    clock = common.Clock()
    model = build_model(cfg.task, args.seed)
    if cfg.task == "digits":
        task = Supervised.from_dataset(data, batch_size=cfg.batch_size)
    else:
        fitness, test_metrics = cartpole_fns(cfg)
        task = FunctionTask(fitness, maximize=True, test_metrics=test_metrics, metric="return")
    strategy_params = {}
    if args.strategy == "pgpe":
        strategy_params = {"std_lr": cfg.stdev_lr, "std_max_change": cfg.stdev_max_change}
    evo = Evolution(
        model,
        task,
        args.strategy,
        cfg.population,
        std=cfg.init_std,
        learning_rate=cfg.center_lr,
        strategy_params=strategy_params,
    )
    assert evo.network.num_params == common.num_params(cfg.task)
    state = evo.init(jax.random.key(args.seed))
    jax.block_until_ready(state)
    setup_s = clock.now()

    curve = []
    first_chunk_s = None
    generation = 0
    while generation < cfg.max_generations:
        state, history = evo.run(state, cfg.test_interval, chunk_size=cfg.test_interval)
        generation += cfg.test_interval
        row = history.last_with(metric)
        wall = clock.now()
        if first_chunk_s is None:
            first_chunk_s = wall - setup_s
        curve.append({"generation": generation, "wall_s": wall, "metric": float(row[metric])})
        if curve[-1]["metric"] >= cfg.target or wall > cfg.max_seconds:
            break

    # Steady state: an already compiled chunk size, tests only at chunk ends.
    chunk = cfg.test_interval
    n = max(chunk, cfg.throughput_generations // chunk * chunk)
    t0 = time.perf_counter()
    state, _ = evo.run(state, n, chunk_size=chunk)
    jax.block_until_ready(state)
    throughput_s = (time.perf_counter() - t0) * cfg.throughput_generations / n

    result = common.summarize(
        library="evojax_nets",
        versions={
            "evojax_nets": evojax_nets.__version__,
            "jax": jax.__version__,
            "flax": flax.__version__,
            "evosax": common.version("evosax"),
            "numpy": np.__version__,
        },
        cfg=cfg,
        seed=args.seed,
        setup_s=setup_s,
        first_chunk_s=first_chunk_s,
        curve=curve,
        throughput_s=throughput_s,
        data_fingerprint=fingerprint,
    )
    result["strategy"] = evo.strategy.name
    result["note"] = (
        "first_chunk_s: the first chunk of test_interval generations, compilation included"
    )
    common.emit(result)


if __name__ == "__main__":
    main()
