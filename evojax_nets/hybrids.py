"""Hybrids of gradient descent and evolution, fused in the engine's one jitted generation.

Gradient descent is cheap per step but follows one basin; population search explores but its
cost grows with the number of weights. The operators here put true gradients (the task's
differentiable minibatch loss, ``OpContext.loss``) where each kind of strategy can use them:

* :func:`gradient_steps`: every member, or only the ``top_k`` best, takes ``K`` steps of any
  optax optimizer, vmapped over the population with one optimizer state per member. In
  ``"lamarckian"`` mode the trained weights are written back into the genome (the strategy
  breeds from what was learnt); in ``"baldwinian"`` mode only into the phenotype (fitness
  measures how well a genome *learns*, the genome itself is inherited unchanged), after
  Hinton & Nowlan (1987), "How Learning Can Guide Evolution", Complex Systems 1:495-502.
  Non-finite gradients skip the update of that member for that step, as optax's
  ``apply_if_finite`` does. Suited to population-based strategies (GA, DE, PSO, :class:`ESGD`):
  moving the samples of a distribution-based strategy biases its gradient estimate.
* :func:`guided_es_gradient`: fills evosax ``GuidedES``'s ``grad`` with the true gradient at the
  mean before each ``ask``, so the samples concentrate in the subspace it spans: Maheswaranathan
  et al. (2019), "Guided evolutionary strategies: augmenting random search with surrogate
  gradients", ICML, https://arxiv.org/abs/1806.10230.
* :func:`blended_mean_update`: after ``tell``, the new mean of any distribution-based strategy
  is ``m + (1 - w) * (ES step) + w * (gradient step)``, with the weight ``w`` an array in the
  operator's state, so it can be swept, scheduled or evolved without recompiling. Related to
  the hybrid updates of Maheswaranathan et al. (2019) and of Lehman et al. (2018), "Safe
  mutations for deep and recurrent neural networks through output gradients",
  https://arxiv.org/abs/1712.06563.
* :class:`ESGD` with :func:`esgd`: Evolutionary Stochastic Gradient Descent, Cui, Zhang, Tuske
  and Picheny (2018), "Evolutionary Stochastic Gradient Descent for Optimization of Deep Neural
  Networks", NeurIPS, https://arxiv.org/abs/1810.06773. An SGD phase over the whole population
  with back-off (a member whose loss got worse returns to its weights before the phase) and an
  evolution phase with m-elitist selection, so that the best fitness never gets worse.

Which members get gradients (``top_k``): a cheap pre-evaluation, one forward pass per member
on one minibatch, picks them. The strategy state's last fitness cannot: it belongs to the
previous generation's members, which a distribution-based strategy never samples again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms.population_based.base import (
    metrics_fn as _pop_metrics_fn,
)
from evosax.core.fitness_shaping import identity_fitness_shaping_fn
from flax import struct

from evojax_nets.nets import Network, as_network
from evojax_nets.ops import Members, OpContext, PopulationOp
from evojax_nets.program import rank_finite
from evojax_nets.strategies import DEFAULT_STD, DeepGA, DeepGAParams, DeepGAState
from evojax_nets.types import Population

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "ESGD",
    "BlendState",
    "GradientStepsState",
    "blended_mean_update",
    "esgd",
    "gradient_steps",
    "guided_es_gradient",
    "train_member",
]


def _require_loss(ctx: OpContext, who: str) -> LossFn:
    if ctx.loss is None:
        raise ValueError(
            f"{who} needs a differentiable task loss (OpContext.loss), but this task has none; "
            "supervised tasks provide one (evojax_nets.tasks.Supervised), and a custom task can "
            "set BoundTask.loss"
        )
    return ctx.loss


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def train_member(
    loss: LossFn,
    optimizer: optax.GradientTransformation,
    theta: jax.Array,
    opt_state: Any,
    keys: jax.Array,
) -> tuple[jax.Array, Any, jax.Array]:
    """``len(keys)`` optax steps on ``loss(key, theta)`` for one member (a ``lax.scan``).

    A step whose gradient holds a NaN or an infinity leaves the weights and the optimizer state
    as they were. Returns the trained weights, the optimizer state and the number of skipped
    steps.

    Example:
      >>> loss = lambda key, th: jnp.sum(th**2)
      >>> opt = optax.sgd(0.1)
      >>> th, _, skipped = train_member(
      ...     loss, opt, jnp.ones(3), opt.init(jnp.ones(3)), jax.random.split(jax.random.key(0), 5)
      ... )
      >>> bool(jnp.all(th < 1.0)), int(skipped)
      (True, 0)
    """
    grad_fn = jax.grad(loss, argnums=1)
    # optax's apply_if_finite does the skipping; errors never "run out" within K steps.
    safe = optax.apply_if_finite(optimizer, max_consecutive_errors=keys.shape[0] + 1)
    wrapped = optax.ApplyIfFiniteState(
        notfinite_count=jnp.zeros([], jnp.int32),
        last_finite=jnp.array(True),
        total_notfinite=jnp.zeros([], jnp.int32),
        inner_state=opt_state,
    )

    def step(carry, key):
        theta, state = carry
        updates, state = safe.update(grad_fn(key, theta), state, theta)
        return (optax.apply_updates(theta, updates), state), None

    (theta, wrapped), _ = jax.lax.scan(step, (theta, wrapped), keys)
    opt_state, skipped = wrapped.inner_state, wrapped.total_notfinite.astype(jnp.int32)
    return theta, opt_state, skipped


@struct.dataclass
class GradientStepsState:
    """State of :func:`gradient_steps`.

    Attributes:
      opt_state: one optimizer state per member (leading axis ``P``) with ``persist_state``,
        else ``()``.
      num_skipped: member-steps skipped so far because a gradient was not finite (int32).
      num_reverted: members returned to their weights before the steps by back-off (int32).
    """

    opt_state: Any
    num_skipped: jax.Array
    num_reverted: jax.Array


def gradient_steps(
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    mode: Literal["lamarckian", "baldwinian"] = "lamarckian",
    top_k: int | None = None,
    backoff: bool = False,
    persist_state: bool = False,
) -> PopulationOp:
    """K optax steps on the task's minibatch loss for every member (or the ``top_k`` best).

    Args:
      optimizer: any optax optimizer; each member gets its own state (vmapped). Hyperparameters
        wrapped with ``optax.inject_hyperparams`` live in that state.
      num_steps: ``K``, steps per member per generation. Every member sees the same minibatch
        at a given step (common random numbers, as in the engine's evaluation).
      mode: ``"lamarckian"`` writes the trained weights into the genome and the phenotype;
        ``"baldwinian"`` only into the phenotype (evaluated, not inherited).
      top_k: train only the ``k`` members with the lowest loss on one pre-evaluation minibatch
        (one forward pass each); the others pass through unchanged. ``None``: all members.
      backoff: after the steps, a member whose loss on the pre-evaluation minibatch got worse
        (or is not finite) returns to its weights before the steps (ESGD's back-off).
      persist_state: keep each row's optimizer state from one generation to the next (rows are
        the same individuals only for some strategies, for example :class:`ESGD`'s parents);
        by default every generation starts from a fresh ``optimizer.init``.

    Example:
      >>> from evojax_nets import Evolution
      >>> op = gradient_steps(optax.adam(1e-3), num_steps=5, mode="lamarckian", top_k=8)
      >>> # Evolution(model, task, "ga", 32, ops=op)
    """
    if mode not in ("lamarckian", "baldwinian"):
        raise ValueError(f"mode must be 'lamarckian' or 'baldwinian', got {mode!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )

    def init(key: jax.Array, population: Population) -> GradientStepsState:
        opt_state = jax.vmap(optimizer.init)(population) if persist_state else ()
        return GradientStepsState(opt_state, jnp.int32(0), jnp.int32(0))

    def apply(
        key: jax.Array, members: Members, state: GradientStepsState, ctx: OpContext
    ) -> tuple[Members, GradientStepsState]:
        loss = _require_loss(ctx, "gradient_steps")
        start = members.phenotype
        size = start.shape[0]
        if top_k is not None and top_k > size:
            raise ValueError(f"top_k={top_k} exceeds the population size {size}")
        k_pre, k_steps = jax.random.split(key)
        pre = None
        if top_k is not None or backoff:
            pre = jax.vmap(loss, in_axes=(None, 0))(k_pre, start)
            pre = jnp.where(jnp.isfinite(pre), pre, jnp.inf)
        idx = None if top_k is None or top_k == size else jax.lax.top_k(-pre, top_k)[1]
        take = (lambda x: x) if idx is None else (lambda x: x[idx])
        chosen = take(start)
        if persist_state:
            opt_state = jax.tree.map(take, state.opt_state)
        else:
            opt_state = jax.vmap(optimizer.init)(chosen)
        keys = jax.random.split(k_steps, num_steps)
        trained, new_opt, skipped = jax.vmap(
            lambda th, s: train_member(loss, optimizer, th, s, keys)
        )(chosen, opt_state)
        reverted = jnp.int32(0)
        if backoff:
            post = jax.vmap(loss, in_axes=(None, 0))(k_pre, trained)
            worse = ~(post <= take(pre))
            trained = jnp.where(worse[:, None], chosen, trained)
            new_opt = jax.tree.map(
                lambda a, b: jnp.where(worse.reshape((-1,) + (1,) * (a.ndim - 1)), b, a),
                new_opt,
                opt_state,
            )
            reverted = jnp.sum(worse).astype(jnp.int32)

        def put(full: jax.Array, part: jax.Array) -> jax.Array:
            return part if idx is None else full.at[idx].set(part)

        phenotype = put(start, trained)
        genome = put(members.genome, trained) if mode == "lamarckian" else members.genome
        new_opt = jax.tree.map(put, state.opt_state, new_opt) if persist_state else ()
        new_state = GradientStepsState(
            opt_state=new_opt,
            num_skipped=state.num_skipped + jnp.sum(skipped).astype(jnp.int32),
            num_reverted=state.num_reverted + reverted,
        )
        return Members(genome=genome, phenotype=phenotype), new_state

    return PopulationOp(init=init, apply=apply)


def _mean_gradient(loss: LossFn, key: jax.Array, mean: jax.Array) -> jax.Array:
    grad_fn = jax.grad(loss, argnums=1)
    if mean.ndim == 1:
        return grad_fn(key, mean)
    return jax.vmap(grad_fn, in_axes=(None, 0))(key, mean)


def _require_fields(state: Any, fields: tuple[str, ...], who: str, hint: str) -> None:
    missing = [f for f in fields if not hasattr(state, f)]
    if missing:
        raise TypeError(
            f"{who} needs a strategy whose state has the field(s) {missing}; "
            f"{type(state).__name__} has not. {hint}"
        )


def guided_es_gradient() -> PopulationOp:
    """Give evosax's Guided ES the true gradient at the mean before every ``ask``.

    Guided ES (Maheswaranathan et al. 2019) samples part of its perturbations in the subspace
    spanned by the last ``subspace_dims`` surrogate gradients; here they are the task's
    minibatch-loss gradients at the current mean. A non-finite gradient is replaced by NaN,
    which Guided ES reads as "no gradient this generation". Only the direction matters (the
    subspace is orthonormalised), and the ES update itself is left to the strategy.

    Example:
      >>> op = guided_es_gradient()
      >>> # Evolution(model, task, "guided_es", 64, std=1.0, ops=op,
      >>> #           strategy_kwargs={"subspace_dims": 4})
    """

    def before_ask(key: jax.Array, sstate: Any, op_state: Any, ctx: OpContext):
        _require_fields(sstate, ("grad", "mean"), "guided_es_gradient", "Use strategy='guided_es'.")
        grad = _mean_gradient(_require_loss(ctx, "guided_es_gradient"), key, sstate.mean)
        grad = jnp.where(_all_finite(grad), grad, jnp.nan).reshape(sstate.grad.shape)
        return sstate.replace(grad=grad.astype(sstate.grad.dtype)), op_state

    return PopulationOp(
        init=lambda key, population: (),
        apply=lambda key, members, state, ctx: (members, state),
        before_ask=before_ask,
    )


@struct.dataclass
class BlendState:
    """State of :func:`blended_mean_update`.

    Attributes:
      weight: the blend ``w`` in ``[0, 1]``: 0 is the strategy's own step, 1 the gradient step
        alone. A hyperparameter array: replace it in the state to sweep or schedule it.
      mean_before: the mean before this generation's ``ask``.
      opt_state: the gradient optimizer's state (one, for the mean).
      num_skipped: generations whose gradient was not finite (then only the ES step is taken).
    """

    weight: jax.Array
    mean_before: jax.Array
    opt_state: Any
    num_skipped: jax.Array


def blended_mean_update(
    optimizer: optax.GradientTransformation, weight: float = 0.5
) -> PopulationOp:
    """Blend a distribution-based strategy's mean update with a true-gradient step.

    With ``m`` the mean before ``ask``, ``m_es`` the strategy's mean after ``tell`` and
    ``u = optimizer.update(grad loss(m))``, the new mean is
    ``m + (1 - w) * (m_es - m) + w * u``. The strategy's other state (step size, covariance,
    its own optimizer moments) is updated by the strategy as usual. Works with any strategy
    whose state has a ``mean`` (OpenAI-ES, PGPE, SNES, sep-CMA-ES, ...).

    Args:
      optimizer: optax optimizer for the gradient step (its learning rate sets its size).
      weight: initial ``w``; it lives in the operator state (:class:`BlendState`), so
        ``state.replace(op_state=op_state.replace(weight=...))`` changes it without
        recompiling, and a ``vmap`` over it is a sweep.

    Example:
      >>> op = blended_mean_update(optax.adam(1e-3), weight=0.5)
      >>> # Evolution(model, task, "open_es", 64, ops=op)
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")

    def init(key: jax.Array, population: Population) -> BlendState:
        mean = population[0]
        return BlendState(
            weight=jnp.float32(weight),
            mean_before=mean,
            opt_state=optimizer.init(mean),
            num_skipped=jnp.int32(0),
        )

    def before_ask(key: jax.Array, sstate: Any, op_state: BlendState, ctx: OpContext):
        _require_fields(
            sstate,
            ("mean",),
            "blended_mean_update",
            "Use a distribution-based strategy (open_es, pgpe, snes, sep_cma_es, ...).",
        )
        if sstate.mean.shape != op_state.mean_before.shape:
            raise ValueError(
                f"blended_mean_update handles one mean of shape {op_state.mean_before.shape}; "
                f"this strategy has means of shape {sstate.mean.shape}"
            )
        return sstate, op_state.replace(mean_before=sstate.mean)

    def after_tell(key: jax.Array, sstate: Any, op_state: BlendState, ctx: OpContext):
        loss = _require_loss(ctx, "blended_mean_update")
        m_old = op_state.mean_before
        grad = _mean_gradient(loss, key, m_old)
        ok = _all_finite(grad)
        updates, new_opt = optimizer.update(grad, op_state.opt_state, m_old)
        updates = jnp.where(ok, updates, 0.0)
        w = op_state.weight
        mean = m_old + (1.0 - w) * (sstate.mean - m_old) + w * updates
        new_state = op_state.replace(
            opt_state=_select(ok, new_opt, op_state.opt_state),
            num_skipped=op_state.num_skipped + (~ok).astype(jnp.int32),
        )
        return sstate.replace(mean=mean.astype(sstate.mean.dtype)), new_state

    return PopulationOp(
        init=init,
        apply=lambda key, members, state, ctx: (members, state),
        before_ask=before_ask,
        after_tell=after_tell,
    )


class ESGD(DeepGA):
    """The evolution phase of ESGD (Cui et al. 2018); pair it with :func:`esgd`'s SGD phase.

    The population of ``P = mu + lambda`` rows is, each generation: the ``mu`` parents
    (unmutated), then ``lambda`` offspring, each the average of two random parents
    (intermediate recombination) plus ``std * N(0, I)``. The parents are chosen by m-elitist
    selection from the last evaluated population (parents and offspring together): the
    ``num_elites`` best always, the other ``mu - num_elites`` uniformly at random from the rest
    (diversity; our reading of the paper's "m-elitist average fitness selection"). Because the
    elites come back unmutated and the SGD phase backs off, the best fitness never gets worse
    (exactly so when the fitness is deterministic, for example a full-batch loss).
    ``std`` is a params array (sweepable). State, params and ``tell`` are
    :class:`~evojax_nets.strategies.DeepGA`'s; only selection and variation differ.

    Example:
      >>> es = ESGD(population_size=8, solution=jnp.zeros(3), num_parents=2, num_elites=1)
      >>> params = es.default_params
      >>> population = jax.random.normal(jax.random.key(0), (8, 3))
      >>> fitness = jnp.sum(population**2, axis=1)  # minimised
      >>> state = es.init(jax.random.key(1), population, fitness, params)
      >>> children, state = es.ask(jax.random.key(2), state, params)
      >>> children.shape, bool((children[0] == population[jnp.argmin(fitness)]).all())
      ((8, 3), True)

      With the engine, build it and its SGD phase together with :func:`esgd`.
    """

    def __init__(
        self,
        population_size: int,
        solution: jax.Array,
        num_parents: int | None = None,
        num_elites: int = 1,
        std: float = DEFAULT_STD,
        fitness_shaping_fn: Callable = identity_fitness_shaping_fn,
        metrics_fn: Callable = _pop_metrics_fn,
    ):
        num_parents = max(2, population_size // 4) if num_parents is None else num_parents
        if not 1 <= num_parents < population_size:
            raise ValueError(
                f"num_parents must be in [1, population_size={population_size}), got {num_parents}"
            )
        if not 1 <= num_elites <= num_parents:
            raise ValueError(
                f"num_elites must be in [1, num_parents={num_parents}], got {num_elites}"
            )
        super().__init__(
            population_size, solution, num_parents, num_elites, std, fitness_shaping_fn, metrics_fn
        )

    def _ask(self, key: jax.Array, state: DeepGAState, params: DeepGAParams):
        mu, m = self.num_parents, self.num_elites_kept
        num_children = self.population_size - mu
        k_rest, k_pair, k_mut = jax.random.split(key, 3)
        order = jnp.argsort(-rank_finite(state.fitness, maximize=False), stable=True)
        rest = jax.random.permutation(k_rest, order[m:])[: mu - m]
        parents = state.population[jnp.concatenate([order[:m], rest])]
        pairs = jax.random.randint(k_pair, (num_children, 2), 0, mu)
        children = 0.5 * (parents[pairs[:, 0]] + parents[pairs[:, 1]])
        children = children + params.std * jax.random.normal(k_mut, children.shape)
        return jnp.concatenate([parents, children]), state


def esgd(
    model: int | Network | Any,
    population_size: int,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    num_parents: int | None = None,
    num_elites: int = 1,
    std: float = DEFAULT_STD,
) -> tuple[ESGD, PopulationOp]:
    """ESGD (Cui et al. 2018) for :class:`~evojax_nets.engine.Evolution`: the strategy and the
    SGD-phase operator, to pass as ``strategy=`` and ``ops=``.

    One generation: ``ask`` returns the parents and recombined, mutated offspring; every member
    takes ``num_steps`` optax steps (Lamarckian) with back-off; the population is evaluated;
    ``tell`` keeps it for the next m-elitist selection. All in the engine's one jitted step.

    Args:
      model: the model (anything :func:`~evojax_nets.nets.as_network` takes) or the genome
        length ``D``.
      population_size: ``mu + lambda``.
      optimizer: the SGD phase's optax optimizer (a fresh state each generation).
      num_steps: optax steps per member per generation.
      num_parents: ``mu`` (default ``population_size // 4``).
      num_elites: ``m``, the best parents always kept.
      std: the offspring's mutation scale.

    Example:
      >>> from flax import nnx
      >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> strategy, op = esgd(model, 16, optax.adam(1e-3), num_steps=5)
      >>> # Evolution(model, task, strategy, 16, ops=op)
      >>> strategy.num_parents
      4
    """
    num_dims = model if isinstance(model, int) else as_network(model).num_params
    strategy = ESGD(
        population_size,
        jnp.zeros((num_dims,), jnp.float32),
        num_parents=num_parents,
        num_elites=num_elites,
        std=std,
    )
    op = gradient_steps(optimizer, num_steps, mode="lamarckian", backoff=True)
    return strategy, op
