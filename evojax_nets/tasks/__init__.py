"""Tasks: what a member is evaluated on."""

from evojax_nets.tasks.base import BoundTask, FunctionTask, Task, as_task
from evojax_nets.tasks.data import StreamedSupervised, write_memmap_dataset
from evojax_nets.tasks.datasets import Dataset, load_digits, load_idx_dataset, read_idx, write_idx
from evojax_nets.tasks.rl import Env, RLTask, make_env, rollout
from evojax_nets.tasks.supervised import Supervised

__all__ = [
    "BoundTask",
    "Dataset",
    "Env",
    "FunctionTask",
    "RLTask",
    "StreamedSupervised",
    "Supervised",
    "Task",
    "as_task",
    "load_digits",
    "load_idx_dataset",
    "make_env",
    "read_idx",
    "rollout",
    "write_idx",
    "write_memmap_dataset",
]
