"""The activations a layer of an architecture search may choose, the argument checks the
search spaces share, and the exported (unmasked) NNX modules :class:`ArchMLP` and
:class:`ArchCNN`: what :meth:`~evojax_nets.search.arch_spaces.MLPSpace.export` and
:meth:`~evojax_nets.search.arch_spaces.CNNSpace.export` return."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets.models import MLP

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}
"""The activations a layer may choose, by name."""

Genes = Mapping[str, Any]
"""One member's architecture: ``{"depth": d, "width_0": w, ..., "act_0": i, ...}``."""


def _select_activation(names: Sequence[str], index: jax.Array, z: jax.Array) -> jax.Array:
    # Under vmap a per-member index becomes a select over every candidate: cheap next to the
    # matmuls, and each candidate's gradient is finite everywhere, so no NaN leaks through.
    out = ACTIVATIONS[names[0]](z)
    for k, name in enumerate(names[1:], start=1):
        out = jnp.where(index == k, ACTIVATIONS[name](z), out)
    return out


def _check_int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_sizes(values: Any, name: str) -> tuple[int, ...]:
    vals = tuple(values) if isinstance(values, Sequence) else ()
    if not vals:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    for v in vals:
        _check_int(v, f"every entry of {name}")
    if list(vals) != sorted(set(vals)):
        raise ValueError(f"{name} must be increasing and distinct, got {vals}")
    return tuple(int(v) for v in vals)


def _check_activations(names: Any, distinct: bool = True) -> tuple[str, ...]:
    vals = tuple(names) if isinstance(names, Sequence) and not isinstance(names, str) else ()
    if not vals:
        raise ValueError(f"activations must be a non-empty sequence of names, got {names!r}")
    bad = [n for n in vals if n not in ACTIVATIONS]
    if bad:
        raise ValueError(f"unknown activations {bad}; valid: {sorted(ACTIVATIONS)}")
    if distinct and len(set(vals)) != len(vals):
        raise ValueError(f"activations must be distinct, got {vals}")
    return vals


def _concrete_genes(genes: Genes) -> dict[str, int]:
    out = {}
    for k, v in genes.items():
        a = np.asarray(v)
        if a.shape != ():
            raise ValueError(
                f"genes[{k!r}] must be one member's scalar, got shape {a.shape}; pick a member "
                "first (for example {k: v[i] for k, v in hparams.items()})"
            )
        out[k] = int(a) if k.startswith(("depth", "width", "channels", "act")) else a.item()
    return out


# -- exported (unmasked) modules ------------------------------------------------------------


class ArchMLP(MLP):
    """An MLP with its own width and activation per hidden layer (what :meth:`MLPSpace.export`
    returns): :class:`~evojax_nets.models.MLP` with activations given by name.

    Example:
      >>> m = ArchMLP(64, [32, 16], ["relu", "tanh"], 10, rngs=nnx.Rngs(0))
      >>> m(jnp.ones((2, 64))).shape
      (2, 10)
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        activations: Sequence[str],
        out_features: int,
        *,
        rngs: nnx.Rngs,
    ):
        if len(widths) != len(activations):
            raise ValueError(
                f"one activation per hidden layer: {len(widths)} widths, "
                f"{len(activations)} activations"
            )
        _check_activations(activations, distinct=False)
        self.activations = tuple(activations)
        acts = [ACTIVATIONS[name] for name in activations]
        super().__init__(in_features, widths, out_features, rngs=rngs, activation=acts)


class ArchCNN(nnx.Module):
    """A CNN: ``SAME`` convolutions with their own channels and activation per layer, then a
    flatten (or global-mean) readout and a linear head (what :meth:`CNNSpace.export` returns).
    Flat inputs are reshaped to ``input_shape``.

    Example:
      >>> m = ArchCNN((8, 8, 1), [4, 8], ["relu", "relu"], 10, rngs=nnx.Rngs(0))
      >>> m(jnp.ones((2, 64))).shape
      (2, 10)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        activations: Sequence[str],
        out_features: int,
        *,
        kernel_size: int = 3,
        readout: Literal["flatten", "mean"] = "flatten",
        rngs: nnx.Rngs,
    ):
        if len(channels) != len(activations):
            raise ValueError(
                f"one activation per conv layer: {len(channels)} channels, "
                f"{len(activations)} activations"
            )
        _check_activations(activations, distinct=False)
        h, w, c = (int(s) for s in input_shape)
        sizes = [c, *channels]
        self.input_shape = (h, w, c)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (kernel_size, kernel_size), padding="SAME", rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.activations = tuple(activations)
        self.readout = readout
        fan_in = sizes[-1] * (h * w if readout == "flatten" else 1)
        self.head = nnx.Linear(fan_in, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 2:
            x = x.reshape(x.shape[0], *self.input_shape)
        for conv, name in zip(self.convs, self.activations, strict=True):
            x = ACTIVATIONS[name](conv(x))
        x = x.reshape(x.shape[0], -1) if self.readout == "flatten" else x.mean(axis=(1, 2))
        return self.head(x)
