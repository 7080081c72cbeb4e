"""Q4 of the study (issue 15): evolved starting points against Reptile and multi-task
pretraining at equal FLOPs.

**Task.** The sinusoid family of MAML (Finn et al. 2017): ``y = A sin(x - phi)``, amplitude
``A`` in [0.1, 5], phase ``phi`` in [0, pi], ``x`` in [-5, 5] (``warmstart.sample_sinusoid``);
an instance has 10 support points to adapt on and 50 query points to score. The network is
an MLP 1-40-40-1 with relu (``models.MLP``); adaptation is the same for every contender and at
test time: ``K = 20`` full-batch Adam(1e-2) steps on the 10 support points
(``warmstart.adapt``). The figure is the query-point MSE after those ``K`` steps, averaged over
instances (the meta-objective every method optimises), per seed; the median over instances
and the loss at the starting point (before adapting) are recorded too.

**Splits.** Meta-training instances come from each run's own key stream; **validation**
instances (``--q4-val-instances``, key ``4_000_001``) choose each method's configuration;
**test** instances (``--q4-test-instances``, key ``4_000_002``) are scored only for the
chosen configuration. Instances from a continuous family do not repeat.

**Contenders** (all start from one standard initialisation, ``nnx.Rngs(0)``, the same for
every seed, as in Q1; the seeds pair the runs' own randomness):

1. *standard*: the initialisation itself, no meta-training (control). Its spread over five
   other draws of the initialiser is reported beside it.
2. *evolved*: the library's OpenAI-ES on ``warmstart.StartingPointTask`` (``Evolution.sweep``,
   ``P`` members, ``N`` instances per generation shared by all members, std 0.05, Adam on the
   ES estimate); configurations: learning rate 0.01 / 0.03 / 0.1.
3. *reptile*: first-order batched Reptile (Nichol, Achiam and Schulman 2018, "On First-Order
   Meta-Learning Algorithms"), written here from the paper: per outer step draw ``M``
   instances, adapt ``phi_i`` from ``theta`` by the same ``K`` Adam steps on each instance's
   support points, then ``theta += eps * mean_i(phi_i - theta)``; configurations: ``eps`` 0.1 /
   0.3 / 1 (constant; the paper anneals it linearly to 0).
4. *pretrain*: multi-task pretraining: one network trained by Adam on the support points of
   ``M_p`` fresh instances per step, pooled (MSE), then adapted like the others;
   configurations: learning rate 3e-3 / 1e-2 / 3e-2.

The ES and pretraining grids were moved up one step after a 12-generation pilot in which
both chose the top of their first grid (see ``GRIDS``). Every method gets 3 configurations x
the same seeds at the same budget, and keeps the one with the smallest median over seeds of
the validation loss at the end; that choice's test losses are reported (median over seeds,
bootstrap 95% interval of the median) at 6 checkpoints along meta-training (the plot) and at
the end (the table), with per-seed paired comparisons. Each method's configurations x seeds
run as one compiled program.

**FLOPs** (dense layers only, 2 per multiply-add: ``F1 = 2 * (1*40 + 40*40 + 40*1) = 3,360``
per point forward; a gradient step = 3 forwards): adapting one instance costs
``K * 3 * 10 * F1``; an ES generation ``P * N * (K * 3 * 10 + 50) * F1`` (every member adapted
on every instance, then scored on its query points); a Reptile outer step ``M * K * 3 * 10 * F1``;
a pretraining step ``3 * M_p * 10 * F1``. The ES's generations fix the budget; Reptile and
pretraining get the step counts that come closest to it (recorded, within 0.5%). Biases,
activations, Adam's and the ES's elementwise updates, and the evaluation on validation / test
instances are not counted. Wall time excludes compilation (reported apart) and the
checkpoint bookkeeping; ``os.getloadavg()`` is recorded around each method.

**Budget, and what was cut.** On this shared 2-core CPU the adaptation loop runs at 2-4
GFLOP/s, so 45 runs (3 methods x 3 configurations x 5 seeds) fit the study's ~15 minutes only
at ``P = 32``, ``N = 4`` and 150 generations (4.2e10 FLOPs per run), 8x less than the 300
generations at ``P = 64``, ``N = 8`` behind RESULTS.md's 0.70 (``--q4-generations`` scales
it). The ES's ``P``, ``N`` and std, Reptile's ``M`` and pretraining's ``M_p`` are fixed, not
tuned. The wall time of a method is its median chunk x chunks (the ES's first chunk also
compiles the runner's per-chunk report). ``--quick``: a 1-8-1 network, ``K = 3``, 2 seeds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from study import _fmt, bootstrap_median

from evojax_nets import Evolution
from evojax_nets.models import MLP
from evojax_nets.nets import from_nnx
from evojax_nets.runner import Callback
from evojax_nets.warmstart import StartingPointTask, adapt, sample_sinusoid

METHODS = ("evolved", "reptile", "pretrain")
LABELS = {
    "standard": "standard initialisation (no meta-training)",
    "evolved": "evolved start (OpenAI-ES)",
    "reptile": "first-order Reptile",
    "pretrain": "multi-task pretraining",
}
# Set after a 12-generation pilot (2026-12-02) in which the ES and pretraining chose the top of
# 0.003 / 0.01 / 0.03 and 1e-3 / 3e-3 / 1e-2: each grid now has the pilot's choice inside.
GRIDS = {"evolved": [0.01, 0.03, 0.1], "reptile": [0.1, 0.3, 1.0], "pretrain": [3e-3, 1e-2, 3e-2]}
GRID_MEANING = {
    "evolved": "ES learning rate (Adam on the ES estimate), std 0.05",
    "reptile": "outer step size eps (constant)",
    "pretrain": "Adam learning rate",
}
SHORT = {"evolved": "lr", "reptile": "eps", "pretrain": "lr"}
N_TRAIN, N_VAL, INNER_LR, ES_STD = 10, 50, 1e-2, 0.05
_SIZES = ("hidden", "k", "population", "es_instances", "generations", "checkpoints")
_SIZES += ("reptile_batch", "pretrain_batch", "val_instances", "test_instances", "seeds")
_FULL = ((40, 40), 20, 32, 4, 150, 6, 4, 32, 200, 400, [0, 1, 2, 3, 4])
_QUICK = ((8,), 3, 8, 2, 4, 2, 2, 4, 16, 16, [0, 1])
SETS = {n: dict(zip(_SIZES, v, strict=True)) for n, v in (("full", _FULL), ("quick", _QUICK))}


def make_model(hidden: tuple[int, ...], seed: int) -> MLP:
    return MLP(1, hidden, 1, rngs=nnx.Rngs(seed), activation=jax.nn.relu)


def flops(cfg: dict[str, Any]) -> dict[str, float]:
    """Counted FLOPs of one point's forward, one adaptation and each method's step."""
    widths = (1, *cfg["hidden"], 1)
    f1 = 2 * sum(a * b for a, b in itertools.pairwise(widths))
    adapt_one = cfg["k"] * 3 * N_TRAIN * f1
    return {
        "forward_per_point": f1,
        "adaptation": adapt_one,
        "evolved": cfg["population"] * cfg["es_instances"] * (adapt_one + N_VAL * f1),
        "reptile": cfg["reptile_batch"] * adapt_one,
        "pretrain": 3 * cfg["pretrain_batch"] * N_TRAIN * f1,
    }


def make_evaluator(network, inner, k: int, rows: int):
    """``eval(thetas (C, D), keys (I,)) -> (after (C, I), at_init (C, I))``: query MSE after
    ``k`` inner steps and at the start, every theta (``C <= rows``) on every instance."""

    def one(theta, key):
        x, y, xv, yv = sample_sinusoid(key)
        adapted = adapt(network, theta, x, y, inner, k)
        mse = lambda th: jnp.mean((network.apply(th, xv)[:, 0] - yv) ** 2)
        return mse(adapted), mse(theta)

    fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))

    def evaluate(thetas, keys):  # padded to ``rows`` thetas: one compilation per key count
        n = thetas.shape[0]
        padded = jnp.concatenate([thetas, jnp.repeat(thetas[:1], rows - n, axis=0)])
        after, at_init = fn(padded, keys)
        return np.asarray(after[:n], np.float64), np.asarray(at_init[:n], np.float64)

    return evaluate


class _Checkpoints(Callback):
    """Every configuration's ES mean at each chunk's end; callback time is kept apart."""

    def __init__(self):
        self.thetas, self.chunks, self.compile_s, self.overhead, self.ran = [], [], 0.0, 0.0, 0.0

    def on_chunk(self, owner, state, rows):
        t0 = time.perf_counter()
        last = rows[-1]
        run_s = last["wall_time"] - last["compile_time"] - self.overhead
        self.chunks.append(run_s - self.ran)
        self.ran, self.compile_s = run_s, last["compile_time"]
        if not hasattr(self, "_mean"):
            self._mean = jax.jit(jax.vmap(owner.evolution.mean_theta))
        self.thetas.append(np.asarray(self._mean(state)))
        self.overhead += time.perf_counter() - t0


def run_evolved(cfg, model, inner, seeds, grid, val_keys):
    task = StartingPointTask(
        sample_sinusoid,
        inner,
        num_steps=cfg["k"],
        num_instances=cfg["es_instances"],
        test_keys=val_keys[:4],  # the runner's per-chunk test metrics: validation, unused
    )
    evo = Evolution(model, task, "open_es", cfg["population"], std=ES_STD, learning_rate=grid[0])
    cb = _Checkpoints()
    gens = cfg["generations"]
    result = evo.sweep(
        seeds, gens, chunk_size=gens // cfg["checkpoints"], callbacks=[cb], learning_rate=grid
    )
    assert [(c["seed"], c["learning_rate"]) for c in result.configs] == [
        (s, lr) for s in seeds for lr in grid
    ]
    return np.stack(cb.thetas, axis=1), {"compile": cb.compile_s, "chunks": cb.chunks}


def _chunked(step, carry0, sizes, keys, total, cp):
    """``jit(vmap)`` of ``total`` steps of ``step(carry, size, key) -> carry`` in
    ``cp`` scanned chunks; returns every configuration's theta at each chunk's end
    (C, cp, D) and the wall seconds (compile apart)."""
    per = total // cp

    def chunk(carry, size, key, start):
        def body(c, i):
            return step(c, size, jax.random.fold_in(key, start + i)), None

        return jax.lax.scan(body, carry, jnp.arange(per))[0]

    fn = jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, None)))
    t0 = time.perf_counter()
    compiled = fn.lower(carry0, sizes, keys, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    carry, out, chunks = carry0, [], []
    for c in range(cp):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(compiled(carry, sizes, keys, jnp.int32(c * per)))
        chunks.append(time.perf_counter() - t0)
        theta = carry[0] if isinstance(carry, tuple) else carry
        out.append(np.asarray(theta))
    return np.stack(out, axis=1), {"compile": compile_s, "chunks": chunks}


def _configs(seeds, grid, theta0):
    """Seed-major configurations (as ``Evolution.sweep`` orders them): sizes, keys, thetas."""
    sizes = jnp.asarray([g for _ in seeds for g in grid], jnp.float32)
    # Each run's meta-training instances: its own stream, apart from validation and test.
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(
        jnp.asarray([s for s in seeds for _ in grid])
    )
    return sizes, keys, jnp.tile(theta0[None], (len(sizes), 1))


def run_reptile(cfg, network, inner, seeds, grid, steps):
    k, m = cfg["k"], cfg["reptile_batch"]

    def step(theta, eps, key):
        def task_weights(kk):
            x, y, _, _ = sample_sinusoid(kk)
            return adapt(network, theta, x, y, inner, k)

        phis = jax.vmap(task_weights)(jax.random.split(key, m))
        return theta + eps * (jnp.mean(phis, axis=0) - theta)

    sizes, keys, thetas = _configs(seeds, grid, network.theta0)
    return _chunked(step, thetas, sizes, keys, steps, cfg["checkpoints"])


def run_pretrain(cfg, network, seeds, grid, steps):
    m = cfg["pretrain_batch"]
    opt = optax.scale_by_adam()

    def loss(theta, x, y):
        return jnp.mean((network.apply(theta, x)[:, 0] - y) ** 2)

    def step(carry, lr, key):
        theta, state = carry
        x, y, _, _ = jax.vmap(sample_sinusoid)(jax.random.split(key, m))
        g = jax.grad(loss)(theta, x.reshape(-1, 1), y.reshape(-1))
        u, state = opt.update(g, state)
        return theta - lr * u, state

    sizes, keys, thetas = _configs(seeds, grid, network.theta0)
    carry = (thetas, jax.vmap(opt.init)(thetas))
    return _chunked(step, carry, sizes, keys, steps, cfg["checkpoints"])


def _ci(values) -> list[float | None]:
    return [_fmt(v) for v in bootstrap_median(np.asarray(values, np.float64))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--q4-seeds", type=int, nargs="+", default=None, help="Q4 seeds")
    parser.add_argument(
        "--q4-generations", type=int, default=None, help="Q4: ES generations (fix the budget)"
    )
    parser.add_argument("--q4-val-instances", type=int, default=None, help="Q4 validation set")
    parser.add_argument("--q4-test-instances", type=int, default=None, help="Q4 test set")
    parser.add_argument("--q4-methods", nargs="+", default=None, choices=list(METHODS))
    for m in METHODS:  # a grid's edge checked: the same choice rule on other values
        parser.add_argument(f"--q4-grid-{m}", type=float, nargs="+", default=None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(SETS["quick" if args.quick else "full"])
    for name in ("seeds", "generations", "val_instances", "test_instances"):
        if getattr(args, f"q4_{name}", None) is not None:
            cfg[name] = getattr(args, f"q4_{name}")
    gens, cp = cfg["generations"], cfg["checkpoints"]
    if gens % cp:
        raise SystemExit(f"--q4-generations {gens} must be a multiple of {cp}")
    seeds, k = list(cfg["seeds"]), cfg["k"]
    inner = optax.adam(INNER_LR)
    network = from_nnx(make_model(cfg["hidden"], 0))
    fl = flops(cfg)
    budget = gens * fl["evolved"]
    steps = {"evolved": gens}
    for name in ("reptile", "pretrain"):  # the multiple of cp closest to the budget
        steps[name] = cp * max(1, round(budget / (fl[name] * cp)))
    val_keys = jax.random.split(jax.random.key(4_000_001), cfg["val_instances"])
    test_keys = jax.random.split(jax.random.key(4_000_002), cfg["test_instances"])
    methods = args.q4_methods or METHODS
    grids = {m: getattr(args, f"q4_grid_{m}", None) or GRIDS[m] for m in methods}
    R = len(seeds)
    evaluate = make_evaluator(
        network, inner, k, max(6, R * cp, *(R * len(g) for g in grids.values()))
    )
    report: dict[str, Any] = {
        "question": "Q4: evolved starting points against Reptile and multi-task pretraining",
        "task": {
            "family": "y = A sin(x - phi), A in [0.1, 5], phi in [0, pi], x in [-5, 5]",
            "support_points": N_TRAIN,
            "query_points": N_VAL,
            "network": f"MLP 1-{'-'.join(map(str, cfg['hidden']))}-1 relu",
            "num_params": network.num_params,
            "inner_loop": f"{k} full-batch Adam({INNER_LR}) steps on the support points",
            "figure": "query MSE after the inner loop, mean over instances, per seed",
            "validation_instances": cfg["val_instances"],
            "test_instances": cfg["test_instances"],
            "instance_keys": {"validation": 4_000_001, "test": 4_000_002},
            "start": "one standard initialisation (nnx.Rngs(0)) for every method and seed",
        },
        "settings": {k_: v for k_, v in cfg.items() if k_ != "seeds"},
        "seeds": seeds,
        "budget": {
            "flops_per": fl,
            "target_flops": budget,
            "steps": steps,
            "meta_flops": {m: steps[m] * fl[m] for m in methods},
            "checkpoints": cp,
            "formula": {
                "forward_per_point": "F1 = 2 * sum(fan_in * fan_out) over the dense layers",
                "adaptation": "K * 3 * support_points * F1",
                "evolved": "P * N * (adaptation + query_points * F1) per generation",
                "reptile": "M * adaptation per outer step",
                "pretrain": "3 * M_p * support_points * F1 per Adam step",
                "not_counted": "biases, activations, elementwise updates, val/test scoring",
            },
        },
        "contenders": {},
    }

    # The control: the start itself, and five other draws of the initialiser beside it.
    draws = jnp.stack([from_nnx(make_model(cfg["hidden"], s)).theta0 for s in range(6)])
    after, at_init = (np.asarray(a, np.float64) for a in evaluate(draws, test_keys))
    std_after = float(after[0].mean())
    report["contenders"]["standard"] = {
        "label": LABELS["standard"],
        "test_loss_after_k": _fmt(std_after),
        "test_loss_at_init": _fmt(float(at_init[0].mean())),
        "test_median_over_instances_after_k": _fmt(float(np.median(after[0]))),
        "other_init_draws_loss_after_k": [_fmt(v) for v in after[1:].mean(axis=1)],
        "meta_flops": 0,
    }
    for name in methods:
        grid, C = grids[name], len(grids[name])
        load0 = [round(v, 2) for v in os.getloadavg()]
        if name == "evolved":
            ckpt, wall = run_evolved(
                cfg, make_model(cfg["hidden"], 0), inner, seeds, grid, val_keys
            )
        elif name == "reptile":
            ckpt, wall = run_reptile(cfg, network, inner, seeds, grid, steps[name])
        else:
            ckpt, wall = run_pretrain(cfg, network, seeds, grid, steps[name])
        load1 = [round(v, 2) for v in os.getloadavg()]
        ckpt = ckpt.reshape(R, C, cp, -1)  # seed-major configurations
        val_after, _ = evaluate(jnp.asarray(ckpt[:, :, -1].reshape(R * C, -1)), val_keys)
        val = np.asarray(val_after, np.float64).mean(axis=1).reshape(R, C)
        val = np.where(np.isfinite(val), val, np.inf)
        val_medians = np.median(val, axis=0)
        best = int(np.argmin(val_medians))
        chosen = jnp.asarray(ckpt[:, best].reshape(R * cp, -1))
        t_after, t_init = evaluate(chosen, test_keys)  # the test set, once, for the choice
        t_after = np.asarray(t_after, np.float64).reshape(R, cp, -1)
        t_init = np.asarray(t_init, np.float64).reshape(R, cp, -1)
        curve = t_after.mean(axis=2)  # (seeds, checkpoints)
        finals = curve[:, -1]
        x_flops = [steps[name] * fl[name] * (c + 1) / cp for c in range(cp)]
        runs = R * C
        # The median chunk x chunks: the ES's first chunk also compiles the runner's report.
        run_s = float(np.median(wall["chunks"])) * cp
        report["contenders"][name] = {
            "label": LABELS[name],
            "grid": grid,
            "grid_meaning": GRID_MEANING[name],
            "validation_loss_per_setting_median": [_fmt(v) for v in val_medians],
            "validation_loss_per_seed_and_setting": [[_fmt(v) for v in r] for r in val],
            "chosen": grid[best],
            "steps": steps[name],
            "meta_flops": steps[name] * fl[name],
            "test_loss_after_k_per_seed": [_fmt(v) for v in finals],
            "test_loss_after_k_median": _fmt(float(np.median(finals))),
            "test_loss_after_k_ci95": _ci(finals),
            "test_median_over_instances_after_k_per_seed": [
                _fmt(v) for v in np.median(t_after[:, -1], axis=1)
            ],
            "test_loss_at_init_per_seed": [_fmt(v) for v in t_init[:, -1].mean(axis=1)],
            "test_loss_at_init_median": _fmt(float(np.median(t_init[:, -1].mean(axis=1)))),
            "curve_flops": x_flops,
            "curve_median": [_fmt(v) for v in np.median(curve, axis=0)],
            "curve_ci95": [_ci(curve[:, c]) for c in range(cp)],
            "curve_min": [_fmt(v) for v in curve.min(axis=0)],
            "curve_max": [_fmt(v) for v in curve.max(axis=0)],
            "wall_s": {
                "compile": round(wall["compile"], 2),
                "chunks_all_configurations": [round(v, 3) for v in wall["chunks"]],
                "run_all_configurations": round(run_s, 2),
                "runs_per_call": runs,
                "run_per_run": round(run_s / runs, 3),
                "loadavg_before": load0,
                "loadavg_after": load1,
            },
        }
        print(f"q4 {name}: {grid[best]}, test {np.median(finals):.4g}, {wall}", flush=True)
    c = report["contenders"]
    if "evolved" not in c:
        return report
    ev = np.asarray(c["evolved"]["test_loss_after_k_per_seed"], np.float64)
    paired = {}
    for other in (m for m in ("reptile", "pretrain") if m in c):
        o = np.asarray(c[other]["test_loss_after_k_per_seed"], np.float64)
        ratio = ev / o
        paired[f"evolved_vs_{other}"] = {
            "evolved_lower_seeds": int(np.sum(ev < o)),
            "ratio_evolved_over_other_per_seed": [_fmt(v) for v in ratio],
            "ratio_median": _fmt(float(np.median(ratio))),
            "ratio_ci95": _ci(ratio),
        }
    paired["evolved_below_standard_seeds"] = int(np.sum(ev < std_after))
    paired["num_seeds"] = R
    paired["note"] = "seed s of every method: the same start, its own instance stream"
    report["paired"] = paired
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"evolved": "#1b9e77", "reptile": "#d95f02", "pretrain": "#7570b3"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    c = report["contenders"]
    start = c["standard"]["test_loss_after_k"]
    for name in (m for m in METHODS if m in c):
        row = c[name]
        x = np.asarray([0.0, *row["curve_flops"]])  # every method starts at the standard init
        med = np.asarray([start, *row["curve_median"]], float)
        ci = np.asarray(
            [[start, start], *([np.nan if v is None else v for v in p] for p in row["curve_ci95"])]
        )
        wall = row["wall_s"]["run_per_run"]
        label = f"{row['label']} ({SHORT[name]} {row['chosen']}; {wall:.3g} s per run)"
        ax.plot(x, med, "o-", color=colors[name], label=label)
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=colors[name], alpha=0.2)
    ax.axhline(c["standard"]["test_loss_after_k"], color="k", ls="--", label=LABELS["standard"])
    ax.set_yscale("log")
    ax.set_xlabel("meta-training FLOPs (counted; equal budgets at the right end)")
    ax.set_ylabel(f"test MSE after {report['settings']['k']} Adam steps (median of seeds, 95% CI)")
    ax.set_title(
        f"Q4: sinusoid starting points, {report['task']['network']}, "
        f"{len(report['seeds'])} seeds, 3 settings each"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
