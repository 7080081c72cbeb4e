"""EvoTorch's side of the peer comparison, written against EvoTorch 0.6.1's public API.

    benchmarks/peers/.venvs/evotorch/bin/python benchmarks/peers/run_evotorch.py --task digits

Runs in EvoTorch's own environment (CPU build of PyTorch; ``setup.sh``). Each task is an
``evotorch.Problem`` with a *vectorized* objective (``vectorized=True``: the function receives
the whole ``(P, D)`` population and returns ``(P,)``), which is EvoTorch's fast path: the
population's networks run as batched matrix products (``torch.bmm``) instead of one
``nn.Module`` call per member as in ``SupervisedNE`` / ``GymNE``. ``store_solution_stats=False``
spares the per-generation best/worst bookkeeping that we do not read.

* Digits: MLP 64-64-10 (``tanh`` hidden, logits out), fitness = cross-entropy on a minibatch
  common to the population ("min"); test = accuracy of the centre on the test set.
* Cart-pole: the swing-up dynamics of ``common.py`` re-implemented in torch, stepped for the
  whole population and its ``n_repeats`` episodes at once; the loop stops early once every
  episode has ended (EvoJAX and we always scan ``max_steps``).

Strategy: ``evotorch.algorithms.PGPE`` with ``optimizer="adam"``, ``ranking_method="centered"``,
symmetric sampling and the shared hyperparameters; the centre starts at
``common.initial_weights``.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def make_forward(task: str, final_tanh: bool):
    """``forward(flat (P, D), x (P, B, in)) -> (P, B, out)``: the population's MLPs at once,
    with the flat layout of ``flat_init``."""
    import torch

    sizes = common.layer_sizes(task)
    shapes = list(itertools.pairwise(sizes))

    def forward(flat, x):
        flat = flat.as_subclass(torch.Tensor)  # EvoTorch hands a ReadOnlyTensor
        i = 0
        last = len(shapes) - 1
        for n, (a, b) in enumerate(shapes):
            w = flat[:, i : i + a * b].reshape(-1, a, b)
            i += a * b
            bias = flat[:, i : i + b].unsqueeze(1)
            i += b
            x = torch.baddbmm(bias, x, w)
            if n < last or final_tanh:
                x = torch.tanh(x)
        return x

    return forward


def flat_init(task: str, seed: int):
    import numpy as np

    parts = []
    for kernel, bias in common.initial_weights(task, seed):
        parts += [kernel.ravel(), bias]
    return np.concatenate(parts)


def digits_parts(cfg: common.Config, seed: int):
    import torch

    x_tr, y_tr, x_te, y_te = common.load_digits_split()
    fingerprint = common.fingerprint(x_tr, y_tr, x_te, y_te)
    x_tr, x_te = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    y_tr, y_te = torch.from_numpy(y_tr).long(), torch.from_numpy(y_te).long()
    forward = make_forward("digits", final_tanh=False)
    gen = torch.Generator().manual_seed(seed)

    def fitness(pop):
        idx = torch.randint(0, x_tr.shape[0], (cfg.batch_size,), generator=gen)
        x, y = x_tr[idx], y_tr[idx]
        logits = forward(pop, x.expand(pop.shape[0], -1, -1))
        logp = torch.log_softmax(logits, -1)
        return -logp.gather(-1, y.expand(pop.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)

    def test(center):
        logits = forward(center.unsqueeze(0), x_te.unsqueeze(0))[0]
        return float((logits.argmax(-1) == y_te).float().mean())

    return "min", fitness, test, fingerprint


def cartpole_parts(cfg: common.Config, seed: int):
    import torch

    c = common
    forward = make_forward("cartpole", final_tanh=True)
    gen = torch.Generator().manual_seed(seed)

    def rollout(pop, s0):
        """Returns of every member on every start state: ``pop (P, D)``, ``s0 (R, 4)``."""
        pop = pop.as_subclass(torch.Tensor)  # EvoTorch hands a ReadOnlyTensor
        p, r = pop.shape[0], s0.shape[0]
        x, x_dot, th, th_dot = (s0[:, k].expand(p, r).clone() for k in range(4))
        alive = torch.ones(p, r)
        ret = torch.zeros(p, r)
        for _ in range(cfg.max_steps):
            obs = torch.stack([x, x_dot, torch.cos(th), torch.sin(th), th_dot], -1)
            force = forward(pop, obs)[..., 0].clamp(-1.0, 1.0) * c.FORCE_SCALING
            x, x_dot, th, th_dot = c.cartpole_step(
                x, x_dot, th, th_dot, force, torch.sin, torch.cos
            )
            reward = (torch.cos(th) + 1.0) / 2.0 * torch.cos(x / c.CART_X_LIMIT * math.pi / 2)
            ret += alive * reward
            alive = alive * (x.abs() <= c.CART_X_LIMIT)
            if not bool(alive.any()):
                break
        return ret

    def starts(n, generator):
        base = torch.tensor([0.0, 0.0, math.pi, 0.0])
        return base + c.INIT_STD * torch.randn(n, 4, generator=generator)

    def fitness(pop):
        return rollout(pop, starts(cfg.n_repeats, gen)).mean(-1)

    test_starts = starts(cfg.test_episodes, torch.Generator().manual_seed(12345))

    def test(center):
        return float(rollout(center.unsqueeze(0), test_starts).mean())

    return "max", fitness, test, ""


def main() -> None:
    def options(parser) -> None:
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch intra-op threads (1: on this shared 2-core machine 2 threads ran a "
            "cart-pole generation 10-20x slower)",
        )

    args, cfg = common.parse_args(__doc__.splitlines()[0], options)

    import numpy as np
    import torch
    from evotorch import Problem
    from evotorch.algorithms import PGPE

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = common.Clock()
    parts = digits_parts if cfg.task == "digits" else cartpole_parts
    sense, fitness, test, fingerprint = parts(cfg, args.seed)
    dim = common.num_params(cfg.task)
    problem = Problem(
        sense,
        fitness,
        solution_length=dim,
        initial_bounds=(-0.1, 0.1),
        dtype=torch.float32,
        device="cpu",
        vectorized=True,
        store_solution_stats=False,
        seed=args.seed,
    )
    searcher = PGPE(
        problem,
        popsize=cfg.population,
        center_learning_rate=cfg.center_lr,
        stdev_learning_rate=cfg.stdev_lr,
        stdev_init=cfg.init_std,
        stdev_max_change=cfg.stdev_max_change,
        optimizer="adam",
        ranking_method="centered",
        symmetric=True,
        center_init=torch.from_numpy(flat_init(cfg.task, args.seed)),
    )
    setup_s = clock.now()

    curve = []
    first_chunk_s = None
    with torch.no_grad():
        for gen in range(1, cfg.max_generations + 1):
            searcher.step()
            if gen % cfg.test_interval:
                continue
            metric = test(torch.as_tensor(searcher.status["center"]).clone())
            wall = clock.now()
            if first_chunk_s is None:
                first_chunk_s = wall - setup_s
            curve.append({"generation": gen, "wall_s": wall, "metric": metric})
            if metric >= cfg.target or wall > cfg.max_seconds:
                break

        t0 = time.perf_counter()
        for _ in range(cfg.throughput_generations):
            searcher.step()
        throughput_s = time.perf_counter() - t0

    result = common.summarize(
        library="evotorch",
        versions={
            "evotorch": common.version("evotorch"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        cfg=cfg,
        seed=args.seed,
        setup_s=setup_s,
        first_chunk_s=first_chunk_s,
        curve=curve,
        throughput_s=throughput_s,
        data_fingerprint=fingerprint,
    )
    result["strategy"] = "evotorch.algorithms.PGPE"
    common.emit(result)


if __name__ == "__main__":
    main()
