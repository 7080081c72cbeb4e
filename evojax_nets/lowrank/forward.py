"""A population forward pass of the user's own model, with low-rank perturbed kernels.

The model is not changed: its forward (``network.apply_member``) is traced with
``jax.make_jaxpr`` as a function of the evolved leaves and the inputs, and the jaxpr is
evaluated by a small interpreter whose values are one of

* :class:`Shared` — the same for every member (the inputs, the unperturbed weights);
* :class:`Batched` — one per member, leading axis ``P``;
* :class:`LowRank` — a kernel ``W + scale * A_i B_i^T`` per member: ``W`` shared,
  ``A (P, m, r)``, ``B (P, n, r)`` (EGGROLL, Sarkar et al. 2025, "Evolution Strategies at
  the Hyperscale", https://arxiv.org/abs/2511.16652).

``dot_general`` with a :class:`LowRank` kernel computes ``x W`` as one large product for the
whole population (``P`` kept as a free dimension, or computed once when ``x`` is shared) plus
``scale * (x A_i) B_i^T`` per member; ``conv_general_dilated`` likewise computes
``conv(x, W) + scale * conv(x, A_i) B_i^T`` with ``A_i`` an ``r``-channel kernel. Any other
primitive that touches a :class:`LowRank` materialises it (correct, not fast). Every other
primitive binds once when its inputs are all shared, else under ``jax.vmap`` with in_axes 0 for
batched and ``None`` for shared inputs: XLA then sees shared-weight products as one product.
Call-like primitives (``jit``, ``closed_call``, custom derivative calls, ``checkpoint``) are
entered, so layers inside them are rewritten too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal

from evojax_nets.lowrank.layout import traced_forward
from evojax_nets.nets import Network


class Shared:
    """A value every member shares."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class Batched:
    """One value per member, stacked on a leading axis ``P``."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class LowRank:
    """Member ``i``'s kernel is ``w + scale * (a[i] @ b[i].T).reshape(w.shape)``.

    ``w`` has the leaf's shape, viewed as ``(m, n) = (prod(shape[:-1]), shape[-1])``;
    ``a``: ``(P, m, r)``, ``b``: ``(P, n, r)``; ``scale`` a scalar (``std / sqrt(r)``).
    """

    __slots__ = ("a", "b", "scale", "w")

    def __init__(self, w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array):
        self.w, self.a, self.b, self.scale = w, a, b, scale

    def delta(self) -> jax.Array:
        """The ``(P, *w.shape)`` perturbations (materialised)."""
        d = jnp.einsum("pmr,pnr->pmn", self.a, self.b) * self.scale
        return d.reshape((d.shape[0], *self.w.shape)).astype(self.w.dtype)

    def materialize(self) -> Batched:
        return Batched(self.w[None] + self.delta())

    def is_matrix(self) -> bool:
        """Whether ``w`` has the ``(m, n)`` shape of ``A B^T``."""
        return self.w.shape == (self.a.shape[1], self.b.shape[1])


class Permuted:
    """One value per member, stored with its axes permuted: ``value`` is
    ``transpose(logical, perm)``, where ``logical`` is ``(P, *member_shape)`` and
    ``perm[0] == 0`` (see :mod:`~evojax_nets.lowrank.fullrank`)."""

    __slots__ = ("perm", "value")

    def __init__(self, value: jax.Array, perm: Sequence[int]):
        self.value, self.perm = value, tuple(perm)

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical shape ``(P, *member_shape)``."""
        stored = jnp.shape(self.value)
        return tuple(stored[self.perm.index(i)] for i in range(len(stored)))

    def materialize(self) -> Batched:
        return Batched(jnp.transpose(self.value, tuple(int(i) for i in np.argsort(self.perm))))


class PopulationGenome:
    """A whole population's flat genomes ``(P, D)``, held as its leaves' values (flat):
    ``split`` at the leaf boundaries (what ``Network.unravel`` does first) hands the
    leaves out without materialising anything."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: Sequence[Value], size: int):
        self.parts, self.size = list(parts), size

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(math.prod(jnp.shape(_ref(p)))) for p in self.parts)

    def aval(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((sum(self.sizes),), _ref(self.parts[0]).dtype)

    def materialize(self) -> Batched:
        flat = [_batched(_plain(p), self.size).reshape(self.size, -1) for p in self.parts]
        return Batched(jnp.concatenate(flat, axis=1) if len(flat) > 1 else flat[0])


Value = Shared | Batched | LowRank | PopulationGenome | Permuted


def _ref(x: Value) -> jax.Array:
    """An array with the shape of one member's value."""
    if isinstance(x, LowRank):
        return x.w
    return x.value[0] if isinstance(x, Batched) else x.value


def _aval(x: Value) -> jax.ShapeDtypeStruct:
    if isinstance(x, Permuted):
        return jax.ShapeDtypeStruct(x.shape[1:], x.value.dtype)
    ref = _ref(x)
    return jax.ShapeDtypeStruct(jnp.shape(ref), ref.dtype)


def _plain(x: Value) -> Shared | Batched:
    return x.materialize() if isinstance(x, (LowRank, PopulationGenome, Permuted)) else x


def _bind(eqn: Any, ins: Sequence[Value]) -> list[Value]:
    """Bind ``eqn``'s primitive on shared / batched values (``vmap`` over ``P`` if any is
    batched)."""
    ins = [_plain(x) for x in ins]
    prim = eqn.primitive
    # Call-like primitives (custom_jvp_call, ...) are bound with other params than their
    # equations hold, as jax.core.eval_jaxpr binds them; older JAX (0.7.1, our floor) also
    # hands back inner functions to pass first, as ``(subfuns, params)``.
    bind = prim.get_bind_params(eqn.params)
    subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
    vals = [x.value for x in ins]
    if all(isinstance(x, Shared) for x in ins):
        out = prim.bind(*subfuns, *vals, **params)
        return [Shared(o) for o in out] if prim.multiple_results else [Shared(out)]
    axes = [0 if isinstance(x, Batched) else None for x in ins]
    out = jax.vmap(lambda *a: prim.bind(*subfuns, *a, **params), in_axes=axes)(*vals)
    return [Batched(o) for o in out] if prim.multiple_results else [Batched(out)]


def _batched(x: Shared | Batched, size: int) -> jax.Array:
    if isinstance(x, Batched):
        return x.value
    return jnp.broadcast_to(x.value, (size, *jnp.shape(x.value)))


def _add_perturbation(base: Shared | Batched, term: jax.Array, dtype: Any) -> Batched:
    """``base`` (shared or batched) plus the per-member ``term``, in ``dtype``."""
    value = base.value[None] if isinstance(base, Shared) else base.value
    return Batched((value + term).astype(dtype))


def _dot_lowrank_rhs(
    eqn: Any, x: Shared | Batched, kernel: LowRank, x_contract: tuple, k: int
) -> jax.Array:
    """``scale * (x F1_i) F2_i^T`` per member, with ``x``'s contracting dims ``x_contract``
    against the 2-D kernel's dim ``k``: ``(P, x_free..., kernel_free)``."""
    f1, f2 = (kernel.a, kernel.b) if k == 0 else (kernel.b, kernel.a)
    pref = eqn.params.get("preferred_element_type")
    dims = ((tuple(x_contract), (0,)), ((), ()))
    x_axis = 0 if isinstance(x, Batched) else None
    t = jax.vmap(
        lambda xi, fi: lax.dot_general(xi, fi, dims, preferred_element_type=pref),
        in_axes=(x_axis, 0),
    )(x.value, f1)  # (P, x_free..., r)
    u = lax.dot_general(t, f2.astype(t.dtype), (((t.ndim - 1,), (2,)), ((0,), (0,))))
    return u * kernel.scale.astype(u.dtype)


def _dot_general(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_dtype = eqn.outvars[0].aval.dtype
    if isinstance(rhs, LowRank) and not isinstance(lhs, LowRank):
        if not rhs.is_matrix() or rb or len(rc) != 1:
            return None
        (base,) = _bind(eqn, [lhs, Shared(rhs.w)])
        term = _dot_lowrank_rhs(eqn, lhs, rhs, tuple(lc), rc[0])
        return [_add_perturbation(base, term, out_dtype)]
    if isinstance(lhs, LowRank) and not isinstance(rhs, LowRank):
        if not lhs.is_matrix() or lb or len(lc) != 1:
            return None
        (base,) = _bind(eqn, [Shared(lhs.w), rhs])
        # (kernel_free, x_free...) is the transpose of (x_free..., kernel_free).
        term = _dot_lowrank_rhs(eqn, rhs, lhs, tuple(rc), lc[0])
        return [_add_perturbation(base, jnp.moveaxis(term, -1, 1), out_dtype)]
    return None


def _conv(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    x, kernel = ins
    p = eqn.params
    if not isinstance(kernel, LowRank) or isinstance(x, LowRank):
        return None
    dn = p["dimension_numbers"]
    nd = kernel.w.ndim
    if nd < 3 or dn.rhs_spec[0] != nd - 1 or kernel.w.shape[-1] != kernel.b.shape[1]:
        return None
    if p["feature_group_count"] != 1:
        return None
    if p["batch_group_count"] != 1:
        return None
    (base,) = _bind(eqn, [x, Shared(kernel.w)])
    size, _, r = kernel.a.shape
    a_kernel = kernel.a.reshape((size, *kernel.w.shape[:-1], r)).astype(kernel.w.dtype)
    x_axis = 0 if isinstance(x, Batched) else None
    t = jax.vmap(lambda xi, ai: eqn.primitive.bind(xi, ai, **p), in_axes=(x_axis, 0))(
        x.value, a_kernel
    )  # (P, out...) with r output features
    feature = dn.out_spec[1] + 1
    u = lax.dot_general(t, kernel.b.astype(t.dtype), (((feature,), (2,)), ((0,), (0,))))
    u = jnp.moveaxis(u, -1, feature) * kernel.scale.astype(u.dtype)
    return [_add_perturbation(base, u, eqn.outvars[0].aval.dtype)]


def _transpose(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    (x,) = ins
    if isinstance(x, LowRank) and x.is_matrix() and tuple(eqn.params["permutation"]) == (1, 0):
        return [LowRank(x.w.T, x.b, x.a, x.scale)]
    return None


def _convert_value(x: Value, dtype: Any) -> Value:
    if isinstance(x, PopulationGenome):
        return PopulationGenome([_convert_value(p, dtype) for p in x.parts], x.size)
    if isinstance(x, LowRank):
        return LowRank(x.w.astype(dtype), x.a.astype(dtype), x.b.astype(dtype), x.scale)
    return type(x)(x.value.astype(dtype))


def _convert(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    (x,) = ins
    if not isinstance(x, (LowRank, PopulationGenome)):
        return None
    return [_convert_value(x, eqn.params["new_dtype"])]


def _reshape(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    """A low-rank leaf reshaped from (or to) its flat genome slice keeps its factors."""
    (x,) = ins
    shape = tuple(eqn.params["new_sizes"])
    if not isinstance(x, LowRank) or eqn.params.get("dimensions") is not None:
        return None
    if len(shape) == 1 or shape[-1] == x.b.shape[1]:
        return [LowRank(x.w.reshape(shape), x.a, x.b, x.scale)]
    return None


def _split(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    (x,) = ins
    if isinstance(x, PopulationGenome) and eqn.params["axis"] == 0:
        return list(x.parts) if tuple(eqn.params["sizes"]) == x.sizes else None
    return None


_RULES = {
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "transpose": _transpose,
    "convert_element_type": _convert,
    "reshape": _reshape,
    "split": _split,
}


def _inner(eqn: Any) -> tuple[Any, list[Any]] | None:
    """``(jaxpr, consts)`` of a call-like equation whose inner jaxpr takes the equation's
    inputs as they are, or ``None``."""
    name = eqn.primitive.name
    if name in ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call"):
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    elif name in ("checkpoint", "remat", "remat2"):
        sub = eqn.params.get("jaxpr")
    else:
        return None
    if sub is None:
        return None
    if hasattr(sub, "consts"):
        return sub.jaxpr, list(sub.consts)
    return sub, []


Rule = Callable[[Any, Sequence[Any]], "list[Any] | None"]


def evaluate_jaxpr(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Value],
    rules: Mapping[str, Rule] | None = None,
) -> list[Value]:
    """Evaluate ``jaxpr`` on interpreter values (see the module docstring).

    ``rules`` maps a primitive's name to a rule ``rule(eqn, ins) -> outs | None``, tried on
    every equation with an input that is not shared (``None``: the rule does not apply, the
    primitive is bound as usual); the low-rank rules by default."""
    rules = _RULES if rules is None else rules
    env: dict[Any, Value] = {}

    def read(v: Any) -> Value:
        return Shared(v.val) if isinstance(v, Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = Shared(c)
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = None
        if not all(isinstance(x, Shared) for x in ins):
            rule = rules.get(eqn.primitive.name)
            outs = rule(eqn, ins) if rule is not None else None
            inner = _inner(eqn) if outs is None else None
            if inner is not None and len(inner[0].invars) == len(ins):
                outs = evaluate_jaxpr(inner[0], inner[1], ins, rules)
        if outs is None:
            outs = _bind(eqn, ins)
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def lowrank_forward(
    network: Network, leaves: Sequence[Value], *inputs: Any, population_size: int
) -> Any:
    """The network's outputs for every member, with a leading axis ``P``.

    Args:
      network: the :class:`~evojax_nets.nets.Network`.
      leaves: the evolved leaves in genome order, as interpreter values (:class:`Shared`,
        :class:`Batched` or :class:`LowRank`).
      inputs: the inputs, shared by every member.
      population_size: ``P``.
    """
    avals = [_aval(x) for x in leaves]
    closed, out_shape = traced_forward(network, avals, *inputs)
    args = list(leaves) + [Shared(x) for x in jax.tree.leaves(inputs)]
    outs = evaluate_jaxpr(closed.jaxpr, closed.consts, args)
    values = [_batched(_plain(o), population_size) for o in outs]
    return jax.tree.unflatten(jax.tree.structure(out_shape), values)


def lowrank_scale(std: jax.Array, rank: int) -> jax.Array:
    """``std / sqrt(rank)``: the scale of ``A B^T`` that gives every entry variance
    ``std**2`` (EGGROLL's normalisation)."""
    return jnp.asarray(std) / math.sqrt(rank)


def lowrank_call(fn: Any, args: Sequence[Value], population_size: int) -> Any:
    """``vmap(fn)`` over the population, where ``args`` are interpreter values (for example
    a :class:`PopulationGenome`): ``fn`` is traced once and its jaxpr evaluated with low-rank rules.
    Outputs get a leading axis ``P``."""
    avals = [x.aval() if isinstance(x, PopulationGenome) else _aval(x) for x in args]
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*avals)
    outs = evaluate_jaxpr(closed.jaxpr, closed.consts, list(args))
    values = [_batched(_plain(o), population_size) for o in outs]
    return jax.tree.unflatten(jax.tree.structure(out_shape), values)
