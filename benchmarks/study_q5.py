"""Study Q5 (issue 15): do PBT and architecture search beat random search and a small manual
sweep of the baseline at equal compute?

**(a) Hyperparameters, digits.** ``_digits.train_val_test(0.25)`` (1,078 train / 359
validation / 360 test), the MLP 64-64-64-10 relu of ``benchmarks/pbt.py``, SGD with momentum and
weight decay through ``optax.inject_hyperparams``. Search space (pbt.py's): learning rate
LogUniform(1e-4, 1), momentum Uniform(0, 0.99), weight decay LogUniform(1e-6, 1e-2).
Contenders: **PBT** (truncation 0.25, explore x0.8 / x1.2 every ``ready`` steps) and **random
search** (the same program with ``exploit="none"``: each member keeps its draws). Same
population (16), same steps per member (1,000), batch 32, and per seed the same initial
weights and hyperparameter draws (the same ``PBT.init`` key), so seeds pair. Members are
ranked by validation cross-entropy; each arm hands back its best member by it, and only that
member is scored on the test set.

**(b) Architecture, the generated problem of ``benchmarks/arch.py``** (``make_classification``,
10 classes, 64 features, 8,000 / 2,000 / 2,000). Contenders:

* **ArchSearch** (``evojax_nets.arch``) as ``benchmarks/arch.py --dataset generated
  --size-penalty 0.1`` ran it: depth 1-3, width {8, 16, 32, 64, 128} and activation {relu,
  tanh, gelu, silu} per layer, Adam learning rate LogUniform(1e-3, 1e-2); population 16, 3,000
  Adam steps per member, batch 32, ``ready`` 150, gene mutation probability 0.25; score =
  validation accuracy - 0.1 x params / max params; the best member by that score is exported.
* **Random architecture search**: the same space, population, initial population (same
  key: the same genes, learning rates and weights) and steps, genes drawn and kept (the
  search's own train and score functions under a ``PBT`` with ``exploit="none"``), the same
  score picks the export.
* **Manual sweep of the baseline** (64-w-w-10, ``models.MLP``): activation {relu, tanh, gelu} x
  width w in {64, 128}, 6 configurations, Adam at the baseline's lr 3e-3, batch 32; the
  configuration with the best validation accuracy at the end is chosen (no size penalty;
  ``chosen_penalised`` applies the search's score to the same runs, for reference). Equal
  compute: all 6 train the same number of steps N, the largest with N x sum of their FLOPs
  per step <= the search's training FLOPs (N = 19,341 at full size). The sweep at 3,000 steps
  (a search member's steps, 1/6.4 of the compute) is read off the same runs and reported too.

**FLOPs.** Forward F = 2 x batch x sum(fan_in x fan_out) over the weight matrices (biases,
activations, the optimizer, exploit copies not counted); a training step is 3 F. A masked
member computes the dense maximum network (64-128-128-128-10, every activation candidate
evaluated and one selected, whatever its genes), so the searches are counted at that size,
for every member and step. Validation passes (every ``ready`` steps for the searches, at the
checkpoints for the sweep) are counted apart (``eval_flops``), not in the match.

**Reporting.** >= 5 seeds (2 with ``--quick``) per arm, each seed one whole run of the arm;
the test set is read once per arm and seed, for the chosen network. Medians with bootstrap
95% intervals (``study.bootstrap_median``), paired per-seed differences (same interval) and
win / tie / loss counts. Wall time per seed, measured around each run; the first seed of an
arm compiles, so ``compile_s_estimate`` = first seed - median of the others and
``run_s_median`` is over the others (the sweep's compilation is timed apart).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import train_val_test
from arch import accuracy as module_accuracy
from arch import generated_classification
from flax.training import train_state
from pbt import MLP as PBTNet
from study import _fmt, bootstrap_median

from evojax_nets.arch import ArchSearch, MLPSpace
from evojax_nets.losses import accuracy as label_accuracy
from evojax_nets.losses import cross_entropy
from evojax_nets.pbt import PBT, LogUniform, Uniform, sample_batches

HP_SPACE = {
    "learning_rate": LogUniform(1e-4, 1.0),
    "momentum": Uniform(0.0, 0.99),
    "weight_decay": LogUniform(1e-6, 1e-2),
}
ARCH_FULL = dict(population=16, steps=3000, ready=150, batch=32, max_depth=3, size_penalty=0.1)
ARCH_FULL.update(widths=(8, 16, 32, 64, 128), activations=("relu", "tanh", "gelu", "silu"))
ARCH_QUICK = dict(population=4, steps=40, ready=20, batch=16, max_depth=2, size_penalty=0.1)
ARCH_QUICK.update(widths=(8, 16), activations=("relu", "tanh"))
SETS = {
    "full": {
        "seeds": [0, 1, 2, 3, 4],
        "hp": dict(population=16, steps=1000, ready=100, batch=32, hidden=64),
        "arch": {**ARCH_FULL, "manual_widths": (64, 128)},
    },
    "quick": {
        "seeds": [0, 1],
        "hp": dict(population=4, steps=40, ready=20, batch=16, hidden=16),
        "arch": {**ARCH_QUICK, "manual_widths": (4, 8)},
    },
}
MANUAL_ACTIVATIONS = ("relu", "tanh", "gelu")
MANUAL_LR = 3e-3


def macs(sizes: list[int]) -> int:
    """Multiply-adds of one example's forward pass through the dense layers ``sizes``."""
    return sum(a * b for a, b in itertools.pairwise(sizes))


def _summary(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {
        "per_seed": [_fmt(x) for x in v],
        "median": _fmt(float(np.median(v))),
        "ci95": [_fmt(x) for x in bootstrap_median(v)],
    }


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Per-seed differences ``a - b`` in accuracy points, their median and interval."""
    d = 100 * (np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {
        **_summary(list(d)),
        "wins": int((d > 1e-9).sum()),
        "ties": int((np.abs(d) <= 1e-9).sum()),
        "losses": int((d < -1e-9).sum()),
    }


def _walls(walls: list[float]) -> dict[str, Any]:
    rest = walls[1:] if len(walls) > 1 else walls
    return {
        "per_seed": [round(w, 2) for w in walls],
        "run_s_median": round(float(np.median(rest)), 2),
        "compile_s_estimate": round(walls[0] - float(np.median(rest)), 2),
    }


def part_hp(cfg: dict, seeds: list[int]) -> dict[str, Any]:
    x_tr, y_tr, x_val, y_val, x_te, y_te = train_val_test(0.25)
    P, S, R, B, H = (cfg[k] for k in ("population", "steps", "ready", "batch", "hidden"))
    model = PBTNet(hidden=H)
    tx = optax.inject_hyperparams(
        lambda learning_rate, momentum, weight_decay: optax.chain(
            optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum)
        )
    )(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)

    def create(key):
        params = model.init(key, jnp.ones((1, 64)))
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    def train_step(state, batch, hparams):  # the rates reach SGD through inject_hyperparams
        return state.apply_gradients(grads=jax.grad(loss)(state.params, *batch))

    def val_loss(state):
        return loss(state.params, x_val, y_val)

    acc = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(model.apply(p, x), -1) == y))
    common = dict(ready=R, batch_fn=sample_batches(x_tr, y_tr, batch_size=B), maximize=False)
    arms = {
        "pbt": PBT(train_step, val_loss, HP_SPACE, P, **common),
        "random_search": PBT(train_step, val_loss, HP_SPACE, P, exploit="none", **common),
    }
    flops_step = 3 * 2 * B * macs([64, H, H, 10])
    out: dict[str, Any] = {
        "task": {
            "data": "digits, _digits.train_val_test(0.25)",
            "train/validation/test": [len(y_tr), len(y_val), len(y_te)],
            "model": f"64-{H}-{H}-10 relu (benchmarks/pbt.py's MLP), SGD + momentum + decay",
            "space": {k: repr(v) for k, v in HP_SPACE.items()},
            **dict(population=P, steps_per_member=S, ready=R, batch=B),
            "score": "validation cross-entropy (lower is better), ranks members and picks",
        },
        "flops_per_member_step": flops_step,
        "arms": {},
    }
    for name, pbt in arms.items():
        rows, walls = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            state, history = pbt.run(pbt.init(jax.random.key(seed), create), S)
            res = pbt.result(state, history)
            jax.block_until_ready(res.state.params)
            walls.append(time.perf_counter() - t0)
            p = res.state.params
            rows.append(
                {
                    "val_loss": float(res.score),
                    "val_accuracy": float(acc(p, x_val, y_val)),
                    "test_accuracy": float(acc(p, x_te, y_te)),  # the test set, read once
                    "hparams": {k: _fmt(v) for k, v in res.hparams.items()},
                }
            )
        out["arms"][name] = {
            "test_accuracy": _summary([r["test_accuracy"] for r in rows]),
            "val_accuracy_per_seed": [_fmt(r["val_accuracy"]) for r in rows],
            "val_loss_per_seed": [_fmt(r["val_loss"]) for r in rows],
            "chosen_hparams_per_seed": [r["hparams"] for r in rows],
            "member_steps": P * S,
            "train_flops": P * S * flops_step,
            "eval_flops": P * (S // R) * 2 * len(y_val) * macs([64, H, H, 10]),
            "wall_s": _walls(walls),
        }
        print(f"q5 (a) {name}: {out['arms'][name]['test_accuracy']}", flush=True)
    a = out["arms"]
    out["pbt_minus_random_points"] = _paired(
        a["pbt"]["test_accuracy"]["per_seed"], a["random_search"]["test_accuracy"]["per_seed"]
    )
    return out


def _manual_trainer(space: MLPSpace, x_tr, y_tr, batch: int):
    """For one width: ``steps(params, opt, genes, key, start, stop)`` (Adam steps ``start..stop``,
    dynamic bounds: one compilation serves every segment) and ``acc(params, genes, x, y)``,
    both ``jit(vmap)`` over (activation, seed) runs. The space has a single width and depth 2,
    so its "masked" network is exactly 64-w-w-10 (nothing masked); the activation is a gene
    (every candidate evaluated elementwise, one selected), so 3 activations compile once."""
    tx = optax.adam(MANUAL_LR)

    def loss(p, g, x, y):
        return cross_entropy(space.apply(p, g, x), y)

    def steps(p, o, g, key, start, stop):
        def body(i, carry):
            p, o = carry
            idx = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, x_tr.shape[0])
            u, o = tx.update(jax.grad(loss)(p, g, x_tr[idx], y_tr[idx]), o, p)
            return optax.apply_updates(p, u), o

        return jax.lax.fori_loop(start, stop, body, (p, o))

    acc = jax.vmap(lambda p, g, x, y: label_accuracy(space.apply(p, g, x), y), (0, 0, None, None))
    return jax.jit(jax.vmap(steps, in_axes=(0, 0, 0, 0, None, None))), jax.jit(acc), tx


def part_arch(cfg: dict, seeds: list[int]) -> dict[str, Any]:
    x_tr, y_tr, x_val, y_val, x_te, y_te = generated_classification()
    P, S, R, B = (cfg[k] for k in ("population", "steps", "ready", "batch"))
    space = MLPSpace(
        64, 10, max_depth=cfg["max_depth"], widths=cfg["widths"], activations=cfg["activations"]
    )
    kw = dict(population_size=P, ready=R, batch_size=B, learning_rate=LogUniform(1e-3, 1e-2))
    kw.update(size_penalty=cfg["size_penalty"], size_measure="params", score="accuracy")
    search = ArchSearch(space, x_tr, y_tr, x_val, y_val, perturb_probability=0.25, **kw)
    p = search.pbt  # the same train and score functions, genes drawn and kept
    random = PBT(p.train_step, p.eval_fn, p.space, P, ready=R, batch_fn=p.batch_fn, exploit="none")
    W, D = space.max_width, space.max_depth
    dense = macs([64, *[W] * D, 10])
    train_flops = P * S * 3 * 2 * B * dense
    eval_flops = P * (S // R) * 2 * len(y_val) * dense
    max_params = space.max_num_params
    out: dict[str, Any] = {
        "task": {
            "data": "benchmarks/arch.py generated_classification() (make_classification)",
            "train/validation/test": [len(y_tr), len(y_val), len(y_te)],
            "space": dict(max_depth=D, widths=list(space.widths), max_num_params=max_params)
            | dict(activations=list(space.activations), learning_rate="LogUniform(1e-3, 1e-2)"),
            **dict(population=P, steps_per_member=S, ready=R, batch=B),
            "size_penalty": cfg["size_penalty"],
            "score": "validation accuracy - size_penalty * params / max_num_params",
            "flops_counted_as": f"dense maximum network 64-{'-'.join([str(W)] * D)}-10",
        },
        "arms": {},
    }
    for name, run in (("arch_search", search.pbt), ("random_arch_search", random)):
        rows, walls = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            state, history = run.run(search.init(jax.random.key(seed)), S)
            res = search.result(state, history)
            walls.append(time.perf_counter() - t0)
            test = module_accuracy(res.module, x_te, y_te)  # the test set, read once
            lr = _fmt(res.pbt.hparams["learning_rate"])
            row = dict(val=res.val_accuracy, params=res.num_params, arch=res.description, lr=lr)
            rows.append({"test": test, **row})
        out["arms"][name] = _arch_row(rows, train_flops, eval_flops, walls)
        out["arms"][name]["member_steps"] = P * S
        print(f"q5 (b) {name}: {out['arms'][name]['test_accuracy']}", flush=True)
    out["arms"]["manual_sweep"] = manual_sweep(cfg, seeds, train_flops, max_params, S)
    a = {k: v["test_accuracy"]["per_seed"] for k, v in out["arms"].items()}
    out["paired_points"] = {
        "arch_minus_random": _paired(a["arch_search"], a["random_arch_search"]),
        "arch_minus_manual": _paired(a["arch_search"], a["manual_sweep"]),
        "random_minus_manual": _paired(a["random_arch_search"], a["manual_sweep"]),
    }
    return out


def _arch_row(rows: list[dict], train_flops: int, eval_flops: int, walls: list[float]) -> dict:
    return {
        "test_accuracy": _summary([r["test"] for r in rows]),
        "val_accuracy_per_seed": [_fmt(r["val"]) for r in rows],
        "params_per_seed": [int(r["params"]) for r in rows],
        "params_median": float(np.median([r["params"] for r in rows])),
        "chosen_per_seed": [r["arch"] for r in rows],
        "learning_rate_per_seed": [r.get("lr") for r in rows],
        "train_flops": int(train_flops),
        "eval_flops": int(eval_flops),
        "wall_s": _walls(walls),
    }


def manual_sweep(cfg: dict, seeds: list[int], budget: int, max_params: int, S: int) -> dict:
    """The 6 configurations, every seed, N steps each (N matched to ``budget``), checkpointed
    at ``S`` steps; per seed, the best configuration on validation is read on the test set."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = generated_classification()
    B, widths, acts = cfg["batch"], cfg["manual_widths"], MANUAL_ACTIVATIONS
    configs = [(a, w) for a in acts for w in widths]
    per_step = [3 * 2 * B * macs([64, w, w, 10]) for _, w in configs]
    N = budget // sum(per_step)
    R = len(seeds)
    val = {n: np.zeros((len(configs), R)) for n in (S, N)}
    params: dict[int, dict] = {S: {}, N: {}}
    n_par = [0] * len(configs)
    compile_s = run_s = 0.0
    for w in widths:
        space = MLPSpace(64, 10, max_depth=2, min_depth=2, widths=(w,), activations=acts)
        steps, acc, tx = _manual_trainer(space, x_tr, y_tr, B)
        runs = [(a, s) for a in range(len(acts)) for s in seeds]  # activation-major
        genes = {
            "depth": jnp.full(len(runs), 2),
            "width_0": jnp.full(len(runs), w),
            "width_1": jnp.full(len(runs), w),
            "act_0": jnp.asarray([a for a, _ in runs]),
            "act_1": jnp.asarray([a for a, _ in runs]),
        }
        keys = jax.vmap(jax.random.key)(jnp.asarray([1000 + s for _, s in runs]))
        p = jax.vmap(space.init_params)(jax.vmap(jax.random.key)(jnp.asarray([s for _, s in runs])))
        o = jax.vmap(tx.init)(p)
        t0 = time.perf_counter()
        compiled = steps.lower(p, o, genes, keys, 0, 1).compile()
        acc(p, genes, x_val, y_val).block_until_ready()
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for lo, hi in itertools.pairwise([0, *sorted({S, N})]):
            p, o = jax.block_until_ready(compiled(p, o, genes, keys, lo, hi))
            v = np.asarray(acc(p, genes, x_val, y_val)).reshape(len(acts), R)
            for a in range(len(acts)):
                c = configs.index((acts[a], w))
                val[hi][c] = v[a]
                params[hi][c] = (space, p, genes, a * R)
        run_s += time.perf_counter() - t0
        for a in range(len(acts)):
            g = {k: int(v[a * R]) for k, v in genes.items()}
            n_par[configs.index((acts[a], w))] = int(space.num_params(g))
    out: dict[str, Any] = {
        "configs": [f"64-{w}-{w}-10 {a}" for a, w in configs],
        "params_per_config": n_par,
        "learning_rate": MANUAL_LR,
        "steps_per_config": int(N),
        "flops_per_step_per_config": per_step,
        "train_flops": int(N * sum(per_step)),
        "search_train_flops": int(budget),
        "eval_flops": 2 * 2 * len(y_val) * sum(macs([64, w, w, 10]) for _, w in configs),
        "match": "N = floor(search train FLOPs / sum of the 6 configs' FLOPs per step)",
        "wall_s": {
            "compile": round(compile_s, 2),
            "run_all_seeds": round(run_s, 2),
            "run_s_per_seed": round(run_s / R, 2),
        },
    }
    penalty = cfg["size_penalty"] * np.asarray(n_par, np.float64)[:, None] / max_params
    for n in (N, S):
        best = np.argmax(val[n], axis=0)  # per seed, the best on validation (first on ties)
        best_pen = np.argmax(val[n] - penalty, axis=0)
        rows = []
        for i, c in enumerate(best):
            space, p, genes, offset = params[n][c]
            j = offset + i
            g = {k: int(v[j]) for k, v in genes.items()}
            module = space.export(jax.tree.map(lambda v: v[j], p), g)  # noqa: B023
            test = module_accuracy(module, x_te, y_te)  # the test set, read once
            rows.append(dict(test=test, val=val[n][c, i], params=n_par[c], arch=out["configs"][c]))
        key = "at_equal_flops" if n == N else f"at_{S}_steps"
        out[key] = {
            "steps": int(n),
            "validation_accuracy": [[_fmt(v) for v in row] for row in val[n]],
            "chosen_index_per_seed": [int(c) for c in best],
            "chosen_penalised_per_seed": [out["configs"][c] for c in best_pen],
            **_arch_row(rows, n * sum(per_step), 0, [run_s / R]),
        }
        for k in ("wall_s", "eval_flops", "learning_rate_per_seed"):
            del out[key][k]
    for k in ("test_accuracy", "params_per_seed", "params_median", "chosen_per_seed"):
        out[k] = out["at_equal_flops"][k]
    print(f"q5 (b) manual_sweep: {out['test_accuracy']} (N = {N})", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q5-seeds", type=int, nargs="+", default=None, help="Q5 seeds")
    parser.add_argument("--q5-parts", nargs="+", default=["hp", "arch"], choices=["hp", "arch"])
    parser.add_argument("--q5-arch-steps", type=int, default=None, help="Q5 (b) steps/member")


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = SETS["quick" if args.quick else "full"]
    seeds = cfg["seeds"] if args.q5_seeds is None else list(args.q5_seeds)
    arch_cfg = dict(cfg["arch"])
    if args.q5_arch_steps:
        arch_cfg["steps"] = args.q5_arch_steps
    report: dict[str, Any] = {
        "question": "Q5: PBT and architecture search vs random search and a manual sweep",
        "seeds": seeds,
        "quick": bool(args.quick),
    }
    if "hp" in args.q5_parts:
        report["hyperparameters"] = part_hp(cfg["hp"], seeds)
    if "arch" in args.q5_parts:
        report["architecture"] = part_arch(arch_cfg, seeds)
    return report


def plot(q: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("hyperparameters", "(a) digits: PBT vs random search")]
    parts += [("architecture", "(b) generated data: architecture")]
    parts = [(k, t) for k, t in parts if k in q]
    ncols = len(parts) + ("architecture" in q)
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.6), squeeze=False)
    colors = ["C3", "C0", "C2", "C7"]
    for ax, (key, title) in zip(axes[0], parts, strict=False):
        arms = dict(q[key]["arms"])
        if key == "architecture":
            tag = next(k for k in arms["manual_sweep"] if k.startswith("at_") and "steps" in k)
            arms["manual @ " + tag[3:].replace("_", " ")] = arms["manual_sweep"][tag]
        for i, arm in enumerate(arms.values()):
            acc = 100 * np.asarray(arm["test_accuracy"]["per_seed"], float)
            lo, hi = (100 * v for v in arm["test_accuracy"]["ci95"])
            med = 100 * arm["test_accuracy"]["median"]
            ax.scatter(i + np.linspace(-0.12, 0.12, len(acc)), acc, color=colors[i], alpha=0.6)
            ax.errorbar(i + 0.25, med, yerr=[[med - lo], [hi - med]], fmt="D", color="k", capsize=4)
        ax.set_xticks(range(len(arms)), [n.replace("_", "\n") for n in arms], fontsize=8)
        ax.set_ylabel("test accuracy (%) of the network chosen on validation")
        note = "; manual @ S steps: the sweep at a member's steps" if key == "architecture" else ""
        ax.set_title(f"{title}\n{len(q['seeds'])} seeds, equal training FLOPs{note}", fontsize=8)
        ax.grid(alpha=0.3)
    if "architecture" in q:
        ax = axes[0][-1]
        arms = q["architecture"]["arms"]
        sizes = [n for arm in arms.values() for n in arm["params_per_seed"]]
        for i, (name, arm) in enumerate(arms.items()):
            acc = 100 * np.asarray(arm["test_accuracy"]["per_seed"], float)
            ax.scatter(arm["params_per_seed"], acc, color=colors[i], label=name, alpha=0.7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ticks = [
            t
            for t in (500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
            if min(sizes) / 2 <= t <= 2 * max(sizes)
        ]
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.set_xlabel("parameters of the chosen network")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("(b) accuracy against parameters, one point per seed", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
