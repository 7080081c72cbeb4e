"""A fast full-rank population forward for the user's own model: features-major activations.

``vmap`` of a member's forward is correct for any model but slow on a CPU for a dense
network: every ``x @ W_i`` comes out as ``(B, P, out)`` (the shared input's batch axis first)
and XLA:CPU transposes it inside the next elementwise fusion. :class:`evojax_nets.models.MLP`
avoids that by hand (``MLP.population_apply``). This module does the same for any model,
without changing it: the model's jaxpr is evaluated by the interpreter of
:mod:`~evojax_nets.lowrank.forward` with one more kind of value, :class:`Permuted` (one value
per member, its axes stored in another order), and two more rules:

* ``dot_general`` of a per-member operand (a kernel, ``Batched``) with a shared or permuted
  one (the activations) is one product with the kernel's free axes first:
  ``(P, out, B)``. The shared-input first layer is then one large matrix product for the
  whole population, and later layers are per-member products with the long batch axis last.
* elementwise primitives (bias adds, activations, casts, ``where``) run on the stored layout,
  transposing (inside XLA's fusion) only the operands stored another way.

Every other primitive sees the value transposed back (:meth:`Permuted.materialize`) and is
bound under ``vmap`` as before, so the result is the same function of the parameters; sums
run in another order, so outputs agree with ``vmap`` to float rounding, not bit for bit.

The population is split into up to 8 groups of at least 32 members (:func:`population_groups`),
which XLA:CPU runs concurrently on its threads instead of splitting every small product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from evojax_nets.lowrank.forward import (
    _RULES,
    Batched,
    Permuted,
    Rule,
    Shared,
    Value,
    _aval,
    _batched,
    _plain,
    evaluate_jaxpr,
)
from evojax_nets.lowrank.layout import leaf_structure, traced_forward
from evojax_nets.nets import Network, population_groups

# Primitives that act entry by entry on operands of one shape (scalars aside).
ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "cos",
        "cosh",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "sub",
        "tan",
        "tanh",
        "xor",
    ]
)


def _member_shape(x: Value) -> tuple[int, ...]:
    return tuple(_aval(x).shape)


def _stored(x: Value, perm: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
    """``x`` (a value whose member shape broadcasts to ``shape[1:]`` in the logical layout,
    or a scalar) in the layout ``perm``, broadcast to the stored shape ``shape``."""
    if isinstance(x, Permuted) and x.perm == perm and jnp.shape(x.value) == shape:
        return x.value
    if isinstance(x, Permuted):
        x = x.materialize()
    value = x.value
    if isinstance(x, Batched):
        value = jnp.transpose(value, perm)
    elif jnp.ndim(value):
        value = jnp.transpose(value, tuple(p - 1 for p in perm[1:]))
    return jnp.broadcast_to(value, shape)


def _broadcasts_to(member: tuple[int, ...], out: tuple[int, ...]) -> bool:
    return member == () or (
        len(member) == len(out) and all(m in (1, o) for m, o in zip(member, out, strict=True))
    )


def _elementwise(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    """An elementwise primitive with a permuted operand of the result's shape runs in that
    operand's layout (the others, size-1 broadcasts included, are transposed to it)."""
    if eqn.primitive.multiple_results:
        return None
    out = tuple(eqn.outvars[0].aval.shape)
    first = next((x for x in ins if isinstance(x, Permuted) and x.shape[1:] == out), None)
    if first is None or not all(_broadcasts_to(_member_shape(x), out) for x in ins):
        return None
    stored = jnp.shape(first.value)
    vals = [_stored(x, first.perm, stored) for x in ins]
    return [Permuted(eqn.primitive.bind(*vals, **eqn.params), first.perm)]


def _dot_features_major(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
    """``x . W_i`` for a per-member ``W`` (``Batched``) and shared or permuted ``x``, as one
    product whose result has ``W``'s free axes first, then ``x``'s."""
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb:
        return None
    if isinstance(rhs, Batched) and isinstance(lhs, (Shared, Permuted)):
        x, xc, w, wc = lhs, lc, rhs, rc
    elif isinstance(lhs, Batched) and isinstance(rhs, (Shared, Permuted)):
        x, xc, w, wc = rhs, rc, lhs, lc
    else:
        return None
    w_contract = tuple(c + 1 for c in wc)
    w_free = [d for d in range(1, jnp.ndim(w.value)) if d not in w_contract]
    if isinstance(x, Permuted):
        # stored axis s of x holds logical (batched) axis x.perm[s]
        x_contract = tuple(x.perm.index(c + 1) for c in xc)
        x_free = [s for s in range(1, len(x.perm)) if s not in x_contract]
        x_logical = [x.perm[s] - 1 for s in x_free]
        batch = ((0,), (0,))
    else:
        x_contract = tuple(xc)
        x_free = [s for s in range(jnp.ndim(x.value)) if s not in x_contract]
        x_logical = x_free
        batch = ((), ())
    # W with its contracting axes last (as MLP.population_apply lays it out): XLA:CPU's
    # products run faster on a contiguous contraction than on a strided one.
    w_value = jnp.transpose(w.value, (0, *w_free, *w_contract))
    n_free = len(w_free)
    out = lax.dot_general(
        w_value,
        x.value,
        ((tuple(range(n_free + 1, n_free + 1 + len(w_contract))), x_contract), batch),
        precision=eqn.params.get("precision"),
        preferred_element_type=eqn.params.get("preferred_element_type"),
    ).astype(eqn.outvars[0].aval.dtype)
    # The logical member result is (x's free axes in order, then W's); stored: (P, W, x).
    x_order = sorted(x_logical)
    if w is rhs:
        w_pos = [len(x_order) + 1 + k for k in range(len(w_free))]
        x_pos = [1 + x_order.index(a) for a in x_logical]
    else:  # W . x: the logical result is (W's free axes, then x's)
        w_pos = [1 + k for k in range(len(w_free))]
        x_pos = [len(w_free) + 1 + x_order.index(a) for a in x_logical]
    perm = (0, *w_pos, *x_pos)
    return [Batched(out) if perm == tuple(range(len(perm))) else Permuted(out, perm)]


def _chain(*rules: Rule | None) -> Rule:
    present = [r for r in rules if r is not None]

    def rule(eqn: Any, ins: Sequence[Value]) -> list[Value] | None:
        for r in present:
            outs = r(eqn, ins)
            if outs is not None:
                return outs
        return None

    return rule


RULES: dict[str, Rule] = {
    **_RULES,
    "dot_general": _chain(_RULES.get("dot_general"), _dot_features_major),
    **{name: _chain(_RULES.get(name), _elementwise) for name in ELEMENTWISE},
}


def population_forward(network: Network, thetas: jax.Array, *inputs: Any) -> Any:
    """Outputs of every member (rows of ``thetas``, ``(P, D)``) on inputs they all share,
    with a leading axis ``P``: the network's forward evaluated with features-major
    activations (see the module docstring), one group of members at a time."""
    leaves0, _ = leaf_structure(network)
    avals = [jax.ShapeDtypeStruct(jnp.shape(a), a.dtype) for a in leaves0]
    closed, out_shape = traced_forward(network, avals, *inputs)
    flat_inputs = [Shared(x) for x in jax.tree.leaves(inputs)]

    def group(rows: jax.Array) -> list[jax.Array]:
        leaves = jax.tree.leaves(jax.vmap(network.unravel)(rows))
        args = [Batched(a) for a in leaves] + flat_inputs
        outs = evaluate_jaxpr(closed.jaxpr, closed.consts, args, RULES)
        return [_batched(_plain(o), rows.shape[0]) for o in outs]

    parts = [group(thetas[lo:hi]) for lo, hi in population_groups(thetas.shape[0])]
    values = [jnp.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(out_shape), values)
