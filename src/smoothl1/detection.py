"""Box regression as detectors train it: a box coder, anchor targets and a loss.

Detectors (Fast and Faster R-CNN, RetinaNet, SSD) do not regress box corners. Each
ground-truth box is encoded against an anchor (a reference box) as four deltas,
the network predicts deltas, and the regression loss is applied to the anchors
matched to an object ("positives") only, summed, and divided by the number of
positives. This module provides the three pieces on ``keras.ops``, so that they run
on TensorFlow, JAX and PyTorch alike:

- :func:`encode_boxes` / :func:`decode_boxes`: the box coder, for boxes in
  ``"xyxy"``, ``"xywh"`` or ``"center_xywh"`` (see :data:`BOX_FORMATS`);
- :func:`anchor_targets`: IoU matching of one image's boxes to its anchors, giving
  the ``y_true`` rows that :class:`BoxRegressionLoss` reads;
- :class:`BoxRegressionLoss`: Smooth L1 (or any loss that :func:`smoothl1.get`
  builds) on positive anchors, normalized by the positives of the global batch,
  also under ``tf.distribute`` and ``keras.distribution`` data parallelism;

and :func:`load_coco`, a reader for COCO-style JSON annotations (no network and no
``pycocotools``), so that the recipe ``examples/box_regression.py`` can run on
other data.

Coordinates are continuous: a box ``(x1, y1, x2, y2)`` has width ``x2 - x1``, with
no "+1" pixel convention.

Example:

>>> import numpy as np
>>> from smoothl1.detection import decode_boxes, encode_boxes
>>> anchor = np.array([0.0, 0.0, 10.0, 20.0])  # center (5, 10), size 10 x 20
>>> box = np.array([-4.0, 4.0, 16.0, 14.0])  # center (6, 9), size 20 x 10
>>> # (10 * 1 / 10, 10 * -1 / 20, 5 ln 2, 5 ln 0.5)
>>> deltas = encode_boxes(box, anchor)
>>> np.asarray(deltas, "float64").round(4).tolist()
[1.0, -0.5, 3.4657, -3.4657]
>>> np.asarray(decode_boxes(deltas, anchor), "float64").round(3).tolist()
[-4.0, 4.0, 16.0, 14.0]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from smoothl1 import losses, penalties, registry

BOX_FORMATS = ("xyxy", "xywh", "center_xywh")
"""The box layouts along the last axis: ``"xyxy"`` is ``(x1, y1, x2, y2)`` (two
corners), ``"xywh"`` is ``(x1, y1, width, height)`` (top-left corner and size, as in
COCO), ``"center_xywh"`` is ``(center x, center y, width, height)``."""

DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""The delta weights ``(wx, wy, ww, wh)`` of the Fast/Faster R-CNN box head."""

SCALE_CLAMP = math.log(1000.0 / 16.0)
"""Upper bound of the width and height deltas (after dividing by their weights)
before ``exp`` in :func:`decode_boxes`: a box grows at most 1000 / 16 = 62.5 times
its anchor, as in Detectron2 and torchvision."""

STATE_POSITIVE, STATE_NEGATIVE, STATE_IGNORE = 1.0, 0.0, -1.0
"""Anchor states in ``y_true[..., 4]`` (see :class:`BoxRegressionLoss`)."""

_PACKAGE = "smoothl1"
_DEFAULT_BETA = 1.0 / 9.0
_NORMALIZE = ("positives", "none")


# ------------------------------------------------------------------ checks


def _check_format(box_format: Any) -> str:
    if box_format not in BOX_FORMATS:
        raise ValueError(
            "Invalid value for argument `box_format`: expected one of "
            f"{', '.join(repr(f) for f in BOX_FORMATS)}. "
            f"Received: box_format={box_format!r}"
        )
    return str(box_format)


def _check_four(name: str, value: Any, *, allow_zero: bool) -> tuple[float, ...]:
    """Four finite numbers, each > 0 (or >= 0 when ``allow_zero``)."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if (
        len(numbers) != 4
        or isinstance(value, (str, bytes))
        or not all(math.isfinite(v) for v in numbers)
        or any(v < 0 or (v == 0 and not allow_zero) for v in numbers)
    ):
        comparison = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"Invalid value for argument `{name}`: expected 4 finite numbers "
            f"{comparison}, one per coordinate (x, y, w, h). Received: "
            f"{name}={value!r}"
        )
    return numbers


def _as_boxes(name: str, value: Any) -> Any:
    x = ops.convert_to_tensor(value)
    shape = tuple(x.shape)
    if not shape or shape[-1] != 4:
        raise ValueError(
            f"Invalid shape for argument `{name}`: the last axis must hold the 4 "
            f"coordinates of a box. Received: {name}.shape={shape}"
        )
    return x


def _to_common_float(a: Any, b: Any) -> tuple[Any, Any]:
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in (a, b)]
    floats = [d for d in dtypes if penalties._is_floating(d)]
    if len(floats) == 2:
        dtype = keras.backend.result_type(*floats)
    elif floats:
        dtype = floats[0]
    else:
        dtype = keras.backend.floatx()
    a = a if dtypes[0] == dtype else ops.cast(a, dtype)
    b = b if dtypes[1] == dtype else ops.cast(b, dtype)
    return a, b


def _check_pairable(name_a: str, a: Any, name_b: str, b: Any) -> None:
    shape_a, shape_b = tuple(a.shape), tuple(b.shape)
    for i in range(1, min(len(shape_a), len(shape_b)) + 1):
        sa, sb = shape_a[-i], shape_b[-i]
        if sa is None or sb is None or sa == sb or sa == 1 or sb == 1:
            continue
        raise ValueError(
            f"Arguments `{name_a}` and `{name_b}` cannot be paired: their shapes "
            "must broadcast (one anchor per box, e.g. boxes of shape (batch, A, 4) "
            f"with anchors of shape (A, 4)). Received: {name_a}.shape={shape_a}, "
            f"{name_b}.shape={shape_b}"
        )


def _concrete(x: Any) -> np.ndarray | None:
    """The values of ``x`` when they are known now; None for a symbolic tensor
    (a ``keras.Input``, a tensor inside ``tf.function`` or ``jax.jit``)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if keras.backend.is_keras_tensor(x):
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.is_symbolic_tensor(x):
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "torch":
        import torch

        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            return None
        if torch.compiler.is_compiling():
            return None
    return np.asarray(ops.convert_to_numpy(x))


def _check_sizes(name: str, box_format: str, width: Any, height: Any) -> None:
    w, h = _concrete(width), _concrete(height)
    if w is None or h is None:
        return
    bad = ~((w > 0) & (h > 0))  # NaN sizes are bad too
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"box {index[0] if len(index) == 1 else index}" if index else "the box"
    how = "x2 - x1 and y2 - y1" if box_format == "xyxy" else "w and h"
    raise ValueError(
        f"Invalid value for argument `{name}`: every box needs a width and a height "
        f"> 0 ({how}; box_format={box_format!r}); {where} has width "
        f"{float(w[index])!r} and height {float(h[index])!r}. "
        f"Received: {name}.shape={tuple(w.shape) + (4,)}"
    )


# ------------------------------------------------------------------ formats


class _NumpyOps:
    """The few ``keras.ops`` functions the coder uses, on NumPy, so that the same
    formulas also run in data preparation (:func:`anchor_targets`) without a
    backend dispatch per small array."""

    stack = staticmethod(np.stack)
    log = staticmethod(np.log)
    exp = staticmethod(np.exp)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)

    @staticmethod
    def divide_no_nan(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        zero = y == 0
        return np.where(zero, 0.0, x / np.where(zero, 1.0, y)).astype(x.dtype)


_NP = _NumpyOps()


def _split(boxes: Any) -> tuple[Any, Any, Any, Any]:
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _to_center(boxes: Any, box_format: str) -> tuple[Any, Any, Any, Any]:
    a, b, c, d = _split(boxes)
    if box_format == "xyxy":
        w, h = c - a, d - b
        return a + 0.5 * w, b + 0.5 * h, w, h
    if box_format == "xywh":
        return a + 0.5 * c, b + 0.5 * d, c, d
    return a, b, c, d


def _from_center(
    cx: Any, cy: Any, w: Any, h: Any, box_format: str, xp: Any = ops
) -> Any:
    if box_format == "xyxy":
        parts = [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    elif box_format == "xywh":
        parts = [cx - 0.5 * w, cy - 0.5 * h, w, h]
    else:
        parts = [cx, cy, w, h]
    return xp.stack(parts, axis=-1)


def convert_boxes(boxes: Any, source: str, target: str) -> Any:
    """Converts boxes between the layouts of :data:`BOX_FORMATS`.

    Args:
        boxes: boxes of shape ``(..., 4)`` in the layout ``source``.
        source: the layout of ``boxes``.
        target: the layout wanted.

    Returns:
        A tensor of the shape of ``boxes`` in the layout ``target``.

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import convert_boxes
    >>> # COCO's (x, y, w, h) = (2, 3, 4, 5) has corners (2, 3) and (6, 8)
    >>> box = np.array([2.0, 3.0, 4.0, 5.0])
    >>> np.asarray(convert_boxes(box, "xywh", "xyxy"), "float64").tolist()
    [2.0, 3.0, 6.0, 8.0]
    """
    source, target = _check_format(source), _check_format(target)
    x = _as_boxes("boxes", boxes)
    if not penalties._is_floating(x.dtype):
        x = ops.cast(x, keras.backend.floatx())
    if source == target:
        return x
    return _from_center(*_to_center(x, source), target)


# ------------------------------------------------------------------ the coder


def encode_boxes(
    boxes: Any,
    anchors: Any,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    box_format: str = "xyxy",
) -> Any:
    """Encodes boxes as regression deltas relative to anchors (Girshick et al.,
    R-CNN, CVPR 2014; Fast R-CNN, ICCV 2015).

    With centers ``(x, y)``, widths ``w`` and heights ``h`` of the box and (``a``)
    of its anchor, and ``weights = (wx, wy, ww, wh)``::

        dx = wx * (x - xa) / wa        dw = ww * ln(w / wa)
        dy = wy * (y - ya) / ha        dh = wh * ln(h / ha)

    The deltas do not depend on ``box_format``: it only says how ``boxes`` and
    ``anchors`` are laid out.

    Args:
        boxes: boxes of shape ``(..., 4)`` in ``box_format``.
        anchors: anchors of shape ``(..., 4)`` in ``box_format``, broadcastable
            against ``boxes``: one anchor per box, e.g. boxes ``(batch, A, 4)``
            against anchors ``(A, 4)``.
        weights: ``(wx, wy, ww, wh)``, four numbers > 0. The default
            ``(10, 10, 5, 5)`` is that of the Fast/Faster R-CNN box head; RPN and
            RetinaNet use ``(1, 1, 1, 1)``.
        box_format: one of :data:`BOX_FORMATS`.

    Returns:
        The deltas ``(dx, dy, dw, dh)``, of the broadcast shape of the inputs, in
        their float dtype (float32 for integer inputs).

    Raises:
        ValueError: an unknown ``box_format``; a last axis that is not 4; shapes
            that do not broadcast; ``weights`` that are not four numbers > 0; a box
            or an anchor whose width or height is not > 0 (``ln 0`` has no finite
            target). The size check needs the values: it runs on concrete
            tensors and arrays, and is skipped for symbolic tensors (inside
            ``tf.function``, ``jax.jit`` or on a ``keras.Input``).

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import encode_boxes
    >>> anchor = np.array([5.0, 10.0, 10.0, 20.0])  # center (5, 10), 10 x 20
    >>> box = np.array([6.0, 9.0, 20.0, 10.0])  # center (6, 9), 20 x 10
    >>> # (1 / 10, -1 / 20, ln 2, ln 0.5)
    >>> deltas = encode_boxes(box, anchor, (1, 1, 1, 1), box_format="center_xywh")
    >>> np.asarray(deltas, "float64").round(4).tolist()
    [0.1, -0.05, 0.6931, -0.6931]
    """
    box_format = _check_format(box_format)
    wx, wy, ww, wh = _check_four("weights", weights, allow_zero=False)
    boxes = _as_boxes("boxes", boxes)
    anchors = _as_boxes("anchors", anchors)
    _check_pairable("boxes", boxes, "anchors", anchors)
    boxes, anchors = _to_common_float(boxes, anchors)

    return _encode(boxes, anchors, (wx, wy, ww, wh), box_format, ops)


def _encode(
    boxes: Any, anchors: Any, weights: Sequence[float], box_format: str, xp: Any
) -> Any:
    wx, wy, ww, wh = weights
    x, y, w, h = _to_center(boxes, box_format)
    xa, ya, wa, ha = _to_center(anchors, box_format)
    _check_sizes("boxes", box_format, w, h)
    _check_sizes("anchors", box_format, wa, ha)
    return xp.stack(
        [
            wx * (x - xa) / wa,
            wy * (y - ya) / ha,
            ww * xp.log(w / wa),
            wh * xp.log(h / ha),
        ],
        axis=-1,
    )


def decode_boxes(
    deltas: Any,
    anchors: Any,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    box_format: str = "xyxy",
) -> Any:
    """Decodes regression deltas into boxes: the inverse of :func:`encode_boxes`.

    With ``weights = (wx, wy, ww, wh)`` and the anchor's center ``(xa, ya)`` and
    size ``(wa, ha)``::

        x = xa + wa * dx / wx      w = wa * exp(min(dw / ww, ln(1000 / 16)))
        y = ya + ha * dy / wy      h = ha * exp(min(dh / wh, ln(1000 / 16)))

    The clamp (:data:`SCALE_CLAMP`) keeps ``exp`` finite for any prediction: a box
    is at most 62.5 times as wide or as tall as its anchor. Only large deltas are
    clamped; a very negative one gives a box of nearly zero size, which is finite.

    Args:
        deltas: ``(dx, dy, dw, dh)`` of shape ``(..., 4)``.
        anchors: anchors of shape ``(..., 4)`` in ``box_format``, broadcastable
            against ``deltas``.
        weights: the weights used to encode, four numbers > 0.
        box_format: the layout of ``anchors`` and of the boxes returned.

    Returns:
        Boxes in ``box_format``, of the broadcast shape of the inputs.

    Raises:
        ValueError: as :func:`encode_boxes`, for ``anchors`` (``deltas`` may take
            any value). The anchor size check is skipped for symbolic tensors.

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import decode_boxes
    >>> anchor = np.array([0.0, 0.0, 10.0, 20.0])  # center (5, 10), 10 x 20
    >>> # dw = 50: 50 / 5 = 10 is clamped to ln 62.5, so w = 10 * 62.5 = 625
    >>> deltas = np.array([0.0, 0.0, 50.0, 0.0])
    >>> np.asarray(decode_boxes(deltas, anchor), "float64").round(3).tolist()
    [-307.5, 0.0, 317.5, 20.0]
    """
    box_format = _check_format(box_format)
    wx, wy, ww, wh = _check_four("weights", weights, allow_zero=False)
    deltas = _as_boxes("deltas", deltas)
    anchors = _as_boxes("anchors", anchors)
    _check_pairable("deltas", deltas, "anchors", anchors)
    deltas, anchors = _to_common_float(deltas, anchors)

    xa, ya, wa, ha = _to_center(anchors, box_format)
    _check_sizes("anchors", box_format, wa, ha)
    dx, dy, dw, dh = _split(deltas)
    x = xa + wa * (dx / wx)
    y = ya + ha * (dy / wy)
    w = wa * ops.exp(penalties._minimum(dw / ww, SCALE_CLAMP))
    h = ha * ops.exp(penalties._minimum(dh / wh, SCALE_CLAMP))
    return _from_center(x, y, w, h, box_format)


def box_iou(boxes_a: Any, boxes_b: Any, box_format: str = "xyxy") -> Any:
    """Intersection over union of boxes, elementwise with broadcasting.

    For all pairs, add axes: ``box_iou(a[:, None], b[None])`` is ``(N, M)``.
    Two boxes with no area give 0, not NaN.

    Args:
        boxes_a: boxes of shape ``(..., 4)`` in ``box_format``.
        boxes_b: boxes of shape ``(..., 4)``, broadcastable against ``boxes_a``.
        box_format: one of :data:`BOX_FORMATS`.

    Returns:
        The IoU, of the broadcast shape without the last axis.

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import box_iou
    >>> a = np.array([0.0, 0.0, 10.0, 10.0])
    >>> b = np.array([5.0, 5.0, 15.0, 15.0])
    >>> # intersection 5 * 5 = 25; union 100 + 100 - 25 = 175; 25 / 175 = 1 / 7
    >>> round(float(box_iou(a, b)), 6)
    0.142857
    """
    box_format = _check_format(box_format)
    a = _as_boxes("boxes_a", boxes_a)
    b = _as_boxes("boxes_b", boxes_b)
    _check_pairable("boxes_a", a, "boxes_b", b)
    a, b = _to_common_float(a, b)
    return _iou(a, b, box_format, ops)


def _iou(a: Any, b: Any, box_format: str, xp: Any) -> Any:
    if box_format != "xyxy":
        a = _from_center(*_to_center(a, box_format), "xyxy", xp)
        b = _from_center(*_to_center(b, box_format), "xyxy", xp)
    ax1, ay1, ax2, ay2 = _split(a)
    bx1, by1, bx2, by2 = _split(b)
    iw = xp.maximum(xp.minimum(ax2, bx2) - xp.maximum(ax1, bx1), 0.0)
    ih = xp.maximum(xp.minimum(ay2, by2) - xp.maximum(ay1, by1), 0.0)
    intersection = iw * ih
    area_a = xp.maximum(ax2 - ax1, 0.0) * xp.maximum(ay2 - ay1, 0.0)
    area_b = xp.maximum(bx2 - bx1, 0.0) * xp.maximum(by2 - by1, 0.0)
    return xp.divide_no_nan(intersection, area_a + area_b - intersection)


def anchor_targets(
    boxes: Any,
    anchors: Any,
    *,
    positive_iou: float = 0.5,
    negative_iou: float = 0.4,
    force_match: bool = True,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    box_format: str = "xyxy",
) -> np.ndarray:
    """The ``y_true`` rows of one image for :class:`BoxRegressionLoss`.

    Each anchor is matched to the box it overlaps most. It is positive when that
    IoU is ``>= positive_iou``, negative below ``negative_iou`` and ignored in
    between (the RetinaNet rule; Faster R-CNN's RPN uses 0.7 and 0.3). With
    ``force_match``, the anchors with the highest IoU to each box are positive
    too, so that no box is left without an anchor (Detectron2's "low-quality
    matches"). A data-preparation helper: it returns NumPy arrays.

    Args:
        boxes: the image's boxes, shape ``(G, 4)``; ``G`` may be 0 (every anchor is
            then negative).
        anchors: shape ``(A, 4)``, in the same ``box_format``.
        positive_iou: the IoU from which an anchor is positive, in ``(0, 1]``.
        negative_iou: the IoU below which an anchor is negative, in ``(0,
            positive_iou]``.
        force_match: also make each box's best anchors positive.
        weights, box_format: as in :func:`encode_boxes`.

    Returns:
        A float32 array of shape ``(A, 5)``: the encoded target of each anchor's
        matched box in columns 0-3 (zeros where the anchor is not positive) and
        its state in column 4 (1 positive, 0 negative, -1 ignore).

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import anchor_targets
    >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60.0]])
    >>> box = np.array([[0, 0, 10, 12.0]])
    >>> # IoU 100 / 120 = 0.83 (positive), 120 / 400 = 0.3 and 0 (negative);
    >>> # the first target: (0, 10 * (6 - 5) / 10, 5 ln 1, 5 ln 1.2)
    >>> anchor_targets(box, anchors)[0].astype("float64").round(4).tolist()
    [0.0, 1.0, 0.0, 0.9116, 1.0]
    """
    box_format = _check_format(box_format)
    weights = _check_four("weights", weights, allow_zero=False)
    if not 0.0 < negative_iou <= positive_iou <= 1.0:
        raise ValueError(
            "Invalid values for arguments `negative_iou` and `positive_iou`: "
            "expected 0 < negative_iou <= positive_iou <= 1. Received: "
            f"negative_iou={negative_iou!r}, positive_iou={positive_iou!r}"
        )
    box_array = np.asarray(boxes, dtype="float32")
    anchor_array = np.asarray(anchors, dtype="float32")
    if box_array.ndim == 1 and box_array.size == 0:
        box_array = box_array.reshape(0, 4)
    for name, array in (("boxes", box_array), ("anchors", anchor_array)):
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(
                f"Invalid shape for argument `{name}`: expected (N, 4), one box "
                f"per row. Received: {name}.shape={array.shape}"
            )
    result = np.zeros((len(anchor_array), 5), dtype="float32")
    if len(box_array) == 0 or len(anchor_array) == 0:
        return result
    for name, array in (("boxes", box_array), ("anchors", anchor_array)):
        _, _, w, h = _to_center(array, box_format)
        _check_sizes(name, box_format, w, h)

    iou = _iou(anchor_array[:, None, :], box_array[None, :, :], box_format, _NP)
    best_box = iou.argmax(axis=1)
    best_iou = iou.max(axis=1)
    state = np.where(best_iou >= positive_iou, STATE_POSITIVE, STATE_IGNORE)
    state[best_iou < negative_iou] = STATE_NEGATIVE
    if force_match:
        best_for_box = iou.max(axis=0)  # (G,)
        ties = (iou == best_for_box[None, :]) & (best_for_box[None, :] > 0)
        state[ties.any(axis=1)] = STATE_POSITIVE
    positive = state == STATE_POSITIVE
    if positive.any():
        result[positive, :4] = _encode(
            box_array[best_box[positive]],
            anchor_array[positive],
            weights,
            box_format,
            _NP,
        )
    result[:, 4] = state
    return result


# ------------------------------------------------------------------ the loss


def _replica_sum(count: Any) -> Any:
    """Sums ``count`` over the replicas of a ``tf.distribute`` strategy when called
    inside one of its replicas; returns it unchanged everywhere else.

    Under ``keras.distribution`` (JAX) the loss sees the global batch as one
    sharded array, so a plain sum already counts every device.
    """
    if keras.backend.backend() != "tensorflow":
        return count
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return count
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return count
    return context.all_reduce(tf.distribute.ReduceOp.SUM, count)


def _check_round_trip(loss: keras.losses.Loss) -> None:
    """Refuses a loss object whose saved config does not bring back the same loss,
    since a model saved with it would reload and train with another one: in Keras
    3.15, for one, ``keras.losses.Huber(2.0).get_config()`` leaves out ``delta``.
    Compared as the box loss uses it, on box deltas of four coordinates whose
    targets and residuals span every usual threshold."""
    grid = np.linspace(-3.0, 3.0, 32, dtype="float32").reshape(8, 4)
    y_true = ops.convert_to_tensor(grid[None])
    y_pred = ops.convert_to_tensor((grid * np.float32(-2.5) + np.float32(0.7))[None])
    before = ops.convert_to_numpy(_penalty_values(loss, y_true, y_pred))
    try:
        again = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss)
        )
        after = ops.convert_to_numpy(_penalty_values(again, y_true, y_pred))
        same = np.allclose(before, after, rtol=1e-6)
    except Exception as error:  # noqa: BLE001 (any failure means: cannot be saved)
        raise ValueError(
            f"Invalid value for argument `loss`: {type(loss).__name__} cannot be "
            f"saved and reloaded ({error}); pass a spec string such as "
            "loss='huber:delta=2' instead"
        ) from error
    if not same:
        raise ValueError(
            f"Invalid value for argument `loss`: {type(loss).__name__}'s saved config "
            "reloads as a different loss (this Keras version leaves a parameter out "
            "of get_config), so a saved model would train with another loss; pass a "
            "spec string instead, such as loss='huber:delta=2' for "
            "keras.losses.Huber(2.0)"
        )


def _penalty_values(loss: keras.losses.Loss, y_true: Any, y_pred: Any) -> Any:
    """The elementwise penalty of ``loss`` on box deltas (``(..., 4)`` each): the
    penalty of a :class:`smoothl1.PenaltyLoss`, or ``call`` of any other loss
    applied to one coordinate at a time."""
    if isinstance(loss, losses.PenaltyLoss):
        return losses.per_sample(
            type(loss).penalty,
            y_true,
            y_pred,
            axis=None,
            with_y_true=loss.penalty_takes_y_true,
            **loss.params,
        )
    # Any other Keras loss averages over the last axis: give it one coordinate
    # per sample.
    values = loss.call(ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1))
    if len(values.shape) == len(y_pred.shape) + 1:
        values = ops.squeeze(values, -1)
    if tuple(values.shape) != tuple(y_pred.shape):
        raise ValueError(
            f"Invalid value for argument `loss`: {type(loss).__name__} did not "
            "give one value per coordinate (a loss with one value per sample "
            f"when given one coordinate per sample is needed). Got shape "
            f"{tuple(values.shape)} for inputs of shape {tuple(y_pred.shape)}."
        )
    return ops.cast(values, y_pred.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BoxRegressionLoss(keras.losses.Loss):
    """Box regression loss on positive anchors, normalized by their number.

    The loss of Fast/Faster R-CNN and RetinaNet box heads: with ``P`` the positive
    anchors of the whole (global) batch, ``t`` their encoded targets and ``p``
    the predicted deltas,

        loss = sum over a in P, c in (x, y, w, h) of
                   coordinate_weight[c] * penalty(p[a, c] - t[a, c])
               / max(|P|, 1)

    with ``penalty`` Smooth L1 (Girshick, Fast R-CNN, ICCV 2015) by default, or any
    elementwise loss. Negative and ignored anchors add nothing and get zero
    gradients, whatever their targets hold. A batch without positives gives
    exactly 0 with zero gradients, never NaN.

    Layout:

    - ``y_true``: shape ``(batch, anchors..., 5)``. ``y_true[..., :4]`` is the
      encoded target ``(dx, dy, dw, dh)`` of :func:`encode_boxes`;
      ``y_true[..., 4]`` is the anchor state: ``1`` positive, ``0`` negative,
      ``-1`` ignored (the same layout serves a classification loss, which does
      tell negatives from ignored anchors). :func:`anchor_targets` builds it.
    - ``y_pred``: shape ``(batch, anchors..., 4)``, the predicted deltas.
    - ``sample_weight`` (optional): one weight per image, shape ``(batch,)``.

    The targets are already encoded, so the box layout (``box_format``) does not
    enter the loss; it belongs to :func:`encode_boxes` and :func:`anchor_targets`.

    Several devices: the normalizer ``|P|`` counts the positives of every replica.
    Under ``tf.distribute`` (e.g. ``MirroredStrategy``) the per-replica counts are
    summed with an all-reduce; under ``keras.distribution.DataParallel`` on JAX the
    loss sees the global batch as one sharded array. Either way, training on
    several devices gives the same loss and the same gradients as one device on
    the same global batch. Keras's PyTorch backend has no data-parallel path. A
    hand-written JAX step under ``shard_map`` or ``pmap`` sees only its shard:
    there the count is per device, and the step has to ``psum`` it itself.

    Args:
        beta: the Smooth L1 threshold, a number >= 0 (``0`` is L1), or four, one
            per coordinate (e.g. ``(1/9, 1/9, 1/18, 1/18)``). Used when
            ``loss="smooth_l1"``; with any other ``loss`` leave it at its default
            and put the parameters in the spec.
        loss: the elementwise penalty: ``"smooth_l1"``, any spec that
            :func:`smoothl1.get` reads (``"huber:delta=0.5"``, ``"mae"`` for L1,
            ``"mse"`` for L2), or a ``keras.losses.Loss`` (the penalty of a
            :class:`smoothl1.PenaltyLoss`; ``call`` of any other loss, applied to
            one coordinate at a time).
        normalize: ``"positives"`` divides by the number of positive anchors in the
            global batch (at least 1); ``"none"`` returns the plain sum.
        coordinate_weights: ``None``, or four numbers >= 0 that multiply the
            penalty of ``x``, ``y``, ``w`` and ``h``.
        reduction: how Keras reduces the per-image values (each image's share of
            the normalized sum). The default ``"sum"`` gives the formula above;
            ``"sum_over_batch_size"`` divides it further by the batch size.
        name: the loss name shown in logs.
        dtype: the dtype of the computation; half precision is computed in
            float32, as in :mod:`smoothl1.losses`.

    Example:

    >>> import numpy as np
    >>> from smoothl1.detection import BoxRegressionLoss
    >>> y_true = np.array([[[0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, -1]]])
    >>> y_pred = np.array([[[0.05, 0.5, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9]]])
    >>> # one positive: 0.5 * 0.05**2 * 9 + (0.5 - 0.5 / 9) = 0.01125 + 0.44444
    >>> round(float(BoxRegressionLoss()(y_true, y_pred)), 5)
    0.45569
    """

    def __init__(
        self,
        beta: penalties.Beta = _DEFAULT_BETA,
        *,
        loss: str | keras.losses.Loss = "smooth_l1",
        normalize: str = "positives",
        coordinate_weights: Sequence[float] | None = None,
        reduction: str | None = "sum",
        name: str = "box_regression_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.beta = penalties.check_beta(beta)
        if isinstance(self.beta, tuple) and len(self.beta) != 4:
            raise ValueError(
                "Invalid value for argument `beta`: a per-coordinate threshold needs "
                f"4 entries (x, y, w, h). Received: beta={beta!r}"
            )
        self.loss = loss
        self.penalty_loss = self._resolve(loss, self.beta)
        if isinstance(loss, keras.losses.Loss):
            _check_round_trip(loss)
        if normalize not in _NORMALIZE:
            raise ValueError(
                "Invalid value for argument `normalize`: expected one of "
                f"{', '.join(repr(n) for n in _NORMALIZE)}. "
                f"Received: normalize={normalize!r}"
            )
        self.normalize = normalize
        self.coordinate_weights = (
            None
            if coordinate_weights is None
            else _check_four("coordinate_weights", coordinate_weights, allow_zero=True)
        )
        self._dtype_argument = dtype

    @staticmethod
    def _resolve(loss: Any, beta: Any) -> keras.losses.Loss:
        if isinstance(loss, str) and loss.strip().lower() == "smooth_l1":
            return losses.SmoothL1Loss(beta=beta)
        if beta != _DEFAULT_BETA:
            raise ValueError(
                "Invalid combination of arguments `beta` and `loss`: `beta` sets the "
                "threshold of loss='smooth_l1' only; give the parameters of any "
                "other loss in its spec (e.g. loss='smooth_l1:beta=0.5' or "
                f"loss='huber:delta=0.5'). Received: beta={beta!r}, loss={loss!r}"
            )
        return registry.get(loss)

    @property
    def dtype(self) -> str:
        dtype = str(super().dtype)
        return "float32" if dtype in losses._HALF else dtype

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        if self.reduction not in (None, "none") and len(loss.shape) > 0:
            # An empty batch comes back from Keras unreduced, with shape (0,).
            loss = ops.sum(loss)
        return loss

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        self._check_shapes(y_true, y_pred)

        positive = y_true[..., 4] > 0.5
        mask = ops.cast(positive, y_pred.dtype)
        # Only positive anchors reach the penalty; every other one is compared as
        # (0, 0), so that whatever its target or prediction holds (inf, NaN), it
        # adds exactly 0 and gets a zero gradient.
        keep = ops.expand_dims(positive, -1)
        zeros = ops.zeros_like(y_pred)
        targets = ops.where(keep, y_true[..., :4], zeros)
        predictions = ops.where(keep, y_pred, zeros)
        values = self._elementwise(targets, predictions) * ops.expand_dims(mask, -1)
        if self.coordinate_weights is not None:
            values = values * ops.convert_to_tensor(
                np.asarray(self.coordinate_weights), dtype=values.dtype
            )
        rank = len(values.shape)
        per_sample = ops.sum(values, axis=tuple(range(1, rank)) if rank > 1 else None)

        if self.normalize == "positives":
            count = ops.stop_gradient(_replica_sum(ops.sum(mask)))
            per_sample = per_sample / ops.maximum(count, 1.0)
        return per_sample

    def _check_shapes(self, y_true: Any, y_pred: Any) -> None:
        true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
        leading_ok = len(true_shape) == len(pred_shape) and all(
            a is None or b is None or a == b
            for a, b in zip(true_shape[:-1], pred_shape[:-1], strict=True)
        )
        if (
            not pred_shape
            or pred_shape[-1] != 4
            or true_shape[-1:] != (5,)
            or not leading_ok
        ):
            raise ValueError(
                "BoxRegressionLoss expects y_true of shape (..., 5), the encoded "
                "target (dx, dy, dw, dh) and the anchor state (1 positive, 0 "
                "negative, -1 ignore), and y_pred of shape (..., 4), the predicted "
                "deltas, with the same leading axes. Received: "
                f"y_true.shape={true_shape}, y_pred.shape={pred_shape}"
            )

    def _elementwise(self, y_true: Any, y_pred: Any) -> Any:
        return _penalty_values(self.penalty_loss, y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        loss = self.loss
        if isinstance(loss, keras.losses.Loss):
            loss = keras.saving.serialize_keras_object(loss)
        config.update(
            beta=list(self.beta) if isinstance(self.beta, tuple) else self.beta,
            loss=loss,
            normalize=self.normalize,
            coordinate_weights=(
                None
                if self.coordinate_weights is None
                else list(self.coordinate_weights)
            ),
            dtype=losses._serialize_dtype(self._dtype_argument),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BoxRegressionLoss:
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)


# ------------------------------------------------------------------ COCO


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One image of a COCO-style annotation file.

    Attributes:
        id: the image id.
        file_name: the file name, as written in the file (relative to the image
            folder).
        width, height: the image size in pixels.
        boxes: float32 array ``(n, 4)`` in the ``box_format`` asked of
            :func:`load_coco`, in pixels.
        category_ids: int64 array ``(n,)``, the category of each box.
    """

    id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    category_ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class CocoAnnotations:
    """The content of a COCO-style annotation file.

    Attributes:
        images: one :class:`CocoImage` per image, in file order (images without
            boxes included).
        categories: category id -> name.
        skipped_crowd: crowd annotations left out (``iscrowd=1``).
        skipped_empty: annotations left out because their box has no area.
    """

    images: list[CocoImage]
    categories: dict[int, str]
    skipped_crowd: int
    skipped_empty: int


def _fail(path: str, detail: str) -> ValueError:
    return ValueError(f"Invalid COCO annotation file {path!r}: {detail}")


def load_coco(
    path: str | os.PathLike[str],
    *,
    box_format: str = "xyxy",
    include_crowd: bool = False,
) -> CocoAnnotations:
    """Reads a COCO-style JSON annotation file, with no network and no
    ``pycocotools``.

    The file holds ``"images"`` (each with ``id``, ``file_name``, ``width``,
    ``height``), ``"annotations"`` (each with ``image_id``, ``bbox`` as ``[x, y,
    width, height]`` in pixels, optional ``category_id`` and ``iscrowd``) and
    optionally ``"categories"`` (each with ``id`` and ``name``). Segmentations and
    other keys are not read.

    Args:
        path: the JSON file.
        box_format: the layout of the boxes returned (COCO's own is ``"xywh"``).
        include_crowd: keep annotations marked ``iscrowd=1`` (left out by default,
            as COCO's evaluation does).

    Returns:
        A :class:`CocoAnnotations`. Boxes with a width or height <= 0 are left out
        and counted in ``skipped_empty`` (a warning says how many).

    Raises:
        ValueError: the file is not JSON, a required key is missing, a ``bbox``
            is not four numbers, or an annotation names an image or a category
            that the file does not define. The message names the file and the
            entry.

    Example:

    >>> import json, tempfile, os
    >>> from smoothl1.detection import load_coco
    >>> data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8,
    ...                     "height": 6}],
    ...         "annotations": [{"image_id": 1, "bbox": [1, 2, 3, 4],
    ...                          "category_id": 7}],
    ...         "categories": [{"id": 7, "name": "cup"}]}
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> with open(path, "w") as f:
    ...     json.dump(data, f)
    >>> coco = load_coco(path)
    >>> coco.images[0].boxes.tolist(), coco.categories
    ([[1.0, 2.0, 4.0, 6.0]], {7: 'cup'})
    """
    box_format = _check_format(box_format)
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise _fail(name, f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise _fail(name, "expected a JSON object at the top level")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise _fail(name, f"missing the list {key!r}")

    categories: dict[int, str] = {}
    for i, entry in enumerate(data.get("categories") or []):
        if not isinstance(entry, dict) or "id" not in entry:
            raise _fail(name, f"categories[{i}] has no 'id'")
        categories[int(entry["id"])] = str(entry.get("name", entry["id"]))

    images: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(data["images"]):
        missing = [
            k
            for k in ("id", "file_name", "width", "height")
            if not isinstance(entry, dict) or k not in entry
        ]
        if missing:
            raise _fail(name, f"images[{i}] has no {', '.join(map(repr, missing))}")
        images[int(entry["id"])] = {"entry": entry, "boxes": [], "categories": []}

    skipped_crowd = skipped_empty = 0
    for i, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict) or "image_id" not in entry:
            raise _fail(name, f"annotations[{i}] has no 'image_id'")
        bbox = entry.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise _fail(
                name,
                f"annotations[{i}]['bbox'] must be 4 numbers [x, y, width, "
                f"height]; got {bbox!r}",
            )
        image_id = int(entry["image_id"])
        if image_id not in images:
            raise _fail(
                name,
                f"annotations[{i}] names image_id={image_id}, which is not in 'images'",
            )
        category = int(entry.get("category_id", 0))
        if categories and category not in categories:
            raise _fail(
                name,
                f"annotations[{i}] names category_id={category}, "
                "which is not in 'categories'",
            )
        if entry.get("iscrowd", 0) and not include_crowd:
            skipped_crowd += 1
            continue
        if not (bbox[2] > 0 and bbox[3] > 0):
            skipped_empty += 1
            continue
        images[image_id]["boxes"].append([float(v) for v in bbox])
        images[image_id]["categories"].append(category)

    if skipped_empty:
        warnings.warn(
            f"{name}: left out {skipped_empty} annotation(s) whose box has a width "
            "or height <= 0.",
            stacklevel=2,
        )
    result = []
    for image_id, item in images.items():
        boxes = np.asarray(item["boxes"], dtype="float32").reshape(-1, 4)
        if len(boxes) and box_format != "xywh":
            boxes = np.asarray(
                ops.convert_to_numpy(convert_boxes(boxes, "xywh", box_format)),
                dtype="float32",
            )
        entry = item["entry"]
        result.append(
            CocoImage(
                id=image_id,
                file_name=str(entry["file_name"]),
                width=int(entry["width"]),
                height=int(entry["height"]),
                boxes=boxes,
                category_ids=np.asarray(item["categories"], dtype="int64"),
            )
        )
    return CocoAnnotations(result, categories, skipped_crowd, skipped_empty)
