"""Reinforcement learning: control policies evolved on gymnax (or Brax) environments.

Fitness is the mean undiscounted return of ``num_episodes`` episodes, maximised. Everything
runs inside the jitted generation: the engine ``vmap``s members, the task ``vmap``s episodes
and loops over time. All members of a generation start their episodes from the same seeds
(the engine shares the evaluation key: common random numbers, the "Pegasus" trick of Ng &
Jordan, 2000), so fitness differences measure the policies, not the start states.

Episodes end, and stay ended. The environment is stepped without gymnax's automatic reset
(``step_env``); after an episode terminates or is truncated its state and observation are
frozen and its rewards, length and observation statistics are masked, so a reset's reward can
never leak into a return. With ``early_exit`` the time loop stops as soon as every episode of
the batch (under the engine's ``vmap``: of the whole population) has ended.

Observation normalisation follows Salimans et al. (2017), "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning", https://arxiv.org/abs/1703.03864: running mean and
variance of every observation the policies see, kept in the engine state
(``EvolutionState.task_state``), frozen within a generation (all members see the same
normalisation) and updated once per generation from sufficient statistics the rollouts return
(count, and the sums of deviations from the current mean and of their squares, merged with
Chan et al.'s parallel formula), so no trajectory is ever stored.

Test metrics roll the best member and the mean out on ``eval_episodes`` fresh episodes,
seeded from ``eval_seed`` and the generation counter: new start states at every report,
independent of the training keys, identical for the best and the mean.

Actions: for a discrete space the policy outputs logits and the action is their ``argmax``
(or a categorical sample with ``stochastic=True``); for a box the policy outputs one value per
action dimension and the action is ``low + (tanh(out) + 1) / 2 * (high - low)``.

Layout: :mod:`~evojax_nets.tasks.rl.envs` (:class:`Env`, :func:`make_env`, the gymnax and
Brax wrappers), :mod:`~evojax_nets.tasks.rl.episodes` (observation statistics, the task state
and the masked episode loop) and :mod:`~evojax_nets.tasks.rl.task` (:class:`RLTask` and
:func:`rollout`, with the example); every name is re-exported here.
"""

from evojax_nets.tasks.rl.envs import BRAX_HINT, GYMNAX_HINT, Env, brax_env, gymnax_env, make_env
from evojax_nets.tasks.rl.envs import _import_gymnax as _import_gymnax
from evojax_nets.tasks.rl.episodes import (
    EpisodeResult,
    ObsMoments,
    PolicyStep,
    RLState,
    RunningStats,
    action_fn,
    run_episode,
    run_episodes,
)
from evojax_nets.tasks.rl.episodes import _Loop as _Loop
from evojax_nets.tasks.rl.task import RLTask, Rollout, rollout

__all__ = [
    "BRAX_HINT",
    "GYMNAX_HINT",
    "Env",
    "EpisodeResult",
    "ObsMoments",
    "PolicyStep",
    "RLState",
    "RLTask",
    "Rollout",
    "RunningStats",
    "action_fn",
    "brax_env",
    "gymnax_env",
    "make_env",
    "rollout",
    "run_episode",
    "run_episodes",
]
