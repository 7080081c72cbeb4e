"""Small reference networks (NNX) used by the command line, the benchmarks and the tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
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

    def population_apply(
        self, params: nnx.State, x: jax.Array, *, groups: int | None = None
    ) -> jax.Array:
        """Outputs of a whole population of these MLPs on one shared batch: ``(P, B, out)``.

        ``params`` is this module's ``nnx.Param`` state with a leading population axis ``P``
        (``jax.vmap(network.unravel)(thetas)``); ``x`` is ``(B, in)``. Activations are laid out
        ``(P, features, B)``: the first layer, whose input every member shares, is one matrix
        product per group of members, and each later layer is a per-member product with the
        long batch axis last. ``vmap`` of ``__call__`` instead gets the first layer as
        ``(B, P, H)`` and XLA:CPU transposes it inside the activation's fusion, which runs
        several times slower than the activation alone. The members are split into ``groups``
        independent groups (default: up to 8 groups of at least 32 members), which XLA runs
        concurrently on its threads instead of splitting every small matrix product between
        them. Sums run in another order than in ``__call__``, so outputs agree with it to
        float32 rounding, not bit for bit.
        """
        p = nnx.to_pure_dict(params)
        num = jax.tree.leaves(p)[0].shape[0]
        if groups is None:
            groups = max(1, min(8, num // 32))
        bounds = [round(i * num / groups) for i in range(groups + 1)]
        outs = [
            self._population_forward(jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], p), x)
            for lo, hi in itertools.pairwise(bounds)
        ]
        return outs[0] if groups == 1 else jnp.concatenate(outs)

    def _population_forward(self, p: dict, x: jax.Array) -> jax.Array:
        layers = [p["hidden"][i] for i in range(len(self.hidden))] + [p["head"]]
        kernel = jnp.swapaxes(layers[0]["kernel"], 1, 2)  # (P, out, in)
        num, width, _ = kernel.shape
        h = (kernel.reshape(num * width, -1) @ x.T).reshape(num, width, -1)
        h = h + layers[0]["bias"][:, :, None]
        for layer in layers[1:]:
            kernel = jnp.swapaxes(layer["kernel"], 1, 2)
            h = jnp.einsum("poi,pib->pob", kernel, self.activation(h))
            h = h + layer["bias"][:, :, None]
        return jnp.swapaxes(h, 1, 2)
