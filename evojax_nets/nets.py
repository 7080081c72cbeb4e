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

import itertools
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import errors as flax_errors
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
    training_layers: tuple[str, ...] = field(default=(), repr=False)

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
        """Whether the model has its own population forward (a module with a
        ``population_apply`` method, such as :class:`evojax_nets.models.MLP`)."""
        return self._population_apply is not None

    def population_apply(self, thetas: jax.Array, *inputs: Any) -> Any:
        """Outputs of every row of ``thetas`` (``(P, D)``) on inputs shared by all members,
        with a leading axis ``P``: the model's own population forward when it has one, else
        its forward evaluated for the whole population with features-major activations
        (:mod:`evojax_nets.lowrank.fullrank`; equal to ``vmap`` of :meth:`apply` up to float
        rounding, and as fast as ``MLP.population_apply`` on a CPU for a user's own MLP)."""
        if self._population_apply is not None:
            return self._population_apply(thetas, *inputs)
        from evojax_nets.lowrank.fullrank import population_forward  # lowrank imports nets

        try:
            return population_forward(self, thetas, *inputs)
        except Exception as err:  # a model the rewrite cannot trace: vmap, which always can
            warnings.warn(
                "the population forward could not rewrite this model's forward pass "
                f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); using vmap "
                "of the member forward (Supervised(..., population_forward=False) skips it)",
                stacklevel=2,
            )
            return jax.vmap(self.apply, in_axes=(0,) + (None,) * len(inputs))(thetas, *inputs)

    def apply_member(self, member: Member, *inputs: Any) -> Any:
        """Run an already rebuilt member (see :meth:`member`) on ``inputs``."""
        return self._apply(member, *inputs)

    def explain_error(self, err: BaseException) -> str | None:
        """What a failure of the model's forward pass most likely means, and how to fix it,
        or ``None`` when it looks like a genuine shape or model error.

        Recognised: an NNX model left in training mode (BatchNorm updating its statistics,
        Dropout drawing from its RNG stream: members cannot mutate the shared model), and a
        linen forward pass that needs an argument such as ``train`` or a ``dropout`` RNG, or
        that tries to update ``batch_stats``.

        Example:
          >>> rngs = nnx.Rngs(0)
          >>> model = nnx.Sequential(nnx.Linear(3, 2, rngs=rngs), nnx.BatchNorm(2, rngs=rngs))
          >>> net = from_nnx(model)  # BatchNorm still in training mode
          >>> try:
          ...     jax.eval_shape(net.apply, net.theta0, jnp.ones((4, 3)))
          ... except Exception as err:
          ...     print(net.explain_error(err).split(":")[0])
          the model is in training mode
          >>> model.eval()
          >>> from_nnx(model).apply(net.theta0, jnp.ones((4, 3))).shape
          (4, 2)
        """
        return _explain(self.kind, self.training_layers, err)

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


def population_groups(size: int, groups: int | None = None) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of the groups a population of ``size`` is split into: ``groups``,
    or by default up to 8 groups of at least 32 members (one group below 64 members)."""
    if groups is None:
        groups = max(1, min(8, size // 32))
    bounds = [round(i * size / groups) for i in range(groups + 1)]
    return list(itertools.pairwise(bounds))


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


def _nnx_training_layers(model: nnx.Module) -> tuple[str, ...]:
    """The submodules that would change state when called: BatchNorm-style layers that use
    batch statistics, Dropout-style layers that draw random masks."""
    found = []
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        where = _path_str(path) or "(the model itself)"
        if getattr(node, "use_running_average", None) is False:
            found.append(f"{type(node).__name__} {where!r} (use_running_average=False)")
        elif getattr(node, "deterministic", None) is False and getattr(node, "rate", 1.0) != 0:
            found.append(f"{type(node).__name__} {where!r} (deterministic=False)")
    return tuple(found)


_MISSING_ARGS = re.compile(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)")
_INFERENCE_VALUE = {"deterministic": True, "use_running_average": True}


def _suggested_kwargs(names: list[str]) -> str:
    items = ", ".join(f"{n!r}: {_INFERENCE_VALUE.get(n, False)}" for n in names)
    return "{" + items + "}"


def _explain(kind: str, training_layers: tuple[str, ...], err: BaseException) -> str | None:
    text = str(err)
    if kind == "nnx":
        # Mutating a Variable of the shared model inside a trace, or Dropout without RNGs.
        stateful = isinstance(err, flax_errors.TraceContextError) or any(
            word in text for word in ("trace level", "deterministic", "rngs")
        )
        if not (training_layers and stateful):
            return None
        return (
            "the model is in training mode: "
            + "; ".join(training_layers)
            + ". Members are evaluated in parallel and cannot update the shared model's batch "
            "statistics or RNG state; call model.eval() before passing the model (or build "
            "those layers with use_running_average=True / deterministic=True)"
        )
    how = (
        "from_linen(module, variables, apply_kwargs=...)"
        if kind == "linen"
        else "from_train_state(state, apply_kwargs=...)"
    )
    missing = _MISSING_ARGS.search(text)
    if isinstance(err, TypeError) and missing:
        names = re.findall(r"'(\w+)'", missing.group(1))
        if names:
            return (
                f"the module's forward pass needs the argument(s) {', '.join(names)}, which "
                f"the task does not pass (it calls the network on the inputs only). Give them "
                f"once when building the network: {how.replace('...', _suggested_kwargs(names))}"
                ", then pass that Network as the model"
            )
    if "needs PRNG" in text or "InvalidRngError" in type(err).__name__:
        return (
            "the module runs a random layer (Dropout) in training mode and asks for an RNG; "
            "evaluate members in inference mode: pass its flag with "
            f"{how.replace('...', _suggested_kwargs(['train']))} (or deterministic=True, "
            "whatever the module's __call__ names it)"
        )
    if "is immutable" in text and "collection" in text:
        return (
            "the module tries to update a variable collection (BatchNorm in training mode "
            "updates 'batch_stats'); evaluate members in inference mode: pass its flag with "
            f"{how.replace('...', _suggested_kwargs(['train']))} (or build BatchNorm with "
            "use_running_average=True)"
        )
    return None


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
    theta0, raw_unravel = ravel_pytree(evolved)
    dtype = theta0.dtype

    def unravel(theta: jax.Array) -> PyTree:
        # The genome keeps the model's dtype: a population that arrives in another one (float64
        # from a strategy under jax_enable_x64, float32 for a bfloat16 model) is cast back
        # here, so members compute in the dtype the user built the model in.
        return raw_unravel(jnp.asarray(theta).astype(dtype))

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
        training_layers=_nnx_training_layers(model),
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
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Network:
    """Evolve the ``params`` collection of a linen module.

    Args:
      module: the ``flax.linen.Module``.
      variables: what ``module.init`` returned: ``{"params": ..., "batch_stats": ...}``.
        Collections other than ``params`` stay fixed and out of the genome.
      filter: which params evolve (see :data:`PathFilter`); all by default. Paths are relative
        to ``params``, for example ``"Dense_1/kernel"``.
      method: passed to ``module.apply`` (for example ``"encode"``).
      apply_kwargs: keyword arguments for every forward pass, for example
        ``{"train": False}`` for a module whose ``__call__(x, train)`` needs the flag.

    Members are full variables dicts: ``module.apply(member, x, **apply_kwargs)``.

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

    kwargs = _check_apply_kwargs(apply_kwargs)
    if method is not None:
        kwargs["method"] = method

    def apply(member: Mapping[str, Any], *xs: Any) -> Any:
        return module.apply(member, *xs, **kwargs)

    return Network(
        kind="linen",
        theta0=theta0,
        paths=names,
        _unravel=unravel,
        _member=lambda ev: {**others, "params": rebuild(ev)},
        _apply=apply,
    )


def _check_apply_kwargs(apply_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if apply_kwargs is None:
        return {}
    if not isinstance(apply_kwargs, Mapping) or not all(isinstance(k, str) for k in apply_kwargs):
        raise TypeError(
            "apply_kwargs must be a dict of keyword arguments for the forward pass, for "
            f"example {{'train': False}}; got {apply_kwargs!r}"
        )
    return dict(apply_kwargs)


def from_train_state(
    state: Any,
    filter: PathFilter = None,
    extra_variables: Mapping[str, Any] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
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
      apply_kwargs: keyword arguments for every forward pass, for example
        ``{"train": False}``: ``state.apply_fn(variables, x, **apply_kwargs)``.

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
    kwargs = _check_apply_kwargs(apply_kwargs)
    unravel, theta0, names, rebuild = _split_params(state.params, filter, "TrainState params")

    return Network(
        kind="train_state",
        theta0=theta0,
        paths=names,
        _unravel=unravel,
        _member=lambda ev: state.replace(params=rebuild(ev)),
        _apply=lambda s, *xs: s.apply_fn({"params": s.params, **extra}, *xs, **kwargs),
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
