"""PBT over evolution runs: OpenAI-ES members whose std and learning rate PBT exploits and
explores, against the same members with their hyperparameters kept fixed, at equal total
generations.

Task: scikit-learn digits, MLP 64-16-10, OpenAI-ES with population ``--es-population`` and
minibatch 128. Every contender runs ``--members`` ES members for ``--generations``
generations each (the same member-generations, so the same number of network evaluations):

* ``pbt``: PBT (truncation, bottom/top quarter, perturb by 0.8/1.2) every ``--ready``
  generations over ``std ~ LogUniform(0.01, 0.2)`` and ``learning_rate ~ LogUniform(3e-3, 0.1)``;
* ``random``: the same members, settings sampled from the same space and kept (``exploit="none"``:
  random search with the same budget);
* ``default``: every member at the library's defaults (std 0.05, learning rate 0.02).

Members are scored on a validation split (accuracy of the ES mean); each contender's answer is
the member best on validation, whose test accuracy is reported. The test set is read once per
contender and seed, at the end. Medians over ``--seeds`` seeds with bootstrap 95% intervals.

    python benchmarks/pbt_es.py --out benchmarks/results/pbt-es-2026-12-01.json
    python benchmarks/pbt_es.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets import Evolution, Supervised
from evojax_nets.models import MLP
from evojax_nets.search import LogUniform

try:
    from _digits import train_val_test
except ImportError:  # run from the repository root
    from benchmarks._digits import train_val_test


def bootstrap_median(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    draws = rng.choice(values, (n, len(values)), replace=True)
    med = np.median(draws, axis=1)
    return [float(np.percentile(med, 2.5)), float(np.percentile(med, 97.5))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--es-population", type=int, default=32)
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--ready", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.members, args.es_population = 2, 4, 8
        args.generations, args.ready = 6, 3

    x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(0.2)
    task = Supervised(np.asarray(x_tr), np.asarray(y_tr), batch_size=128)
    model = MLP(64, (16,), 10, rngs=nnx.Rngs(0))
    evo = Evolution(model, task, "open_es", args.es_population)
    net = evo.network

    def accuracy(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.argmax(net.apply(theta, x), -1) == y)

    def val_score(state) -> jax.Array:
        return accuracy(evo.solution_theta(state), x_val, y_val)

    space = {"std": LogUniform(0.01, 0.2), "learning_rate": LogUniform(3e-3, 0.1)}
    test_acc = jax.jit(jax.vmap(lambda th: accuracy(th, x_te, y_te)))
    val_acc = jax.jit(jax.vmap(lambda th: accuracy(th, x_val, y_val)))

    contenders = {
        "pbt": dict(exploit="truncation"),
        "random": dict(exploit="none"),
        "default": dict(exploit="none"),
    }
    load_start = os.getloadavg()
    results: dict[str, dict] = {name: {"val": [], "test": [], "seconds": []} for name in contenders}
    # One PBT per contender, reused across seeds: each compiles its round once.
    pbts = {
        name: evo.pbt(space, args.members, ready=args.ready, score=val_score, **kw)
        for name, kw in contenders.items()
    }
    for seed in range(args.seeds):
        for name, pbt in pbts.items():
            hparams = None
            if name == "default":
                p = evo.params.strategy
                hparams = {
                    "std": jnp.full((args.members,), p.std),
                    "learning_rate": jnp.full((args.members,), p.learning_rate),
                }
            t0 = time.perf_counter()
            state = pbt.init(jax.random.key(seed), pbt.member_init, hparams)
            state, history = pbt.run(state, args.generations)
            jax.block_until_ready(state.scores)
            seconds = time.perf_counter() - t0  # the first seed includes compilation
            thetas = jax.vmap(evo.solution_theta)(state.members)
            val = np.asarray(val_acc(thetas))
            best = int(np.argmax(val))  # chosen on validation
            results[name]["val"].append(float(val[best]))
            results[name]["test"].append(float(np.asarray(test_acc(thetas))[best]))
            results[name]["seconds"].append(seconds)
            if name == "pbt" and seed == 0:
                results[name]["schedule_seed0"] = {
                    k: np.asarray(v).tolist() for k, v in history.schedule(best).items()
                }
            print(f"seed {seed} {name}: val {val[best]:.4f} test {results[name]['test'][-1]:.4f}")

    rng = np.random.default_rng(0)
    summary = {}
    for name, r in results.items():
        test = np.asarray(r["test"])
        summary[name] = {
            "test_accuracy_median": float(np.median(test)),
            "test_accuracy_ci95": bootstrap_median(test, rng),
            "val_accuracy_median": float(np.median(r["val"])),
            "seconds_median": float(np.median(r["seconds"])),
        }
    diff = np.asarray(results["pbt"]["test"]) - np.asarray(results["random"]["test"])
    out = {
        "benchmark": "pbt_es",
        "date": datetime.date.today().isoformat(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "config": vars(args),
        "member_generations_per_contender": args.members * args.generations,
        "summary": summary,
        "paired_pbt_minus_random_test_median": float(np.median(diff)),
        "per_seed": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
