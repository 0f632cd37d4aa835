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

from collections.abc import Callable
from typing import Any

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
    dtype = next(
        (str(t.dtype) for t in (y_pred, y_true) if penalties._is_floating(t.dtype)),
        "float32",
    )
    y_pred = ops.cast(y_pred, dtype) if str(y_pred.dtype) != dtype else y_pred
    y_true = ops.cast(y_true, dtype) if str(y_true.dtype) != dtype else y_true

    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(true_shape) == len(pred_shape) + 1 and true_shape[-1] == 1:
        y_pred = ops.expand_dims(y_pred, -1) if len(pred_shape) == 1 else y_pred
        y_true = ops.squeeze(y_true, -1) if len(pred_shape) != 1 else y_true
    elif len(pred_shape) == len(true_shape) + 1 and pred_shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1) if len(true_shape) == 1 else y_true
        y_pred = ops.squeeze(y_pred, -1) if len(true_shape) != 1 else y_pred

    aligned_true, aligned_pred = tuple(y_true.shape), tuple(y_pred.shape)
    compatible = len(aligned_true) == len(aligned_pred) and all(
        a is None or b is None or a == b for a, b in zip(aligned_true, aligned_pred)
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
    **params: Any,
) -> Any:
    """Applies ``penalty(y_pred - y_true, **params)`` and averages over ``axis``.

    This is the one place where a loss turns inputs into per-sample (``axis=-1``) or
    per-element (``axis=None``) values.
    """
    y_true, y_pred = align(y_true, y_pred)
    values = penalty(y_pred - y_true, **params)
    if axis is None:
        return values
    if len(values.shape) == 0:
        return values
    return ops.mean(values, axis=axis)


def _check_axis(axis: Any) -> int | None:
    if axis is None or (isinstance(axis, int) and not isinstance(axis, bool)):
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


class PenaltyLoss(keras.losses.Loss):
    """Base class of the losses of this package: a penalty of the residual.

    A subclass sets ``penalty`` (an elementwise function of ``d = y_pred - y_true``
    from :mod:`smoothl1.penalties`) and passes its checked hyper-parameters to
    ``__init__`` as keyword arguments; they are given to ``penalty`` and kept in
    ``get_config``. See the module docstring for ``axis``, ``reduction``, ``name`` and
    ``dtype``.
    """

    penalty: Callable[..., Any]

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
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        if self.reduction not in (None, "none") and len(loss.shape) > 0:
            # Keras returns an empty batch's (0,) values unreduced; a reduced loss is
            # a scalar, and the sum of no values is 0 (with a zero gradient).
            loss = ops.sum(loss)
        return loss

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return per_sample(type(self).penalty, y_true, y_pred, self.axis, **self.params)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(axis=self.axis, dtype=_serialize_dtype(self._dtype_argument))
        config.update(
            {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        )
        return config


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
    default reduction.

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
