"""Shared type aliases for the public API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
from jaxtyping import Array, Float, PRNGKeyArray

PRNGKey: TypeAlias = PRNGKeyArray
"""A typed key from ``jax.random.key`` (legacy ``uint32[2]`` keys are accepted too)."""

Genome: TypeAlias = Float[Array, " D"]
"""One member's evolved parameters, raveled to a flat vector of length ``D``."""

Population: TypeAlias = Float[Array, "P D"]
"""A population: ``P`` genomes stacked as rows."""

Fitness: TypeAlias = Float[Array, " P"]
"""One fitness value per member, in the task's own sense (see ``maximize``)."""

Scalar: TypeAlias = Float[Array, ""]

PyTree: TypeAlias = Any

Member: TypeAlias = Any
"""A member in the user's own structure: an NNX module, a linen variables dict or a TrainState."""

FitnessFn: TypeAlias = Callable[[jax.Array, Member], jax.Array]
"""``fitness(key, member) -> scalar``: the per-member objective a custom task provides."""

Metrics: TypeAlias = dict[str, jax.Array]
