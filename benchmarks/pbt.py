"""PBT against random search over fixed hyperparameters, on digits, at equal training steps.

Both arms are the same program (``evojax_nets.pbt.PBT``): a population of the same MLP, each
member with its own SGD learning rate, momentum and weight decay drawn from the same search
space, every member training the same number of steps on its own minibatches. Random search
keeps the hyperparameters it drew (``exploit="none"``); PBT exploits and explores every
``ready`` steps. Members are ranked, and each arm hands back its best member, by *validation*
cross-entropy (``--score accuracy`` for validation accuracy; the validation set is a split of
the training set); we report that member's *test* accuracy. Median over seeds.

    .venv/bin/python benchmarks/pbt.py                     # defaults: a few minutes on 2 CPUs
    .venv/bin/python benchmarks/pbt.py --population 8 --steps 2000 --out runs/pbt

Prints one JSON object and writes ``pbt_schedules.png`` (the schedules PBT found, median seed)
and ``pbt_accuracy.png`` (test accuracy per seed) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import train_val_test
from flax import linen as nn
from flax.training import train_state

from evojax_nets.pbt import PBT, LogUniform, Uniform, plot_schedules, sample_batches


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000, help="training steps per member")
    ap.add_argument("--ready", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument(
        "--score",
        choices=("loss", "accuracy"),
        default="loss",
        help="what ranks members: validation cross-entropy (smooth) or validation accuracy",
    )
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(args.val_fraction)

    model = MLP()
    tx = optax.inject_hyperparams(
        lambda learning_rate, momentum, weight_decay: optax.chain(
            optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum)
        )
    )(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    space = {
        "learning_rate": LogUniform(1e-4, 1.0),
        "momentum": Uniform(0.0, 0.99),
        "weight_decay": LogUniform(1e-6, 1e-2),
    }

    def create(key: jax.Array) -> train_state.TrainState:
        params = model.init(key, jnp.ones((1, 64)))
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    def train_step(state, batch, hparams):
        # The hyperparameters reach the optimizer through its inject_hyperparams state.
        return state.apply_gradients(grads=jax.grad(loss)(state.params, *batch))

    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)

    def val_accuracy(state):
        return accuracy(state.params, x_val, y_val)

    def val_loss(state):
        return loss(state.params, x_val, y_val)

    score, maximize = (val_loss, False) if args.score == "loss" else (val_accuracy, True)

    test_acc = jax.jit(lambda p: accuracy(p, x_te, y_te))
    val_acc = jax.jit(lambda p: accuracy(p, x_val, y_val))
    common = dict(
        ready=args.ready,
        batch_fn=sample_batches(x_tr, y_tr, batch_size=args.batch_size),
        maximize=maximize,
    )
    arms = {
        "pbt": PBT(train_step, score, space, args.population, **common),
        "random_search": PBT(train_step, score, space, args.population, exploit="none", **common),
    }
    report: dict = {
        "benchmark": "pbt_vs_random_search",
        "dataset": "digits",
        "train/val/test": [len(x_tr), len(x_val), len(x_te)],
        "model": "MLP 64-64-64-10 relu, SGD with momentum and weight decay",
        "space": {k: repr(v) for k, v in space.items()},
        "population_size": args.population,
        "steps_per_member": args.steps,
        "total_steps": args.steps * args.population,
        "ready": args.ready,
        "batch_size": args.batch_size,
        "score": f"validation {args.score}",
        "seeds": args.seeds,
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }
    results: dict = {name: [] for name in arms}
    t_all = time.perf_counter()
    for name, pbt in arms.items():
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            state = pbt.init(jax.random.key(seed), create)
            state, history = pbt.run(state, args.steps)
            res = pbt.result(state, history)
            results[name].append(
                {
                    "seed": seed,
                    "val_score": res.score,
                    "val_accuracy": float(val_acc(res.state.params)),
                    "test_accuracy": float(test_acc(res.state.params)),
                    "final_hparams": res.hparams,
                    "schedule": {k: v.tolist() for k, v in res.schedule.items()},
                    "population_val_median": float(np.median(history.scores[-1])),
                    "wall_s": time.perf_counter() - t0,
                    "history": history,
                }
            )
    for name, runs in results.items():
        accs = [r["test_accuracy"] for r in runs]
        report[name] = {
            "test_accuracy": accs,
            "median_test_accuracy": float(np.median(accs)),
            "mean_test_accuracy": float(np.mean(accs)),
            "val_accuracy": [r["val_accuracy"] for r in runs],
            "val_score": [r["val_score"] for r in runs],
            "population_val_median": [r["population_val_median"] for r in runs],
            "final_hparams": [r["final_hparams"] for r in runs],
            "wall_s": [round(r["wall_s"], 2) for r in runs],
        }
    pbt_runs = results["pbt"]
    order = np.argsort([r["test_accuracy"] for r in pbt_runs])
    median_run = pbt_runs[int(order[len(order) // 2])]
    report["pbt_schedule_median_seed"] = {
        "seed": median_run["seed"],
        "steps": median_run["history"].steps,
        **median_run["schedule"],
    }
    report["pbt_beats_random_search"] = bool(
        report["pbt"]["median_test_accuracy"] > report["random_search"]["median_test_accuracy"]
    )
    report["wall_s_total"] = round(time.perf_counter() - t_all, 1)

    plot_schedules(
        median_run["history"],
        str(out / "pbt_schedules.png"),
        title=f"PBT schedules on digits (seed {median_run['seed']}; red: best member's lineage)",
        score_label=f"validation {args.score}",
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, name in enumerate(arms):
        accs = 100 * np.asarray(report[name]["test_accuracy"])
        ax.scatter(np.full(len(accs), i) + np.linspace(-0.08, 0.08, len(accs)), accs, alpha=0.7)
        ax.hlines(np.median(accs), i - 0.25, i + 0.25, color="k", label="median" if i else None)
    ax.set_xticks(range(len(arms)), list(arms))
    ax.set_ylabel("test accuracy (%) of the best member by validation")
    ax.set_title(f"{args.steps} steps x {args.population} members, {args.seeds} seeds")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pbt_accuracy.png", dpi=110)
    plt.close(fig)
    report["plots"] = [str(out / "pbt_schedules.png"), str(out / "pbt_accuracy.png")]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
