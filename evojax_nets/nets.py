"""Adapters from the user's Flax code to a flat genome, and back.

A :class:`Network` splits a Flax model into the *evolved* part (all parameters, or a subset
picked by a filter) and the rest (BatchNorm statistics, RNG state, frozen layers). The evolved
part is raveled to a vector ``theta`` of length ``D``; the engine only ever sees ``(P, D)``
arrays. Per member, :meth:`Network.member` rebuilds the model in the user's own structure:

* ``from_nnx(model)`` -> an ``nnx.Module`` (call it: ``member(x)``);
* ``from_linen(module, variables)`` -> a variables dict (``module.apply(member, x)``);
* ``from_train_state(state)`` -> a ``TrainState`` with its ``params`` replaced.

:meth:`Network.export` returns the same structure on the host, ready for the user's own optax
training loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.core import FrozenDict, unfreeze
from jax.flatten_util import ravel_pytree

from evojax_nets.types import Genome, Member, PyTree

PathFilter = str | Callable[[tuple[str, ...], Any], bool] | None
"""Which parameters evolve: ``None`` (all), a regex searched in the ``/``-joined path (for
example ``"head"``), or ``predicate(path, leaf) -> bool``."""


@dataclass(frozen=True, eq=False)
class Network:
    """The static description of what evolves in a user's Flax model.

    Build one with :func:`from_nnx`, :func:`from_linen` or :func:`from_train_state`; do not
    construct it directly. It is immutable and hashable by identity, so it can be closed over
    by jitted functions.

    Attributes:
      kind: ``"nnx"``, ``"linen"`` or ``"train_state"``.
      theta0: the user's own initial parameters, raveled, shape ``(D,)``.
      paths: the ``/``-joined path of every evolved leaf, in genome order.

    Example:
      >>> net = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> net.kind, net.num_params, net.paths
      ('nnx', 8, ('bias', 'kernel'))
      >>> net.apply(net.theta0, jnp.ones((5, 3))).shape
      (5, 2)
      >>> net.population_apply(jnp.zeros((4, 8)), jnp.ones((5, 3))).shape
      (4, 5, 2)
      >>> type(net.export(net.theta0)).__name__
      'Linear'
    """

    kind: str
    theta0: Genome
    paths: tuple[str, ...]
    _unravel: Callable[[jax.Array], PyTree] = field(repr=False)
    _member: Callable[[PyTree], Member] = field(repr=False)
    _apply: Callable[..., Any] = field(repr=False)
    _population_apply: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def num_params(self) -> int:
        """``D``, the length of the genome."""
        return int(self.theta0.shape[0])

    def unravel(self, theta: Genome) -> PyTree:
        """The evolved parameters as a pytree (NNX ``State`` or a path-keyed dict)."""
        return self._unravel(theta)

    def member(self, theta: Genome) -> Member:
        """The model rebuilt around ``theta``, in the user's own structure. Traceable."""
        return self._member(self._unravel(theta))

    def apply(self, theta: Genome, *inputs: Any) -> Any:
        """Run the model with parameters ``theta`` on ``inputs``. Traceable and vmappable."""
        return self._apply(self.member(theta), *inputs)

    @property
    def has_population_apply(self) -> bool:
        """Whether the model computes a whole population at once faster than ``vmap``
        (a module with a ``population_apply`` method, such as
        :class:`evojax_nets.models.MLP`)."""
        return self._population_apply is not None

    def population_apply(self, thetas: jax.Array, *inputs: Any) -> Any:
        """Outputs of every row of ``thetas`` (``(P, D)``) on inputs shared by all members,
        with a leading axis ``P``: the model's own population forward when it has one,
        else ``vmap`` of :meth:`apply`."""
        if self._population_apply is not None:
            return self._population_apply(thetas, *inputs)
        return jax.vmap(self.apply, in_axes=(0,) + (None,) * len(inputs))(thetas, *inputs)

    def apply_member(self, member: Member, *inputs: Any) -> Any:
        """Run an already rebuilt member (see :meth:`member`) on ``inputs``."""
        return self._apply(member, *inputs)

    def export(self, theta: Genome) -> Member:
        """The user's structure with ``theta`` written in: an NNX module, a variables dict
        or a TrainState, as concrete arrays on the host side of ``jit``."""
        theta = jnp.asarray(theta)
        if theta.shape != self.theta0.shape:
            raise ValueError(
                f"theta has shape {theta.shape}, but this network's genome has shape "
                f"{self.theta0.shape}"
            )
        return self.member(theta.astype(self.theta0.dtype))


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def _path_predicate(filter: PathFilter) -> Callable[[tuple[str, ...], Any], bool]:
    if filter is None:
        return lambda path, leaf: True
    if isinstance(filter, str):
        pattern = re.compile(filter)
        return lambda path, leaf: pattern.search(_path_str(path)) is not None
    if callable(filter):
        return filter
    raise TypeError(
        f"filter must be None, a regex string or a callable(path, leaf) -> bool; got {filter!r}"
    )


def _ravel(evolved: PyTree, what: str) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    leaves = jax.tree.leaves(evolved)
    if not leaves:
        raise ValueError(
            f"the filter selected no parameters of the {what}; check the filter against the "
            "parameter paths (for example 'Dense_1' or 'head')"
        )
    for leaf in leaves:
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            raise TypeError(
                f"only floating-point parameters can evolve; the filter selected a leaf of "
                f"dtype {jnp.asarray(leaf).dtype} in the {what}"
            )
    theta0, unravel = ravel_pytree(evolved)
    return theta0, unravel


def from_nnx(model: nnx.Module, filter: Any = nnx.Param) -> Network:
    """Evolve the parameters of an NNX module.

    Args:
      model: the user's module. It is not modified; members are rebuilt with ``nnx.merge``.
        Put it in the mode you want members evaluated in first (``model.eval()``).
      filter: an NNX filter picking what evolves, ``nnx.Param`` by default; for example
        ``nnx.All(nnx.Param, nnx.PathContains("head"))``. A string is read as a regex on the
        ``/``-joined path, among ``nnx.Param`` variables. Everything else (BatchNorm
        statistics, RNG state) stays fixed and out of the genome.

    Example:
      >>> from flax import nnx
      >>> net = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> net.num_params
      8
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")
    if isinstance(filter, str):
        pattern = re.compile(filter)
        filter = nnx.All(nnx.Param, lambda path, x: pattern.search(_path_str(path)) is not None)
    graphdef, evolved, rest = nnx.split(model, filter, ...)
    theta0, unravel = _ravel(evolved, "NNX module")
    paths = tuple(_path_str(p) for p, _ in nnx.to_flat_state(evolved))
    population_apply = None
    if callable(getattr(model, "population_apply", None)) and not jax.tree.leaves(rest):
        # The module's own population forward needs every variable, so only when all evolve.
        population_apply = lambda thetas, *xs: model.population_apply(
            jax.vmap(unravel)(thetas), *xs
        )
    return Network(
        kind="nnx",
        theta0=theta0,
        paths=paths,
        _unravel=unravel,
        _member=lambda ev: nnx.merge(graphdef, ev, rest),
        _apply=lambda m, *xs: m(*xs),
        _population_apply=population_apply,
    )


def _split_params(
    params: Mapping[str, Any], filter: PathFilter, what: str
) -> tuple[Callable[[jax.Array], PyTree], jax.Array, tuple[str, ...], Callable]:
    """Split a nested params dict into a flat genome and a function that rebuilds it."""
    params = unfreeze(params) if isinstance(params, FrozenDict) else params
    flat = traverse_util.flatten_dict(params)
    pred = _path_predicate(filter)
    keys = sorted(flat, key=lambda k: "/".join(map(str, k)))
    evolved_keys = [k for k in keys if pred(tuple(map(str, k)), flat[k])]
    frozen = {k: flat[k] for k in keys if k not in set(evolved_keys)}
    evolved = {"/".join(map(str, k)): flat[k] for k in evolved_keys}
    theta0, unravel = _ravel(evolved, what)
    names = tuple(evolved)
    key_of = dict(zip(names, evolved_keys, strict=True))

    def rebuild(ev: Mapping[str, Any]) -> dict:
        merged = dict(frozen)
        for name, leaf in ev.items():
            merged[key_of[name]] = leaf
        return traverse_util.unflatten_dict(merged)

    return unravel, theta0, names, rebuild


def from_linen(
    module: Any,
    variables: Mapping[str, Any],
    filter: PathFilter = None,
    method: str | Callable | None = None,
) -> Network:
    """Evolve the ``params`` collection of a linen module.

    Args:
      module: the ``flax.linen.Module``.
      variables: what ``module.init`` returned: ``{"params": ..., "batch_stats": ...}``.
        Collections other than ``params`` stay fixed and out of the genome.
      filter: which params evolve (see :data:`PathFilter`); all by default. Paths are relative
        to ``params``, for example ``"Dense_1/kernel"``.
      method: passed to ``module.apply`` (for example ``"encode"``).

    Members are full variables dicts: ``module.apply(member, x)``.

    Example:
      >>> import flax.linen as nn
      >>> module = nn.Dense(2)
      >>> variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> net = from_linen(module, variables)
      >>> net.num_params, net.paths
      (8, ('bias', 'kernel'))
      >>> net.apply(net.theta0, jnp.ones((5, 3))).shape
      (5, 2)
      >>> from_linen(module, variables, filter="kernel").num_params  # only the kernel evolves
      6
    """
    if "params" not in variables:
        raise ValueError(
            f"variables must hold a 'params' collection (what module.init returns); "
            f"got collections {sorted(variables)}"
        )
    variables = unfreeze(variables) if isinstance(variables, FrozenDict) else dict(variables)
    others = {k: v for k, v in variables.items() if k != "params"}
    unravel, theta0, names, rebuild = _split_params(variables["params"], filter, "linen params")

    def apply(member: Mapping[str, Any], *xs: Any) -> Any:
        if method is None:
            return module.apply(member, *xs)
        return module.apply(member, *xs, method=method)

    return Network(
        kind="linen",
        theta0=theta0,
        paths=names,
        _unravel=unravel,
        _member=lambda ev: {**others, "params": rebuild(ev)},
        _apply=apply,
    )


def from_train_state(
    state: Any, filter: PathFilter = None, extra_variables: Mapping[str, Any] | None = None
) -> Network:
    """Evolve the params of a ``flax.training.train_state.TrainState``.

    Members (and :meth:`Network.export`) are the same TrainState with ``params`` replaced, so
    the optimizer state and step carry over and the user's training loop continues from it.
    The forward pass is ``state.apply_fn({"params": params, **extra_variables}, x)``.

    Args:
      state: the TrainState (or a subclass; extra fields such as ``batch_stats`` are kept).
      filter: which params evolve (see :data:`PathFilter`).
      extra_variables: other collections the ``apply_fn`` needs, for example
        ``{"batch_stats": state.batch_stats}``.

    Example:
      >>> import flax.linen as nn
      >>> import optax
      >>> from flax.training.train_state import TrainState
      >>> module = nn.Dense(2)
      >>> params = module.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
      >>> state = TrainState.create(apply_fn=module.apply, params=params, tx=optax.sgd(0.1))
      >>> net = from_train_state(state)
      >>> net.kind, net.num_params
      ('train_state', 8)
      >>> type(net.export(net.theta0)).__name__
      'TrainState'
    """
    if not (hasattr(state, "params") and hasattr(state, "apply_fn") and hasattr(state, "replace")):
        raise TypeError(
            f"state must be a flax TrainState (with params, apply_fn and replace); got "
            f"{type(state).__name__}"
        )
    extra = dict(extra_variables or {})
    unravel, theta0, names, rebuild = _split_params(state.params, filter, "TrainState params")

    return Network(
        kind="train_state",
        theta0=theta0,
        paths=names,
        _unravel=unravel,
        _member=lambda ev: state.replace(params=rebuild(ev)),
        _apply=lambda s, *xs: s.apply_fn({"params": s.params, **extra}, *xs),
    )


def as_network(model: Any, variables: Mapping[str, Any] | None = None, **kwargs: Any) -> Network:
    """Dispatch to the right adapter: a :class:`Network` passes through; an NNX module, a
    TrainState, or a linen module with its ``variables`` are wrapped.

    Example:
      >>> import flax.linen as nn
      >>> net = as_network(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> net.kind, as_network(net) is net
      ('nnx', True)
      >>> module = nn.Dense(2)
      >>> as_network(module, module.init(jax.random.key(0), jnp.ones((1, 3)))).kind
      'linen'
    """
    if isinstance(model, Network):
        return model
    if isinstance(model, nnx.Module):
        return from_nnx(model, **kwargs)
    if variables is not None:
        return from_linen(model, variables, **kwargs)
    if hasattr(model, "apply_fn") and hasattr(model, "params"):
        return from_train_state(model, **kwargs)
    raise TypeError(
        "model must be an nnx.Module, a flax TrainState, a linen module together with its "
        f"variables, or a Network; got {type(model).__name__}"
    )
