"""Q1's wider space for the gradient methods (``--q1-gradient-space``): the hand-batched update
is optax's own AdamW / SGD-with-L2 under optax's cosine schedule, step for step."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def contenders(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q1_contenders

    return study_q1_contenders


@pytest.mark.parametrize("method", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_gradient_update_is_optax(contenders, method: str, schedule: str) -> None:
    lr, wd, cap, steps = 0.05, 1e-3, 6, 8  # past the cap: the cosine stays at 0
    sched = optax.cosine_decay_schedule(lr, cap) if schedule == "cosine" else lr
    if method == "adam":
        reference = optax.adamw(sched, weight_decay=wd)
        opt = optax.scale_by_adam()
    else:
        reference = optax.chain(optax.add_decayed_weights(wd), optax.sgd(sched, momentum=0.9))
        opt = optax.trace(decay=0.9)
    lr_, cos, wd_ = contenders._setting(
        {"learning_rate": lr, "schedule": schedule, "weight_decay": wd}
    )
    theta = ref = jax.random.normal(jax.random.key(0), (7,))
    state, ref_state = opt.init(theta), reference.init(ref)
    for t in range(steps):
        g = jax.random.normal(jax.random.key(t + 1), (7,))
        theta, state = contenders.gradient_update(
            method, opt, theta, g, state, lr_, cos, wd_, jnp.int32(t), cap
        )
        u, ref_state = reference.update(g, ref_state, ref)
        ref = optax.apply_updates(ref, u)
        np.testing.assert_allclose(theta, ref, rtol=1e-6, atol=1e-7)
    assert not np.allclose(theta, jax.random.normal(jax.random.key(0), (7,)))


def test_gradient_space_and_plain_rates(contenders) -> None:
    space = contenders.gradient_space([0.01, 0.03, 0.1])
    assert len(space) == 18 == len({tuple(sorted(c.items())) for c in space})
    assert contenders._setting(0.03) == (0.03, 0.0, 0.0)  # a rate alone: constant, no decay
    assert contenders._setting(space[0]) == (0.01, 0.0, 0.0)


def test_population_option_keeps_the_es_flops_budget(monkeypatch) -> None:
    """``--q1-population P``: the ES cap and check interval scale by 256 / P, so the FLOPs an ES
    may spend (cap x P x F) and spends between checks stay those of P = 256; gradient methods
    are untouched, and an odd or tiny P is refused by name."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import study_q1

    full = study_q1.SETS["full"]
    assert study_q1.with_population(full, None) is full
    for P in (64, 1024):
        cfg = study_q1.with_population(full, P)
        assert cfg["population"] == P
        assert cfg["caps"]["es"] * P == full["caps"]["es"] * full["population"]
        assert cfg["caps"]["gradient"] == full["caps"]["gradient"]
        assert cfg["every"]["gradient"] == full["every"]["gradient"]
    assert study_q1.with_population(full, 64)["every"]["es"] == 20
    assert study_q1.with_population(full, 1024)["every"]["es"] == 1  # 1.25 rounds to 1
    assert full["caps"]["es"] == 200 and full["population"] == 256  # the input is not changed
    with pytest.raises(ValueError, match="--q1-population"):
        study_q1.with_population(full, 63)
