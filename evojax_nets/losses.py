"""The losses, the accuracy and the minibatch sampler every task and search shares.

:class:`~evojax_nets.tasks.Supervised`, architecture search, evolved starting points and PBT's
``batch_fn`` all score outputs and draw minibatches through these few functions, so a change
of rule (for example how a regression output is matched to its targets) happens once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["LOSSES", "accuracy", "cross_entropy", "get_loss", "mse", "sample_batches"]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` ``(..., classes)`` against integer ``labels``.

    Example:
      >>> round(float(cross_entropy(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))), 4)  # log 2
      0.6931
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error; ``pred`` is reshaped to ``target``'s shape (a network's ``(B, 1)``
    output against ``(B,)`` targets).

    Example:
      >>> float(mse(jnp.ones((3, 1)), jnp.zeros(3)))
      1.0
    """
    return jnp.mean((pred.reshape(target.shape) - target) ** 2)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of rows whose largest logit is the label, as float32.

    Example:
      >>> float(accuracy(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.array([1, 1])))
      0.5
    """
    return jnp.mean(jnp.argmax(logits, -1) == labels, dtype=jnp.float32)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(loss: str | LossFn) -> LossFn:
    """A loss by name (``"cross_entropy"``, ``"mse"``) or the callable ``loss(pred, y)`` itself.

    Example:
      >>> get_loss("mse") is mse
      True
    """
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(
            f"loss must be one of {sorted(LOSSES)} or a callable(pred, y), got {loss!r}"
        )
    return LOSSES[loss]


def sample_batches(
    *arrays: Any, batch_size: int | None
) -> Callable[[jax.Array], tuple[jax.Array, ...]]:
    """A ``batch_fn(key) -> batch``: ``batch_size`` rows drawn with replacement, the same rows
    from each array (for example inputs and labels). ``batch_size=None``, or one of at least
    the number of rows, gives every row (full-batch; the key is unused).

    Example:
      >>> fn = sample_batches(jnp.ones((10, 3)), jnp.zeros(10, jnp.int32), batch_size=4)
      >>> [a.shape for a in fn(jax.random.key(0))]
      [(4, 3), (4,)]
    """
    if not arrays:
        raise ValueError("sample_batches needs at least one array")
    arrays = tuple(jnp.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(
            f"arrays must have the same number of rows; got {[a.shape[0] for a in arrays]}"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")

    def batch_fn(key: jax.Array) -> tuple[jax.Array, ...]:
        if batch_size is None or batch_size >= n:
            return arrays
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return tuple(a[idx] for a in arrays)

    return batch_fn
