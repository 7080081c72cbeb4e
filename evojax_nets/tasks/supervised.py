"""Supervised classification and regression on in-memory arrays.

Each generation one minibatch is drawn inside the jitted step (with replacement, from the
shared evaluation key, so every member sees the same examples) and the fitness is the
minibatch loss, minimised. Test metrics use the whole test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from evojax_nets.losses import accuracy, cross_entropy, mse, sample_batches
from evojax_nets.nets import Network
from evojax_nets.tasks.base import BoundTask
from evojax_nets.tasks.datasets import Dataset


def _check_finite(name: str, array: Any) -> None:
    """Refuse NaN and infinite entries: one of them makes every member's loss NaN, and the run
    would end with a meaningless solution and no error."""
    if array is None:
        return
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.inexact):
        return  # integers and booleans are always finite
    bad = ~np.isfinite(values)
    num_bad = int(bad.sum())
    if num_bad:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        first = first[0] if len(first) == 1 else first
        kinds = []
        if np.isnan(values).any():
            kinds.append(f"{int(np.isnan(values).sum()):,} NaN")
        if np.isinf(values).any():
            kinds.append(f"{int(np.isinf(values).sum()):,} inf")
        raise ValueError(
            f"{name} holds {num_bad:,} non-finite entries ({', '.join(kinds)}) of "
            f"{values.size:,}, the first at index {first}; remove or impute them (for example "
            f"np.nan_to_num, or drop those examples) before building the task"
        )


@dataclass(frozen=True, eq=False)
class Supervised:
    """A supervised task.

    Args:
      x_train, y_train: training inputs and targets (class indices for classification).
      x_test, y_test: held-out data for the test metrics; default to the training data.
      kind: ``"classification"`` (cross-entropy loss, accuracy) or ``"regression"`` (mean
        squared error).
      batch_size: examples per generation; ``None`` uses the whole training set.
      num_classes: for classification; inferred from the network's output width if omitted.
      compute_dtype: dtype of the forward passes that give fitness and gradients, for example
        ``jnp.bfloat16`` (weights and inputs are cast before the forward pass; outputs and the
        loss are float32). ``None`` (default): the network's own dtype. Test metrics are
        always computed in float32.
      population_forward: whether the fitness of a whole population is computed with the
        network's population forward pass (:meth:`Network.population_apply
        <evojax_nets.nets.Network.population_apply>`: the shared-input first layer as one
        matrix product for many members, later activations laid out for the population;
        ``MLP.population_apply`` for the library's MLP, the same rewrite of the forward for
        any other model) rather than ``vmap`` of the member forward pass. ``None`` (default)
        chooses by backend: the population forward on CPU, where it measured 1.3-1.6x faster,
        and ``vmap`` on accelerators, where the population forward measured 0.52x on an H200
        (``benchmarks/levers.py``).

    Data holding NaN or infinite values is refused here, with the array named.

    Example:
      >>> from evojax_nets.tasks import Supervised, load_digits
      >>> task = Supervised.from_dataset(load_digits(), batch_size=256)
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array | None = None
    y_test: jax.Array | None = None
    kind: Literal["classification", "regression"] = "classification"
    batch_size: int | None = 256
    num_classes: int | None = None
    compute_dtype: Any = None
    population_forward: bool | None = None
    maximize: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            _check_finite(name, getattr(self, name))

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, batch_size: int | None = 256, **kwargs: Any
    ) -> Supervised:
        """A classification task over a :class:`~evojax_nets.tasks.datasets.Dataset`;
        ``kwargs`` are the other fields (``compute_dtype``, ``population_forward``)."""
        return cls(
            dataset.x_train,
            dataset.y_train,
            dataset.x_test,
            dataset.y_test,
            kind="classification",
            batch_size=batch_size,
            num_classes=dataset.num_classes,
            **kwargs,
        )

    def _validate(self, network: Network) -> tuple[int, ...]:
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {self.kind!r}")
        if self.compute_dtype is not None and not jnp.issubdtype(self.compute_dtype, jnp.floating):
            raise ValueError(
                "compute_dtype must be a floating dtype such as jnp.bfloat16, jnp.float16 or "
                f"jnp.float32 (or None for the network's own), got {self.compute_dtype!r}"
            )
        if self.population_forward not in (None, True, False):
            raise ValueError(
                "population_forward must be True, False or None (choose by backend), got "
                f"{self.population_forward!r}"
            )
        xs = [("x_train", self.x_train, "y_train", self.y_train)]
        if self.x_test is not None or self.y_test is not None:
            if self.x_test is None or self.y_test is None:
                raise ValueError("give both x_test and y_test, or neither")
            xs.append(("x_test", self.x_test, "y_test", self.y_test))
        for xn, x, yn, y in xs:
            if np.shape(x)[0] != np.shape(y)[0]:
                raise ValueError(
                    f"{xn} has {np.shape(x)[0]} examples but {yn} has {np.shape(y)[0]}"
                )
            if np.shape(x)[0] == 0:
                raise ValueError(f"{xn} is empty")
        if self.batch_size is not None and not (
            isinstance(self.batch_size, int) and self.batch_size > 0
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        example = jax.ShapeDtypeStruct((2, *np.shape(self.x_train)[1:]), jnp.float32)
        try:
            out = jax.eval_shape(network.apply, network.theta0, example)
        except Exception as err:  # the user's model rejected the shape, or its mode
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            why = network.explain_error(err)
            if why is not None:
                raise ValueError(
                    f"the network ({network.kind}, {network.num_params:,} parameters) cannot "
                    f"be evaluated on x_train: {why}. (The model said: {first})"
                ) from None
            raise ValueError(
                f"x_train examples of shape {tuple(np.shape(self.x_train)[1:])} do not fit the "
                f"network ({network.kind}, {network.num_params:,} parameters): {first}"
            ) from None
        if self.x_test is not None and np.shape(self.x_test)[1:] != np.shape(self.x_train)[1:]:
            raise ValueError(
                f"x_test examples have shape {np.shape(self.x_test)[1:]}, x_train examples "
                f"{np.shape(self.x_train)[1:]}"
            )
        if self.kind == "classification":
            if out.ndim != 2:
                raise ValueError(
                    f"for classification the network must output (batch, num_classes) logits; "
                    f"it outputs shape {out.shape} for a batch of 2"
                )
            width = out.shape[-1]
            num_classes = width if self.num_classes is None else self.num_classes
            if num_classes > width:
                raise ValueError(
                    f"num_classes={num_classes} but the network outputs only {width} logits"
                )
            for name, y in (("y_train", self.y_train), ("y_test", self.y_test)):
                if y is None:
                    continue
                y = np.asarray(y)
                if not np.issubdtype(y.dtype, np.integer):
                    raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
                if y.ndim != 1:
                    raise ValueError(f"{name} must be a vector of labels, got shape {y.shape}")
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= num_classes:
                    raise ValueError(
                        f"{name} holds labels in [{lo}, {hi}], but valid labels are 0 to "
                        f"{num_classes - 1} (the network has {width} outputs)"
                    )
        else:
            target = np.shape(self.y_train)[1:]
            if out.shape[1:] != target and not (out.shape[1:] == (1,) and target == ()):
                raise ValueError(
                    f"y_train targets have shape {target} per example, but the network outputs "
                    f"{out.shape[1:]}"
                )
        return out.shape

    def _use_population_forward(self, network: Network) -> bool:
        if self.population_forward is None:
            return jax.default_backend() == "cpu"
        return self.population_forward

    def bind(self, network: Network) -> BoundTask:
        self._validate(network)
        x_tr = jnp.asarray(self.x_train, jnp.float32)
        y_tr = jnp.asarray(self.y_train)
        x_te = x_tr if self.x_test is None else jnp.asarray(self.x_test, jnp.float32)
        y_te = y_tr if self.y_test is None else jnp.asarray(self.y_test)
        batch = self.batch_size
        classify = self.kind == "classification"
        if not classify:
            y_tr, y_te = y_tr.astype(jnp.float32), y_te.astype(jnp.float32)

        loss_of = cross_entropy if classify else mse

        def cast(*arrays: jax.Array) -> tuple[jax.Array, ...]:
            if self.compute_dtype is None:
                return arrays
            return tuple(a.astype(self.compute_dtype) for a in arrays)

        def loss_on(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
            return loss_of(network.apply(*cast(theta, x)).astype(jnp.float32), y)

        sample = sample_batches(x_tr, y_tr, batch_size=batch)

        def loss(key: jax.Array, theta: jax.Array) -> jax.Array:
            x, y = sample(key)
            return loss_on(theta, x, y)

        def population_loss(key: jax.Array, thetas: jax.Array) -> jax.Array:
            x, y = sample(key)
            out = network.population_apply(*cast(thetas, x)).astype(jnp.float32)
            return jax.vmap(loss_of, in_axes=(0, None))(out, y)

        def test_metrics(theta: jax.Array) -> dict[str, jax.Array]:
            out = network.apply(theta, x_te)
            if classify:
                return {"accuracy": accuracy(out, y_te), "loss": cross_entropy(out, y_te)}
            return {"mse": mse(out, y_te)}

        return BoundTask(
            fitness=loss,
            maximize=False,
            loss=loss,
            test_metrics=test_metrics,
            metric="accuracy" if classify else "mse",
            metric_maximize=classify,
            extra={"sample": sample, "loss_on": loss_on},
            population_fitness=population_loss if self._use_population_forward(network) else None,
        )
