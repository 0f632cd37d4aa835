"""Elementwise robust penalties of a residual, written once, on ``keras.ops``.

Every function here takes the residual ``d = y_pred - y_true`` (any shape) and its
hyper-parameters, and returns the penalty ``rho(d)`` with the shape of ``d``. No
reduction, no weighting and no input alignment happen here: that is the job of
:mod:`smoothl1.losses` and of Keras's own ``keras.losses.Loss``.

Hyper-parameters are checked by the small ``check_*`` helpers below, once, when a loss
is built; the penalties call them too, so that a direct call fails just as clearly.

Example:

>>> import numpy as np
>>> from smoothl1 import penalties
>>> d = np.array([-3.0, -0.5, 0.0, 0.25, 2.0], dtype="float32")
>>> np.round(np.asarray(penalties.smooth_l1(d, beta=1.0)), 4).tolist()
[2.5, 0.125, 0.0, 0.0312, 1.5]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from keras import ops

Beta = Union[float, Sequence[float]]


def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_nonnegative(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` if it is not a finite
    number >= 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number >= 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` if it is not a finite
    number > 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number > 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_beta(beta: Any, name: str = "beta") -> float | tuple[float, ...]:
    """Normalizes a smooth L1 threshold.

    Args:
        beta: a number >= 0, or a 1-D sequence of numbers >= 0 (one threshold per
            coordinate of the last axis).
        name: the argument name used in error messages.

    Returns:
        A float, or a tuple of floats for a per-coordinate threshold.

    Raises:
        ValueError: ``beta`` is negative, NaN, infinite, non-numeric, empty or not
            one-dimensional.
    """
    if _is_real_number(beta):
        return check_nonnegative(name, beta)
    if isinstance(beta, (str, bytes)) or not isinstance(beta, (Sequence, np.ndarray)):
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a number >= 0 or a 1-D "
            f"sequence of numbers >= 0 (one per coordinate). Received: {name}={beta!r}"
        )
    values = list(np.asarray(beta, dtype=object).ravel()) if np.ndim(beta) == 1 else []
    if np.ndim(beta) != 1 or not values:
        raise ValueError(
            f"Invalid value for argument `{name}`: a per-coordinate threshold must be "
            f"a non-empty 1-D sequence. Received: {name}={beta!r}"
        )
    for value in values:
        if not _is_real_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Invalid value for argument `{name}`: every entry must be a finite "
                f"number >= 0. Received: {name}={beta!r}"
            )
    return tuple(float(value) for value in values)


def check_last_axis(name: str, value: tuple[float, ...], residual: Any) -> None:
    """Raises ``ValueError`` if a per-coordinate parameter does not match the last
    axis of ``residual`` (when that axis is known)."""
    shape = tuple(residual.shape)
    last = shape[-1] if shape else None
    if last is not None and last != len(value):
        raise ValueError(
            f"Invalid value for argument `{name}`: it has {len(value)} entries but "
            f"the last axis of the inputs has size {last} (shape {shape}). Pass one "
            f"value per coordinate, or a single number. Received: {name}={value!r}"
        )


def _as_float_tensor(x: Any) -> Any:
    x = ops.convert_to_tensor(x)
    if not _is_floating(x.dtype):
        x = ops.cast(x, "float32")
    return x


def _is_floating(dtype: Any) -> bool:
    return "float" in str(dtype)


def smooth_l1(residual: Any, beta: Beta = 1.0) -> Any:
    """Smooth L1 penalty of a residual (Girshick, Fast R-CNN, ICCV 2015).

    With ``d = y_pred - y_true``::

        smooth_l1(d; beta) = 0.5 * d**2 / beta    if |d| < beta
                             |d| - 0.5 * beta      otherwise
        smooth_l1(d; 0)    = |d|

    It is continuous with a continuous first derivative, ``clip(d / beta, -1, 1)``,
    so the gradient never exceeds 1 in size. It relates to Huber by
    ``huber(d; delta) = delta * smooth_l1(d; beta=delta)``. As ``beta -> 0`` it tends
    to ``|d|``; for ``beta`` much larger than every ``|d|`` it is ``d**2 / (2 beta)``.

    It is computed branch-free: with ``c = clip(d, -beta, beta)`` the penalty is
    ``0.5 * c * (c / beta) + (|d| - |c|)``. No branch that is not taken is ever
    evaluated, so no ``inf``/``nan`` can leak into a value or a gradient, and the
    square is of ``c`` (bounded by ``beta``) divided by ``beta``, so float16 cannot
    overflow for any finite ``d``. ``beta = 0`` takes an exact L1 path whose gradient
    is ``sign(d)`` (``0`` at ``d = 0``, as PyTorch).

    Args:
        residual: the residual ``d``, any shape, any float dtype (integers are cast
            to float32).
        beta: threshold between the quadratic and the linear region, a number >= 0
            or a sequence with one value >= 0 per coordinate of the last axis. A
            backend tensor is used as given, unchecked.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import smooth_l1
    >>> d = np.array([0.3, 1.0, -2.0], dtype="float32")
    >>> # 0.5 * 0.3**2 / 0.5 = 0.09; 1.0 - 0.25 = 0.75; 2.0 - 0.25 = 1.75
    >>> np.round(np.asarray(smooth_l1(d, beta=0.5)), 4).tolist()
    [0.09, 0.75, 1.75]
    """
    d = _as_float_tensor(residual)
    if _is_real_number(beta) or isinstance(beta, (Sequence, np.ndarray)):
        beta = check_beta(beta)
        if isinstance(beta, tuple):
            check_last_axis("beta", beta, d)
            return _smooth_l1_per_coordinate(d, beta)
        if beta == 0.0:
            return _l1(d)
    c = ops.clip(d, -beta, beta)
    return 0.5 * c * (c / beta) + (ops.abs(d) - ops.abs(c))


def _smooth_l1_per_coordinate(d: Any, beta: tuple[float, ...]) -> Any:
    # A zero entry makes c = 0 there, so dividing by 1 instead of 0 leaves |d|.
    upper = ops.convert_to_tensor(np.asarray(beta), dtype=d.dtype)
    divisor = ops.convert_to_tensor(
        np.asarray([b if b > 0 else 1.0 for b in beta]), dtype=d.dtype
    )
    c = ops.minimum(ops.maximum(d, -upper), upper)
    return 0.5 * c * (c / divisor) + (ops.abs(d) - ops.abs(c))


def _l1(d: Any) -> Any:
    # sign(d) * d is |d| exactly, and its gradient is sign(d) on every backend,
    # including 0 at d = 0 (the gradient of ops.abs at 0 differs between backends).
    return ops.sign(d) * d


def huber(residual: Any, delta: float = 1.0) -> Any:
    """Huber penalty (Huber, 1964): ``delta * smooth_l1(d; beta=delta)``.

    With ``d = y_pred - y_true``::

        huber(d; delta) = 0.5 * d**2                    if |d| <= delta
                          delta * (|d| - 0.5 * delta)   otherwise

    Its gradient is ``clip(d, -delta, delta)``: the slope of the linear part is
    ``delta``, not 1. For ``delta = 1`` it equals smooth L1 with ``beta = 1``; for
    any other value the two differ by the factor ``delta``.

    Args:
        residual: the residual ``d``, any shape.
        delta: the threshold, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import huber
    >>> d = np.array([0.5, -3.0], dtype="float32")
    >>> # 0.5 * 0.5**2 = 0.125; 2 * (3 - 1) = 4
    >>> np.round(np.asarray(huber(d, delta=2.0)), 4).tolist()
    [0.125, 4.0]
    """
    delta = check_positive("delta", delta)
    return delta * smooth_l1(residual, beta=delta)
