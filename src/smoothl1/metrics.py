"""Streaming metric forms of the losses of :mod:`smoothl1.losses`, and diagnostics
of the residuals."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from smoothl1 import losses, penalties


@keras.saving.register_keras_serializable(package="smoothl1")
class SmoothL1(keras.metrics.MeanMetricWrapper):
    """Streaming smooth L1: the mean of the per-sample loss over every batch seen.

    The per-sample value is :func:`smoothl1.smooth_l1` (the penalty averaged over the
    last axis); ``sample_weight`` weights samples as in ``keras.metrics.Mean``.

    Args:
        beta: threshold, a number >= 0 or one value per coordinate of the last axis.
        name: metric name.
        dtype: dtype of the metric's state.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import SmoothL1
    >>> metric = SmoothL1(beta=1.0)
    >>> metric.update_state(np.zeros((1, 1)), np.array([[0.5]]))  # 0.5 * 0.25
    >>> metric.update_state(np.zeros((1, 1)), np.array([[3.0]]))  # 3 - 0.5
    >>> round(float(metric.result()), 4)  # (0.125 + 2.5) / 2
    1.3125
    """

    def __init__(
        self, beta: penalties.Beta = 1.0, name: str = "smooth_l1", dtype: Any = None
    ) -> None:
        beta = penalties.check_beta(beta)
        super().__init__(fn=losses.smooth_l1, name=name, dtype=dtype, beta=beta)
        self.beta = beta

    def get_config(self) -> dict[str, Any]:
        beta = list(self.beta) if isinstance(self.beta, tuple) else self.beta
        return {"name": self.name, "dtype": self.dtype, "beta": beta}


@keras.saving.register_keras_serializable(package="smoothl1")
class LinearFraction(keras.metrics.Metric):
    """Streaming fraction of residual elements in the linear (L1) region of smooth
    L1: those with ``|y_pred - y_true| >= beta``.

    It counts elements, not samples, over every batch seen; ``sample_weight``
    (per sample, or broadcastable to the shape of ``y_true``) weights each element.
    Near 0, smooth L1 acts as a scaled MSE; near 1, as L1. For Gaussian residuals
    of scale ``sigma`` and ``beta = 1.345 sigma`` it is about 0.18.

    Args:
        beta: threshold, a number >= 0 or one value per coordinate of the last axis
            (``beta = 0`` counts every element).
        name: metric name.
        dtype: dtype of the metric's state.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import LinearFraction
    >>> metric = LinearFraction(beta=1.0)
    >>> metric.update_state(np.zeros((2, 2)), np.array([[0.5, 1.0], [-3.0, 0.0]]))
    >>> metric.update_state(np.zeros((1, 2)), np.array([[2.0, -0.1]]))
    >>> float(metric.result())  # |d| >= 1: 1.0, 3.0 and 2.0, 3 of 6 elements
    0.5
    """

    def __init__(
        self,
        beta: penalties.Beta = 1.0,
        name: str = "linear_fraction",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.beta = penalties.check_beta(beta)
        self.beyond = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="beyond"
        )
        self.total = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="total"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true, y_pred = losses.align(y_true, y_pred)
        magnitude = ops.cast(ops.abs(y_pred - y_true), self.dtype)
        if isinstance(self.beta, tuple):
            penalties.check_last_axis("beta", self.beta, magnitude)
        beta = ops.convert_to_tensor(self.beta, dtype=self.dtype)
        beyond = ops.cast(ops.greater_equal(magnitude, beta), self.dtype)
        weight = ops.ones_like(beyond)
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, self.dtype)
            while len(sample_weight.shape) < len(beyond.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            weight = weight * sample_weight
        self.beyond.assign_add(ops.sum(beyond * weight))
        self.total.assign_add(ops.sum(weight))

    def result(self) -> Any:
        return ops.divide_no_nan(self.beyond, self.total)

    def get_config(self) -> dict[str, Any]:
        beta = list(self.beta) if isinstance(self.beta, tuple) else self.beta
        return {"name": self.name, "dtype": self.dtype, "beta": beta}
