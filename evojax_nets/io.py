"""A solution on disk: the evolved parameters as an ``.npz`` file, one array per parameter path.

The keys are the network's readable parameter paths (``hidden/0/kernel``, ``head/bias``, or
``Dense_0/kernel`` for linen), the same as :attr:`~evojax_nets.nets.Network.paths`; nothing of
the genome's layout or of Flax's internals is stored, so the file opens with plain numpy::

    arrays = np.load("runs/digits/params.npz")
    arrays["head/kernel"].shape          # (64, 10)

:func:`load_solution` puts such a file back into the user's own model (an NNX module, a linen
module's variables, a ``TrainState``), checking every path and shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

PARAMS_FILE = "params.npz"


def _network(model: Any, variables: Any = None, filter: Any = None) -> Any:
    from evojax_nets.nets import as_network

    return as_network(model, variables, **({} if filter is None else {"filter": filter}))


def solution_arrays(network: Any, theta: Any) -> dict[str, np.ndarray]:
    """The genome ``theta`` of ``network`` as ``{parameter path: array}``, in genome order.

    Example:
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> net = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> {k: v.shape for k, v in solution_arrays(net, net.theta0).items()}
      {'bias': (2,), 'kernel': (3, 2)}
    """
    import jax

    leaves = jax.tree.leaves(network.unravel(theta))
    if len(leaves) != len(network.paths):
        raise ValueError(
            f"the network has {len(network.paths)} parameter paths but its genome unravels to "
            f"{len(leaves)} arrays"
        )
    return {p: np.asarray(leaf) for p, leaf in zip(network.paths, leaves, strict=True)}


def save_solution(
    path: str | os.PathLike,
    model: Any,
    theta: Any,
    *,
    variables: Any = None,
    filter: Any = None,
) -> Path:
    """Write ``theta`` (a genome of ``model``) to ``path`` (an ``.npz`` file, or a folder that
    then gets ``params.npz``); returns the file written.

    ``model`` is what :class:`~evojax_nets.engine.Evolution` was given (an NNX module, a linen
    module with ``variables``, a ``TrainState``) or a :class:`~evojax_nets.nets.Network`
    (``evolution.network``).
    """
    network = _network(model, variables, filter)
    path = Path(path)
    if path.is_dir():
        path = path / PARAMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = solution_arrays(network, theta)
    with path.open("wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, **arrays)
    return path


def load_solution(
    path: str | os.PathLike,
    model: Any,
    *,
    variables: Any = None,
    filter: Any = None,
) -> Any:
    """Put a saved solution back into ``model``: returns ``model``'s structure (an NNX module,
    a linen variables dict, a ``TrainState``) with the saved parameters written in. ``model``
    itself is not modified.

    Args:
      path: a run folder of ``evojax-nets run`` (which holds ``params.npz``) or an ``.npz``
        file written by :func:`save_solution`.
      model: a model of the same architecture as the one evolved, for example a freshly
        initialised one; parameters outside the saved ones (BatchNorm statistics, frozen
        layers) are taken from it.
      variables: a linen module's variables.
      filter: the ``filter`` the run evolved with, when it evolved a subset.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from evojax_nets.nets import from_nnx
      >>> trained = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = save_solution(d, trained, from_nnx(trained).theta0)
      ...     loaded = load_solution(d, nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
      >>> bool(jnp.all(loaded.kernel[...] == trained.kernel[...]))
      True
    """
    import jax.numpy as jnp

    network = _network(model, variables, filter)
    path = Path(path)
    if path.is_dir():
        path = path / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no saved solution at {path}")
    with np.load(path) as saved:
        stored = {k: saved[k] for k in saved.files}
    expected = solution_arrays(network, network.theta0)
    missing = [p for p in expected if p not in stored]
    if missing:
        extra = [k for k in stored if k not in expected]
        raise ValueError(
            f"{path} does not fit this model: it lacks {missing}"
            + (f" and has {extra} instead" if extra else "")
            + f"; the model's parameter paths are {list(expected)}"
        )
    parts = []
    for name, ref in expected.items():
        got = stored[name]
        if got.shape != ref.shape:
            raise ValueError(
                f"{path}: parameter {name!r} has shape {got.shape}, the model expects {ref.shape}"
            )
        parts.append(got.astype(ref.dtype).ravel())
    theta = jnp.asarray(np.concatenate(parts) if parts else np.zeros(0), network.theta0.dtype)
    return network.export(theta)
