"""Elementwise robust penalties of a residual, written once, on ``keras.ops``.

Every function here takes the residual ``d = y_pred - y_true`` (any shape) and its
hyper-parameters, and returns the penalty ``rho(d)`` with the shape of ``d``
(``adaptive_wing`` also takes ``y_true``, which sets its exponent). The family:
``smooth_l1``, ``huber``, ``balanced_l1``, ``wing``, ``adaptive_wing``,
``charbonnier`` and ``general_robust``. No reduction, no weighting and no input
alignment happen here: that is the job of :mod:`smoothl1.losses` and of Keras's own
``keras.losses.Loss``.

Hyper-parameters are checked by the small ``check_*`` helpers below, once, when a loss
is built; the penalties call them too, so that a direct call fails just as clearly.

Example:

>>> import numpy as np
>>> from smoothl1 import penalties
>>> d = np.array([-3.0, -0.5, 0.0, 0.25, 2.0], dtype="float32")
>>> np.asarray(penalties.smooth_l1(d, beta=1.0), "float64").round(4).tolist()
[2.5, 0.125, 0.0, 0.0312, 1.5]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

Beta = float | Sequence[float]


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
    return _check_float32_range(name, float(value))


def check_positive(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` if it is not a finite
    number > 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number > 0. "
            f"Received: {name}={value!r}"
        )
    return _check_float32_range(name, float(value))


# Hyper-parameters enter the computation as float32 (at least): a nonzero value
# below the smallest normal float32 becomes 0 or loses its precision there, and
# one above the largest becomes inf; either turns a penalty into nan or 0.
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(name: str, value: float) -> float:
    if 0 < abs(value) < _FLOAT32_TINY or abs(value) > _FLOAT32_MAX:
        raise ValueError(
            f"Invalid value for argument `{name}`: {value!r} is outside float32's "
            f"normal range ({_FLOAT32_TINY:.3g} to {_FLOAT32_MAX:.3g} in size), so "
            "the loss would compute with 0 or inf instead; use a value in that range "
            f"(or exactly 0 where 0 is allowed). Received: {name}={value!r}"
        )
    return value


def check_not_nan(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` if it is not a real
    number or is NaN (``inf`` and ``-inf`` are accepted)."""
    if not _is_real_number(value) or math.isnan(value):
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a real number (inf and "
            f"-inf are allowed, NaN is not). Received: {name}={value!r}"
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
    if isinstance(beta, np.ndarray) and beta.ndim == 0:
        beta = beta.item()
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
    return tuple(check_nonnegative(name, value) for value in values)


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
    return "float" in keras.backend.standardize_dtype(dtype)


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
    ``(c / beta) * (d - c / 2)``. No branch that is not taken is ever evaluated, so
    no ``inf``/``nan`` can leak into a value or a gradient; ``c / beta`` lies in
    [-1, 1], so nothing overflows for any finite ``d``; and its derivative is a sum
    of two halves of ``c / beta``, so the gradient keeps its precision for ``|d|``
    far below ``beta`` (the form ``0.5 c**2 / beta + |d| - |c|`` differentiates to
    ``1 + (c / beta - 1)``, which float32 rounds to 0 for ``|d| < 6e-8 beta``).
    ``beta = 0`` takes an exact L1 path whose gradient is ``sign(d)`` (``0`` at
    ``d = 0``, as PyTorch).

    Fast path: for a number or a sequence ``beta`` (checked), the same values and
    gradients come from a fused evaluation instead of differentiating the formula
    term by term. On PyTorch, for a number ``beta`` and float32/float64 inputs,
    that is PyTorch's native ``smooth_l1_loss`` kernel, whose values and
    gradients match this definition, ``beta = 0`` included. Elsewhere it is the
    formula written with ``|c| = min(|d|, beta)`` (the same numbers) and its
    derivative ``clip(d / beta, -1, 1)`` given directly: a custom JVP on JAX, a
    custom gradient on TensorFlow (and on PyTorch for half precision or a
    per-coordinate ``beta``), which keep only ``d`` for the backward pass. A
    backend tensor ``beta`` (e.g. a running estimate) is differentiated as
    written. :func:`smooth_l1_between` is the same penalty from
    ``(y_true, y_pred)``, without storing ``d``.

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
    >>> np.asarray(smooth_l1(d, beta=0.5), "float64").round(4).tolist()
    [0.09, 0.75, 1.75]
    """
    d = _as_float_tensor(residual)
    dtype = keras.backend.standardize_dtype(d.dtype)
    if dtype in ("float16", "bfloat16"):
        # Computed in float32 and returned in the input's dtype: a beta far from 1
        # (1e-6 or 1e5, say) is not representable in half precision.
        return ops.cast(smooth_l1(ops.cast(d, "float32"), beta), dtype)
    if not (_is_real_number(beta) or isinstance(beta, (Sequence, np.ndarray))):
        return _clip_and_split(d, beta)
    beta = check_beta(beta)
    if isinstance(beta, tuple):
        check_last_axis("beta", beta, d)
    return _fast_smooth_l1(d, None, beta)


def smooth_l1_between(y_true: Any, y_pred: Any, beta: Beta = 1.0) -> Any:
    """``smooth_l1(y_pred - y_true; beta)``, evaluated from the pair.

    The same function as :func:`smooth_l1`, for inputs of one float dtype and one
    shape (as :func:`smoothl1.losses.align` leaves them). The fast path reads both
    tensors directly, so that the backward pass keeps the inputs themselves and no
    residual: on PyTorch through the native kernel, on JAX through a custom JVP of
    the pair. Inputs of different shapes or dtypes, half-precision inputs and a
    backend tensor ``beta`` are evaluated as ``smooth_l1(y_pred - y_true, beta)``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import smooth_l1_between
    >>> y_true = np.zeros(2, dtype="float32")
    >>> y_pred = np.array([0.5, -3.0], dtype="float32")
    >>> # 0.5 * 0.5**2 / 1 = 0.125; 3 - 0.5 = 2.5
    >>> np.asarray(smooth_l1_between(y_true, y_pred), "float64").tolist()
    [0.125, 2.5]
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    same = y_true.dtype == y_pred.dtype and tuple(y_true.shape) == tuple(y_pred.shape)
    numeric = _is_real_number(beta) or isinstance(beta, (Sequence, np.ndarray))
    wide = keras.backend.standardize_dtype(y_pred.dtype) in ("float32", "float64")
    if not (same and numeric and wide):
        # Half precision too: smooth_l1 computes it in float32.
        y_true, y_pred = _as_float_tensor(y_true), _as_float_tensor(y_pred)
        return smooth_l1(y_pred - ops.cast(y_true, y_pred.dtype), beta)
    beta = check_beta(beta)
    if isinstance(beta, tuple):
        check_last_axis("beta", beta, y_pred)
    return _fast_smooth_l1(y_pred, y_true, beta)


# Penalties with an evaluation from (y_true, y_pred) that need not store the
# residual; losses.per_sample calls it in place of penalty(y_pred - y_true).
PAIR_FORMS: dict[Callable[..., Any], Callable[..., Any]] = {
    smooth_l1: smooth_l1_between
}


_TORCH_NATIVE = ("float32", "float64")


def _fast_smooth_l1(y_pred: Any, y_true: Any, beta: float | tuple[float, ...]) -> Any:
    """The fast path of :func:`smooth_l1` for a checked ``beta``: the penalty of
    ``y_pred - y_true``, or of ``y_pred`` itself when ``y_true`` is None.

    - PyTorch, a number ``beta``, float32/float64: PyTorch's native kernel. Its
      values and gradients are this penalty's (``clip(d / beta, -1, 1)``, 1 at
      ``|d| = beta``; ``beta = 0`` is its L1 loss, gradient 0 at ``d = 0``). In
      float16 it computes ``d * d``, which overflows for ``|d| > 256``, so half
      precision, like a per-coordinate ``beta``, takes the custom gradient below.
    - JAX: ``jax.custom_jvp`` (see ``_jax_custom_jvp``).
    - Otherwise: ``keras.ops.custom_gradient`` of the residual.
    """
    backend = keras.backend.backend()
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if backend == "torch" and isinstance(beta, float) and dtype in _TORCH_NATIVE:
        import torch

        if y_true is None:
            y_true = torch.zeros((), dtype=y_pred.dtype, device=y_pred.device)
            y_true = y_true.expand(y_pred.shape)
        return torch.nn.functional.smooth_l1_loss(
            y_pred, y_true, reduction="none", beta=beta
        )
    if backend == "jax":
        return _jax_custom_jvp(y_pred, y_true, beta)
    d = y_pred if y_true is None else y_pred - y_true
    upper, divisor = _thresholds(beta, d.dtype)

    @ops.custom_gradient
    def penalty(x: Any) -> Any:
        def grad(*args: Any, upstream: Any = None) -> Any:
            # Keras passes the upstream gradient positionally on JAX and TensorFlow
            # and by keyword on PyTorch.
            if upstream is None:
                (upstream,) = args[-1:]
            return upstream * _smooth_l1_slope(x, upper, divisor, beta)

        return _smooth_l1_value(x, upper, divisor), grad

    return penalty(d)


def _thresholds(beta: float | tuple[float, ...], dtype: Any) -> tuple[Any, Any]:
    """``upper`` (beta) and ``divisor`` (beta, with 1 where beta = 0, where the
    quadratic part is 0 and only ``|d|`` remains): numbers, or for a
    per-coordinate beta, tensors of ``dtype``."""
    if isinstance(beta, float):
        return beta, beta if beta > 0 else 1.0
    upper = ops.convert_to_tensor(np.asarray(beta), dtype=dtype)
    divisor = np.asarray([b if b > 0 else 1.0 for b in beta])
    return upper, ops.convert_to_tensor(divisor, dtype=dtype)


def _smooth_l1_value(d: Any, upper: Any, divisor: Any) -> Any:
    # With m = min(|d|, beta) = |clip(d, -beta, beta)|: inside, 0.5 * m * (m / beta)
    # is _clip_and_split's (d / beta) * (d / 2) bit for bit; outside, the two differ
    # by rounding only. (min and abs fuse into XLA's CPU reductions; clip does not.)
    a = ops.abs(d)
    m = _minimum(a, upper)
    return 0.5 * m * (m / divisor) + (a - m)


def _smooth_l1_slope(
    d: Any, upper: Any, divisor: Any, beta: float | tuple[float, ...]
) -> Any:
    # clip(d / beta, -1, 1), written as d / max(|d|, beta): the same numbers (d / beta
    # inside, d / |d| = +-1 outside), a derivative that is the penalty's second
    # derivative (1 / beta inside, d = 0 included, and 0 outside), so Hessians
    # through the custom JVP are right; and no constant that XLA could broadcast to
    # an N-sized array shared with the forward pass (clip's -1 and 1 are). Where
    # beta = 0 the slope is sign(d).
    betas = beta if isinstance(beta, tuple) else (beta,)
    if max(betas) == 0.0:
        return ops.sign(d)
    ratio = d / _maximum(ops.abs(d), divisor)
    return ratio if min(betas) > 0.0 else ops.where(upper > 0, ratio, ops.sign(d))


def _jax_custom_jvp(y_pred: Any, y_true: Any, beta: float | tuple[float, ...]) -> Any:
    """The penalty with its derivative written out, on JAX.

    The tangent is ``slope(d) * (dy_pred - dy_true)``, linear in the tangents, so
    JAX differentiates it in either mode (gradients, ``jax.jvp``, Hessians); in
    reverse mode under ``jit`` XLA computes it in one elementwise loop from the
    inputs, with no temporary. The inputs and thresholds of ``slope`` pass through
    ``optimization_barrier``: without it, XLA shares ``d`` and the constant
    ``beta`` between that loop and the forward reduction and, on CPU, stores both
    as N-sized arrays.
    """
    import jax
    import jax.numpy as jnp

    upper, divisor = (
        jnp.asarray(t, dtype=y_pred.dtype) for t in _thresholds(beta, y_pred.dtype)
    )
    pair = y_true is not None

    def residual(xs: Any) -> Any:
        return xs[0] - xs[1] if pair else xs[0]

    @jax.custom_jvp
    def penalty(*xs: Any) -> Any:
        return _smooth_l1_value(residual(xs), upper, divisor)

    @penalty.defjvp
    def derivative(xs: Any, dxs: Any) -> tuple[Any, Any]:
        *kept, up, div = jax.lax.optimization_barrier((*xs, upper, divisor))
        slope = _smooth_l1_slope(residual(kept), up, div, beta)
        return penalty(*xs), slope * residual(dxs)

    return penalty(y_pred, y_true) if pair else penalty(y_pred)


def _clip_and_split(d: Any, beta: Any) -> Any:
    """The defining formula of :func:`smooth_l1`, differentiated automatically.

    With ``c = clip(d, -beta, beta)`` the penalty is ``(c / beta) * (d - c / 2)``:
    ``d**2 / (2 beta)`` where ``c = d``, and ``|d| - beta / 2`` where ``c = +-beta``.
    Automatic differentiation of this form gives ``(c / beta) / 2 + (c / beta) / 2``
    inside and ``c / beta`` outside, with no sum of large terms that cancel, so the
    gradient keeps its precision when ``|d|`` is much smaller than ``beta``. The
    factor ``c / beta`` is within [-1, 1], so nothing overflows for finite ``d``.

    Used for a backend tensor ``beta`` (which may hold zeros: there, ``|d|``), and
    by the tests as the reference that the fast path must match.
    """
    if _is_real_number(beta):
        if beta == 0.0:
            return _l1(d)
        c = ops.clip(d, -beta, beta)
        return (c / beta) * (d - 0.5 * c)
    upper = ops.convert_to_tensor(
        np.asarray(beta) if isinstance(beta, tuple) else beta, dtype=d.dtype
    )
    positive = upper > 0
    divisor = ops.where(positive, upper, ops.ones_like(upper))
    c = _minimum(_maximum(d, -upper), upper)
    # Where beta = 0, c = 0 and the first form is 0: take |d| there.
    return ops.where(positive, (c / divisor) * (d - 0.5 * c), _l1(d))


def _minimum(x: Any, y: Any) -> Any:
    """``ops.minimum``, keeping the dtype of ``x``: on PyTorch, Keras 3.15 computes
    the minimum of a float64 tensor (and of a float64 tensor and a number) in
    float32. A nan in ``x`` stays nan, as with ``minimum``."""
    if keras.backend.backend() == "torch":
        x = ops.convert_to_tensor(x)
        return ops.where(x > y, ops.cast(y, x.dtype), x)
    return ops.minimum(x, y)


def _maximum(x: Any, y: Any) -> Any:
    """``ops.maximum``, keeping the dtype of ``x`` (see ``_minimum``)."""
    if keras.backend.backend() == "torch":
        x = ops.convert_to_tensor(x)
        return ops.where(x < y, ops.cast(y, x.dtype), x)
    return ops.maximum(x, y)


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
    >>> np.asarray(huber(d, delta=2.0), "float64").round(4).tolist()
    [0.125, 4.0]
    """
    delta = check_positive("delta", delta)
    return delta * smooth_l1(residual, beta=delta)


def balanced_l1_b(alpha: Any, gamma: Any) -> float:
    """The constant ``b = exp(gamma / alpha) - 1`` of balanced L1, after checking
    ``alpha`` and ``gamma``.

    Raises:
        ValueError: ``alpha`` or ``gamma`` is not a finite number > 0, or
            ``gamma / alpha`` is so large that ``b`` overflows a float.
    """
    alpha = check_positive("alpha", alpha)
    gamma = check_positive("gamma", gamma)
    ratio = gamma / alpha
    if ratio > 700.0:  # exp(709.8) is the largest float64; keep clear of it
        raise ValueError(
            "Invalid values for arguments `gamma` and `alpha`: b = exp(gamma / alpha) "
            f"- 1 overflows for gamma / alpha = {ratio!r} (at most 700). "
            f"Received: alpha={alpha!r}, gamma={gamma!r}"
        )
    return math.expm1(ratio)


def balanced_l1(
    residual: Any, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0
) -> Any:
    """Balanced L1 penalty (Pang et al., Libra R-CNN, CVPR 2019).

    With ``d = y_pred - y_true`` and ``b = exp(gamma / alpha) - 1``::

        balanced_l1(d) = alpha / b * (b |d| + 1) * ln(b |d| / beta + 1) - alpha |d|
                                                                  if |d| < beta
                         gamma |d| + gamma / b - alpha beta       otherwise

    This is the form of the paper with its threshold ``beta`` placed as in the
    authors' code (mmdetection). ``b`` is chosen so that ``alpha ln(b + 1) =
    gamma``, which makes the two pieces meet at ``|d| = beta`` for every ``beta``.

    Where it is not smooth: only for ``beta = 1`` is the slope continuous at
    ``|d| = beta`` (it is ``gamma`` on both sides); for any other ``beta`` the inner
    slope there is ``gamma + alpha * ((b beta + 1) / (beta (b + 1)) - 1)``. At
    ``d = 0`` the slope is ``+-alpha (1 / beta - 1)``: a kink unless ``beta = 1``,
    and for ``beta > 1`` the penalty is negative near 0. The gradient returned at
    ``d = 0`` is 0 on every backend.

    Computed branch-free: with ``x = min(|d|, beta)`` the penalty is the inner
    piece at ``x`` plus ``gamma * (|d| - x)``; no piece is evaluated outside its
    range.

    Args:
        residual: the residual ``d``, any shape, any float dtype.
        alpha: weight of the inner (inlier) piece, a number > 0; a smaller
            ``alpha`` raises the gradient of small errors.
        gamma: slope of the outer (outlier) piece, a number > 0.
        beta: threshold between the two pieces, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import balanced_l1
    >>> d = np.array([0.0, 1.0, -3.0], dtype="float32")
    >>> # b = e**3 - 1 = 19.0855; at |d| = 1: 1.5 + 1.5 / 19.0855 - 0.5 = 1.0786;
    >>> # at |d| = 3: 4.5 + 0.0786 - 0.5 = 4.0786
    >>> np.asarray(balanced_l1(d), "float64").round(4).tolist()
    [0.0, 1.0786, 4.0786]
    """
    b = balanced_l1_b(alpha, gamma)
    alpha, gamma = float(alpha), float(gamma)
    beta = check_positive("beta", beta)
    d = _as_float_tensor(residual)
    a = _l1(d)
    x = _minimum(a, beta)
    inner = (alpha / b) * (b * x + 1.0) * ops.log1p((b / beta) * x) - alpha * x
    return inner + gamma * (a - x)


def wing(residual: Any, width: float = 10.0, curvature: float = 2.0) -> Any:
    """Wing penalty (Feng et al., "Wing loss for robust facial landmark
    localisation with convolutional neural networks", CVPR 2018).

    With ``d = y_pred - y_true``, ``w = width`` and ``eps = curvature``::

        wing(d) = w ln(1 + |d| / eps)    if |d| < w
                  |d| - C                otherwise,   C = w - w ln(1 + w / eps)

    ``C`` joins the pieces at ``|d| = w``. It is negative for the defaults
    (``10 - 10 ln 6 = -7.918``), and that is right: the log piece is already above
    ``|d|`` at ``|d| = w``, so the linear piece is shifted up.

    Where it is not smooth: at ``d = 0`` (slopes ``+-w / eps``, a kink that keeps
    the gradient of small errors large, by design) and at ``|d| = w`` (slope
    ``w / (w + eps)`` inside, 1 outside). The gradient returned at ``d = 0`` is 0.

    Computed branch-free: with ``x = min(|d|, w)`` the penalty is
    ``w ln(1 + x / eps) + (|d| - x)``.

    Args:
        residual: the residual ``d``, any shape, any float dtype.
        width: ``w``, the half-width of the log region, a number > 0.
        curvature: ``eps``, how sharply the log region bends, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import wing
    >>> d = np.array([2.0, -12.0], dtype="float32")
    >>> # 10 ln(1 + 2 / 2) = 6.9315; 12 - (10 - 10 ln 6) = 12 + 7.9176 = 19.9176
    >>> np.asarray(wing(d), "float64").round(4).tolist()
    [6.9315, 19.9176]
    """
    width = check_positive("width", width)
    curvature = check_positive("curvature", curvature)
    d = _as_float_tensor(residual)
    a = _l1(d)
    x = _minimum(a, width)
    return width * ops.log1p(x / curvature) + (a - x)


def adaptive_wing(
    residual: Any,
    y_true: Any,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
) -> Any:
    """Adaptive Wing penalty (Wang, Bo and Fuxin, "Adaptive Wing Loss for Robust
    Face Alignment via Heatmap Regression", ICCV 2019).

    With ``d = y_pred - y_true`` and the per-element exponent ``p = alpha -
    y_true``::

        adaptive_wing(d) = omega ln(1 + (|d| / epsilon)**p)    if |d| < theta
                           A |d| - C                           otherwise

        A = omega / (1 + (theta / epsilon)**p) * p * (theta / epsilon)**(p - 1)
            / epsilon
        C = theta A - omega ln(1 + (theta / epsilon)**p)

    The small-error piece divides by ``epsilon``, as in the paper; the authors'
    released code divides by ``omega`` there, which breaks the continuity that
    ``A`` and ``C`` were derived for. With ``epsilon`` the penalty and its slope
    are continuous at ``|d| = theta``.

    Where it is not smooth: nowhere away from ``d = 0``. At ``d = 0`` the slope is
    0 when ``p > 1`` (the paper takes ``alpha = 2.1`` so that ``p`` is in
    ``[1.1, 2.1]`` for heatmap targets in ``[0, 1]``); for ``p <= 1`` there is a
    kink (or, ``p <= 0``, a jump) at 0. The gradient returned at ``d = 0`` is 0.

    Computed without overflow: ``omega ln(1 + (x / epsilon)**p)`` is written as
    ``omega softplus(p ln(x / epsilon))`` with ``x = min(|d|, theta)``, and
    ``A = omega p / theta * sigmoid(p ln(theta / epsilon))``; the linear piece is
    added as ``A (|d| - x)``.

    Args:
        residual: the residual ``d``, any shape, any float dtype.
        y_true: the targets, the shape of ``residual`` (usually heatmap values in
            ``[0, 1]``); they set the exponent per element.
        alpha: the exponent for a target of 0, a number > 0.
        omega: the scale of the penalty, a number > 0.
        epsilon: the residual scale inside the log, a number > 0.
        theta: the threshold between the two pieces, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import adaptive_wing
    >>> d = np.array([0.0, 0.25, 1.0], dtype="float32")
    >>> y_true = np.array([0.0, 1.1, 0.1], dtype="float32")
    >>> # at 0.25, p = 2.1 - 1.1 = 1: 14 ln(1 + 0.25) = 3.1240
    >>> # at 1, p = 2: A = 14 / (1 + 0.5**2) * 2 * 0.5 / 1 = 11.2,
    >>> # C = 0.5 * 11.2 - 14 ln 1.25 = 2.4760, and 11.2 * 1 - 2.4760 = 8.7240
    >>> np.asarray(adaptive_wing(d, y_true), "float64").round(4).tolist()
    [0.0, 3.124, 8.724]
    """
    alpha = check_positive("alpha", alpha)
    omega = check_positive("omega", omega)
    epsilon = check_positive("epsilon", epsilon)
    theta = check_positive("theta", theta)
    d = _as_float_tensor(residual)
    p = alpha - ops.cast(ops.convert_to_tensor(y_true), d.dtype)
    a = _l1(d)
    x = _minimum(a, theta)
    # ln(0) would give 0 * inf = nan in the gradient; x = 0 takes the value 0.
    positive = x > 0
    x_safe = ops.where(positive, x, ops.full_like(x, epsilon))
    small = omega * ops.softplus(p * ops.log(x_safe / epsilon))
    small = ops.where(positive, small, ops.zeros_like(small))
    slope = (omega / theta) * p * ops.sigmoid(p * math.log(theta / epsilon))
    return small + slope * (a - x)


def charbonnier(residual: Any, epsilon: float = 1e-3) -> Any:
    """Charbonnier penalty in the LapSRN form (Lai et al., "Deep Laplacian Pyramid
    Networks for Fast and Accurate Super-Resolution", CVPR 2017).

    With ``d = y_pred - y_true``::

        charbonnier(d) = sqrt(d**2 + epsilon**2)

    A smooth L1: about ``d**2 / (2 epsilon) + epsilon`` for ``|d|`` much smaller than
    ``epsilon`` and ``|d|`` for larger errors. This is the form of the LapSRN paper,
    which made the loss common in super-resolution, with its ``epsilon = 1e-3``.
    Two variants circulate: ``sqrt(d**2 + epsilon)``, with ``epsilon`` not squared,
    which moves the bend to ``sqrt(epsilon)`` (0.03 instead of 0.001 for the same
    number), and ``sqrt(d**2 + epsilon**2) - epsilon``, which is 0 at ``d = 0``;
    the last differs from this one only by the constant ``epsilon``, so the
    gradients are the same. Here ``epsilon`` is squared, as in the paper, so that it
    is a residual scale, and the constant is kept: the value at ``d = 0`` is
    ``epsilon``.

    Where it is not smooth: nowhere; its slope ``d / sqrt(d**2 + epsilon**2)``
    stays in ``(-1, 1)``.

    Computed without squaring large numbers: with ``m = max(|d|, epsilon)`` it is
    ``m sqrt((d / m)**2 + (epsilon / m)**2)``, finite for every finite ``d`` in
    every float dtype.

    Args:
        residual: the residual ``d``, any shape, any float dtype.
        epsilon: the residual scale of the quadratic core, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import charbonnier
    >>> d = np.array([0.0, 0.3, -4.0], dtype="float32")
    >>> # sqrt(0 + 0.4**2) = 0.4; sqrt(0.09 + 0.16) = 0.5; sqrt(16.16) = 4.0200
    >>> np.asarray(charbonnier(d, epsilon=0.4), "float64").round(4).tolist()
    [0.4, 0.5, 4.02]
    """
    epsilon = check_positive("epsilon", epsilon)
    d = _as_float_tensor(residual)
    # The value does not depend on m, so its gradient is taken with m held fixed;
    # differentiating through m would square m and overflow for large |d|.
    m = ops.stop_gradient(_maximum(_l1(d), epsilon))
    return m * ops.sqrt(ops.square(d / m) + ops.square(epsilon / m))


# Above |d| / k = 1e8, log(1 + (d / k)**2) equals 2 ln(|d| / k) within 1e-16 (below
# float64 rounding), and 1e8 squared is still finite in float32.
_LOG1P_SQUARE_SWITCH = 1e8
# The alpha = +inf penalty exp(z / 2) - 1 is held at exp(80) - 1 = 5.5e34 beyond
# z = (d / c)**2 = 160, so that it and its gradient stay finite in float32.
_POSINF_EXPONENT_CAP = 80.0


def _log1p_square(d: Any, k: float) -> Any:
    """``ln(1 + (d / k)**2)`` for ``k > 0``, without squaring a large ``d / k``."""
    t = min(_LOG1P_SQUARE_SWITCH * k, 1e38)
    s = ops.clip(d, -t, t) / k
    return ops.log1p(s * s) + 2.0 * ops.log(_maximum(_l1(d), t) / t)


def general_robust(residual: Any, alpha: float = 1.0, scale: float = 1.0) -> Any:
    """General robust penalty (Barron, "A General and Adaptive Robust Loss
    Function", CVPR 2019).

    With ``d = y_pred - y_true``, ``z = (d / scale)**2`` and ``b = |alpha - 2|``::

        general_robust(d) = b / alpha * ((z / b + 1)**(alpha / 2) - 1)

    and, where that form is 0/0 or undefined, its limits, which are exact here::

        alpha = 2:     z / 2                     (L2)
        alpha = 0:     ln(z / 2 + 1)             (Cauchy / Lorentzian)
        alpha = -inf:  1 - exp(-z / 2)           (Welsch / Leclerc)
        alpha = +inf:  exp(z / 2) - 1

    ``alpha = 1`` gives ``sqrt(z + 1) - 1`` (pseudo-Huber / Charbonnier) and
    ``alpha = -2`` gives ``2 z / (z + 4)`` (Geman-McClure). The paper defines the
    first three limits; ``alpha = +inf`` is the limit of the general form as
    ``alpha`` grows (used by the author's reference code). It grows so fast that
    ``z / 2`` is capped at 80 (the value stays at ``exp(80) - 1 = 5.5e34`` and the
    gradient is 0 beyond ``|d| = scale * sqrt(160)``); every other case is exact.

    Where it is not smooth: nowhere; every member is smooth in ``d``, with the
    quadratic ``z / 2`` near 0 and a slope of at most ``|d| / scale**2``
    (for ``alpha <= 2``).

    Computed without overflow through intermediate powers: the general form is
    ``b / alpha * expm1(alpha / 2 * ln(1 + z / b))``, where ``ln(1 + z / b)`` is
    taken as ``2 ln(|d| / k)`` once ``|d| / k > 1e8`` (``k = scale sqrt(b)``) instead
    of squaring ``d``. So the value and gradient are finite at ``|d| = 1e30`` in
    float32 whenever the true value is (``alpha <= 1`` there, the limits at 0,
    -inf and +inf, and the gradient at ``alpha = 2``). For ``alpha > 1`` the value
    grows like ``|d|**alpha`` and can exceed the dtype's range; it is then ``inf``
    and its gradient is not finite either (except at ``alpha = 2``). ``float16``
    and ``bfloat16`` inputs are computed in float32 and the result cast back.

    Known shortcoming: for ``alpha`` within about ``1e-20`` of 0 but not 0, and tiny
    ``d``, the product ``alpha / 2 * ln(1 + z / b)`` underflows in float32 and the
    value is 0 instead of about ``z / 2`` (``d = 1e-6``, ``alpha = 1e-30``: 0, not
    ``5e-13``); within ``1e-7`` of 2 and for ``d`` near ``1e-6`` the value can be
    about 1 % low on JAX. Both are far below any loss a model is trained on.

    Args:
        residual: the residual ``d``, any shape, any float dtype.
        alpha: the shape: any real number, or ``inf`` / ``-inf``. Lower values are
            more robust to outliers: 2 is L2, 1 is about L1 for large errors, 0 and
            below give a bounded influence, -inf a bounded penalty.
        scale: ``c``, the residual scale of the quadratic core, a number > 0.

    Returns:
        The penalty, with the shape and dtype of ``residual``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.penalties import general_robust
    >>> d = np.array([0.0, 2.0], dtype="float32")
    >>> # alpha = 1: sqrt(2**2 + 1) - 1 = 1.2361; alpha = 0: ln(0.5 * 4 + 1) = 1.0986
    >>> np.asarray(general_robust(d, alpha=1.0), "float64").round(4).tolist()
    [0.0, 1.2361]
    >>> np.asarray(general_robust(d, alpha=0.0), "float64").round(4).tolist()
    [0.0, 1.0986]
    """
    alpha = check_not_nan("alpha", alpha)
    scale = check_positive("scale", scale)
    d = _as_float_tensor(residual)
    if keras.backend.standardize_dtype(d.dtype) in ("float16", "bfloat16"):
        wide = general_robust(ops.cast(d, "float32"), alpha=alpha, scale=scale)
        return ops.cast(wide, d.dtype)
    if alpha == 2.0:
        u = d / scale
        return 0.5 * u * u
    if alpha == 0.0:
        return _log1p_square(d, scale * math.sqrt(2.0))
    # Both infinite shapes clip d / scale, not d: the derivative of the clipped
    # expression is then finite at the clip (exp(80) * sqrt(160) = 7e35), so the
    # clip's zero gradient beyond it cannot meet an inf (inf * 0 is nan).
    if alpha == -math.inf:
        # exp(-z / 2) is 0 in every float long before |d| / scale reaches 1e8.
        t = _LOG1P_SQUARE_SWITCH
        u = ops.clip(d / scale, -t, t)
        return -ops.expm1(-0.5 * u * u)
    if alpha == math.inf:
        t = math.sqrt(2.0 * _POSINF_EXPONENT_CAP)
        u = ops.clip(d / scale, -t, t)
        return ops.expm1(0.5 * u * u)
    b = abs(alpha - 2.0)
    log_term = _log1p_square(d, scale * math.sqrt(b))
    return (b / alpha) * ops.expm1((0.5 * alpha) * log_term)
