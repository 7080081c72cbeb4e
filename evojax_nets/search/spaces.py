"""Hyperparameter search spaces (:class:`Uniform`, :class:`LogUniform`, :class:`Choice`) and
the helpers a population's training step uses: :func:`sample_hparams`, :func:`inject_hparams`
(hyperparameters into an ``optax.inject_hyperparams`` state) and :func:`sample_batches`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.losses import sample_batches as sample_batches

State = Any
"""One member's training state, in the user's structure (TrainState, NNX state, any pytree)."""
HParams = dict[str, jax.Array]
"""Hyperparameters: ``{name: scalar}`` per member, ``{name: (P,)}`` for the population."""


# -- search spaces ----------------------------------------------------------------------------


def _finite_number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise TypeError(f"{what} must be a number, got {x!r}")
    if not math.isfinite(float(x)):
        raise ValueError(f"{what} must be finite, got {x!r}")
    return float(x)


class Space:
    """A one-dimensional hyperparameter search space (traceable sampling and perturbation)."""

    dtype: Any = jnp.float32

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Independent draws from the space's prior."""
        raise NotImplementedError

    def perturb(self, key: jax.Array, value: jax.Array, factors: jax.Array) -> jax.Array:
        """A neighbour of each ``value``, inside the space."""
        raise NotImplementedError

    def contains(self, value: Any) -> np.ndarray:
        """Whether each value lies in the space (host-side, for checks)."""
        raise NotImplementedError

    @property
    def log_scale(self) -> bool:
        return False


@dataclass(frozen=True)
class Uniform(Space):
    """Uniform on ``[low, high]``; explored by multiplying with a perturbation factor (as in
    Jaderberg et al.) and clipping to the bounds.

    Example:
      >>> Uniform(0.5, 0.99).sample(jax.random.key(0), (3,)).shape
      (3,)
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        lo = _finite_number(self.low, f"{name} low")
        hi = _finite_number(self.high, f"{name} high")
        if lo == hi:
            raise ValueError(
                f"{name}(low={self.low}, high={self.high}) is empty: low must be < high "
                "(use Choice([value]) for a constant)"
            )
        if lo > hi:
            raise ValueError(
                f"{name}(low={self.low}, high={self.high}) is inverted: low must be < high; "
                f"did you mean {name}({self.high}, {self.low})?"
            )

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jax.random.uniform(key, shape, jnp.float32, self.low, self.high)

    def perturb(self, key: jax.Array, value: jax.Array, factors: jax.Array) -> jax.Array:
        f = jax.random.choice(key, factors, value.shape)
        return jnp.clip(value * f, self.low, self.high).astype(jnp.float32)

    def contains(self, value: Any) -> np.ndarray:
        v = np.asarray(value)
        tol = 1e-6 * max(abs(self.low), abs(self.high))
        return (v >= self.low - tol) & (v <= self.high + tol)


@dataclass(frozen=True)
class LogUniform(Uniform):
    """Log-uniform on ``[low, high]`` with ``0 < low < high`` (learning rates, weight decay);
    explored by multiplying with a perturbation factor and clipping.

    Example:
      >>> lr = LogUniform(1e-4, 1e-1)
      >>> bool(lr.contains(lr.sample(jax.random.key(0), (5,))).all())
      True
    """

    def __post_init__(self) -> None:
        lo = _finite_number(self.low, "LogUniform low")
        if lo <= 0:
            raise ValueError(
                f"LogUniform(low={self.low}, high={self.high}) needs 0 < low < high; low must "
                "be positive (use Uniform for ranges that include 0 or negative values)"
            )
        super().__post_init__()

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        u = jax.random.uniform(key, shape, jnp.float32, math.log(self.low), math.log(self.high))
        return jnp.clip(jnp.exp(u), self.low, self.high)

    @property
    def log_scale(self) -> bool:
        return True


@dataclass(frozen=True, init=False)
class Choice(Space):
    """One of finitely many numbers. ``ordered=True`` (sizes, depths) explores by moving to a
    neighbouring value in the given order; ``ordered=False`` (an activation's index) by drawing
    another value. Values are stored as ``int32`` when all are integers, else ``float32``.

    Example:
      >>> Choice([16, 32, 64]).dtype
      <class 'jax.numpy.int32'>
    """

    values: tuple[float | int, ...]
    ordered: bool = True

    def __init__(self, values: Iterable[float | int], ordered: bool = True):
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise TypeError(f"Choice values must be a sequence of numbers, got {values!r}")
        vals = tuple(values)
        if not vals:
            raise ValueError("Choice(values=[]) is empty: give at least one value")
        for v in vals:
            _finite_number(v, "every Choice value")
        if len(set(vals)) != len(vals):
            raise ValueError(f"Choice values must be distinct, got {vals}")
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "ordered", bool(ordered))

    @property
    def dtype(self) -> Any:  # type: ignore[override]
        integral = all(isinstance(v, int | np.integer) for v in self.values)
        return jnp.int32 if integral else jnp.float32

    def _array(self) -> jax.Array:
        return jnp.asarray(self.values, self.dtype)

    def index(self, value: jax.Array) -> jax.Array:
        """The position of each value in ``values`` (nearest, for robustness)."""
        diff = jnp.abs(value[..., None].astype(jnp.float32) - self._array().astype(jnp.float32))
        return jnp.argmin(diff, axis=-1)

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return self._array()[jax.random.randint(key, shape, 0, len(self.values))]

    def perturb(self, key: jax.Array, value: jax.Array, factors: jax.Array) -> jax.Array:
        n = len(self.values)
        i = self.index(value)
        if self.ordered:
            step = jnp.where(jax.random.bernoulli(key, 0.5, value.shape), 1, -1)
            j = jnp.clip(i + step, 0, n - 1)
        else:
            j = (i + jax.random.randint(key, value.shape, 1, max(n, 2))) % n
        return self._array()[j]

    def contains(self, value: Any) -> np.ndarray:
        return np.isin(np.asarray(value), np.asarray(self.values))


SearchSpace = Mapping[str, Space]


def check_space(space: Any, argument: str = "space") -> dict[str, Space]:
    """Validate a search space (``{name: Space}``) and return it as a dict.

    Example:
      >>> sorted(check_space({"learning_rate": LogUniform(1e-3, 1.0)}))
      ['learning_rate']
    """
    if not isinstance(space, Mapping):
        raise TypeError(
            f"{argument} must be a dict {{name: LogUniform | Uniform | Choice}}, got "
            f"{type(space).__name__}"
        )
    if not space:
        raise ValueError(
            f"{argument} is empty: name at least one hyperparameter, for example "
            "{'learning_rate': LogUniform(1e-4, 1e-1)}"
        )
    out = {}
    for name, s in space.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{argument} keys must be non-empty strings, got {name!r}")
        if not isinstance(s, Space):
            raise TypeError(
                f"{argument}[{name!r}] must be LogUniform, Uniform or Choice, got {s!r}"
            )
        out[name] = s
    return out


def sample_hparams(key: jax.Array, space: SearchSpace, population_size: int) -> HParams:
    """``population_size`` independent draws from every hyperparameter's prior.

    Example:
      >>> hp = sample_hparams(jax.random.key(0), {"lr": LogUniform(1e-3, 1.0)}, 4)
      >>> hp["lr"].shape
      (4,)
    """
    keys = jax.random.split(key, len(space))
    return {
        name: s.sample(k, (population_size,)).astype(s.dtype)
        for (name, s), k in zip(sorted(space.items()), keys, strict=True)
    }


def inject_hparams(tree: Any, hparams: Mapping[str, jax.Array]) -> Any:
    """Write ``hparams`` into every ``optax.inject_hyperparams`` state found in ``tree``.

    A leaf whose path reads ``.../hyperparams/<name>`` (optionally followed by an NNX
    ``.value``) gets ``hparams[name]``, cast to its dtype; everything else is unchanged. Works for
    a ``TrainState``, an ``nnx.split`` state of an ``nnx.Optimizer`` and a bare optax state.

    Example:
      >>> import optax
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> s = inject_hparams(tx.init(jnp.zeros(2)), {"learning_rate": jnp.float32(0.5)})
      >>> float(s.hyperparams["learning_rate"])
      0.5
    """
    if not hparams:
        return tree

    def name_of(k: Any) -> Any:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return getattr(k, attr)
        return k

    def fix(path: tuple, leaf: Any) -> Any:
        names = [name_of(k) for k in path]
        while names and names[-1] == "value":
            names.pop()
        if len(names) >= 2 and names[-2] == "hyperparams" and names[-1] in hparams:
            v = jnp.asarray(hparams[names[-1]])
            return jnp.broadcast_to(v, jnp.shape(leaf)).astype(jnp.asarray(leaf).dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fix, tree)
