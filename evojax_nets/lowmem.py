"""Kept for imports written before the strategies package: see
:mod:`evojax_nets.strategies.lowmem`."""

from evojax_nets.strategies.lowmem import LazyPopulation, LowMemoryOpenES, LowMemoryState

__all__ = ["LazyPopulation", "LowMemoryOpenES", "LowMemoryState"]
