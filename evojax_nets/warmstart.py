"""Evolved starting points for ordinary gradient training.

Evolution searches over a network's *initial* weights (or, for networks too large to evolve
whole, over one scale per parameter tensor of its initialisation). A member's fitness is the
validation loss after ``K`` inner optax steps from it, averaged over freshly sampled task
instances: the meta-learning objective of MAML (Finn, Abbeel and Levine 2017, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", https://arxiv.org/abs/1703.03400),
optimised with evolution strategies as in ES-MAML (Song et al. 2020, "ES-MAML: Simple
Hessian-Free Meta Learning", ICLR, https://arxiv.org/abs/1910.01215). Nothing differentiates
through the inner loop, so the inner optimizer can be any optax optimizer, run for any ``K``.
Evolving only initialiser scales follows the spirit of MetaInit (Dauphin and Schoenholz 2019,
"MetaInit: Initializing learning by learning to initialize", NeurIPS).

The result is handed back in the user's own structure (NNX module, linen variables dict or
TrainState) through :meth:`~evojax_nets.nets.Network.export`, ready for their training loop::

    task = StartingPointTask(sample_sinusoid, optax.adam(1e-2), num_steps=20)
    result = evolve_starting_point(model, task, "open_es", 64, 300)
    init_model = result.solution          # an nnx.Module, like ``model``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evojax_nets.engine import Callback, Evolution, EvolutionState, History
from evojax_nets.losses import get_loss
from evojax_nets.nets import Network, as_network
from evojax_nets.tasks.base import BoundTask

Instance = tuple[jax.Array, jax.Array, jax.Array, jax.Array]
"""One task instance: ``(x_train, y_train, x_val, y_val)``."""

__all__ = [
    "StartingPoint",
    "StartingPointTask",
    "adapt",
    "evolve_starting_point",
    "init_scale_network",
    "sample_sinusoid",
]


def adapt(
    network: Network,
    theta: jax.Array,
    x: jax.Array,
    y: jax.Array,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    loss: str | Callable = "mse",
) -> jax.Array:
    """``num_steps`` full-batch optax steps on ``(x, y)`` from ``theta`` (a ``lax.scan``).

    Traceable and vmappable: the inner loop of :class:`StartingPointTask`, and what the
    benchmark uses to fine-tune from standard and evolved initialisations alike.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> net = from_nnx(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
      >>> x = jnp.linspace(-1, 1, 8)[:, None]
      >>> th = adapt(net, net.theta0, x, 3 * x[:, 0], optax.adam(0.1), 50)
      >>> th.shape
      (2,)
    """
    loss_fn = get_loss(loss)

    def objective(th: jax.Array) -> jax.Array:
        return loss_fn(network.apply(th, x), y)

    def step(carry, _):
        th, state = carry
        grads = jax.grad(objective)(th)
        updates, state = optimizer.update(grads, state, th)
        return (optax.apply_updates(th, updates), state), None

    (theta, _), _ = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=num_steps)
    return theta


def sample_sinusoid(
    key: jax.Array,
    num_train: int = 10,
    num_val: int = 50,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, float(np.pi)),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> Instance:
    """One sinusoid regression instance ``y = A sin(x - phi)`` (the MAML benchmark family):
    ``num_train`` points to adapt on and ``num_val`` to score, shapes ``(n, 1)`` and ``(n,)``.

    Example:
      >>> x, y, xv, yv = sample_sinusoid(jax.random.key(0))
      >>> x.shape, y.shape, xv.shape
      ((10, 1), (10,), (50, 1))
    """
    k_a, k_p, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_a, (), minval=amplitude[0], maxval=amplitude[1])
    phi = jax.random.uniform(k_p, (), minval=phase[0], maxval=phase[1])
    xs = jax.random.uniform(k_x, (num_train + num_val, 1), minval=x_range[0], maxval=x_range[1])
    ys = amp * jnp.sin(xs[:, 0] - phi)
    return xs[:num_train], ys[:num_train], xs[num_train:], ys[num_train:]


@dataclass(frozen=True, eq=False)
class StartingPointTask:
    """Fitness of a starting point: validation loss after ``num_steps`` optax steps.

    Args:
      sample_instance: ``sample_instance(key) -> (x_train, y_train, x_val, y_val)``, one task
        instance (fixed shapes), for example :func:`sample_sinusoid`.
      optimizer: the inner optimizer (the one the user will train with).
      num_steps: ``K``, inner steps.
      num_instances: instances averaged per evaluation; all members see the same ones in a
        generation (common random numbers), fresh ones every generation.
      loss: ``"mse"``, ``"cross_entropy"`` or ``loss(prediction, y) -> scalar``.
      test_keys: keys of the held-out instances for the test metrics (default: 64 keys split
        from ``jax.random.key(10_000)``; the evolution draws its instances from the run's own
        key stream, and instances from a continuous family do not repeat).

    The test metrics are ``loss_after_k`` (median over held-out instances of the validation
    loss after ``K`` steps, the headline) and ``loss_at_init``.

    Example:
      >>> task = StartingPointTask(sample_sinusoid, optax.adam(1e-2), num_steps=20)
    """

    sample_instance: Callable[[jax.Array], Instance]
    optimizer: optax.GradientTransformation
    num_steps: int = 20
    num_instances: int = 8
    loss: str | Callable = "mse"
    test_keys: jax.Array | None = None
    maximize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {self.num_steps!r}")
        if not isinstance(self.num_instances, int) or self.num_instances < 1:
            raise ValueError(f"num_instances must be a positive int, got {self.num_instances!r}")
        get_loss(self.loss)

    def held_out_keys(self) -> jax.Array:
        """The keys of the held-out test instances."""
        if self.test_keys is not None:
            return self.test_keys
        return jax.random.split(jax.random.key(10_000), 64)

    def score(self, network: Network, theta: jax.Array, key: jax.Array) -> jax.Array:
        """Validation loss after ``K`` steps from ``theta`` on the instance drawn from ``key``."""
        x, y, xv, yv = self.sample_instance(key)
        adapted = adapt(network, theta, x, y, self.optimizer, self.num_steps, self.loss)
        return get_loss(self.loss)(network.apply(adapted, xv), yv)

    def bind(self, network: Network) -> BoundTask:
        test_keys = self.held_out_keys()
        loss_fn = get_loss(self.loss)

        def fitness(key: jax.Array, theta: jax.Array) -> jax.Array:
            keys = jax.random.split(key, self.num_instances)
            return jnp.mean(jax.vmap(lambda k: self.score(network, theta, k))(keys))

        def test_metrics(theta: jax.Array) -> dict[str, jax.Array]:
            after = jax.vmap(lambda k: self.score(network, theta, k))(test_keys)

            def at_init(k: jax.Array) -> jax.Array:
                _, _, xv, yv = self.sample_instance(k)
                return loss_fn(network.apply(theta, xv), yv)

            return {
                "loss_after_k": jnp.median(after),
                "loss_at_init": jnp.median(jax.vmap(at_init)(test_keys)),
            }

        return BoundTask(
            fitness=fitness,
            maximize=False,
            test_metrics=test_metrics,
            metric="loss_after_k",
            metric_maximize=False,
        )


def init_scale_network(network: Network) -> tuple[Network, Callable[[jax.Array], jax.Array]]:
    """A :class:`Network` whose genome is one log-scale per parameter tensor of ``network``.

    Member ``s`` is ``network`` with every tensor ``l`` of its own initialisation multiplied
    by ``exp(s[l])``; the genome has as many entries as the network has tensors, whatever their
    size. Returns the scale network (its ``export(s)`` is the user's structure with the scaled
    weights) and ``expand(s) -> theta`` (the full weight vector).

    Example:
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> scales, expand = init_scale_network(from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0))))
      >>> scales.num_params, expand(scales.theta0).shape
      (2, (8,))
    """
    leaves = jax.tree.leaves(network.unravel(network.theta0))
    sizes = np.asarray([np.size(leaf) for leaf in leaves])
    segment = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))
    base = network.theta0

    def expand(log_scales: jax.Array) -> jax.Array:
        return base * jnp.exp(log_scales)[segment]

    scales = Network(
        kind=network.kind,
        theta0=jnp.zeros((len(sizes),), base.dtype),
        paths=network.paths,
        _unravel=lambda s: network.unravel(expand(s)),
        _member=network._member,
        _apply=network._apply,
    )
    return scales, expand


@dataclass(frozen=True, eq=False)
class _ScaledTask:
    """A :class:`StartingPointTask` seen through ``expand`` (log-scales -> weights)."""

    task: StartingPointTask
    base: Network
    expand: Callable[[jax.Array], jax.Array]
    maximize: bool = False

    def bind(self, network: Network) -> BoundTask:
        inner = self.task.bind(self.base)
        return BoundTask(
            fitness=lambda key, s: inner.fitness(key, self.expand(s)),
            maximize=False,
            test_metrics=lambda s: inner.test_metrics(self.expand(s)),
            metric=inner.metric,
            metric_maximize=False,
        )


@dataclass(frozen=True)
class StartingPoint:
    """What :func:`evolve_starting_point` returns.

    Attributes:
      evolution, state, history: the run.
      theta: the evolved starting point as a full weight vector ``(D,)`` of the user's network.
      solution: the same in the user's structure (NNX module, variables dict or TrainState).
    """

    evolution: Evolution
    state: EvolutionState
    history: History
    theta: jax.Array
    solution: Any


def evolve_starting_point(
    model: Any,
    task: StartingPointTask,
    strategy: Any = "open_es",
    population_size: int = 64,
    num_generations: int = 200,
    *,
    scales: bool = False,
    variables: Any = None,
    seed: int = 0,
    chunk_size: int | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    **kwargs: Any,
) -> StartingPoint:
    """Evolve a starting point for gradient training and hand it back as Flax parameters.

    Args:
      model: the user's model (NNX module, TrainState, or a linen module with ``variables``);
        its own initialisation is where the search starts.
      task: a :class:`StartingPointTask`.
      strategy, population_size, num_generations: as for :class:`~evojax_nets.engine.Evolution`
        (a distribution-based strategy's mean is the answer).
      scales: evolve one log-scale per parameter tensor instead of every weight (for networks
        too large to evolve whole); see :func:`init_scale_network`.
      seed: the run's seed.
      kwargs: passed to :class:`~evojax_nets.engine.Evolution` (``std``, ``learning_rate``...).

    Example:
      >>> from flax import nnx
      >>> from evojax_nets.models import MLP
      >>> task = StartingPointTask(sample_sinusoid, optax.adam(1e-2), num_steps=5)
      >>> model = MLP(1, (8,), 1, rngs=nnx.Rngs(0))
      >>> res = evolve_starting_point(model, task, "open_es", 8, 2)
      >>> isinstance(res.solution, MLP)
      True
    """
    if not isinstance(task, StartingPointTask):
        raise TypeError(f"task must be a StartingPointTask, got {type(task).__name__}")
    network = as_network(model, variables)
    if scales:
        scale_net, expand = init_scale_network(network)
        evo = Evolution(
            scale_net, _ScaledTask(task, network, expand), strategy, population_size, **kwargs
        )
    else:
        expand = None
        evo = Evolution(network, task, strategy, population_size, **kwargs)
    state = evo.init(jax.random.key(seed))
    state, history = evo.run(state, num_generations, chunk_size=chunk_size, callbacks=callbacks)
    genome = evo.solution_theta(state)
    theta = genome if expand is None else expand(genome)
    return StartingPoint(evo, state, history, theta, network.export(theta))
