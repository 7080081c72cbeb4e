"""Threefry-2x32 random bits from straight-line code: the same bits as ``jax.random``, faster.

JAX's default PRNG hashes counters with Threefry-2x32 (Salmon et al. 2011, "Parallel random
numbers: as easy as 1, 2, 3", https://doi.org/10.1145/2063384.2063405). On CPU, JAX lowers the
hash as a loop of five iterations to keep compile times short; XLA cannot fuse a loop with the
computation that consumes its bits, so every round is a pass over memory and drawing the
(128, 8970) antithetic noise of an OpenAI-ES generation costs several times its arithmetic.

:data:`UNROLLED_THREEFRY` is a PRNG implementation with the same key data and the same
``seed``, ``split`` and ``fold_in``, whose ``random_bits`` computes the hash as straight-line
array code that XLA fuses with the uniform/normal transform that follows. Its bits are JAX's
bits: :func:`unrolled_keys` reinterprets the threefry keys in a pytree (no data changes) and
:func:`standard_keys` turns them back, so the engine uses it inside a generation and nothing
outside can tell, except the clock. It pays only on CPU and for large draws, and costs compile
time; :func:`should_unroll` says when to use it.

Example:
  >>> import jax
  >>> key = jax.random.key(0)
  >>> fast = unrolled_keys(key)
  >>> bool((jax.random.normal(fast, (3, 5)) == jax.random.normal(key, (3, 5))).all())
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl, threefry_prng_impl

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def threefry2x32(
    k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs ``(x1, x2)`` under key
    ``(k1, k2)``, all uint32, as ``jax.random``'s ``threefry2x32`` primitive computes it."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ _rotate_left(x2, r)
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    size = math.prod(shape)
    if not jax.config.jax_threefry_partitionable or size >= 2**32:
        # JAX's other counter layouts: use JAX's own implementation (same bits, rolled loop).
        return threefry_prng_impl.random_bits(key, bit_width, shape)
    # The partitionable layout: counter i of the flattened shape is the uint64 (hi=0, lo=i).
    lo = lax.iota(np.uint32, size).reshape(shape)
    b1, b2 = threefry2x32(key[0], key[1], jnp.zeros(shape, np.uint32), lo)
    if bit_width == 64:
        return lax.shift_left(b1.astype(np.uint64), np.uint64(32)) | b2.astype(np.uint64)
    bits = b1 ^ b2
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


UNROLLED_THREEFRY = define_prng_impl(
    key_shape=(2,),
    seed=threefry_prng_impl.seed,
    split=threefry_prng_impl.split,
    random_bits=_random_bits,
    fold_in=threefry_prng_impl.fold_in,
    name="threefry2x32_unrolled",
    tag="fry_u",
)

UNROLL_MIN_ELEMENTS = 100_000
"""The smallest Gaussian draw per generation (``P * D`` elements) for which :func:`should_unroll`
says yes; see there for the measurements."""


def should_unroll(draw_elements: int, backend: str | None = None) -> bool:
    """Whether a generation that draws ``draw_elements`` Gaussian numbers (``P * D``) should
    draw them through :data:`UNROLLED_THREEFRY`: only on CPU, and only for draws of at least
    :data:`UNROLL_MIN_ELEMENTS` elements.

    Measured on this project's 2-core CPU (XLA:CPU, jax 0.10; ``benchmarks/levers.py`` and a
    sweep of whole OpenAI-ES generations on digits MLPs, best of 3 chunks of 20 generations):
    the unrolled hash draws 128 x 8970 normals 2.8x faster; whole OpenAI-ES generations ran
    1.4x faster at ``P * D`` = 77k, 1.7-1.9x at 0.3-0.6M and 2.1x from 2.5M to 11M elements,
    while below 20k elements the gain was within noise or a loss (0.5x at 20k: the draw is
    not what a generation spends its time on). SNES, whose generation is dominated by
    sorting and the update, gained nothing measurable at any size (0.5-1.5x, noise). On an
    H200 the lever gained 1.04x, so accelerators keep JAX's own threefry. The straight-line
    hash also hands XLA larger fusions to compile; on tiny problems some strategies were
    reported to compile for minutes with it (SNES with P=8 on 3 weights, against 1.3 s with
    JAX's threefry), so below the threshold, where it gains nothing, it is never used.

    Args:
      draw_elements: elements of the generation's Gaussian draw, ``population_size *
        num_params``.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; default ``jax.default_backend()``.

    Example:
      >>> should_unroll(128 * 8970, backend="cpu"), should_unroll(8 * 3, backend="cpu")
      (True, False)
      >>> should_unroll(128 * 8970, backend="gpu")
      False
    """
    if isinstance(draw_elements, bool) or not isinstance(draw_elements, int | np.integer):
        raise TypeError(f"draw_elements must be an int (P * D), got {draw_elements!r}")
    if backend is None:
        backend = jax.default_backend()
    return backend == "cpu" and int(draw_elements) >= UNROLL_MIN_ELEMENTS


_STANDARD_DTYPE = jax.eval_shape(lambda: jax.random.key(0)).dtype
_UNROLLED_DTYPE = jax.eval_shape(lambda: jax.random.key(0, impl=UNROLLED_THREEFRY)).dtype


def _reinterpret(tree: Any, source: Any, impl: Any) -> Any:
    def swap(x: Any) -> Any:
        if getattr(x, "dtype", None) == source:
            return jax.random.wrap_key_data(jax.random.key_data(x), impl=impl)
        return x

    return jax.tree.map(swap, tree)


def unrolled_keys(tree: Any) -> Any:
    """``tree`` with every threefry key reinterpreted as an :data:`UNROLLED_THREEFRY` key.

    Example:
      >>> tree = {"key": jax.random.key(0), "x": jnp.ones(2)}
      >>> fast = unrolled_keys(tree)
      >>> fast["key"].dtype == jax.random.key(0, impl=UNROLLED_THREEFRY).dtype
      True
      >>> fast["x"] is tree["x"]  # other leaves pass through
      True
      >>> bool((jax.random.key_data(fast["key"]) == jax.random.key_data(tree["key"])).all())
      True
    """
    return _reinterpret(tree, _STANDARD_DTYPE, UNROLLED_THREEFRY)


def standard_keys(tree: Any) -> Any:
    """``tree`` with every :data:`UNROLLED_THREEFRY` key turned back into a threefry key.

    Example:
      >>> key = jax.random.key(0)
      >>> back = standard_keys(unrolled_keys(key))
      >>> back.dtype == key.dtype, str(jax.random.key_impl(back))
      (True, 'threefry2x32')
    """
    return _reinterpret(tree, _UNROLLED_DTYPE, "threefry2x32")
