"""Architecture search (masked MLPs, genes evolved by PBT while weights train) against a
hand-picked MLP, on digits: accuracy and parameter count of the exported network.

The search evolves depth (1-3), the width of each layer (8-128) and its activation (relu, tanh,
gelu, silu) plus the Adam learning rate, for a population of masked maximum-size MLPs trained
by Adam; members are ranked by validation accuracy minus a size penalty. The result is exported
as an unmasked NNX module and checked against the masked member on the test set. The baseline is
a hand-picked 64-128-128-10 relu MLP trained by Adam (lr 3e-3) for the same number of steps and
the same batch size (median of ``--baseline-seeds``).

    .venv/bin/python benchmarks/arch.py                  # defaults: a few minutes on 2 CPUs
    .venv/bin/python benchmarks/arch.py --seed 1 --finetune-steps 600 --score loss --out runs/arch

Prints one JSON object; writes ``arch_tradeoff.png`` (accuracy against parameters: every final
member, the export and the baseline) and ``arch_schedules.png`` (the genes and learning rate the
exported member's lineage followed) to ``--out``.
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
from flax import nnx

from evojax_nets.arch import ArchSearch, MLPSpace
from evojax_nets.models import MLP
from evojax_nets.pbt import LogUniform, plot_schedules


def make_baseline_trainer(x_tr, y_tr, steps, batch_size, lr, hidden):
    """A plain optax loop over a fixed NNX MLP: ``train(seed) -> module`` (one compiled scan,
    compiled once for every seed)."""
    graphdef, _ = nnx.split(
        MLP(64, hidden, 10, rngs=nnx.Rngs(0), activation=jax.nn.relu), nnx.Param
    )
    tx = optax.adam(lr)

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, key):
        p, o = carry
        idx = jax.random.randint(key, (batch_size,), 0, x_tr.shape[0])
        g = jax.grad(loss)(p, x_tr[idx], y_tr[idx])
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    @jax.jit
    def fit(params, key):
        keys = jax.random.split(key, steps)
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
        return params

    def train(seed):
        model = MLP(64, hidden, 10, rngs=nnx.Rngs(seed), activation=jax.nn.relu)
        _, params = nnx.split(model, nnx.Param)
        return nnx.merge(graphdef, fit(params, jax.random.key(1000 + seed)))

    return train


def generated_classification():
    """A fixed 10-class problem with 64 features, 12,000 examples split 8,000/2,000/2,000."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=12_000,
        n_features=64,
        n_informative=16,
        n_redundant=8,
        n_classes=10,
        n_clusters_per_class=1,
        class_sep=1.0,
        flip_y=0.0,
        random_state=0,
    )
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = y.astype(np.int32)
    parts = np.split(np.arange(12_000), [8_000, 10_000])
    return tuple(jnp.asarray(a[i]) for i in parts for a in (x, y))


def n_params(module):
    return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def accuracy(module, x, y):
    return float(jnp.mean(jnp.argmax(module(x), -1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3000, help="training steps per member")
    ap.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="of --steps, the last ones with genes frozen and the learning rate / 10",
    )
    ap.add_argument(
        "--retrain-steps",
        type=int,
        default=0,
        help="after the search, retrain its best candidates from fresh weights this many steps "
        "(ArchSearch.retrain) and export the best on average; 0: export the search's best",
    )
    ap.add_argument("--retrain-repeats", type=int, default=4, help="fresh copies per candidate")
    ap.add_argument("--ready", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size-penalty", type=float, default=0.02)
    ap.add_argument("--score", choices=("accuracy", "loss"), default="accuracy")
    ap.add_argument("--baseline-seeds", type=int, default=3)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument(
        "--dataset",
        choices=("digits", "generated"),
        default="digits",
        help="digits (train/val/test 1,078/359/360), or a generated 10-class problem with 64 "
        "features (scikit-learn make_classification; 8,000/2,000/2,000), large enough that "
        "validation and test accuracy resolve differences of a few tenths of a point",
    )
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.dataset == "digits":
        x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(args.val_fraction)
    else:
        x_tr, y_tr, x_val, y_val, x_te, y_te = generated_classification()

    # -- hand-picked baseline ---------------------------------------------------------------
    hidden = (128, 128)
    t0 = time.perf_counter()
    base = []
    train_baseline = make_baseline_trainer(x_tr, y_tr, args.steps, args.batch_size, 3e-3, hidden)
    for s in range(args.baseline_seeds):
        m = train_baseline(s)
        base.append(
            {
                "seed": s,
                "test_accuracy": accuracy(m, x_te, y_te),
                "val_accuracy": accuracy(m, x_val, y_val),
            }
        )
    base_params = n_params(m)
    base_acc = float(np.median([b["test_accuracy"] for b in base]))
    base_wall = time.perf_counter() - t0

    # -- architecture search ----------------------------------------------------------------
    space = MLPSpace(
        64,
        10,
        max_depth=3,
        widths=(8, 16, 32, 64, 128),
        activations=("relu", "tanh", "gelu", "silu"),
    )
    search = ArchSearch(
        space,
        x_tr,
        y_tr,
        x_val,
        y_val,
        population_size=args.population,
        ready=args.ready,
        batch_size=args.batch_size,
        learning_rate=LogUniform(1e-3, 1e-2),
        size_penalty=args.size_penalty,
        size_measure="params",
        score=args.score,
        perturb_probability=0.25,
    )
    t0 = time.perf_counter()
    state = search.init(jax.random.key(args.seed))
    state, history = search.run(state, args.steps - args.finetune_steps)
    if args.finetune_steps:
        state, history = search.finetune(state, args.finetune_steps, history=history)
    if args.retrain_steps:
        key = jax.random.key(10_000 + args.seed)
        result = search.retrain(state, key, args.retrain_steps, repeats=args.retrain_repeats)
    else:
        result = search.result(state, history)
    search_wall = time.perf_counter() - t0

    exported = result.module
    masked = np.asarray(result.masked_apply(x_te))
    dense = np.asarray(exported(x_te))
    exp_acc = accuracy(exported, x_te, y_te)
    pop_test = search.evaluate(state, x_te, y_te)
    pop_val = search.evaluate(state)
    # The best found: the search's final members, and the export (a retrained network is new).
    best_test = max(float(np.max(pop_test["accuracy"])), exp_acc)
    best_val = max(float(np.max(pop_val["accuracy"])), result.val_accuracy)
    seen_val = float(np.max(history.score_matrix()))  # penalised scores over the whole run

    report = {
        "benchmark": "architecture_search_vs_hand_picked_mlp",
        "dataset": args.dataset,
        "train/val/test": [len(x_tr), len(x_val), len(x_te)],
        "space": {
            "max_depth": space.max_depth,
            "widths": list(space.widths),
            "activations": list(space.activations),
            "learning_rate": "LogUniform(1e-3, 1e-2)",
            "max_num_params": space.max_num_params,
        },
        "population_size": args.population,
        "steps_per_member": args.steps,
        "finetune_steps": args.finetune_steps,
        "retrain_steps": args.retrain_steps,
        "retrain_repeats": args.retrain_repeats if args.retrain_steps else None,
        "ready": args.ready,
        "batch_size": args.batch_size,
        "size_penalty": args.size_penalty,
        "score": f"validation {args.score} - size_penalty * params / max_params",
        "seed": args.seed,
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "baseline": {
            "architecture": "64 -> 128 relu -> 128 relu -> 10",
            "optimizer": "adam lr 3e-3",
            "num_params": base_params,
            "median_test_accuracy": base_acc,
            "runs": base,
            "wall_s": round(base_wall, 1),
        },
        "search": {
            "exported_architecture": result.description,
            "exported_num_params": result.num_params,
            "exported_flops_per_example": result.flops,
            "exported_test_accuracy": exp_acc,
            "exported_val_accuracy": result.val_accuracy,
            "exported_final_learning_rate": result.pbt.hparams["learning_rate"],
            "best_test_accuracy_in_population": best_test,
            "best_val_accuracy_in_population": best_val,
            "best_penalised_val_score_seen": seen_val,
            "population_test_accuracy": [round(float(a), 4) for a in pop_test["accuracy"]],
            "population_num_params": [int(n) for n in pop_test["params"]],
            "wall_s": round(search_wall, 1),
            "total_member_steps": (args.steps + args.retrain_steps) * args.population,
        },
        "checks": {
            "gap_to_best_test_accuracy_points": round(100 * (best_test - exp_acc), 3),
            "within_half_point_of_best_test": bool(100 * (best_test - exp_acc) <= 0.5),
            "gap_to_best_val_accuracy_points": round(100 * (best_val - result.val_accuracy), 3),
            "fewer_params_than_baseline": bool(result.num_params < base_params),
            "accuracy_at_least_baseline": bool(exp_acc >= base_acc),
            "export_max_abs_diff": float(np.max(np.abs(masked - dense))),
            "export_allclose": bool(np.allclose(masked, dense, rtol=1e-5, atol=1e-5)),
        },
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(pop_test["params"], 100 * pop_test["accuracy"], color="0.6", label="final members")
    ax.scatter(
        [result.num_params], [100 * exp_acc], color="C3", marker="*", s=220, label="exported"
    )
    ax.scatter(
        [base_params], [100 * base_acc], color="C0", marker="s", s=80, label="hand-picked 128-128"
    )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits: {result.description}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "arch_tradeoff.png", dpi=110)
    plt.close(fig)
    plot_schedules(
        result.pbt.history,  # with --retrain-steps: the retraining run (genes frozen)
        str(out / "arch_schedules.png"),
        member=result.pbt.index,
        title="genes and learning rate along the exported member's lineage",
        score_label="validation accuracy - size penalty",
    )
    report["plots"] = [str(out / "arch_tradeoff.png"), str(out / "arch_schedules.png")]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
