"""How the engine evaluates a :class:`~evojax_nets.lowrank.LowRankPopulation`.

No task needs to know about low-rank populations: a stateless, unfed task's own per-member
``fitness(key, theta)`` is traced once and evaluated for the whole population by the low-rank
interpreter (:meth:`LowRankPopulation.call`). ``Network.unravel`` first splits the genome at
the leaf boundaries, which hands each layer its ``LowRank`` kernel; the forward then runs as
described in :mod:`evojax_nets.lowrank.forward`. So :class:`~evojax_nets.tasks.Supervised`
(and a custom fitness that calls the model) gets ``x W`` as one product for all members.
``eval_batch_size`` evaluates that many members at a time.

A stateful or fed task (RL observation statistics, a grain feed) gets its members
materialised, ``eval_batch_size`` (or the strategy's ``batch_size``) at a time, as does a
fitness the interpreter cannot trace (with a warning). With a mesh, the per-member factors
(or the member indices) are sharded over axis ``"pop"`` and the fitness is replicated back.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_nets.lowrank.strategy import LowRankPopulation
from evojax_nets.tasks.base import BoundTask


def evaluate_lowrank(
    population: LowRankPopulation,
    task: BoundTask,
    key: jax.Array,
    fit: Callable[[jax.Array, jax.Array], Any],
    mesh: Mesh | None = None,
    eval_batch_size: int | None = None,
) -> tuple[jax.Array, Any]:
    """``(fitness, aux)`` of every member (see the module docstring); ``fit(key, theta)``
    is the task's per-member ``(fitness, aux)``."""
    p = population.population_size
    if mesh is not None:
        devices = mesh.shape["pop"]
        if eval_batch_size is not None and eval_batch_size % devices:
            raise ValueError(
                f"eval_batch_size={eval_batch_size} does not divide over the {devices} devices "
                f"of mesh axis 'pop'; with lowrank_es use a multiple of {devices}"
            )
    population = population.replace(mesh=mesh)
    if task.fed or task.stateful:
        fitness, aux = population.map(lambda theta: fit(key, theta), eval_batch_size)
    else:
        chunk = p if eval_batch_size is None else min(eval_batch_size, p)

        def chunk_fitness(members: LowRankPopulation) -> jax.Array:
            return members.call(lambda k, theta: fit(k, theta)[0], key)

        try:
            if chunk >= p:
                fitness = chunk_fitness(population)
            else:
                n_chunks = -(-p // chunk)
                idx = jnp.arange(n_chunks * chunk) % p  # padded with valid members, dropped
                fitness = jax.lax.map(
                    lambda ids: chunk_fitness(population.subset(ids)),
                    idx.reshape(n_chunks, chunk),
                ).reshape(-1)[:p]
            aux: Any = ()
        except Exception as err:  # a primitive the interpreter cannot take: the safe path
            warnings.warn(
                "lowrank_es could not run the task's fitness with the low-rank forward pass "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "members are materialised eval_batch_size at a time instead",
                stacklevel=2,
            )
            fitness, aux = population.map(lambda theta: fit(key, theta), eval_batch_size)
    if mesh is not None:
        fitness = jax.lax.with_sharding_constraint(fitness, NamedSharding(mesh, PartitionSpec()))
    return fitness, aux
