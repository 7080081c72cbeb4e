"""Small reference networks (NNX) used by the command line, the benchmarks and the tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
    """A multilayer perceptron: ``Linear -> act`` for each hidden width, then a linear head.

    Example:
      >>> from flax import nnx
      >>> mlp = MLP(64, (64, 64), 10, rngs=nnx.Rngs(0))
      >>> mlp(jax.numpy.ones((2, 64))).shape
      (2, 10)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        rngs: nnx.Rngs,
        activation=jax.nn.tanh,
    ):
        sizes = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], out_features, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.head(x)
