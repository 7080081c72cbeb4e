"""The architecture search spaces :class:`MLPSpace` and :class:`CNNSpace`: their genes, the
masked forward pass of the largest network, parameter and FLOP counts of the network a
member's genes describe, and export to an unmasked NNX module."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets.search.arch_modules import (
    ArchCNN,
    ArchMLP,
    Genes,
    _check_activations,
    _check_int,
    _check_sizes,
    _concrete_genes,
    _select_activation,
)
from evojax_nets.search.spaces import Choice


def _where(cond: Any, a: Any, b: Any) -> Any:
    # Plain Python for concrete genes (export, reports: no device round trips), jnp when traced.
    if all(isinstance(v, bool | int | np.integer | np.bool_) for v in (cond, a, b)):
        return a if cond else b
    return jnp.where(cond, a, b)


def _lecun(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0, 2.0, shape) * (1.0 / math.sqrt(fan_in) / 0.8796)


# -- search spaces --------------------------------------------------------------------------


class _LayerSpace:
    """What the MLP and CNN spaces share: up to ``max_depth`` layers, each with a size gene
    (``<_gene>_l``, a value of the ``_sizes_field`` tuple) and an activation gene ``act_l``."""

    _gene = ""  # "width" or "channels"
    _sizes_field = ""  # the dataclass field holding the allowed sizes

    def _size_choices(self) -> tuple[int, ...]:
        return getattr(self, self._sizes_field)

    def _sizes(self, genes: Genes) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
        """Per layer: fan-in and size (0 beyond the depth), and the last expressed size."""
        fan_ins, outs = [], []
        prev = self._input_size
        for layer in range(self.max_depth):
            active = layer < genes["depth"]
            size = _where(active, genes[f"{self._gene}_{layer}"], 0)
            fan_ins.append(_where(active, prev, 0))
            outs.append(size)
            prev = _where(active, size, prev)
        return fan_ins, outs, prev

    def genes(self) -> dict[str, Choice]:
        """The gene search space (for :class:`~evojax_nets.pbt.PBT`)."""
        out: dict[str, Choice] = {"depth": Choice(range(self.min_depth, self.max_depth + 1))}
        for layer in range(self.max_depth):
            out[f"{self._gene}_{layer}"] = Choice(self._size_choices())
            out[f"act_{layer}"] = Choice(range(len(self.activations)), ordered=False)
        return out

    @property
    def max_genes(self) -> dict[str, int]:
        """The genes of the largest network."""
        g = {"depth": self.max_depth}
        for layer in range(self.max_depth):
            g[f"{self._gene}_{layer}"] = self._size_choices()[-1]
            g[f"act_{layer}"] = 0
        return g

    @property
    def max_num_params(self) -> int:
        return int(self.num_params(self.max_genes))

    @property
    def max_flops(self) -> int:
        return int(self.flops(self.max_genes))

    def architecture(self, genes: Genes) -> dict[str, list]:
        """The expressed architecture: ``{<sizes field>: [...], "activations": [...]}``."""
        g = _concrete_genes(genes)
        d = g["depth"]
        return {
            self._sizes_field: [g[f"{self._gene}_{layer}"] for layer in range(d)],
            "activations": [self.activations[g[f"act_{layer}"]] for layer in range(d)],
        }


@dataclass(frozen=True)
class MLPSpace(_LayerSpace):
    """The architectures of an MLP: depth, width and activation of every hidden layer.

    The masked network has ``max_depth`` hidden layers of ``max(widths)`` units. Genes:
    ``depth`` in ``[min_depth, max_depth]``, ``width_l`` in ``widths`` and ``act_l`` (an index
    into ``activations``) for every layer ``l < max_depth``; genes of layers beyond the depth
    are carried but not expressed.

    Example:
      >>> space = MLPSpace(64, 10, max_depth=2, widths=(8, 16))
      >>> space.max_num_params
      1482
    """

    in_features: int
    out_features: int
    max_depth: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 128)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
    min_depth: int = 1
    _gene = "width"
    _sizes_field = "widths"

    def __post_init__(self) -> None:
        _check_int(self.in_features, "in_features")
        _check_int(self.out_features, "out_features")
        _check_int(self.max_depth, "max_depth")
        _check_int(self.min_depth, "min_depth")
        if self.min_depth > self.max_depth:
            raise ValueError(
                f"min_depth={self.min_depth} is larger than max_depth={self.max_depth}"
            )
        object.__setattr__(self, "widths", _check_sizes(self.widths, "widths"))
        object.__setattr__(self, "activations", _check_activations(self.activations))

    @property
    def max_width(self) -> int:
        return self.widths[-1]

    def init_params(self, key: jax.Array) -> dict[str, Any]:
        """Weights of the largest network (LeCun-normal kernels, zero biases)."""
        W = self.max_width
        keys = jax.random.split(key, self.max_depth + 1)
        params = {}
        for layer in range(self.max_depth):
            fan_in = self.in_features if layer == 0 else W
            params[f"layer_{layer}"] = {
                "kernel": _lecun(keys[layer], (fan_in, W), fan_in),
                "bias": jnp.zeros((W,), jnp.float32),
            }
        params["head"] = {
            "kernel": _lecun(keys[-1], (W, self.out_features), W),
            "bias": jnp.zeros((self.out_features,), jnp.float32),
        }
        return params

    def apply(self, params: Mapping[str, Any], genes: Genes, x: jax.Array) -> jax.Array:
        """The masked forward pass of one member: ``(B, in_features) -> (B, out_features)``."""
        units = jnp.arange(self.max_width)
        h = x
        for layer in range(self.max_depth):
            p = params[f"layer_{layer}"]
            z = h @ p["kernel"] + p["bias"]
            z = _select_activation(self.activations, genes[f"act_{layer}"], z)
            z = jnp.where(units < genes[f"width_{layer}"], z, 0.0)
            h = z if layer == 0 else jnp.where(layer < genes["depth"], z, h)
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    @property
    def _input_size(self) -> int:
        return self.in_features

    def num_params(self, genes: Genes) -> jax.Array:
        """Parameters of the unmasked network these genes describe (traceable)."""
        fan_ins, outs, last = self._sizes(genes)
        hidden = sum(f * o + o for f, o in zip(fan_ins, outs, strict=True))
        return hidden + last * self.out_features + self.out_features

    def flops(self, genes: Genes) -> jax.Array:
        """Floating-point operations per example of the forward pass (2 per multiply-add)."""
        fan_ins, outs, last = self._sizes(genes)
        macs = sum(f * o for f, o in zip(fan_ins, outs, strict=True)) + last * self.out_features
        return 2 * macs

    def activation_bytes(self, batch: int) -> int:
        """Bytes of one member's activations for ``batch`` examples (forward and backward)."""
        per = self.max_width * self.max_depth * (len(self.activations) + 3)
        return 4 * batch * (per + self.in_features + self.out_features)

    def describe(self, genes: Genes) -> str:
        """For example ``"64 -> 32 relu -> 16 tanh -> 10"``."""
        a = self.architecture(genes)
        mid = [f"{w} {n}" for w, n in zip(a["widths"], a["activations"], strict=True)]
        return " -> ".join([str(self.in_features), *mid, str(self.out_features)])

    def export(self, params: Mapping[str, Any], genes: Genes) -> ArchMLP:
        """The unmasked :class:`ArchMLP` of these genes, with the matching slices of
        ``params`` (one member's); it computes what :meth:`apply` computes.

        Example:
          >>> space = MLPSpace(4, 3, max_depth=2, widths=(2, 5))
          >>> p = space.init_params(jax.random.key(0))
          >>> g = {"depth": 1, "width_0": 2, "act_0": 1, "width_1": 5, "act_1": 0}
          >>> x = jnp.ones((2, 4))
          >>> bool(jnp.allclose(space.export(p, g)(x), space.apply(p, g, x), atol=1e-6))
          True
        """
        arch = self.architecture(genes)
        widths = arch["widths"]
        # Built abstractly (no random initialisation): every parameter is overwritten below.
        module = nnx.eval_shape(
            lambda: ArchMLP(
                self.in_features, widths, arch["activations"], self.out_features, rngs=nnx.Rngs(0)
            )
        )
        params = jax.device_get(params)  # slice on the host: no device op per shape
        prev = self.in_features
        for layer, (w, lin) in enumerate(zip(widths, module.hidden, strict=True)):
            p = params[f"layer_{layer}"]
            lin.kernel = nnx.Param(jnp.asarray(np.asarray(p["kernel"])[:prev, :w]))
            lin.bias = nnx.Param(jnp.asarray(np.asarray(p["bias"])[:w]))
            prev = w
        module.head.kernel = nnx.Param(jnp.asarray(np.asarray(params["head"]["kernel"])[:prev]))
        module.head.bias = nnx.Param(jnp.asarray(params["head"]["bias"]))
        return module


@dataclass(frozen=True)
class CNNSpace(_LayerSpace):
    """The architectures of a small CNN: number of conv layers, channels and activation per
    layer; ``SAME`` padding, stride 1, then a flatten (or global-mean) readout and a linear head.

    Genes: ``depth``, ``channels_l`` in ``channels`` and ``act_l`` for every ``l < max_depth``.

    Example:
      >>> space = CNNSpace((8, 8, 1), 10, max_depth=2, channels=(4, 8))
      >>> space.max_num_params
      5794
    """

    input_shape: tuple[int, int, int]
    out_features: int
    max_depth: int = 3
    channels: tuple[int, ...] = (4, 8, 16, 32)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
    kernel_size: int = 3
    readout: Literal["flatten", "mean"] = "flatten"
    min_depth: int = 1
    _gene = "channels"
    _sizes_field = "channels"

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape) if isinstance(self.input_shape, Sequence) else ()
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (height, width, channels), got {shape!r}")
        for s in shape:
            _check_int(s, "every entry of input_shape")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in shape))
        _check_int(self.out_features, "out_features")
        _check_int(self.max_depth, "max_depth")
        _check_int(self.min_depth, "min_depth")
        _check_int(self.kernel_size, "kernel_size")
        if self.min_depth > self.max_depth:
            raise ValueError(
                f"min_depth={self.min_depth} is larger than max_depth={self.max_depth}"
            )
        if self.readout not in ("flatten", "mean"):
            raise ValueError(f"readout must be 'flatten' or 'mean', got {self.readout!r}")
        object.__setattr__(self, "channels", _check_sizes(self.channels, "channels"))
        object.__setattr__(self, "activations", _check_activations(self.activations))

    @property
    def max_channels(self) -> int:
        return self.channels[-1]

    @property
    def _pixels(self) -> int:
        return self.input_shape[0] * self.input_shape[1]

    def _head_rows(self, channels: jax.Array | int) -> jax.Array | int:
        return channels * self._pixels if self.readout == "flatten" else channels

    def init_params(self, key: jax.Array) -> dict[str, Any]:
        """Weights of the largest network (LeCun-normal kernels, zero biases)."""
        C, k = self.max_channels, self.kernel_size
        keys = jax.random.split(key, self.max_depth + 1)
        params = {}
        for layer in range(self.max_depth):
            cin = self.input_shape[2] if layer == 0 else C
            params[f"conv_{layer}"] = {
                "kernel": _lecun(keys[layer], (k, k, cin, C), k * k * cin),
                "bias": jnp.zeros((C,), jnp.float32),
            }
        rows = self._head_rows(C)
        params["head"] = {
            "kernel": _lecun(keys[-1], (rows, self.out_features), rows),
            "bias": jnp.zeros((self.out_features,), jnp.float32),
        }
        return params

    def apply(self, params: Mapping[str, Any], genes: Genes, x: jax.Array) -> jax.Array:
        """The masked forward pass of one member; ``x`` is ``(B, H, W, C)`` or flat."""
        if x.ndim == 2:
            x = x.reshape(x.shape[0], *self.input_shape)
        chans = jnp.arange(self.max_channels)
        h = x
        for layer in range(self.max_depth):
            p = params[f"conv_{layer}"]
            z = jax.lax.conv_general_dilated(
                h, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            z = _select_activation(self.activations, genes[f"act_{layer}"], z + p["bias"])
            z = jnp.where(chans < genes[f"channels_{layer}"], z, 0.0)
            h = z if layer == 0 else jnp.where(layer < genes["depth"], z, h)
        h = h.reshape(h.shape[0], -1) if self.readout == "flatten" else h.mean(axis=(1, 2))
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    @property
    def _input_size(self) -> int:
        return self.input_shape[2]

    def num_params(self, genes: Genes) -> jax.Array:
        """Parameters of the unmasked network these genes describe (traceable)."""
        fan_ins, outs, last = self._sizes(genes)
        kk = self.kernel_size**2
        conv = sum(kk * f * o + o for f, o in zip(fan_ins, outs, strict=True))
        return conv + self._head_rows(last) * self.out_features + self.out_features

    def flops(self, genes: Genes) -> jax.Array:
        """Floating-point operations per example of the forward pass (2 per multiply-add)."""
        fan_ins, outs, last = self._sizes(genes)
        kk = self.kernel_size**2
        conv = sum(self._pixels * kk * f * o for f, o in zip(fan_ins, outs, strict=True))
        return 2 * (conv + self._head_rows(last) * self.out_features)

    def activation_bytes(self, batch: int) -> int:
        """Bytes of one member's activations for ``batch`` examples (forward and backward)."""
        per = self._pixels * self.max_channels * self.max_depth * (len(self.activations) + 3)
        return 4 * batch * (per + self._pixels * self.input_shape[2] + self.out_features)

    def describe(self, genes: Genes) -> str:
        """For example ``"8x8x1 -> conv 8 relu -> conv 16 tanh -> flatten -> 10"``."""
        a = self.architecture(genes)
        mid = [f"conv {c} {n}" for c, n in zip(a["channels"], a["activations"], strict=True)]
        shape = "x".join(map(str, self.input_shape))
        return " -> ".join([shape, *mid, self.readout, str(self.out_features)])

    def export(self, params: Mapping[str, Any], genes: Genes) -> ArchCNN:
        """The unmasked :class:`ArchCNN` of these genes with the matching slices of
        ``params`` (one member's); it computes what :meth:`apply` computes."""
        arch = self.architecture(genes)
        chans = arch["channels"]
        module = nnx.eval_shape(
            lambda: ArchCNN(
                self.input_shape,
                chans,
                arch["activations"],
                self.out_features,
                kernel_size=self.kernel_size,
                readout=self.readout,
                rngs=nnx.Rngs(0),
            )
        )
        params = jax.device_get(params)  # slice on the host: no device op per shape
        prev = self.input_shape[2]
        for layer, (c, conv) in enumerate(zip(chans, module.convs, strict=True)):
            p = params[f"conv_{layer}"]
            conv.kernel = nnx.Param(jnp.asarray(np.asarray(p["kernel"])[:, :, :prev, :c]))
            conv.bias = nnx.Param(jnp.asarray(np.asarray(p["bias"])[:c]))
            prev = c
        head = np.asarray(params["head"]["kernel"])
        if self.readout == "flatten":
            h, w, _ = self.input_shape
            head = head.reshape(h, w, self.max_channels, self.out_features)[:, :, :prev]
            head = head.reshape(-1, self.out_features)
        else:
            head = head[:prev]
        module.head.kernel = nnx.Param(jnp.asarray(head))
        module.head.bias = nnx.Param(jnp.asarray(params["head"]["bias"]))
        return module


ArchSpace = MLPSpace | CNNSpace
