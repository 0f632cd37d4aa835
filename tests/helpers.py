"""Backend-independent helpers for the tests: gradients and tolerances in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

# Tolerances, per dtype, chosen once. float32 parity with PyTorch is asked to within
# 1e-6 relative (a few ulp: both sides round a handful of float32 operations).
RTOL = {"float32": 1e-6, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}
ATOL = {"float32": 1e-7, "float64": 1e-15, "float16": 1e-4, "bfloat16": 1e-3}


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def value_and_grad(
    fn: Callable[[Any], Any], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Value of ``fn(x)`` and the gradient of ``sum(fn(x))`` with respect to ``x``,
    on the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = fn(xt)
            total = tf.reduce_sum(y)
        return y.numpy(), tape.gradient(total, xt).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        y = fn(jnp.asarray(x))
        grad = jax.grad(lambda v: jnp.sum(fn(v)))(jnp.asarray(x))
        return np.asarray(y), np.asarray(grad)
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        y = fn(xt)
        y.sum().backward()
        return y.detach().numpy(), xt.grad.numpy()
    raise RuntimeError(f"unsupported backend {backend}")
