"""The XLA flags of the test suite, in one place (no JAX import: ``conftest`` sets them before
JAX starts).

Compilation dominates the suite's time (the programs themselves run in milliseconds), so
XLA's CPU backend is asked to compile fast: no backend optimisation, no expensive LLVM passes,
and the classic elemental emitter instead of the newer fusion emitters (which compile a
program about 35% slower here: 15-16 s against 24-26 s of CPU for six strategies' sharded
chunks). None of them changes a test's meaning. Child processes get the same flags through
:func:`child_env`, so a program compiled in a child and in the test are the same program
(and the suite's compilation cache serves both).
"""

from __future__ import annotations

import os

FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)


def child_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child Python process: this one's, on the CPU, with the suite's
    XLA flags and, when ``devices`` is given, that many fake CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    flags = FAST_COMPILE
    if devices is not None:
        flags = f"--xla_force_host_platform_device_count={devices} {flags}"
    env["XLA_FLAGS"] = flags
    return env
