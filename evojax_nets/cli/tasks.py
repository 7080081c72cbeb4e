"""Building the run's task and network from ``--task`` and ``--model``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evojax_nets.cli.config import (
    _DATASET_TASKS,
    RunConfig,
    UsageError,
    default_model,
    split_model,
    split_task,
)

if TYPE_CHECKING:
    from evojax_nets.engine import Evolution


def build_evolution(config: RunConfig) -> Evolution:
    """The :class:`~evojax_nets.engine.Evolution` the settings describe."""
    from flax import nnx

    from evojax_nets.engine import Evolution

    kind, arg = split_task(config.task)
    model_kind, sizes = split_model(config.model or default_model(config.task))
    rngs = nnx.Rngs(config.seed)
    if kind == "gymnax":
        from evojax_nets.policies import CNNPolicy, MLPPolicy
        from evojax_nets.tasks.rl import RLTask

        task = RLTask(
            arg,
            num_episodes=config.episodes,
            episode_length=config.episode_length,
            eval_episodes=config.eval_episodes,
        )
        obs_shape, num_outputs = task.obs_shape, task.num_outputs
        if model_kind == "cnn":
            cnn = dict(zip(("features", "hidden"), sizes, strict=False))
            model = CNNPolicy(obs_shape, num_outputs, rngs=rngs, **cnn)
        else:
            model = MLPPolicy(obs_shape, num_outputs, sizes, rngs=rngs)
    else:
        from evojax_nets.models import MLP
        from evojax_nets.tasks import Supervised, load_digits, load_idx_dataset

        if model_kind == "cnn":
            raise UsageError(
                f"--model {config.model}: cnn is a policy for gymnax image observations; for "
                f"{config.task} use mlp:W,W or linear"
            )
        if kind == "digits":
            data = load_digits(seed=config.seed)
        else:
            data = load_idx_dataset(arg, _DATASET_TASKS[kind])
        model = MLP(data.x_train.shape[1], sizes, data.num_classes, rngs=rngs)
        task = Supervised.from_dataset(data, batch_size=config.batch_size)
    return Evolution(
        model,
        task,
        config.strategy,
        config.population,
        std=config.std,
        learning_rate=config.learning_rate,
    )
