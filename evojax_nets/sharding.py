"""Device meshes for the population, and multi-host start-up.

The population is sharded over one mesh axis, ``"pop"``, at the evaluation boundary and
nowhere else (see ``Evolution.evaluate``); the strategy state and the fitness stay replicated.
The same program runs on one device, on all local devices, or on every device of several hosts
after :func:`initialize_distributed`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

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


#: Defaults of :func:`initialize_distributed` (seconds). JAX's own (100 s heartbeat, 300 s
#: shutdown) leave a survivor waiting minutes for a peer that died.
HEARTBEAT_TIMEOUT_S = 20
SHUTDOWN_TIMEOUT_S = 30
INITIALIZATION_TIMEOUT_S = 300

# Errors that mean another process of the run is gone (its sockets closed, or the
# coordination service stopped hearing from it), as gloo, NCCL and XLA word them.
_PEER_LOST_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "heartbeat timeout",
    "stopped sending heartbeats",
    "coordination service",
    "barrier failed",
    "ncclremoteerror",
    "remote process exited",
)


def is_peer_lost(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says another process is gone.

    Example:
      >>> is_peer_lost(ValueError("Gloo all-reduce failed: Connection closed by peer"))
      True
      >>> is_peer_lost(ValueError("shapes (3,) and (4,) differ"))
      False
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        if any(marker in text for marker in _PEER_LOST_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _peer_lost_message(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return (
        f"evojax_nets: process {jax.process_index()} of {jax.process_count()} lost a peer: "
        f"another process of this jax.distributed run died or became unreachable "
        f"({type(err).__name__}: {first}). This process exits now (status 1) instead of "
        f"waiting for it. Restart every process; a run with a Checkpointer continues from "
        f"its last checkpoint (evojax_nets.checkpoint.resume)."
    )


def _install_peer_lost_hook() -> None:
    """On an uncaught peer-lost error, say so and exit at once.

    Without this, the interpreter's exit runs ``jax.distributed.shutdown``, whose barrier
    waits for the dead peer until the heartbeat or shutdown timeout and then aborts (SIGABRT).
    """
    previous = sys.excepthook
    if getattr(previous, "_evojax_peer_lost", False):
        return

    def hook(kind: type[BaseException], err: BaseException, tb: Any) -> None:
        if not is_peer_lost(err):
            previous(kind, err, tb)
            return
        try:
            previous(kind, err, tb)
            print(_peer_lost_message(err), file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(1)

    hook._evojax_peer_lost = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = None,
    *,
    heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_S,
    shutdown_timeout_seconds: int = SHUTDOWN_TIMEOUT_S,
    initialization_timeout: int = INITIALIZATION_TIMEOUT_S,
) -> None:
    """Start ``jax.distributed`` (once per process, before any other JAX call).

    On GPU clusters and TPU pods launched by SLURM, Open MPI or Cloud TPU the arguments are
    discovered from the environment: call it with none. By hand, give the coordinator's
    ``host:port`` (process 0 listens there), the number of processes and this one's id.
    ``cpu_collectives="gloo"`` lets CPU processes exchange data (for tests on one machine).

    When a process dies, the others stop promptly rather than hang:

    * a survivor waiting in a collective gets an error from the transport (gloo, NCCL) at
      once; an uncaught error of that kind prints a message saying a peer was lost and ends
      the process with status 1 (see :func:`is_peer_lost`), skipping the shutdown barrier
      that would otherwise wait for the dead peer;
    * a survivor that is not communicating learns of it from the coordination service after
      ``heartbeat_timeout_seconds`` without heartbeats from the peer (JAX's default: 100 s);
      XLA then ends it with "Terminating process because the JAX distributed service
      detected fatal errors. This most likely indicates that another task died";
    * ``shutdown_timeout_seconds`` bounds how long a process that finishes waits at exit for
      the others to finish too (JAX's default: 300 s);
    * ``initialization_timeout`` bounds how long this call waits for every process to
      connect (JAX's default, 300 s: processes of a cluster job may start minutes apart).

    Raise the heartbeat timeout on a network or file system that can stall a healthy host
    for longer than 20 s (a missed heartbeat ends the whole run).

    Example:
      >>> initialize_distributed()  # under SLURM / Open MPI / Cloud TPU  # doctest: +SKIP
      >>> initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
      >>> mesh = population_mesh()  # every device of every process  # doctest: +SKIP
    """
    for name, value in (
        ("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
        ("shutdown_timeout_seconds", shutdown_timeout_seconds),
        ("initialization_timeout", initialization_timeout),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number of seconds, got {value!r}")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )
    _install_peer_lost_hook()
