"""Low-rank evolution strategies: OpenAI-ES whose matrix perturbations have rank ``r``.

EGGROLL (Sarkar et al. 2025, "Evolution Strategies at the Hyperscale",
https://arxiv.org/abs/2511.16652): member ``i`` perturbs each weight matrix
``W (m x n)`` by ``std / sqrt(r) * A_i B_i^T`` with ``A_i (m x r)``, ``B_i (n x r)`` standard
normal, and every other parameter by ordinary Gaussian noise of scale ``std``. A layer's output
is then ``x W + std/sqrt(r) (x A_i) B_i^T``: one large product with the shared ``W`` for the
whole population, plus ``O(B (m + n) r)`` per member (:mod:`evojax_nets.lowrank.forward`).
The update is the OpenAI-ES estimate (Salimans et al. 2017) with antithetic pairs and centred
ranks, ``sum_j w_j eps_j / (P std)``; for a matrix it is ``sum_j w_j A_j B_j^T / sqrt(r)``,
computed as one ``(m, P/2 r) x (P/2 r, n)`` product: a matrix of rank up to ``P r / 2``.

The noise is never held as a ``P x D`` array: pair ``j``'s factors are regenerated from
``fold_in(fold_in(generation_key, j), leaf_index)`` in the forward pass and again in the update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from evojax_nets.antithetic import AntitheticOpenES, LowMemoryParams, LowMemoryState
from evojax_nets.lowrank.forward import (
    Batched,
    LowRank,
    PopulationGenome,
    Shared,
    lowrank_call,
    lowrank_forward,
    lowrank_scale,
)
from evojax_nets.lowrank.layout import Layout
from evojax_nets.nets import Network
from evojax_nets.types import Genome

# The state and params of every OpenAI-ES with regenerated noise.
LowRankParams = LowMemoryParams
LowRankState = LowMemoryState


def _leaf_key(noise_key: jax.Array, pair: jax.Array, leaf: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(noise_key, pair), leaf)


@struct.dataclass
class LowRankPopulation:
    """A generation's members, never materialised: pair ``j``'s low-rank factors and Gaussian
    noise are regenerated from its key (see :class:`LowRankES`). Members ``j`` and
    ``j + P/2`` are ``mean + std * eps_j`` and ``mean - std * eps_j``.

    :meth:`population_forward` runs the user's model for every member at once with the
    low-rank forward pass; :meth:`member`, :meth:`map` and :meth:`materialize` serve tasks
    without a population forward (RL, custom fitness functions), a batch of members at a time.
    """

    mean: jax.Array
    std: jax.Array
    noise_key: jax.Array
    indices: jax.Array | None = None
    layout: Layout = struct.field(pytree_node=False, default=None)
    population_size: int = struct.field(pytree_node=False, default=2)
    rank: int = struct.field(pytree_node=False, default=1)
    batch_size: int = struct.field(pytree_node=False, default=32)
    mesh: Any = struct.field(pytree_node=False, default=None)

    @property
    def half(self) -> int:
        return self.population_size // 2

    def member_indices(self) -> jax.Array:
        """The members this population stands for (all, or a subset from :meth:`subset`)."""
        return jnp.arange(self.population_size) if self.indices is None else self.indices

    def subset(self, indices: jax.Array) -> LowRankPopulation:
        """The members ``indices`` only (for evaluation in chunks)."""
        return self.replace(indices=indices)

    def astype(self, dtype: Any) -> LowRankPopulation:
        """``self``: members are computed in the model's own dtype (as
        :meth:`~evojax_nets.nets.Network.unravel` casts a genome back to it)."""
        return self

    def pair_noise(self, pair: jax.Array) -> list[Any]:
        """Pair ``pair``'s noise per leaf: ``(A, B)`` for a low-rank leaf, else ``eps``."""
        out = []
        dtype = self.mean.dtype
        for index, spec in enumerate(self.layout.leaves):
            key = _leaf_key(self.noise_key, pair, index)
            if spec.lowrank(self.rank):
                m, n = spec.view
                ab = jax.random.normal(key, (m + n, self.rank), dtype)
                out.append((ab[:m], ab[m:]))
            else:
                out.append(jax.random.normal(key, spec.shape, dtype))
        return out

    def noise(self, pair: jax.Array) -> Genome:
        """Pair ``pair``'s full noise vector ``eps`` (``D`` entries; low-rank leaves
        ``A B^T / sqrt(r)``)."""
        parts = []
        scale = lowrank_scale(1.0, self.rank)
        for eps in self.pair_noise(pair):
            if isinstance(eps, tuple):
                eps = (eps[0] @ eps[1].T) * jnp.asarray(scale, eps[0].dtype)
            parts.append(eps.reshape(-1))
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

    def _sign(self, index: jax.Array) -> jax.Array:
        return jnp.where(index < self.half, 1.0, -1.0).astype(self.mean.dtype)

    def member(self, index: jax.Array) -> Genome:
        """Member ``index``'s genome ``(D,)``, regenerated from its pair's key."""
        return self.mean + self._sign(index) * self.std * self.noise(index % self.half)

    def map(self, fn: Callable[[Genome], Any], batch_size: int | None = None) -> Any:
        """``fn(theta)`` for every member, ``batch_size`` members at a time (outputs stacked;
        default: the strategy's ``batch_size``); the member indices are sharded over the
        population's mesh, if it has one."""
        size = batch_size or self.batch_size
        idx = self._shard(self.member_indices())
        return jax.lax.map(lambda i: fn(self.member(i)), idx, batch_size=size)

    def materialize(self) -> jax.Array:
        """The ``(P, D)`` array (for tests and small problems only)."""
        return jax.vmap(self.member)(self.member_indices())

    def _shard(self, x: jax.Array) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec("pop")))

    def leaf_values(self) -> list[Any]:
        """The forward pass's per-leaf values for this population's members: a
        :class:`~evojax_nets.lowrank.forward.LowRank` kernel, or the batched perturbed leaf."""
        idx = self.member_indices()
        sign = self._sign(idx)
        noise = jax.vmap(self.pair_noise)(idx % self.half)
        scale = lowrank_scale(self.std, self.rank).astype(self.mean.dtype)
        values = []
        for spec, w, eps in zip(
            self.layout.leaves, self.layout.split(self.mean), noise, strict=True
        ):
            if isinstance(eps, tuple):
                a = self._shard(eps[0] * sign[:, None, None])
                values.append(LowRank(w, a, self._shard(eps[1]), scale))
            else:
                signed = eps * (sign * self.std).reshape((-1,) + (1,) * len(spec.shape))
                values.append(Batched(self._shard(w[None] + signed)))
        return values

    def genome(self) -> PopulationGenome:
        """The members' genomes as one interpreter value (nothing materialised)."""
        parts = []
        for spec, v in zip(self.layout.leaves, self.leaf_values(), strict=True):
            if isinstance(v, LowRank):
                parts.append(LowRank(v.w.reshape(-1), v.a, v.b, v.scale))
            else:
                parts.append(Batched(v.value.reshape(v.value.shape[0], spec.size)))
        return PopulationGenome(parts, int(self.member_indices().shape[0]))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``vmap(lambda theta: fn(*args, theta))`` over the members, computed with the
        low-rank rules (:func:`~evojax_nets.lowrank.forward.lowrank_call`): ``fn`` is any
        traceable function of shared ``args`` and one genome, such as a task's
        ``fitness(key, theta)``."""
        size = int(self.member_indices().shape[0])
        values = [Shared(a) for a in args] + [self.genome()]
        return lowrank_call(lambda *a: fn(*a), values, size)

    def population_forward(self, network: Network, *inputs: Any) -> Any:
        """The outputs of every member (leading axis ``P``, or the subset's size) on inputs
        shared by all, computed with the low-rank forward pass (see
        :mod:`evojax_nets.lowrank.forward`)."""
        size = int(self.member_indices().shape[0])
        leaves = self.leaf_values()
        dtypes = [jnp.result_type(x) for x in jax.tree.leaves(network.unravel(network.theta0))]
        leaves = [
            LowRank(v.w.astype(d), v.a.astype(d), v.b.astype(d), v.scale)
            if isinstance(v, LowRank)
            else Batched(v.value.astype(d))
            for v, d in zip(leaves, dtypes, strict=True)
        ]
        return lowrank_forward(network, leaves, *inputs, population_size=size)


def unperturbed_leaves(layout: Layout, theta: jax.Array) -> list[Shared]:
    """The leaves of ``theta`` as shared interpreter values (for a forward of the mean)."""
    return [Shared(w) for w in layout.split(theta)]


class LowRankES(AntitheticOpenES):
    """Low-rank OpenAI-ES (see the module docstring) on evosax's protocol:
    ``init(key, mean, params)``, ``ask(key, state, params) -> (LowRankPopulation, state)``,
    ``tell(key, population, fitness, state, params) -> (state, metrics)``.

    Args:
      population_size: members per generation (even: antithetic pairs).
      solution: a flat ``(D,)`` array giving the genome's size.
      optimizer: the optax optimizer of the mean (minimises the fitness estimate).
      rank: the rank ``r`` of each matrix perturbation (``A_i B_i^T``), at least 1.
      layout: which leaves are matrices (:func:`~evojax_nets.lowrank.layout_of`);
        ``None`` treats the genome as one vector (plain OpenAI-ES noise).
        :class:`~evojax_nets.engine.Evolution` passes the network's.
      batch_size: members materialised at once by :meth:`LowRankPopulation.map` (tasks
        without a population forward), and noise vectors regenerated at once in the update.

    Example:
      >>> es = LowRankES(8, jnp.zeros(5), optimizer=optax.adam(0.01))
      >>> params = es.default_params.replace(std_init=0.1)
      >>> state = es.init(jax.random.key(0), jnp.zeros(5), params)
      >>> population, state = es.ask(jax.random.key(1), state, params)
      >>> population.materialize().shape
      (8, 5)
    """

    name = "lowrank_es"

    def __init__(
        self,
        population_size: int,
        solution: jax.Array,
        optimizer: optax.GradientTransformation | None = None,
        rank: int = 1,
        layout: Layout | None = None,
        batch_size: int = 32,
    ):
        super().__init__(population_size, solution, optimizer, batch_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int (the rank of A B^T), got {rank!r}")
        num_dims = int(jnp.shape(solution)[0])
        layout = Layout.flat(num_dims) if layout is None else layout
        if not isinstance(layout, Layout) or layout.num_dims != num_dims:
            raise ValueError(
                f"layout must be a lowrank.Layout of the genome's {num_dims} entries; got "
                f"{layout!r}"
            )
        self.rank = rank
        self.layout = layout

    def population(self, state: LowRankState) -> LowRankPopulation:
        """The population of ``state``'s noise key."""
        return LowRankPopulation(
            state.mean,
            state.std,
            state.noise_key,
            layout=self.layout,
            population_size=self.population_size,
            rank=self.rank,
            batch_size=self.batch_size,
        )

    def ask(
        self, key: jax.Array, state: LowRankState, params: LowRankParams
    ) -> tuple[LowRankPopulation, LowRankState]:
        """Fix this generation's noise key; nothing is materialised."""
        state = state.replace(noise_key=key, std=jnp.asarray(params.std_init, state.mean.dtype))
        return self.population(state), state

    def gradient(self, population: LowRankPopulation, weights: jax.Array) -> Genome:
        """``sum_j weights[j] eps_j`` over the ``P/2`` pairs, as a ``(D,)`` vector; a matrix
        leaf's part is one ``(m, P/2 r) x (P/2 r, n)`` product."""
        half = self.population_size // 2
        pairs = jnp.arange(half)
        specs = self.layout.leaves
        low = [i for i, s in enumerate(specs) if s.lowrank(self.rank)]
        dense = [i for i, s in enumerate(specs) if not s.lowrank(self.rank)]
        grads: dict[int, jax.Array] = {}
        scale = jnp.asarray(lowrank_scale(1.0, self.rank), weights.dtype)
        for i in low:
            m, n = specs[i].view
            shape = (m + n, self.rank)
            ab = jax.vmap(
                lambda j, i=i, shape=shape: jax.random.normal(
                    _leaf_key(population.noise_key, j, i), shape, weights.dtype
                )
            )(pairs)
            a = (ab[:, :m] * weights[:, None, None]).transpose(1, 0, 2).reshape(m, -1)
            b = ab[:, m:].transpose(1, 0, 2).reshape(n, -1)
            grads[i] = (a @ b.T) * scale
        if dense:
            step = min(self.batch_size, half)
            n_chunks = -(-half // step)
            pad = n_chunks * step - half
            chunks = jnp.pad(pairs, (0, pad)).reshape(n_chunks, step)
            w = jnp.pad(weights, (0, pad)).reshape(n_chunks, step)

            def draw(j: jax.Array, i: int) -> jax.Array:
                key = _leaf_key(population.noise_key, j, i)
                return jax.random.normal(key, specs[i].shape, weights.dtype).reshape(-1)

            def accumulate(acc: tuple, chunk: tuple) -> tuple:
                js, wc = chunk
                return tuple(
                    g + wc @ jax.vmap(lambda j, i=i: draw(j, i))(js)
                    for g, i in zip(acc, dense, strict=True)
                ), None

            init = tuple(jnp.zeros((specs[i].size,), weights.dtype) for i in dense)
            sums, _ = jax.lax.scan(accumulate, init, (chunks, w))
            grads.update(dict(zip(dense, sums, strict=True)))
        parts = [grads[i].reshape(-1) for i in range(len(specs))]
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]
