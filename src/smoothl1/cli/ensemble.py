"""Many independent copies of the classic model, trained as one Keras model.

``smoothl1 compare`` trains a grid of (loss, outlier fraction) members that share the
inputs of one seed. Instead of one ``fit`` per member, :func:`build_ensemble` puts
every member's network side by side: each layer holds a kernel of shape
``(members, in, out)`` and computes ``einsum("bmi,mio->bmo")``, so no parameter is
shared. :class:`MemberSum` adds each member's own loss on its own labels. The
gradient of that sum with respect to member ``m``'s parameters is the gradient of
member ``m``'s loss alone, and Adam scales each parameter by its own moments, so
every member follows the same trajectory as a separate ``fit`` with the same seed,
initial weights and batch order (``tests/test_compare.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops


class MemberDense(keras.layers.Layer):
    """``members`` dense layers side by side: ``(batch, [members,] in) -> (batch,
    members, out)``. Member ``m``'s kernel is initialized exactly as
    ``keras.layers.Dense`` with ``GlorotUniform(seed=seeds[m])`` would be, and
    :meth:`reset` does it again for new seeds."""

    def __init__(
        self,
        units: int,
        seeds: Sequence[int],
        activation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.seeds = list(seeds)
        self.activation = keras.activations.get(activation)

    def _initial_kernel(self, seeds: Sequence[int], dtype: Any = None) -> Any:
        return ops.stack(
            [
                keras.initializers.GlorotUniform(seed=seed)(
                    (self.fan_in, self.units), dtype=dtype
                )
                for seed in seeds
            ]
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.fan_in = int(input_shape[-1])  # type: ignore[arg-type]
        self.shared_input = len(input_shape) == 2
        self.kernel = self.add_weight(
            shape=(len(self.seeds), self.fan_in, self.units),
            initializer=lambda shape, dtype=None: self._initial_kernel(
                self.seeds, dtype
            ),
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(len(self.seeds), self.units), initializer="zeros", name="bias"
        )

    def reset(self, seeds: Sequence[int]) -> None:
        """Initial weights again, as a fresh layer built with ``seeds`` would have."""
        self.seeds = list(seeds)
        self.kernel.assign(self._initial_kernel(seeds, self.kernel.dtype))
        self.bias.assign(ops.zeros(self.bias.shape, self.bias.dtype))

    def call(self, inputs: Any) -> Any:
        equation = "bi,mio->bmo" if self.shared_input else "bmi,mio->bmo"
        return self.activation(ops.einsum(equation, inputs, self.kernel) + self.bias)


def build_ensemble(
    n_features: int, n_targets: int, hidden: list[int], seeds: Sequence[int]
) -> keras.Model:
    """The classic model (``train.build_model``) once per seed in ``seeds``, side by
    side; the output has shape ``(batch, members, targets)``."""
    inputs = keras.Input((n_features,))
    x = inputs
    for i, units in enumerate(hidden):
        x = MemberDense(units, [s + i for s in seeds], activation="relu")(x)
    outputs = MemberDense(n_targets, [s + len(hidden) for s in seeds])(x)
    return keras.Model(inputs, outputs)


def reset_ensemble(model: keras.Model, seeds: Sequence[int]) -> None:
    """Re-initializes every member as :func:`build_ensemble` with ``seeds`` would."""
    layers = [layer for layer in model.layers if isinstance(layer, MemberDense)]
    for i, layer in enumerate(layers):
        layer.reset([s + i for s in seeds])


class MemberSum(keras.losses.Loss):
    """The sum over members of each member's own loss on its own labels.

    ``groups`` lists ``(loss, start, stop)``: members ``start..stop-1`` use ``loss``.
    A Keras loss averages over the batch and over every axis but the last, so
    ``(stop - start) * loss(y_true[:, start:stop], y_pred[:, start:stop])`` is the
    sum of the members' own batch losses, computed in one call per group.
    """

    def __init__(self, groups: Sequence[tuple[keras.losses.Loss, int, int]]) -> None:
        super().__init__(name="member_sum", reduction="sum")
        self.groups = list(groups)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        total = 0.0
        for loss, start, stop in self.groups:
            part = loss(y_true[:, start:stop], y_pred[:, start:stop])
            total = total + (stop - start) * part
        return total


def per_member_losses(
    groups: Sequence[tuple[keras.losses.Loss, int, int]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
) -> np.ndarray:
    """Each member's own loss on the same labels ``y_true`` (``(batch, targets)``),
    from predictions ``(batch, members, targets)``."""
    values = []
    for loss, start, stop in groups:
        per_sample = type(loss).from_config({**loss.get_config(), "reduction": "none"})
        labels = np.repeat(y_true[:, None, :], stop - start, axis=1)
        batch = per_sample(labels, y_pred[:, start:stop])
        values.append(np.asarray(keras.ops.convert_to_numpy(batch)).mean(axis=0))
    return np.concatenate(values)


class OrderedBatches(keras.utils.PyDataset):
    """Training batches in a seeded order of our own: epoch ``e`` visits the rows in
    ``default_rng([seed, e]).permutation(n)``; pass :attr:`callback` to ``fit``.

    Keras's own shuffling draws from the global generators, and the first ``fit`` of
    a model reads a batch (to build it) that later ones do not, so a reused model
    would see another order than a fresh one. Here the epoch comes from the
    ``on_epoch_begin`` callback, so every backend, every fresh or reused model and
    every separate ``fit`` of the same seed sees the same batches.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.set_epoch(0)
        self.callback = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs=None: self.set_epoch(epoch)
        )

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]


def member_gradient_norms(
    model: keras.Model,
    loss: keras.losses.Loss,
    x: np.ndarray,
    y: np.ndarray,
    members: int,
) -> np.ndarray:
    """The norm of each member's full-batch training-loss gradient, one value per
    member. Members share no parameter, so member ``m``'s gradient is slice ``m`` of
    the gradient of the summed loss (``members=1``: a plain model and its loss)."""
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "jax":
        grads = _jax_gradients(model, loss, x, y)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss(y, model(x))
        grads = [g.numpy() for g in tape.gradient(value, [v.value for v in variables])]
    elif backend == "torch":
        import torch

        model.zero_grad()
        params = [v.value for v in variables]
        value = loss(y, model(x))
        grads = [g.detach().cpu().numpy() for g in torch.autograd.grad(value, params)]
    else:  # pragma: no cover - Keras has no other training backend today
        raise RuntimeError(f"gradient norms are not implemented for {backend}")
    squares = sum(
        np.square(np.asarray(g)).reshape(members, -1).sum(axis=1) for g in grads
    )
    return np.sqrt(squares)


def _jax_gradients(
    model: keras.Model, loss: keras.losses.Loss, x: Any, y: Any
) -> list[Any]:
    import jax

    gradient = getattr(model, "_member_gradient", None)
    if gradient is None:

        def total(trainable: Any, non_trainable: Any, x: Any, y: Any) -> Any:
            y_pred, _ = model.stateless_call(trainable, non_trainable, x)
            return loss(y, y_pred)

        gradient = jax.jit(jax.grad(total))
        model._member_gradient = gradient  # compiled once per model
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return [np.asarray(g) for g in gradient(trainable, non_trainable, x, y)]
