"""Control policies as ordinary Flax NNX modules, for :class:`~evojax_nets.tasks.rl.RLTask`.

A policy maps **one** observation (no batch axis) to the action head: logits for a discrete
action space, pre-``tanh`` action values for a continuous one (the task turns them into an
action, see :mod:`evojax_nets.tasks.rl`). The rollout ``vmap``s it over episodes and the engine
over members, so a policy never sees either axis. Any module of that shape works, including a
user's own; these three are small defaults sized for evolution (tens of thousands of weights,
not millions: evolution strategies pay for every dimension in samples).

A recurrent policy has ``initial_carry()`` and is called as ``policy(carry, obs) -> (carry,
out)``; the rollout starts every episode from ``initial_carry()``.

Reference: the MinAtar convolutional network follows Young & Tian (2019), "MinAtar: An
Atari-inspired testbed for thorough and reproducible reinforcement learning experiments",
scaled down (fewer channels, smaller dense layer) for evolution strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from evojax_nets.models import MLP


def _flatten_obs(x: jax.Array, obs_ndim: int) -> jax.Array:
    """Flatten the observation axes, keeping any leading batch axes a caller may add."""
    return x.reshape((*x.shape[: x.ndim - obs_ndim], -1))


class MLPPolicy(MLP):
    """A multilayer perceptron on the flattened observation (:class:`~evojax_nets.models.MLP`
    with the observation axes flattened first).

    Args:
      obs_shape: the shape of one observation (for example ``(4,)`` or ``(10, 10, 4)``).
      num_outputs: action logits (discrete) or action dimensions (continuous).
      hidden: the hidden widths.
      activation: the hidden nonlinearity.
      rngs: NNX random streams for the initialisation.

    Example:
      >>> from flax import nnx
      >>> policy = MLPPolicy((4,), 2, (32, 32), rngs=nnx.Rngs(0))
      >>> policy(jax.numpy.zeros(4)).shape
      (2,)
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (32, 32),
        *,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.tanh,
        rngs: nnx.Rngs,
    ):
        self.obs_ndim = len(tuple(obs_shape))
        in_features = int(jnp.prod(jnp.asarray(obs_shape)))
        super().__init__(in_features, hidden, num_outputs, rngs=rngs, activation=activation)

    def features(self, x: jax.Array) -> jax.Array:
        return _flatten_obs(x, self.obs_ndim)


class PatchConv(nnx.Module):
    """A ``VALID``, stride-1 2-D convolution written as shifted slices and one matmul.

    Same parameters and result as ``nnx.Conv(..., padding="VALID")``. Why not ``nnx.Conv``:
    once the engine ``vmap``s members with their own kernels, XLA turns the convolution into a
    grouped convolution, which on CPU runs about 2x slower than this im2col form (measured on
    MinAtar's 10x10 frames); on a GPU both are fine.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs):
        k = int(kernel_size)
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.kernel_size = k

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        h, w = x.shape[-3] - k + 1, x.shape[-2] - k + 1
        cols = jnp.concatenate(
            [x[..., i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=-1
        )
        kernel = self.kernel[...]
        return cols @ kernel.reshape(-1, kernel.shape[-1]) + self.bias[...]


class CNNPolicy(nnx.Module):
    """A small convolutional policy for image observations ``(H, W, C)`` such as MinAtar's.

    ``conv(features, kernel) -> relu -> flatten -> dense(hidden) -> relu -> head``.

    Example:
      >>> from flax import nnx
      >>> policy = CNNPolicy((10, 10, 4), 3, rngs=nnx.Rngs(0))
      >>> policy(jax.numpy.zeros((10, 10, 4))).shape
      (3,)
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_outputs: int,
        *,
        features: int = 8,
        kernel_size: int = 3,
        hidden: int = 32,
        rngs: nnx.Rngs,
    ):
        obs_shape = tuple(obs_shape)
        if len(obs_shape) != 3:
            raise ValueError(f"CNNPolicy needs (H, W, C) observations, got shape {obs_shape}")
        height, width, channels = obs_shape
        if min(height, width) < kernel_size:
            raise ValueError(f"kernel_size={kernel_size} exceeds the {height}x{width} frame")
        self.conv = PatchConv(channels, features, kernel_size, rngs=rngs)
        flat = (height - kernel_size + 1) * (width - kernel_size + 1) * features
        self.dense = nnx.Linear(flat, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_outputs, rngs=rngs)

    def __call__(self, obs: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv(obs))
        x = _flatten_obs(x, 3)
        return self.head(jax.nn.relu(self.dense(x)))


class RecurrentPolicy(nnx.Module):
    """A recurrent policy: ``dense -> tanh -> GRU (or LSTM) -> head``.

    Called as ``policy(carry, obs) -> (carry, out)``; ``initial_carry()`` is the carry each
    episode starts from (zeros).

    Example:
      >>> from flax import nnx
      >>> policy = RecurrentPolicy((3,), 1, rngs=nnx.Rngs(0))
      >>> carry, out = policy(policy.initial_carry(), jax.numpy.zeros(3))
      >>> out.shape
      (1,)
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_outputs: int,
        *,
        hidden: int = 32,
        cell: str = "gru",
        rngs: nnx.Rngs,
    ):
        self.obs_ndim = len(tuple(obs_shape))
        size = int(jnp.prod(jnp.asarray(obs_shape)))
        self.encoder = nnx.Linear(size, hidden, rngs=rngs)
        if cell == "gru":
            self.cell = nnx.GRUCell(hidden, hidden, rngs=rngs)
        elif cell == "lstm":
            self.cell = nnx.OptimizedLSTMCell(hidden, hidden, rngs=rngs)
        else:
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.head = nnx.Linear(hidden, num_outputs, rngs=rngs)
        self.hidden_size = hidden
        self.cell_type = cell

    def initial_carry(self):
        """The carry at the start of an episode."""
        zeros = jnp.zeros((self.hidden_size,))
        return (zeros, zeros) if self.cell_type == "lstm" else zeros

    def __call__(self, carry, obs: jax.Array):
        x = jnp.tanh(self.encoder(_flatten_obs(obs, self.obs_ndim)))
        carry, y = self.cell(carry, x)
        return carry, self.head(y)
