"""PBT over programs: members are whole OpenAI-ES runs whose learning rate PBT sets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets import Evolution
from evojax_nets.search import LogUniform


def _evolution() -> Evolution:
    target = jnp.array([[3.0]])

    def fitness(key, model):
        return jnp.sum((model(jnp.ones((1, 2))) - target) ** 2)

    return Evolution(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), fitness, "open_es", 8, maximize=False)


def test_each_member_is_the_run_its_settings_give_alone() -> None:
    """Without exploit, member i after 9 generations is exactly what an ordinary run with
    member i's learning rate computes (so PBT's settings really reach the member's strategy)."""
    evo = _evolution()
    space = {"learning_rate": LogUniform(1e-3, 0.3)}
    pbt = evo.pbt(space, 4, ready=3, exploit="none")
    key = jax.random.key(5)
    state = pbt.init(key, pbt.member_init)
    state, history = pbt.run(state, 9)
    assert history.steps == [3, 6, 9]
    lrs = np.asarray(state.hparams["learning_rate"])
    assert len(set(lrs.tolist())) == 4
    member_keys = jax.random.split(jax.random.split(key, 3)[0], 4)  # as PBT.init splits
    for i in range(4):
        params = evo.params_with(learning_rate=float(lrs[i]))
        alone, _ = evo.run(evo.init(member_keys[i]), 9, params=params)
        np.testing.assert_allclose(
            np.asarray(state.members.strategy_state.mean[i]),
            np.asarray(alone.strategy_state.mean),
            rtol=1e-5,
            atol=1e-6,
        )
    assert np.all(np.asarray(state.members.generation) == 9)


def test_exploit_copies_whole_runs_and_the_score_improves() -> None:
    evo = _evolution()
    pbt = evo.pbt({"learning_rate": LogUniform(1e-3, 0.3)}, 8, ready=4)
    result = pbt.fit(jax.random.key(0), pbt.member_init, num_steps=40)
    history = result.history
    copied = [np.any(p != np.arange(8)) for p in history.parents[1:]]
    assert any(copied), "no member ever copied another"
    scores = history.score_matrix()
    assert np.max(scores[-1]) > np.max(scores[0])  # score = -loss of the ES mean
    assert result.schedule["learning_rate"].shape == (10,)
    assert int(result.state.generation) == 40
