"""The strategy-state memory guard: refuse, from shapes alone, a state that cannot fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evojax_nets.runner import check_fits
from evojax_nets.strategies.registry import DIAGONAL_ALTERNATIVES, FULL_COVARIANCE, Strategy


def state_bytes(strategy: Strategy) -> int:
    """Bytes of the strategy state, computed from shapes alone (nothing is allocated).

    Example:
      >>> from evojax_nets.strategies import make_strategy
      >>> diagonal = state_bytes(make_strategy("snes", 8, 100))
      >>> full = state_bytes(make_strategy("cma_es", 8, 100))  # holds 100 x 100 matrices
      >>> diagonal < 100 * 100 * 4 < full
      True
    """
    num_dims, key = strategy.num_dims, jax.random.key(0)
    if strategy.population_based:
        p = strategy.algorithm.population_size
        pop = jax.ShapeDtypeStruct((p, num_dims), jnp.float32)
        fit = jax.ShapeDtypeStruct((p,), jnp.float32)
        shapes = jax.eval_shape(strategy.init, key, pop, fit, strategy.params)
    else:
        shape = (strategy.num_means, num_dims) if strategy.num_means > 1 else (num_dims,)
        mean = jax.ShapeDtypeStruct(shape, jnp.float32)
        shapes = jax.eval_shape(strategy.init, key, mean, None, strategy.params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def check_memory(strategy: Strategy, max_bytes: int | None = None) -> int:
    """Refuse, before anything is allocated, a strategy whose state cannot fit.

    The state of a full-covariance strategy holds ``D x D`` matrices, and its update needs a
    few more of that size (eigendecomposition), so the estimate is four times the state.
    ``max_bytes`` defaults to half of the device's memory. Returns the estimate. The message
    names what dominates the state and suggests only changes that shrink it.

    Example:
      >>> from evojax_nets.strategies import make_strategy
      >>> s = make_strategy("snes", 8, 100)
      >>> check_memory(s) == 4 * state_bytes(s)
      True
      >>> try:
      ...     check_memory(make_strategy("cma_es", 8, 1000), max_bytes=2**20)
      ... except MemoryError:
      ...     print("refused: use a diagonal strategy")
      refused: use a diagonal strategy
    """
    need = 4 * state_bytes(strategy)
    d, p = strategy.num_dims, strategy.population_size
    if strategy.name in FULL_COVARIANCE:
        what = (
            f"strategy {strategy.name!r} on a network of {d:,} parameters (its state holds "
            f"{d:,} x {d:,} matrices)"
        )
        hints = ["a diagonal or low-rank strategy instead: " + ", ".join(DIAGONAL_ALTERNATIVES)]
    elif strategy.population_based:
        what = (
            f"strategy {strategy.name!r} on a network of {d:,} parameters (its state holds "
            f"the {p:,} x {d:,} population)"
        )
        limit = max_bytes
        fit = None if limit is None else max(2, int(limit // (4 * 4 * max(d, 1) * 3)))
        hints = [f"a smaller population_size (at most about {fit:,} fits)"] if fit else []
        hints.append("strategy='low_memory_open_es' (never holds the population)")
    else:
        what = f"strategy {strategy.name!r} on a network of {d:,} parameters"
        hints = ["a network with fewer evolved parameters (filter=...)"]
    check_fits(need, max_bytes, what, hints, fraction=0.5, setting="max_state_bytes")
    return need
