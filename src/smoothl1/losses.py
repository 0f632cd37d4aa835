"""Keras losses built on the penalties of :mod:`smoothl1.penalties`.

One base class, :class:`PenaltyLoss`, turns ``(y_true, y_pred)`` into per-sample values
(the mean of the penalty over the last axis, the Keras convention) or, with
``axis=None``, per-element values. Everything else, the reduction, ``sample_weight``,
masks and the cast of the inputs to the loss dtype, is done by Keras's own
``keras.losses.Loss``; every Keras reduction is accepted.

Arguments shared by every loss class:

- ``axis``: ``-1`` (default) averages the penalty over the last axis, giving one value
  per sample; ``None`` keeps one value per element, so that ``sample_weight`` can have
  the full shape of ``y_true`` (per-coordinate weights, ignore masks).
- ``reduction``: one of ``"sum_over_batch_size"`` (default), ``"sum"``, ``"mean"``,
  ``"mean_with_sample_weight"``, ``"none"`` or ``None``, as in ``keras.losses.Loss``.
- ``name``: the loss name shown in logs.
- ``dtype``: the dtype or dtype policy of the computation (default: ``floatx()``).
  Half precision (``float16``, ``bfloat16``, ``mixed_*``) is promoted to float32, so
  that neither the penalty nor the sum over a batch can overflow; the loss then
  returns float32, as Keras's mixed-precision training expects of a loss.
"""

from __future__ import annotations

import math
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import keras
from keras import ops

from smoothl1 import penalties

_HALF = ("float16", "bfloat16")
_PACKAGE = "smoothl1"


def align(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Converts the inputs to one float dtype and aligns their ranks as Keras does.

    A rank-1 ``(N,)`` tensor against an ``(N, 1)`` one is expanded to ``(N, 1)``, never
    broadcast to ``(N, N)``. Integer inputs are cast to float32 (or to the dtype of the
    other input when that one is a float).

    Raises:
        ValueError: the shapes differ in a known dimension after the alignment.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    # Dtype names through standardize_dtype: str() of a TensorFlow dtype is
    # "<dtype: 'float32'>", which no backend accepts back.
    true_dtype = keras.backend.standardize_dtype(y_true.dtype)
    pred_dtype = keras.backend.standardize_dtype(y_pred.dtype)
    dtype = next((d for d in (pred_dtype, true_dtype) if "float" in d), "float32")
    y_pred = ops.cast(y_pred, dtype) if pred_dtype != dtype else y_pred
    y_true = ops.cast(y_true, dtype) if true_dtype != dtype else y_true

    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(true_shape) == len(pred_shape) + 1 and true_shape[-1] == 1:
        y_pred = ops.expand_dims(y_pred, -1) if len(pred_shape) == 1 else y_pred
        y_true = ops.squeeze(y_true, -1) if len(pred_shape) != 1 else y_true
    elif len(pred_shape) == len(true_shape) + 1 and pred_shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1) if len(true_shape) == 1 else y_true
        y_pred = ops.squeeze(y_pred, -1) if len(true_shape) != 1 else y_pred

    aligned_true, aligned_pred = tuple(y_true.shape), tuple(y_pred.shape)
    compatible = len(aligned_true) == len(aligned_pred) and all(
        a is None or b is None or a == b
        for a, b in zip(aligned_true, aligned_pred, strict=True)
    )
    if not compatible:
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape (a trailing axis of size 1 "
            f"may be missing on one of them). Received: y_true.shape={true_shape}, "
            f"y_pred.shape={pred_shape}"
        )
    return y_true, y_pred


def per_sample(
    penalty: Callable[..., Any],
    y_true: Any,
    y_pred: Any,
    axis: int | None = -1,
    *,
    with_y_true: bool = False,
    **params: Any,
) -> Any:
    """Applies ``penalty(y_pred - y_true, **params)`` and averages over ``axis``.

    This is the one place where a loss turns inputs into per-sample (``axis=-1``) or
    per-element (``axis=None``) values. With ``with_y_true=True`` the penalty also
    receives the aligned targets, as ``penalty(y_pred - y_true, y_true, **params)``
    (Adaptive Wing's exponent depends on them). A penalty listed in
    ``penalties.PAIR_FORMS`` is evaluated from the pair instead (the same values,
    without storing the residual where the backend allows).
    """
    y_true, y_pred = align(y_true, y_pred)
    values = _elementwise(penalty, y_true, y_pred, with_y_true, params)
    if axis is None:
        return values
    if len(values.shape) == 0:
        return values
    size = values.shape[axis]
    if size == 0:
        return ops.sum(values, axis=axis)  # the mean of nothing: 0, not 0 / 0
    if keras.backend.backend() == "torch" and isinstance(size, int) and size > 0:
        # torch.mean's backward divides after broadcasting, which writes a gradient
        # the size of `values`; dividing the sum leaves that broadcast a view.
        return ops.sum(values, axis=axis) / size
    return ops.mean(values, axis=axis)


def _elementwise(
    penalty: Callable[..., Any],
    y_true: Any,
    y_pred: Any,
    with_y_true: bool,
    params: dict[str, Any],
) -> Any:
    """The penalty of aligned inputs, element by element."""
    if with_y_true:
        return penalty(y_pred - y_true, y_true, **params)
    pair_form = penalties.PAIR_FORMS.get(penalty)
    if pair_form is not None:
        return pair_form(y_true, y_pred, **params)
    return penalty(y_pred - y_true, **params)


def _check_axis(axis: Any) -> int | None:
    if axis is None or (type(axis) is int and axis == -1):
        return axis
    raise ValueError(
        "Invalid value for argument `axis`: expected -1 (one value per sample, the "
        f"mean over the last axis) or None (one value per element). Received: "
        f"axis={axis!r}"
    )


def _serialize_dtype(dtype: Any) -> Any:
    if dtype is None or isinstance(dtype, str):
        return dtype
    return keras.dtype_policies.serialize(keras.dtype_policies.get(dtype))


# ---------------------------------------------------------------- several replicas

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def _tf_replicas() -> tuple[Any, int]:
    """The ``tf.distribute`` replica context a loss runs in (None outside a
    replica of a strategy) and the strategy's number of replicas (1 without a
    strategy, and on every other backend)."""
    if keras.backend.backend() != "tensorflow":
        return None, 1
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None, 1
    replicas = int(tf.distribute.get_strategy().num_replicas_in_sync)
    if tf.distribute.in_cross_replica_context():
        return None, replicas
    return tf.distribute.get_replica_context(), replicas


def _same_rank(x: Any, w: Any) -> tuple[Any, Any]:
    """Keras's rule for two tensors whose ranks differ by one: a trailing axis of
    size 1 is added to the one of rank 1, or else dropped from the other."""
    if len(x.shape) == len(w.shape) + 1 and x.shape[-1] == 1:
        if len(w.shape) == 1:
            return x, ops.expand_dims(w, -1)
        return ops.squeeze(x, -1), w
    if len(w.shape) == len(x.shape) + 1 and w.shape[-1] == 1:
        if len(x.shape) == 1:
            return ops.expand_dims(x, -1), w
        return x, ops.squeeze(w, -1)
    return x, w


def _replica_reduce(
    values: Any,
    sample_weight: Any,
    mask: Any,
    reduction: str,
    context: Any,
    replicas: int,
) -> Any:
    """One replica's share of a loss reduced over the global batch.

    With ``s`` the replica's weighted sum and ``D`` the divisor of the reduction
    summed over every replica (values, valid mask entries or weights), the share
    is ``s / D`` (``s`` for ``"sum"``), so that the shares, and the gradients
    that the strategy sums, add up to the loss of the global batch. Keras logs a
    replica's loss times the number of replicas, weighted by the replica's rows
    ``n``; so the value (not the gradient) is scaled by ``N / (replicas * n)``,
    ``N`` the rows of the global batch, which is 1 when the rows are split evenly
    and makes the logged loss that of the global batch also when they are not.
    """
    import tensorflow as tf

    dtype = values.dtype
    if len(values.shape) == 0:
        values = ops.reshape(values, (1,))  # one value: one row
    weight = None if sample_weight is None else ops.cast(sample_weight, dtype)
    size = ops.cast(ops.size(values), dtype)
    if mask is not None:
        mask = ops.cast(mask, dtype)
        # Keras scales a mask so that a mean runs over its valid entries only.
        size = size * ops.divide_no_nan(ops.sum(mask), ops.cast(ops.size(mask), dtype))
        if weight is None:
            weight = mask
        else:
            mask, weight = _same_rank(mask, weight)
            weight = weight * mask
    if weight is not None:
        values, weight = _same_rank(values, weight)
        total = ops.sum(values * weight)
    else:
        total = ops.sum(values)

    def across(x: Any) -> Any:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, ops.stop_gradient(x))

    if reduction in _MEAN_REDUCTIONS:
        if reduction == "mean_with_sample_weight" and weight is not None:
            divisor = ops.sum(weight)
        else:
            divisor = size
        total = ops.divide_no_nan(total, across(divisor))
    rows = ops.cast(ops.shape(values)[0], dtype)
    share = ops.divide_no_nan(across(rows), rows * replicas)
    return total + ops.stop_gradient(total * (share - 1.0))


def _weights_per_element(y_true: Any, y_pred: Any, sample_weight: Any) -> Any:
    """With ``axis=None`` the values have the inputs' full shape; a per-sample weight
    (``(N,)``, ``(N, 1)``, a scalar) is spread over each sample's elements, so every
    Keras reduction, ``mean_with_sample_weight`` included, weighs elements."""
    _, y_pred = align(y_true, y_pred)
    weights = ops.convert_to_tensor(sample_weight)
    while 0 < len(weights.shape) < len(y_pred.shape):
        weights = ops.expand_dims(weights, -1)
    # A copy, not a broadcast view: Keras scales the weights in place on PyTorch.
    return ops.copy(ops.broadcast_to(weights, ops.shape(y_pred)))


# Keras's own accessors of the mask a tensor carries, read once. A Keras that moves
# them: every tensor counts as masked (Keras's reduction then runs), and masks are
# left to Keras as they are.
try:
    from keras.src.backend import get_keras_mask as _keras_mask_of
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover (depends on the Keras version)
    _keras_mask_of, _set_keras_mask = None, None


def _get_keras_mask(x: Any) -> Any:
    return True if _keras_mask_of is None else _keras_mask_of(x)


def _mask_per_element(y_pred: Any) -> Any:
    """With ``axis=None``, a Keras mask of ``y_pred`` with fewer axes (one entry per
    time step, say, from a ``Masking`` layer) spread over each sample's elements,
    as ``_weights_per_element`` does for weights, on a copy of ``y_pred`` (the
    caller's tensor keeps its mask). Without such a mask, ``y_pred`` itself."""
    if _set_keras_mask is None:  # a Keras that moved it: leave the mask to Keras
        return y_pred
    mask = _get_keras_mask(y_pred)
    if mask is None or len(mask.shape) >= len(y_pred.shape):
        return y_pred
    while len(mask.shape) < len(y_pred.shape):
        mask = ops.expand_dims(mask, -1)
    # A copy, not a broadcast view: Keras scales the mask in place on PyTorch.
    spread = ops.copy(ops.broadcast_to(mask, ops.shape(y_pred)))
    y_pred = ops.copy(y_pred)
    _set_keras_mask(y_pred, spread)
    return y_pred


class PenaltyLoss(keras.losses.Loss):
    """Base class of the losses of this package: a penalty of the residual.

    A subclass sets ``penalty`` (an elementwise function of ``d = y_pred - y_true``
    from :mod:`smoothl1.penalties`) and passes its checked hyper-parameters to
    ``__init__`` as keyword arguments; they are given to ``penalty`` and kept in
    ``get_config``. A penalty that also needs the targets (called as ``penalty(d,
    y_true, **params)``) is marked by ``penalty_takes_y_true = True``. See the module
    docstring for ``axis``, ``reduction``, ``name`` and ``dtype``.

    Several devices: every reduction gives the loss of the global batch, as on
    one device. Under ``keras.distribution`` (JAX) the loss sees the global batch
    as one sharded array, so Keras's reduction is already global. Under
    ``tf.distribute`` each replica sees its own rows; Keras divides a mean by the
    replica's own divisor and by the number of replicas, which is the global mean
    only when every replica holds the same number of rows and, for
    ``"mean_with_sample_weight"``, the same total weight. Here the divisors
    (values, valid mask entries, or weights) are summed over the replicas first,
    so that the gradients the strategy sums are those of the global batch on
    every batch, uneven last batches included. Called outside a replica but
    inside a strategy's scope, the loss holds the whole batch and is not divided
    by the number of replicas.
    """

    penalty: Callable[..., Any]
    penalty_takes_y_true: ClassVar[bool] = False

    def __init__(
        self,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = None,
        dtype: Any = None,
        **params: Any,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.axis = _check_axis(axis)
        self.params = params
        self._dtype_argument = dtype

    @property
    def dtype(self) -> str:
        dtype = str(super().dtype)
        return "float32" if dtype in _HALF else dtype

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if self.axis is None:
            y_pred = _mask_per_element(y_pred)
            if sample_weight is not None:
                sample_weight = _weights_per_element(y_true, y_pred, sample_weight)
        reduced = self.reduction not in (None, "none")
        context, replicas = _tf_replicas() if reduced else (None, 1)
        if context is not None and replicas > 1:
            mask = getattr(y_pred, "_keras_mask", None)  # as Keras reads it on TF
            values = self.call(
                ops.convert_to_tensor(y_true, dtype=self.dtype),
                ops.convert_to_tensor(y_pred, dtype=self.dtype),
            )
            return _replica_reduce(
                values, sample_weight, mask, self.reduction, context, replicas
            )
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        if reduced and len(loss.shape) > 0:
            # Keras returns an empty batch's (0,) values unreduced; a reduced loss is
            # a scalar, and the sum of no values is 0 (with a zero gradient).
            loss = ops.sum(loss)
        if replicas > 1 and self.reduction in _MEAN_REDUCTIONS:
            # In a strategy's scope but outside its replicas the whole batch is
            # here; undo Keras's division by the number of replicas.
            loss = loss * ops.cast(replicas, loss.dtype)
        return loss

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return per_sample(
            type(self).penalty,
            y_true,
            y_pred,
            self.axis,
            with_y_true=self.penalty_takes_y_true,
            **self.params,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(axis=self.axis, dtype=_serialize_dtype(self._dtype_argument))
        config.update(
            {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        )
        return config


_ONE_SUM_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")


def _may_have_mask(x: Any) -> bool:
    return _get_keras_mask(x) is not None


def _in_tf_strategy() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return bool(tf.distribute.has_strategy())


def _one_sum(loss: PenaltyLoss, y_true: Any, y_pred: Any, sample_weight: Any) -> Any:
    """The reduced loss as one sum over every element, or None where Keras's own
    reduction must run (weights, masks, ``"none"``, ``tf.distribute``, a subclass
    with its own ``call``, an unknown or empty last axis).

    Keras's mean over the batch of per-sample means over the last axis is the sum
    of all penalties divided by their number (by the length of the last axis for
    ``"sum"``; a rank-1 input has one sample, returned as it is). The same number
    in one sum skips the per-sample array, whose reduction over a short last axis
    (four box coordinates, three colours) is slow on CPU in PyTorch and in XLA,
    and whose mean, on PyTorch, writes a full-size gradient.
    """
    if (
        sample_weight is not None
        or loss.reduction not in _ONE_SUM_REDUCTIONS
        or type(loss).call is not PenaltyLoss.call
        or _may_have_mask(y_pred)
        or _in_tf_strategy()
    ):
        return None
    with keras.name_scope(loss.name):
        return _one_sum_of(loss, y_true, y_pred)


def _one_sum_of(loss: PenaltyLoss, y_true: Any, y_pred: Any) -> Any:
    y_true, y_pred = align(
        ops.convert_to_tensor(y_true, dtype=loss.dtype),
        ops.convert_to_tensor(y_pred, dtype=loss.dtype),
    )
    shape = tuple(y_pred.shape)
    last = 1 if loss.axis is None or not shape else shape[-1]
    if not isinstance(last, int) or last == 0:
        return None
    if not any(isinstance(value, tuple) for value in loss.params.values()):
        # No per-coordinate parameter, so the penalty is the same for every
        # element: flat inputs (a view) let XLA reduce faster on CPU.
        y_true, y_pred = ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,))
    values = _elementwise(
        type(loss).penalty, y_true, y_pred, loss.penalty_takes_y_true, loss.params
    )
    total = ops.sum(values)
    if len(shape) == 1 and loss.axis is not None:
        return total / last
    if loss.reduction == "sum":
        return total / last if last > 1 else total
    if all(isinstance(n, int) for n in shape):
        size = math.prod(shape)
        return total / size if size > 0 else total
    return ops.divide_no_nan(total, ops.cast(ops.size(values), total.dtype))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SmoothL1Loss(PenaltyLoss):
    """Smooth L1 loss (Girshick, Fast R-CNN, ICCV 2015), exact against PyTorch.

    With ``d = y_pred - y_true``, elementwise::

        smooth_l1(d; beta) = 0.5 * d**2 / beta    if |d| < beta
                             |d| - 0.5 * beta      otherwise      (beta = 0: |d|)

    then averaged over the last axis (``axis=-1``) or kept per element
    (``axis=None``), and reduced by Keras. Its gradient is ``clip(d / beta, -1, 1)``.
    ``huber(d; delta) = delta * smooth_l1(d; beta=delta)``, so Keras's ``Huber`` is the
    same loss only when ``beta = delta = 1``. As ``beta -> 0`` it tends to L1; when
    ``beta`` exceeds every ``|d|`` it is ``d**2 / (2 beta)``.
    ``torch.nn.SmoothL1Loss(beta=b)`` equals ``SmoothL1Loss(b, axis=None)`` with the
    default reduction. Without ``sample_weight`` or a mask, a reduced loss is taken
    as one sum over every element, the number Keras's mean of per-sample means
    gives (to float rounding) without the per-sample array; see
    :func:`smoothl1.penalties.smooth_l1` for the fast path of the penalty.

    Args:
        beta: threshold, a number >= 0 (``0`` is plain L1), or a sequence with one
            value per coordinate of the last axis (e.g. x, y, w, h).
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import SmoothL1Loss
    >>> y_true = np.array([[0.0, 0.0], [1.0, 1.0]], dtype="float32")
    >>> y_pred = np.array([[0.5, 3.0], [1.0, 0.0]], dtype="float32")
    >>> # sample 1: (0.5 * 0.5**2 + (3 - 0.5)) / 2 = 1.3125; sample 2: (0 + 0.5) / 2
    >>> # mean over the batch: (1.3125 + 0.25) / 2 = 0.78125
    >>> round(float(SmoothL1Loss(beta=1.0)(y_true, y_pred)), 5)
    0.78125
    """

    penalty = staticmethod(penalties.smooth_l1)

    def __init__(
        self,
        beta: penalties.Beta = 1.0,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "smooth_l1_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            beta=penalties.check_beta(beta),
        )

    @property
    def beta(self) -> float | tuple[float, ...]:
        return self.params["beta"]

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        total = _one_sum(self, y_true, y_pred, sample_weight)
        if total is not None:
            return total
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def smooth_l1(y_true: Any, y_pred: Any, beta: penalties.Beta = 1.0) -> Any:
    """Per-sample smooth L1: the mean over the last axis of ``smooth_l1(y_pred -
    y_true; beta)``, usable as ``loss=`` or in ``metrics=``.

    See :class:`SmoothL1Loss` for the formula.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import smooth_l1
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[0.5, 3.0]], dtype="float32")
    >>> # (0.5 * 0.5**2 / 1 + (3 - 0.5)) / 2 = 1.3125
    >>> np.round(np.asarray(smooth_l1(y_true, y_pred)), 4).tolist()
    [1.3125]
    """
    return per_sample(penalties.smooth_l1, y_true, y_pred, beta=beta)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HuberLoss(PenaltyLoss):
    """Huber loss (Huber, 1964), the smooth L1 family member with slope ``delta``.

    With ``d = y_pred - y_true``, elementwise::

        huber(d; delta) = 0.5 * d**2                    if |d| <= delta
                          delta * (|d| - 0.5 * delta)   otherwise

    It equals ``delta * smooth_l1(d; beta=delta)`` and, with the default ``axis=-1``,
    ``keras.losses.Huber(delta)``. Smooth everywhere; its gradient is
    ``clip(d, -delta, delta)``.

    Args:
        delta: threshold and slope of the linear part, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import HuberLoss
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[0.5, 3.0]], dtype="float32")
    >>> # (0.5 * 0.5**2 + 2 * (3 - 1)) / 2 = (0.125 + 4) / 2 = 2.0625
    >>> round(float(HuberLoss(delta=2.0)(y_true, y_pred)), 5)
    2.0625
    """

    penalty = staticmethod(penalties.huber)

    def __init__(
        self,
        delta: float = 1.0,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "huber_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            delta=penalties.check_positive("delta", delta),
        )

    @property
    def delta(self) -> float:
        return self.params["delta"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BalancedL1Loss(PenaltyLoss):
    """Balanced L1 loss (Pang et al., Libra R-CNN, CVPR 2019).

    With ``d = y_pred - y_true`` and ``b = exp(gamma / alpha) - 1``, elementwise::

        alpha / b * (b |d| + 1) * ln(b |d| / beta + 1) - alpha |d|   if |d| < beta
        gamma |d| + gamma / b - alpha beta                           otherwise

    Continuous for every ``beta``; its slope is continuous at ``|d| = beta`` only
    for ``beta = 1`` (see :func:`smoothl1.penalties.balanced_l1`).

    Args:
        alpha: weight of the inner piece, a number > 0.
        gamma: slope of the outer piece, a number > 0.
        beta: threshold between the pieces, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import BalancedL1Loss
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[1.0, -3.0]], dtype="float32")
    >>> # b = e**3 - 1; |d| = 1: 1.5 + 1.5 / b - 0.5 = 1.07859; |d| = 3: 4.07859
    >>> round(float(BalancedL1Loss()(y_true, y_pred)), 4)  # (1.07859 + 4.07859) / 2
    2.5786
    """

    penalty = staticmethod(penalties.balanced_l1)

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "balanced_l1_loss",
        dtype: Any = None,
    ) -> None:
        penalties.balanced_l1_b(alpha, gamma)
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=float(alpha),
            gamma=float(gamma),
            beta=penalties.check_positive("beta", beta),
        )

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @property
    def gamma(self) -> float:
        return self.params["gamma"]

    @property
    def beta(self) -> float:
        return self.params["beta"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WingLoss(PenaltyLoss):
    """Wing loss (Feng et al., CVPR 2018), for landmark coordinates.

    With ``d = y_pred - y_true``, ``w = width`` and ``eps = curvature``,
    elementwise::

        w ln(1 + |d| / eps)   if |d| < w
        |d| - C               otherwise,   C = w - w ln(1 + w / eps)

    Continuous; not smooth at ``d = 0`` (by design) or at ``|d| = w`` (see
    :func:`smoothl1.penalties.wing`).

    Args:
        width: ``w``, the half-width of the log region, a number > 0.
        curvature: ``eps``, the curvature of the log region, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import WingLoss
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[2.0, -12.0]], dtype="float32")
    >>> # 10 ln 2 = 6.93147; 12 - (10 - 10 ln 6) = 19.91759; mean 13.42453
    >>> round(float(WingLoss()(y_true, y_pred)), 4)
    13.4245
    """

    penalty = staticmethod(penalties.wing)

    def __init__(
        self,
        width: float = 10.0,
        curvature: float = 2.0,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "wing_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            width=penalties.check_positive("width", width),
            curvature=penalties.check_positive("curvature", curvature),
        )

    @property
    def width(self) -> float:
        return self.params["width"]

    @property
    def curvature(self) -> float:
        return self.params["curvature"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AdaptiveWingLoss(PenaltyLoss):
    """Adaptive Wing loss (Wang, Bo and Fuxin, ICCV 2019), for heatmaps.

    With ``d = y_pred - y_true`` and the per-element exponent ``p = alpha -
    y_true``, elementwise::

        omega ln(1 + (|d| / epsilon)**p)   if |d| < theta
        A |d| - C                          otherwise

    with ``A`` and ``C`` chosen so that the value and the slope are continuous at
    ``|d| = theta``. The small-error piece divides by ``epsilon``, as in the paper
    (see :func:`smoothl1.penalties.adaptive_wing`).

    Args:
        alpha: the exponent for a target of 0, a number > 0.
        omega: the scale of the penalty, a number > 0.
        epsilon: the residual scale inside the log, a number > 0.
        theta: the threshold between the pieces, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import AdaptiveWingLoss
    >>> y_true = np.array([[0.0, 0.1]], dtype="float32")
    >>> y_pred = np.array([[0.0, 1.1]], dtype="float32")
    >>> # d = 0 gives 0; d = 1 with p = 2 gives 8.724 (see the penalty's example)
    >>> round(float(AdaptiveWingLoss()(y_true, y_pred)), 3)
    4.362
    """

    penalty = staticmethod(penalties.adaptive_wing)
    penalty_takes_y_true = True

    def __init__(
        self,
        alpha: float = 2.1,
        omega: float = 14.0,
        epsilon: float = 1.0,
        theta: float = 0.5,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "adaptive_wing_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=penalties.check_positive("alpha", alpha),
            omega=penalties.check_positive("omega", omega),
            epsilon=penalties.check_positive("epsilon", epsilon),
            theta=penalties.check_positive("theta", theta),
        )

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @property
    def omega(self) -> float:
        return self.params["omega"]

    @property
    def epsilon(self) -> float:
        return self.params["epsilon"]

    @property
    def theta(self) -> float:
        return self.params["theta"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CharbonnierLoss(PenaltyLoss):
    """Charbonnier loss in the LapSRN form (Lai et al., CVPR 2017).

    With ``d = y_pred - y_true``, elementwise ``sqrt(d**2 + epsilon**2)``: smooth
    everywhere, quadratic for ``|d|`` much below ``epsilon`` and L1 above. The value
    at ``d = 0`` is ``epsilon`` (see :func:`smoothl1.penalties.charbonnier` for why
    ``epsilon`` is squared and the constant kept).

    Args:
        epsilon: the residual scale of the quadratic core, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import CharbonnierLoss
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[0.3, -4.0]], dtype="float32")
    >>> # (sqrt(0.09 + 0.16) + sqrt(16.16)) / 2 = (0.5 + 4.01995) / 2 = 2.25998
    >>> round(float(CharbonnierLoss(epsilon=0.4)(y_true, y_pred)), 4)
    2.26
    """

    penalty = staticmethod(penalties.charbonnier)

    def __init__(
        self,
        epsilon: float = 1e-3,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "charbonnier_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            epsilon=penalties.check_positive("epsilon", epsilon),
        )

    @property
    def epsilon(self) -> float:
        return self.params["epsilon"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GeneralRobustLoss(PenaltyLoss):
    """General robust loss (Barron, CVPR 2019) with a fixed shape ``alpha``.

    With ``d = y_pred - y_true``, ``z = (d / scale)**2`` and ``b = |alpha - 2|``,
    elementwise ``b / alpha * ((z / b + 1)**(alpha / 2) - 1)``, with its exact limits
    at ``alpha = 2`` (``z / 2``), ``0`` (``ln(z / 2 + 1)``), ``-inf``
    (``1 - exp(-z / 2)``) and ``+inf`` (``exp(z / 2) - 1``, capped). Smooth
    everywhere (see :func:`smoothl1.penalties.general_robust`).

    Args:
        alpha: the shape, any real number or ``inf`` / ``-inf``; lower is more
            robust to outliers.
        scale: the residual scale of the quadratic core, a number > 0.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import GeneralRobustLoss
    >>> y_true = np.zeros((1, 2), dtype="float32")
    >>> y_pred = np.array([[0.0, 2.0]], dtype="float32")
    >>> # alpha = 0: (ln(1) + ln(0.5 * 4 + 1)) / 2 = ln(3) / 2 = 0.5493
    >>> round(float(GeneralRobustLoss(alpha=0.0)(y_true, y_pred)), 4)
    0.5493
    """

    penalty = staticmethod(penalties.general_robust)

    def __init__(
        self,
        alpha: float = 1.0,
        scale: float = 1.0,
        *,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "general_robust_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=penalties.check_not_nan("alpha", alpha),
            scale=penalties.check_positive("scale", scale),
        )

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @property
    def scale(self) -> float:
        return self.params["scale"]


@keras.saving.register_keras_serializable(package=_PACKAGE)
def huber(y_true: Any, y_pred: Any, delta: float = 1.0) -> Any:
    """Per-sample Huber: the mean over the last axis of ``huber(y_pred - y_true;
    delta)``. See :class:`HuberLoss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import huber
    >>> # (0.5 * 0.5**2 + 1 * (3 - 0.5)) / 2 = 1.3125
    >>> np.asarray(huber(np.zeros((1, 2)), np.array([[0.5, 3.0]])), "float64").tolist()
    [1.3125]
    """
    return per_sample(penalties.huber, y_true, y_pred, delta=delta)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def balanced_l1(
    y_true: Any,
    y_pred: Any,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
) -> Any:
    """Per-sample balanced L1: the mean over the last axis of ``balanced_l1(y_pred
    - y_true; alpha, gamma, beta)``. See :class:`BalancedL1Loss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import balanced_l1
    >>> # (0 + (4.5 + 1.5 / (e**3 - 1) - 0.5)) / 2 = 4.07859 / 2 = 2.0393
    >>> y_pred = np.array([[0.0, 3.0]])
    >>> np.asarray(balanced_l1(np.zeros((1, 2)), y_pred), "float64").round(4).tolist()
    [2.0393]
    """
    return per_sample(
        penalties.balanced_l1, y_true, y_pred, alpha=alpha, gamma=gamma, beta=beta
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
def wing(y_true: Any, y_pred: Any, width: float = 10.0, curvature: float = 2.0) -> Any:
    """Per-sample Wing: the mean over the last axis of ``wing(y_pred - y_true;
    width, curvature)``. See :class:`WingLoss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import wing
    >>> # (10 ln(1 + 2 / 2) + 10 ln(1 + 0)) / 2 = 6.93147 / 2 = 3.4657
    >>> y_pred = np.array([[2.0, 0.0]])
    >>> np.asarray(wing(np.zeros((1, 2)), y_pred), "float64").round(4).tolist()
    [3.4657]
    """
    return per_sample(penalties.wing, y_true, y_pred, width=width, curvature=curvature)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def adaptive_wing(
    y_true: Any,
    y_pred: Any,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
) -> Any:
    """Per-sample Adaptive Wing: the mean over the last axis of
    ``adaptive_wing(y_pred - y_true, y_true; alpha, omega, epsilon, theta)``. See
    :class:`AdaptiveWingLoss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import adaptive_wing
    >>> # d = 0.25 with p = 2.1 - 1.1 = 1: 14 ln(1.25) = 3.1240; d = 0 gives 0
    >>> y_true = np.array([[1.1, 0.0]])
    >>> y_pred = np.array([[1.35, 0.0]])
    >>> np.asarray(adaptive_wing(y_true, y_pred), "float64").round(3).tolist()
    [1.562]
    """
    return per_sample(
        penalties.adaptive_wing,
        y_true,
        y_pred,
        with_y_true=True,
        alpha=alpha,
        omega=omega,
        epsilon=epsilon,
        theta=theta,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
def charbonnier(y_true: Any, y_pred: Any, epsilon: float = 1e-3) -> Any:
    """Per-sample Charbonnier: the mean over the last axis of ``sqrt((y_pred -
    y_true)**2 + epsilon**2)``. See :class:`CharbonnierLoss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import charbonnier
    >>> # (sqrt(0.3**2 + 0.4**2) + sqrt(0 + 0.4**2)) / 2 = (0.5 + 0.4) / 2 = 0.45
    >>> y_pred = np.array([[0.3, 0.0]])
    >>> values = charbonnier(np.zeros((1, 2)), y_pred, epsilon=0.4)
    >>> np.asarray(values, "float64").round(4).tolist()
    [0.45]
    """
    return per_sample(penalties.charbonnier, y_true, y_pred, epsilon=epsilon)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def general_robust(
    y_true: Any, y_pred: Any, alpha: float = 1.0, scale: float = 1.0
) -> Any:
    """Per-sample general robust loss: the mean over the last axis of
    ``general_robust(y_pred - y_true; alpha, scale)``. See :class:`GeneralRobustLoss`.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import general_robust
    >>> # alpha = 2: (0.5 * 2**2 + 0.5 * 0**2) / 2 = 1
    >>> y_pred = np.array([[2.0, 0.0]])
    >>> np.asarray(general_robust(np.zeros((1, 2)), y_pred, 2.0), "float64").tolist()
    [1.0]
    """
    return per_sample(
        penalties.general_robust, y_true, y_pred, alpha=alpha, scale=scale
    )


# ---------------------------------------------------------------- self-adjusting beta

# The state layer that was built or ran last in this thread, by name: a weak
# reference and whether it ran in training mode. Keras runs the forward pass before
# the loss in every train and test step, so the loss finds here the layer of the
# model it is training and the mode of the step (see SelfAdjustingSmoothL1Loss).
_LAST_RUN = threading.local()


def _last_run() -> dict[str, tuple[weakref.ref[Any], bool]]:
    table = getattr(_LAST_RUN, "table", None)
    if table is None:
        table = _LAST_RUN.table = {}
    return table


def _sum_over_replicas(x: Any) -> Any:
    """Sums ``x`` over the replicas of a data-parallel step (identity otherwise).

    TensorFlow: inside a ``tf.distribute`` replica context with several replicas,
    an all-reduce. PyTorch: with ``torch.distributed`` initialized, an all-reduce
    over the process group. JAX: nothing to do; under ``keras.distribution`` the
    batch is one array sharded over the devices, so a sum over it already covers
    every device.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
    elif backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            x = x.clone()
            dist.all_reduce(x)
    return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAdjustingBetaState(keras.layers.Layer):
    """The running state of :class:`SelfAdjustingSmoothL1Loss`, as an identity layer
    on the model's output.

    It holds, for each coordinate of the last axis, the running mean and variance
    of ``|d|`` as two non-trainable float32 weights. Being a layer of the model is
    what makes the state work everywhere: Keras saves its weights with the model,
    threads them through JAX's stateless train and test steps like batch-norm
    statistics, and passes it the ``training`` flag of the step. It returns its
    input unchanged and has no trainable weights.

    Args:
        initial_mean: the running mean before any update (the loss passes its
            ``beta_max``, so that training starts at ``beta = beta_max``); the
            running variance starts at 0.
        **kwargs: ``name``, ``dtype`` and the other ``keras.layers.Layer``
            arguments.
    """

    def __init__(self, initial_mean: float = 1.0 / 9.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_mean = penalties.check_nonnegative("initial_mean", initial_mean)
        self.supports_masking = True

    def build(self, input_shape: Any) -> None:
        units = input_shape[-1] if len(input_shape) else None
        if units is None:
            raise ValueError(
                "SelfAdjustingBetaState needs a known last axis (one running mean "
                f"and variance per coordinate). Received: input_shape={input_shape}"
            )
        common = {
            "shape": (units,),
            "dtype": "float32",
            "trainable": False,
            "autocast": False,
            "aggregation": "mean",
        }
        self.running_mean = self.add_weight(
            name="running_mean",
            initializer=keras.initializers.Constant(self.initial_mean),
            **common,
        )
        self.running_var = self.add_weight(
            name="running_var", initializer="zeros", **common
        )
        # A model just built or loaded is the one its loss should find, even
        # before its first step (e.g. to read `loss.beta` after load_model).
        _last_run()[self.name] = (weakref.ref(self), False)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        _last_run()[self.name] = (weakref.ref(self), bool(training))
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def update(self, abs_residual: Any, momentum: float) -> None:
        """Moves the running mean and variance towards those of ``abs_residual``
        (any shape, last axis = coordinates) by ``momentum``, with the statistics
        summed over every replica; a batch of fewer than 2 rows changes nothing."""
        units = self.running_mean.shape[0]
        rows = ops.reshape(ops.cast(abs_residual, "float32"), (-1, units))
        count = _sum_over_replicas(ops.cast(ops.shape(rows)[0], "float32"))
        mean = _sum_over_replicas(ops.sum(rows, axis=0)) / ops.maximum(count, 1.0)
        squares = _sum_over_replicas(ops.sum(ops.square(rows - mean), axis=0))
        # Bessel's correction (n - 1), as torch.var; a single row has no variance.
        var = squares / ops.maximum(count - 1.0, 1.0)
        keep = ops.where(count >= 2.0, 1.0 - momentum, 1.0)
        self.running_mean.assign(keep * self.running_mean + (1.0 - keep) * mean)
        self.running_var.assign(keep * self.running_var + (1.0 - keep) * var)

    def beta(self, beta_min: float, beta_max: float) -> Any:
        """``clip(running_mean - running_var, beta_min, beta_max)``, per coordinate."""
        return ops.clip(self.running_mean - self.running_var, beta_min, beta_max)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(initial_mean=self.initial_mean)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAdjustingSmoothL1Loss(PenaltyLoss):
    """Smooth L1 whose ``beta`` follows the residuals (the self-adjusting smooth L1
    of Fu, Shvets and Berg, "RetinaMask", arXiv:1901.03353, 2019).

    Per coordinate ``j`` of the last axis, training keeps a running mean ``m_j``
    and variance ``v_j`` of ``|d|`` (``d = y_pred - y_true``), and the penalty is
    :func:`smoothl1.penalties.smooth_l1` with::

        m_j <- (1 - momentum) m_j + momentum * mean of |d_j| over the batch
        v_j <- (1 - momentum) v_j + momentum * variance of |d_j| (n - 1 divisor)
        beta_j = clip(m_j - v_j, beta_min, beta_max)

    The update comes first, so a step is penalized with the ``beta`` its own batch
    moved. The state starts at ``m = beta_max, v = 0`` (``beta = beta_max``); a
    batch of fewer than 2 rows leaves it unchanged; ``sample_weight`` and masks
    weight the loss but not the statistics; ``beta`` gets no gradient.

    The state lives in a layer of the model, :class:`SelfAdjustingBetaState`, an
    identity on the output. Put it there once, with ``model = loss.attach(model)``
    or by hand (``outputs = loss.state_layer()(outputs)``). That is what makes it
    work with Keras's ``fit`` and ``evaluate`` on every backend:

    - updated at every training step, in JAX's stateless step too, because Keras
      threads a layer's non-trainable weights through it;
    - frozen in evaluation: the layer sees the step's ``training`` flag and the
      loss updates only when it is true (``evaluate``, validation, ``predict`` and
      ``model(x)`` change nothing);
    - summed over replicas: with ``tf.distribute`` (all-reduce in the replica
      context), with ``torch.distributed`` (all-reduce over the process group),
      and on JAX under ``keras.distribution`` (one global batch);
    - saved and restored with the model, as the layer's weights; the reloaded
      loss finds the reloaded layer by its name (``state_name``).

    Note:
        A Keras loss is never given its model, so the loss finds its layer as "the
        layer named ``state_name`` that was built or ran last in this thread".
        Keras runs the forward pass just before the loss in every step, so this
        is exact inside ``fit``, ``evaluate`` and ``train_on_batch``; a custom
        loop must do the same (call the model, then the loss), and two models
        whose state layers share a name must not be trained in the same thread
        at the same time. Calling the loss before any such layer exists raises
        ``ValueError``. Loops written with ``jax.pmap`` are not synchronized
        (there is no axis name to reduce over). During a JAX ``fit`` the layer's
        weights, and so ``loss.beta``, are synced from the training state at the
        end of each epoch, not after every batch.

    Args:
        momentum: weight of the new batch in the running statistics, in (0, 1].
        beta_max: the largest ``beta``, and the starting one, a number > 0.
        beta_min: the smallest ``beta``, a number in (0, beta_max].
        state_name: the name of the state layer; by default a fresh, unique one.
        axis, reduction, name, dtype: see :mod:`smoothl1.losses`.

    Example:

    >>> import keras, numpy as np
    >>> from smoothl1 import SelfAdjustingSmoothL1Loss
    >>> loss = SelfAdjustingSmoothL1Loss(momentum=0.5, beta_max=1.0)
    >>> y_pred = np.array([[0.0], [1.0], [2.0], [3.0]], dtype="float32")
    >>> _ = loss.state_layer()(y_pred, training=True)  # as the model's forward pass
    >>> value = loss(np.zeros_like(y_pred), y_pred)
    >>> # |d| = 0, 1, 2, 3: mean 1.5, variance 5 / 3; m = 0.5 * 1 + 0.5 * 1.5 = 1.25,
    >>> # v = 0.5 * 5 / 3 = 0.8333; beta = clip(1.25 - 0.8333, 1e-3, 1) = 0.4167
    >>> [round(b, 4) for b in loss.beta]
    [0.4167]
    """

    penalty = staticmethod(penalties.smooth_l1)

    def __init__(
        self,
        momentum: float = 0.1,
        beta_max: float = 1.0 / 9.0,
        beta_min: float = 1e-3,
        *,
        state_name: str | None = None,
        axis: int | None = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "self_adjusting_smooth_l1_loss",
        dtype: Any = None,
    ) -> None:
        momentum = penalties.check_positive("momentum", momentum)
        if momentum > 1:
            raise ValueError(
                "Invalid value for argument `momentum`: expected a number in (0, 1]. "
                f"Received: momentum={momentum!r}"
            )
        beta_max = penalties.check_positive("beta_max", beta_max)
        beta_min = penalties.check_positive("beta_min", beta_min)
        if beta_min > beta_max:
            raise ValueError(
                "Invalid values for arguments `beta_min` and `beta_max`: expected "
                f"beta_min <= beta_max. Received: beta_min={beta_min!r}, "
                f"beta_max={beta_max!r}"
            )
        super().__init__(
            axis=axis,
            reduction=reduction,
            name=name,
            dtype=dtype,
            momentum=momentum,
            beta_max=beta_max,
            beta_min=beta_min,
        )
        # Held in a namespace, not as an attribute, so that Keras's saving does not
        # walk into it: the layer is saved once, as a layer of the model.
        self._own = types.SimpleNamespace(layer=None)
        if state_name is None:
            self._own.layer = SelfAdjustingBetaState(initial_mean=beta_max)
            state_name = self._own.layer.name
        self.state_name = state_name

    @property
    def momentum(self) -> float:
        return self.params["momentum"]

    @property
    def beta_max(self) -> float:
        return self.params["beta_max"]

    @property
    def beta_min(self) -> float:
        return self.params["beta_min"]

    def state_layer(self) -> SelfAdjustingBetaState:
        """The state layer: the one named ``state_name`` that was built or ran
        last in this thread, else the loss's own (created here if needed)."""
        found = self._find_state()
        if found is not None:
            return found[0]
        if self._own.layer is None:
            self._own.layer = SelfAdjustingBetaState(
                initial_mean=self.beta_max, name=self.state_name
            )
        return self._own.layer

    @property
    def beta(self) -> tuple[float, ...] | None:
        """The current ``beta`` per coordinate, read from the state layer; None
        while no built state layer exists."""
        found = self._find_state()
        state = found[0] if found is not None else self._own.layer
        if state is None or not state.built:
            return None
        values = ops.convert_to_numpy(state.beta(self.beta_min, self.beta_max))
        return tuple(float(v) for v in values)

    def attach(self, model: keras.Model) -> keras.Model:
        """Returns ``model`` with the state layer on its output: a ``Sequential``
        gets the layer appended (and is returned); any other single-output model
        is wrapped in a functional model that shares its layers."""
        if isinstance(model, keras.Sequential):
            model.add(self.state_layer())
            return model
        outputs = model.outputs
        if outputs is None or len(outputs) != 1:
            raise ValueError(
                "attach() needs a Sequential model or a built model with one "
                "output; with several outputs, apply `loss.state_layer()` to the "
                f"output this loss trains. Received: outputs={outputs!r}"
            )
        return keras.Model(
            model.inputs, self.state_layer()(outputs[0]), name=model.name
        )

    def _find_state(self) -> tuple[SelfAdjustingBetaState, bool] | None:
        entry = _last_run().get(self.state_name)
        if entry is None:
            return None
        layer = entry[0]()
        return None if layer is None else (layer, entry[1])

    def call(self, y_true: Any, y_pred: Any) -> Any:
        found = self._find_state()
        if found is None:
            raise ValueError(
                f"SelfAdjustingSmoothL1Loss: its state layer {self.state_name!r} has "
                "not run. Put it on the model's output (`model = loss.attach(model)` "
                "or `outputs = loss.state_layer()(outputs)`), so that it runs before "
                "the loss."
            )
        state, training = found
        y_true, y_pred = align(y_true, y_pred)
        if training:
            residual = ops.stop_gradient(y_pred - y_true)
            state.update(ops.abs(residual), self.momentum)
        beta = ops.cast(state.beta(self.beta_min, self.beta_max), y_pred.dtype)
        return per_sample(penalties.smooth_l1, y_true, y_pred, self.axis, beta=beta)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(state_name=self.state_name)
        return config
