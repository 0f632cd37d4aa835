"""Streaming metric forms of the losses of :mod:`smoothl1.losses`."""

from __future__ import annotations

from typing import Any

import keras

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
