"""Losses by name: ``get("huber:delta=2")``, ``known_losses()``, ``spec_of(loss)``.

A spec is a loss name, optionally followed by ``:`` and comma-separated
``parameter=value`` pairs::

    smooth_l1
    smooth_l1:beta=0.5
    smooth_l1:beta=0.1|0.1|0.2|0.2      (one threshold per coordinate)
    wing:width=5,curvature=1
    general_robust:alpha=-inf

Values are numbers as Python's ``float`` reads them (``1``, ``0.5``, ``1e-3``,
``inf``, ``-inf``); only smooth L1's ``beta`` also takes a ``|``-separated list.
Parameters left out keep their defaults. ``mse``, ``mae`` and ``log_cosh`` are
Keras's own ``MeanSquaredError``, ``MeanAbsoluteError`` and ``LogCosh``, for
comparison. A spec names the penalty and its hyper-parameters only; ``axis``,
``reduction``, ``name`` and ``dtype`` keep the class defaults.

Example:

>>> import smoothl1
>>> loss = smoothl1.get("wing:width=5")
>>> type(loss).__name__, loss.width, loss.curvature
('WingLoss', 5.0, 2.0)
>>> smoothl1.spec_of(loss)
'wing:width=5,curvature=2'
>>> smoothl1.spec_of(smoothl1.get("mse"))
'mse'
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import keras

from smoothl1 import losses

# name -> (class, its hyper-parameters in signature order). The defaults are read
# from the class signatures, so that they are written in one place only.
_LOSSES: dict[str, tuple[Callable[..., keras.losses.Loss], tuple[str, ...]]] = {
    "smooth_l1": (losses.SmoothL1Loss, ("beta",)),
    "huber": (losses.HuberLoss, ("delta",)),
    "balanced_l1": (losses.BalancedL1Loss, ("alpha", "gamma", "beta")),
    "wing": (losses.WingLoss, ("width", "curvature")),
    "adaptive_wing": (
        losses.AdaptiveWingLoss,
        ("alpha", "omega", "epsilon", "theta"),
    ),
    "charbonnier": (losses.CharbonnierLoss, ("epsilon",)),
    "general_robust": (losses.GeneralRobustLoss, ("alpha", "scale")),
    "self_adjusting": (
        losses.SelfAdjustingSmoothL1Loss,
        ("momentum", "beta_max", "beta_min"),
    ),
    "mse": (keras.losses.MeanSquaredError, ()),
    "mae": (keras.losses.MeanAbsoluteError, ()),
    "log_cosh": (keras.losses.LogCosh, ()),
}
# The one parameter that may be a sequence (one value per coordinate).
_SEQUENCE_PARAMETERS = {("smooth_l1", "beta")}


def known_losses() -> dict[str, dict[str, float]]:
    """The loss names ``get`` accepts, each with its parameters and their defaults,
    in a fixed order (the smooth L1 family first, then Keras's references).

    Example:

    >>> from smoothl1 import known_losses
    >>> known_losses()["huber"]
    {'delta': 1.0}
    >>> known_losses()["mse"]
    {}
    """
    return {name: _defaults(name) for name in _LOSSES}


def _defaults(name: str) -> dict[str, float]:
    factory, parameters = _LOSSES[name]
    signature = inspect.signature(factory)
    return {p: signature.parameters[p].default for p in parameters}


def get(spec: str | keras.losses.Loss) -> keras.losses.Loss:
    """Returns the loss a spec string names; a ``keras.losses.Loss`` passes through.

    Args:
        spec: ``"name"`` or ``"name:parameter=value,..."`` (see the module
            docstring), or a loss object.

    Returns:
        A new loss object (or ``spec`` itself when it is a loss).

    Raises:
        ValueError: the name is unknown (the message lists the known names), a
            parameter is unknown, repeated or malformed (the message lists the
            accepted ones), or a value is not a number or is out of range.
        TypeError: ``spec`` is neither a string nor a ``keras.losses.Loss``.

    Example:

    >>> import smoothl1
    >>> smoothl1.get("huber:delta=2").delta
    2.0
    >>> smoothl1.get("smooth_l1:beta=0.1|0.2").beta
    (0.1, 0.2)
    """
    if isinstance(spec, keras.losses.Loss):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            "Invalid value for argument `spec`: expected a string such as "
            f"'huber:delta=2' or a keras.losses.Loss. Received: spec={spec!r}"
        )
    name, _, arguments = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _LOSSES:
        raise ValueError(
            f"Unknown loss {name!r} in spec {spec!r}. Known losses: "
            f"{', '.join(_LOSSES)}."
        )
    factory, _ = _LOSSES[name]
    return factory(**_parse_arguments(name, arguments, spec))


def _parse_arguments(name: str, arguments: str, spec: str) -> dict[str, Any]:
    accepted = _defaults(name)
    described = ", ".join(f"{k}={_format(v)}" for k, v in accepted.items())
    described = described or "none"
    parsed: dict[str, Any] = {}
    if not arguments.strip():
        return parsed
    for item in arguments.split(","):
        key, equals, text = (part.strip() for part in item.partition("="))
        if not equals or not key or not text:
            raise ValueError(
                f"Malformed parameter {item.strip()!r} in spec {spec!r}: expected "
                f"parameter=value. Parameters of {name!r} (defaults): {described}."
            )
        if key not in accepted:
            raise ValueError(
                f"Unknown parameter {key!r} for loss {name!r} in spec {spec!r}. "
                f"Parameters of {name!r} (defaults): {described}."
            )
        if key in parsed:
            raise ValueError(f"Parameter {key!r} is given twice in spec {spec!r}.")
        if (name, key) in _SEQUENCE_PARAMETERS and "|" in text:
            parsed[key] = tuple(_number(key, part, spec) for part in text.split("|"))
        else:
            parsed[key] = _number(key, text, spec)
    return parsed


def _number(key: str, text: str, spec: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(
            f"Invalid value for parameter `{key}` in spec {spec!r}: expected a "
            f"number (such as 0.5, 1e-3, inf or -inf). Received: {key}={text!r}"
        ) from None


def spec_of(loss: keras.losses.Loss) -> str:
    """The canonical spec of a loss: its name and every hyper-parameter, in the
    order of ``known_losses()``; ``get(spec_of(loss))`` rebuilds the same penalty.

    Numbers are written in their shortest exact form (``1`` for 1.0, ``0.001``,
    ``inf``); a per-coordinate ``beta`` is joined with ``|``.

    Raises:
        ValueError: the loss is not one that ``get`` can build.

    Example:

    >>> import smoothl1
    >>> smoothl1.spec_of(smoothl1.SmoothL1Loss(beta=0.5))
    'smooth_l1:beta=0.5'
    >>> smoothl1.spec_of(smoothl1.GeneralRobustLoss(alpha=float("-inf")))
    'general_robust:alpha=-inf,scale=1'
    """
    for name, (factory, parameters) in _LOSSES.items():
        if type(loss) is not factory:
            continue
        if not parameters:
            return name
        pairs = (f"{p}={_format(getattr(loss, p))}" for p in parameters)
        return f"{name}:{','.join(pairs)}"
    raise ValueError(
        f"No spec for a loss of type {type(loss).__name__}: spec_of knows "
        f"{', '.join(_LOSSES)}. Received: loss={loss!r}"
    )


def _format(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "|".join(_format(v) for v in value)
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)
