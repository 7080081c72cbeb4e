"""Which evolved leaves of a network get low-rank noise, and where they lie in the genome.

A :class:`Layout` is static (hashable): one :class:`LeafSpec` per evolved leaf, in genome
order (the order of ``jax.tree.leaves(network.unravel(theta))``, which is the order
``ravel_pytree`` concatenates them in). A leaf is

* ``"matrix"``: a 2-D array (``nnx.Linear``/linen ``Dense`` kernels, 2-D ``nnx.Einsum`` /
  ``DenseGeneral`` kernels, embeddings), viewed as ``(m, n) = shape``;
* ``"conv"``: the kernel operand of a convolution whose output-feature dimension is the
  kernel's last one (flax's ``HWIO`` layout), viewed as ``(prod(shape[:-1]), shape[-1])``;
  found by tracing the network on example inputs (:func:`layout_of`);
* ``"other"``: everything else (biases, norm scales, kernels of more than two dimensions that
  are not convolution kernels): ordinary Gaussian noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from evojax_nets.nets import Network


@dataclass(frozen=True)
class LeafSpec:
    """One evolved leaf: its shape, its slice ``[offset, offset + size)`` of the genome, and
    its kind (``"matrix"``, ``"conv"`` or ``"other"``, see the module docstring)."""

    shape: tuple[int, ...]
    offset: int
    kind: str = "other"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def view(self) -> tuple[int, int]:
        """``(m, n)``: the matrix a low-rank perturbation ``A B^T`` of this leaf has."""
        if len(self.shape) < 2:
            return (self.size, 1)
        return (math.prod(self.shape[:-1]), self.shape[-1])

    def lowrank(self, rank: int) -> bool:
        """Whether this leaf gets rank-``rank`` noise: a matrix or conv kernel both of whose
        sides exceed the rank (a rank-r matrix with r >= min(m, n) saves nothing)."""
        return self.kind in ("matrix", "conv") and min(self.view) > rank


@dataclass(frozen=True)
class Layout:
    """The evolved leaves of a network (see the module docstring).

    Example:
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> layout = layout_of(from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0))))
      >>> [(s.shape, s.offset, s.kind) for s in layout.leaves]
      [((2,), 0, 'other'), ((3, 2), 2, 'matrix')]
    """

    leaves: tuple[LeafSpec, ...]

    @property
    def num_dims(self) -> int:
        return sum(s.size for s in self.leaves)

    @classmethod
    def flat(cls, num_dims: int) -> Layout:
        """One Gaussian leaf of ``num_dims`` entries (no network known: plain OpenAI-ES)."""
        return cls((LeafSpec((int(num_dims),), 0, "other"),))

    def split(self, theta: jax.Array) -> list[jax.Array]:
        """The leaves of a flat genome, reshaped."""
        return [theta[s.offset : s.offset + s.size].reshape(s.shape) for s in self.leaves]


def leaf_structure(network: Network) -> tuple[list[Any], Any]:
    """The evolved leaves of ``network`` (at ``theta0``) and their tree structure."""
    return jax.tree.flatten(network.unravel(network.theta0))


def traced_forward(network: Network, leaf_avals: Sequence[Any], *inputs: Any) -> Any:
    """``jax.make_jaxpr`` of the network's forward as a function of its evolved leaves and
    its inputs: ``(closed_jaxpr, output_shape_tree)``."""
    _, treedef = leaf_structure(network)

    def forward(leaves: list[jax.Array], *xs: Any) -> Any:
        member = network._member(jax.tree.unflatten(treedef, leaves))
        return network.apply_member(member, *xs)

    structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), inputs)
    return jax.make_jaxpr(forward, return_shape=True)(list(leaf_avals), *structs)


_PASS_THROUGH = ("convert_element_type", "copy", "copy_p", "reshape")
_GENOME = -1  # the origin of the flat genome, before it is split into leaves


def _sub_jaxpr(eqn: Any) -> Any:
    """The inner jaxpr of a call-like equation (``jit``, ``closed_call``, custom derivative
    calls, ``checkpoint``), or ``None``."""
    for name in ("jaxpr", "call_jaxpr"):
        sub = eqn.params.get(name)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    return None


def _kernel_uses(
    jaxpr: Any,
    origin: dict[Any, int],
    convs: set[int],
    matmuls: set[int],
    sizes: tuple[int, ...] = (),
) -> None:
    """Record which leaves are the kernel of a convolution (``convs``) or an operand of a
    matrix product (``matmuls``), following pass-through ops and call-like equations."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [None if isinstance(v, Literal) else origin.get(v) for v in eqn.invars]
        if name == "conv_general_dilated" and ins[1] is not None:
            spec = eqn.params["dimension_numbers"].rhs_spec
            if spec[0] == len(eqn.invars[1].aval.shape) - 1 and (
                eqn.params["feature_group_count"] == 1 and eqn.params["batch_group_count"] == 1
            ):
                convs.add(ins[1])
        elif name == "dot_general":
            matmuls.update(i for i in ins if i is not None and i != _GENOME)
        elif name == "transpose" and ins[0] is not None:
            origin[eqn.outvars[0]] = ins[0]
        elif name == "split" and ins[0] == _GENOME and len(eqn.outvars) == len(sizes):
            if tuple(eqn.params["sizes"]) == sizes and eqn.params["axis"] == 0:
                origin.update({v: i for i, v in enumerate(eqn.outvars)})
        elif name in _PASS_THROUGH and ins[0] is not None:
            origin[eqn.outvars[0]] = ins[0]
        else:
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner = getattr(sub, "jaxpr", sub)
                offset = len(inner.invars) - len(ins)  # leading consts, if any
                inner_origin = {
                    v: i
                    for v, i in zip(inner.invars[max(offset, 0) :], ins, strict=False)
                    if i is not None
                }
                _kernel_uses(inner, inner_origin, convs, matmuls, sizes)


def _specs(leaves: list[Any], kinds: list[str], network: Network) -> Layout:
    specs, offset = [], 0
    for leaf, kind in zip(leaves, kinds, strict=True):
        spec = LeafSpec(tuple(int(d) for d in jnp.shape(leaf)), offset, kind)
        specs.append(spec)
        offset += spec.size
    if offset != network.num_params:
        raise ValueError(
            f"the network's evolved leaves hold {offset} entries but its genome has "
            f"{network.num_params}; the low-rank strategy needs leaves raveled in tree order"
        )
    return Layout(tuple(specs))


def _kinds(leaves: list[Any], convs: set[int] | None, matmuls: set[int] | None) -> list[str]:
    kinds = []
    for i, leaf in enumerate(leaves):
        kind = "matrix" if jnp.ndim(leaf) == 2 else "other"
        if convs is not None and jnp.ndim(leaf) >= 3 and i in convs:
            kind = "conv"
        elif matmuls is not None and kind == "matrix" and i not in matmuls:
            kind = "other"  # a 2-D bias or scale: added, not multiplied
        kinds.append(kind)
    return kinds


def layout_of(network: Network, example_inputs: Sequence[Any] | None = None) -> Layout:
    """The :class:`Layout` of ``network``'s evolved leaves.

    Args:
      network: the :class:`~evojax_nets.nets.Network`.
      example_inputs: inputs the network is called on (arrays or ``jax.ShapeDtypeStruct``;
        only shapes matter). With them, kernels that feed a convolution are found (kind
        ``"conv"``) and 2-D leaves that are never multiplied (2-D biases) are ``"other"``;
        without them, every 2-D leaf is a ``"matrix"`` and no leaf a ``"conv"``.
    """
    leaves, _ = leaf_structure(network)
    if example_inputs is None:
        return _specs(leaves, _kinds(leaves, None, None), network)
    closed, _ = traced_forward(network, leaves, *example_inputs)
    jaxpr = closed.jaxpr
    origin = {v: i for i, v in enumerate(jaxpr.invars[: len(leaves)])}
    convs: set[int] = set()
    matmuls: set[int] = set()
    _kernel_uses(jaxpr, origin, convs, matmuls)
    return _specs(leaves, _kinds(leaves, convs, matmuls), network)


def layout_for_task(network: Network, task: Any) -> Layout:
    """The :class:`Layout` of ``network``'s leaves as the bound ``task``'s fitness uses them:
    the fitness is traced (shapes only) and the genome followed from where ``unravel``
    splits it to the products and convolutions its leaves feed (see :func:`layout_of`).
    Falls back to the shape rule when the fitness cannot be traced that way."""
    leaves, _ = leaf_structure(network)
    sizes = tuple(int(math.prod(jnp.shape(x))) for x in leaves)
    key = jax.eval_shape(lambda: jax.random.key(0))
    theta = jax.ShapeDtypeStruct(network.theta0.shape, network.theta0.dtype)
    try:
        task_state = jax.eval_shape(task.initial_state, key) if task.stateful else ()
        batch = task.feed.spec() if task.fed else None
        closed = jax.make_jaxpr(lambda k, th, ts, b: task.fitness_with_aux(ts, b)(k, th))(
            key, theta, task_state, batch
        )
    except Exception:  # the task's own checks report a broken fitness later, with context
        return layout_of(network)
    jaxpr = closed.jaxpr
    genome = jaxpr.invars[1]
    origin = {genome: 0 if len(leaves) == 1 else _GENOME}
    convs: set[int] = set()
    matmuls: set[int] = set()
    _kernel_uses(jaxpr, origin, convs, matmuls, sizes)
    if len(leaves) > 1 and not (convs or matmuls):
        return layout_of(network)  # the genome was not split as expected: shape rule
    return _specs(leaves, _kinds(leaves, convs, matmuls), network)
