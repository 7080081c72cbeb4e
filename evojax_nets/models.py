"""Small reference networks (NNX) used by the command line, the benchmarks and the tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from evojax_nets.nets import population_groups

Activation = Callable[[jax.Array], jax.Array]


class MLP(nnx.Module):
    """A multilayer perceptron: ``Linear -> act`` for each hidden width, then a linear head.

    The one MLP of the library: :class:`~evojax_nets.policies.MLPPolicy` (flattened
    observations) and :class:`~evojax_nets.search.ArchMLP` (an activation per layer) are this
    module with another input view or activations, so they share its population forward.

    Args:
      in_features: the input width.
      hidden: the hidden widths.
      out_features: the output width.
      rngs: NNX random streams for the initialisation.
      activation: the hidden nonlinearity, or one per hidden layer.

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
        activation: Activation | Sequence[Activation] = jax.nn.tanh,
    ):
        hidden = tuple(hidden)
        if callable(activation):
            activations = (activation,) * len(hidden)
        else:
            activations = tuple(activation)
            if len(activations) != len(hidden):
                raise ValueError(
                    f"activation must be one callable or one per hidden layer: {len(hidden)} "
                    f"hidden widths, {len(activations)} activations"
                )
        sizes = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], out_features, rngs=rngs)
        self.layer_activations = activations

    def features(self, x: jax.Array) -> jax.Array:
        """The view of an input the first layer reads (identity here; subclasses flatten)."""
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        for layer, act in zip(self.hidden, self.layer_activations, strict=True):
            x = act(layer(x))
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
        bounds = population_groups(jax.tree.leaves(p)[0].shape[0], groups)
        x = self.features(x)
        outs = [
            self._population_forward(jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], p), x)
            for lo, hi in bounds
        ]
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs)

    def _population_forward(self, p: dict, x: jax.Array) -> jax.Array:
        layers = [p["hidden"][i] for i in range(len(self.hidden))] + [p["head"]]
        kernel = jnp.swapaxes(layers[0]["kernel"], 1, 2)  # (P, out, in)
        num, width, _ = kernel.shape
        h = (kernel.reshape(num * width, -1) @ x.T).reshape(num, width, -1)
        h = h + layers[0]["bias"][:, :, None]
        for layer, act in zip(layers[1:], self.layer_activations, strict=True):
            kernel = jnp.swapaxes(layer["kernel"], 1, 2)
            h = jnp.einsum("poi,pib->pob", kernel, act(h))
            h = h + layer["bias"][:, :, None]
        return jnp.swapaxes(h, 1, 2)
