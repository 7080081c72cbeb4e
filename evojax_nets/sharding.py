"""Device meshes for the population, and multi-host start-up.

The population is sharded over one mesh axis, ``"pop"``, at the evaluation boundary and
nowhere else (see ``Evolution.evaluate``); the strategy state and the fitness stay replicated.
The same program runs on one device, on all local devices, or on every device of several hosts
after :func:`initialize_distributed`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"pop"`` over ``devices`` (default: every device of every
    process, ``jax.devices()``). The population size must be a multiple of its size.

    Example:
      >>> mesh = population_mesh()
      >>> mesh.axis_names, mesh.shape["pop"] == len(jax.devices())
      (('pop',), True)
      >>> population_mesh(jax.devices()[:1]).shape["pop"]
      1

      Pass it (or ``mesh=True``) to ``Evolution(..., mesh=mesh)`` to shard the population.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass at least one device")
    return Mesh(np.asarray(devices), ("pop",))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = None,
) -> None:
    """Start ``jax.distributed`` (once per process, before any other JAX call).

    On GPU clusters and TPU pods launched by SLURM, Open MPI or Cloud TPU the arguments are
    discovered from the environment: call it with none. By hand, give the coordinator's
    ``host:port`` (process 0 listens there), the number of processes and this one's id.
    ``cpu_collectives="gloo"`` lets CPU processes exchange data (for tests on one machine).

    Example:
      >>> initialize_distributed()  # under SLURM / Open MPI / Cloud TPU  # doctest: +SKIP
      >>> initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
      >>> mesh = population_mesh()  # every device of every process  # doctest: +SKIP
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
