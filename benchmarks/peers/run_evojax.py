"""EvoJAX's side of the peer comparison, written against EvoJAX 0.2.17's public API.

    benchmarks/peers/.venvs/evojax/bin/python benchmarks/peers/run_evojax.py --task digits

Runs in EvoJAX's own environment (jax 0.4.30, flax 0.8.5; ``setup.sh``). The loop is the one
``evojax.Trainer.run`` runs (``solver.ask`` -> ``SimManager.eval_params`` -> ``solver.tell``,
and ``eval_params(solver.best_params, test=True)`` every ``test_interval``), written out so it
can stop at the target; ``Trainer`` itself has no early stop and writes model files at every
test.

* Digits: a ``VectorizedTask`` in the style of ``evojax.task.mnist`` (one step; the reward is
  minus the cross-entropy of a minibatch common to the population; the test reward is the
  accuracy on the whole test set) and a ``PolicyNetwork`` holding a linen MLP 64-64-10 with
  ``tanh`` hidden units and logits out (EvoJAX's ``MLPPolicy`` ends in ``tanh`` or
  ``softmax`` only).
* Cart-pole: EvoJAX's own ``CartPoleSwingUp(harder=False)`` ("easy") with its ``MLPPolicy``
  5-64-64-1 (``tanh`` out), ``n_repeats`` training episodes per member.

Strategy: ``evojax.algo.PGPE`` with Adam and the shared hyperparameters; the centre starts at
``common.initial_weights`` in EvoJAX's parameter layout.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def flat_init(task: str, seed: int, param_tree):
    """``common.initial_weights`` laid out as EvoJAX flattens a linen params tree."""
    import jax
    import numpy as np

    weights = common.initial_weights(task, seed)
    params = param_tree["params"]
    names = sorted(params, key=lambda n: int(n.split("_")[-1]))
    assert len(names) == len(weights), (names, len(weights))
    tree = {
        "params": {
            name: {"kernel": kernel, "bias": bias}
            for name, (kernel, bias) in zip(names, weights, strict=True)
        }
    }
    leaves = jax.tree_util.tree_leaves(tree)
    ref = jax.tree_util.tree_leaves(param_tree)
    assert [np.shape(a) for a in leaves] == [np.shape(b) for b in ref]
    return np.concatenate([np.ravel(a) for a in leaves])


def digits_parts(cfg: common.Config, seed: int, logger):
    import jax
    import jax.numpy as jnp
    from evojax.policy.base import PolicyNetwork
    from evojax.task.base import TaskState, VectorizedTask
    from evojax.util import get_params_format_fn
    from flax import linen as nn
    from flax.struct import dataclass

    x_tr, y_tr, x_te, y_te = common.load_digits_split()
    fingerprint = common.fingerprint(x_tr, y_tr, x_te, y_te)
    x_tr, y_tr, x_te, y_te = map(jnp.asarray, (x_tr, y_tr, x_te, y_te))

    @dataclass
    class State(TaskState):
        obs: jnp.ndarray
        labels: jnp.ndarray

    class Digits(VectorizedTask):
        def __init__(self, batch_size: int, test: bool):
            self.max_steps = 1
            self.obs_shape = (64,)
            self.act_shape = (10,)
            self.test = test

            def reset_fn(key):
                if test:
                    return State(obs=x_te, labels=y_te)
                idx = jax.random.randint(key, (batch_size,), 0, x_tr.shape[0])
                return State(obs=x_tr[idx], labels=y_tr[idx])

            def step_fn(state, logits):
                if test:
                    reward = jnp.mean(jnp.argmax(logits, -1) == state.labels)
                else:
                    logp = jax.nn.log_softmax(logits)
                    reward = jnp.mean(jnp.take_along_axis(logp, state.labels[:, None], -1))
                return state, reward, jnp.ones(())

            self._reset = jax.jit(jax.vmap(reset_fn))
            self._step = jax.jit(jax.vmap(step_fn))

        def reset(self, key):
            return self._reset(key)

        def step(self, state, action):
            return self._step(state, action)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in common.DIGITS_HIDDEN:
                x = nn.tanh(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    class LogitsMLPPolicy(PolicyNetwork):
        def __init__(self):
            model = MLP()
            self.params = model.init(jax.random.PRNGKey(0), jnp.ones([1, 64]))
            self.num_params, fmt = get_params_format_fn(self.params)
            self._format = jax.vmap(fmt)
            self._forward = jax.vmap(model.apply)

        def get_actions(self, t_states, params, p_states):
            return self._forward(self._format(params), t_states.obs), p_states

    policy = LogitsMLPPolicy()
    train = Digits(cfg.batch_size, test=False)
    test = Digits(cfg.batch_size, test=True)
    init = flat_init("digits", seed, policy.params)
    return policy, train, test, init, fingerprint, 1


def cartpole_parts(cfg: common.Config, seed: int, logger):
    import jax
    import jax.numpy as jnp
    from evojax.policy import MLPPolicy
    from evojax.task.cartpole import CartPoleSwingUp

    train = CartPoleSwingUp(max_steps=cfg.max_steps, harder=False, test=False)
    test = CartPoleSwingUp(max_steps=cfg.max_steps, harder=False, test=True)
    policy = MLPPolicy(
        input_dim=common.CARTPOLE_OBS,
        hidden_dims=list(common.CARTPOLE_HIDDEN),
        output_dim=common.CARTPOLE_ACT,
        output_act_fn="tanh",
        logger=logger,
    )
    # MLPPolicy keeps no handle on its initial tree; rebuild the same linen module's shapes.
    from evojax.policy.mlp import MLP

    tree = MLP(feat_dims=list(common.CARTPOLE_HIDDEN), out_dim=1, out_fn="tanh").init(
        jax.random.PRNGKey(0), jnp.ones([1, common.CARTPOLE_OBS])
    )
    init = flat_init("cartpole", seed, tree)
    return policy, train, test, init, "", cfg.n_repeats


def main() -> None:
    args, cfg = common.parse_args(__doc__.splitlines()[0])

    import flax
    import jax
    import numpy as np
    from evojax.algo import PGPE
    from evojax.sim_mgr import SimManager

    logger = logging.getLogger("peers.evojax")
    logger.setLevel(logging.WARNING)

    clock = common.Clock()
    parts = digits_parts if cfg.task == "digits" else cartpole_parts
    policy, train_task, test_task, init, fingerprint, n_repeats = parts(cfg, args.seed, logger)
    assert int(policy.num_params) == common.num_params(cfg.task), policy.num_params
    solver = PGPE(
        pop_size=cfg.population,
        param_size=int(policy.num_params),
        init_params=init,
        optimizer="adam",
        center_learning_rate=cfg.center_lr,
        stdev_learning_rate=cfg.stdev_lr,
        init_stdev=cfg.init_std,
        stdev_max_change=cfg.stdev_max_change,
        seed=args.seed,
        logger=logger,
    )
    sim = SimManager(
        n_repeats=n_repeats,
        test_n_repeats=1,
        pop_size=cfg.population,
        n_evaluations=1 if cfg.task == "digits" else cfg.test_episodes,
        policy_net=policy,
        train_vec_task=train_task,
        valid_vec_task=test_task,
        seed=args.seed,
        logger=logger,
    )
    setup_s = clock.now()

    def generation():
        params = solver.ask()
        scores, _ = sim.eval_params(params=params, test=False)
        solver.tell(fitness=scores)

    curve = []
    first_chunk_s = None
    for gen in range(1, cfg.max_generations + 1):
        generation()
        if gen % cfg.test_interval:
            continue
        scores, _ = sim.eval_params(params=solver.best_params, test=True)
        metric = float(np.mean(np.asarray(scores)))
        wall = clock.now()
        if first_chunk_s is None:
            first_chunk_s = wall - setup_s
        curve.append({"generation": gen, "wall_s": wall, "metric": metric})
        if metric >= cfg.target or wall > cfg.max_seconds:
            break

    t0 = time.perf_counter()
    for _ in range(cfg.throughput_generations):
        generation()
    jax.block_until_ready(solver.best_params)
    throughput_s = time.perf_counter() - t0

    result = common.summarize(
        library="evojax",
        versions={
            "evojax": common.version("evojax"),
            "jax": jax.__version__,
            "flax": flax.__version__,
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
    result["strategy"] = "evojax.algo.PGPE"
    common.emit(result)


if __name__ == "__main__":
    main()
