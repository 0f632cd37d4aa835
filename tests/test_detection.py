"""Box regression: the box coder, anchor targets, BoxRegressionLoss, the COCO reader,
the multi-device normalizer and the recipe ``examples/box_regression.py``.

Reference values come from hand arithmetic (in the comments), from the piecewise
definition of Smooth L1 (Fast R-CNN) written out in NumPy, or from PyTorch's native
``torch.nn.functional.smooth_l1_loss``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import smoothl1
from conftest import BACKEND
from helpers import to_numpy, value_and_grad
from smoothl1.detection import (
    SCALE_CLAMP,
    BoxRegressionLoss,
    anchor_targets,
    box_iou,
    convert_boxes,
    decode_boxes,
    encode_boxes,
    load_coco,
)

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)

# One anchor and one box, in every layout. The anchor has center (5, 10) and size
# 10 x 20; the box has center (6, 9) and size 20 x 10, so its corners are
# (6 - 10, 9 - 5) = (-4, 4) and (6 + 10, 9 + 5) = (16, 14).
ANCHOR = {
    "xyxy": [0.0, 0.0, 10.0, 20.0],
    "xywh": [0.0, 0.0, 10.0, 20.0],
    "center_xywh": [5.0, 10.0, 10.0, 20.0],
}
BOX = {
    "xyxy": [-4.0, 4.0, 16.0, 14.0],
    "xywh": [-4.0, 4.0, 20.0, 10.0],
    "center_xywh": [6.0, 9.0, 20.0, 10.0],
}
# With weights (10, 10, 5, 5): dx = 10 * (6 - 5) / 10 = 1; dy = 10 * (9 - 10) / 20 =
# -0.5; dw = 5 ln(20 / 10) = 5 ln 2; dh = 5 ln(10 / 20) = -5 ln 2.
DELTAS = [1.0, -0.5, 5 * LN2, -5 * LN2]
# Round trips in float32: coordinates up to ~300 pass through about six roundings
# (center, size, division, log/exp, product, corner), each within half an ulp
# (300 * 2**-24 = 1.8e-5), so 1e-4 absolute leaves room; deltas are O(10).
ROUND_TRIP_ATOL = 1e-4

FORMATS = list(BOX)


def f32(x):
    return np.asarray(x, dtype="float32")


# ---------------------------------------------------------------- the coder


@pytest.mark.parametrize("box_format", FORMATS)
def test_encode_hand_values_every_format(box_format):
    deltas = encode_boxes(
        f32(BOX[box_format]), f32(ANCHOR[box_format]), **{"box_format": box_format}
    )
    np.testing.assert_allclose(to_numpy(deltas), DELTAS, rtol=1e-6, atol=1e-6)
    # Unit weights leave the plain ratios: 1 / 10, -1 / 20, ln 2, -ln 2.
    unit = encode_boxes(
        f32(BOX[box_format]), f32(ANCHOR[box_format]), (1, 1, 1, 1), box_format
    )
    np.testing.assert_allclose(
        to_numpy(unit), [0.1, -0.05, LN2, -LN2], rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("box_format", FORMATS)
def test_decode_hand_values_every_format(box_format):
    boxes = decode_boxes(f32(DELTAS), f32(ANCHOR[box_format]), box_format=box_format)
    np.testing.assert_allclose(to_numpy(boxes), BOX[box_format], atol=1e-5)


def test_encode_integer_inputs_give_float32():
    # Integer boxes are cast: box (0, 0, 20, 20) on anchor (0, 0, 10, 10):
    # centers 10 and 5, so dx = 10 * 5 / 10 = 5; dw = 5 ln 2.
    deltas = encode_boxes(np.array([0, 0, 20, 20]), np.array([0, 0, 10, 10]))
    assert keras.backend.standardize_dtype(deltas.dtype) == "float32"
    np.testing.assert_allclose(
        to_numpy(deltas), [5.0, 5.0, 5 * LN2, 5 * LN2], rtol=1e-6
    )


@pytest.mark.parametrize("box_format", FORMATS)
def test_round_trip_with_broadcast_anchors(box_format):
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, size=(2, 5, 2))
    sizes = rng.uniform(1, 100, size=(2, 5, 2))
    xyxy = f32(np.concatenate([corners, corners + sizes], axis=-1))
    anchor_corners = rng.uniform(0, 200, size=(5, 2))
    anchors_xyxy = f32(
        np.concatenate(
            [anchor_corners, anchor_corners + rng.uniform(8, 64, (5, 2))], -1
        )
    )
    boxes = to_numpy(convert_boxes(xyxy, "xyxy", box_format))
    anchors = to_numpy(convert_boxes(anchors_xyxy, "xyxy", box_format))
    deltas = encode_boxes(boxes, anchors, box_format=box_format)
    assert tuple(deltas.shape) == (2, 5, 4)
    back = decode_boxes(deltas, anchors, box_format=box_format)
    np.testing.assert_allclose(to_numpy(back), boxes, atol=ROUND_TRIP_ATOL)
    # And the other way: deltas within the clamp survive decode then encode.
    some = f32(rng.uniform(-3, 3, size=(2, 5, 4)))
    again = encode_boxes(
        decode_boxes(some, anchors, box_format=box_format),
        anchors,
        box_format=box_format,
    )
    np.testing.assert_allclose(to_numpy(again), some, atol=ROUND_TRIP_ATOL)


def test_convert_boxes_hand_values():
    # xyxy (2, 3, 6, 11): size 4 x 8, center (4, 7)
    xyxy = f32([2.0, 3.0, 6.0, 11.0])
    np.testing.assert_allclose(
        to_numpy(convert_boxes(xyxy, "xyxy", "xywh")), [2, 3, 4, 8]
    )
    np.testing.assert_allclose(
        to_numpy(convert_boxes(xyxy, "xyxy", "center_xywh")), [4, 7, 4, 8]
    )
    np.testing.assert_allclose(
        to_numpy(convert_boxes(f32([4, 7, 4, 8]), "center_xywh", "xyxy")), xyxy
    )


def test_scale_clamp_is_ln_62_5():
    assert SCALE_CLAMP == pytest.approx(math.log(62.5), rel=1e-15)


def test_decode_clamps_width_and_height():
    anchor = f32([0.0, 0.0, 10.0, 20.0])  # center (5, 10), 10 x 20
    # dw = 50 and dh = 1e6: 50 / 5 = 10 and 1e6 / 5 exceed ln 62.5, so the box
    # is 62.5 times its anchor: 625 x 1250, centered at (5, 10):
    # x: 5 -+ 312.5 = (-307.5, 317.5); y: 10 -+ 625 = (-615, 635)
    boxes = decode_boxes(f32([0.0, 0.0, 50.0, 1e6]), anchor)
    np.testing.assert_allclose(to_numpy(boxes), [-307.5, -615.0, 317.5, 635.0])
    # Just below the clamp nothing changes: dw / 5 = 4 gives 10 e**4 = 545.98
    boxes = decode_boxes(f32([0.0, 0.0, 20.0, 0.0]), anchor)
    width = to_numpy(boxes)[2] - to_numpy(boxes)[0]
    np.testing.assert_allclose(width, 10 * math.exp(4.0), rtol=1e-6)
    # A very negative delta is not clamped: a finite box of nearly zero width.
    boxes = to_numpy(decode_boxes(f32([0.0, 0.0, -1e6, 0.0]), anchor))
    assert np.all(np.isfinite(boxes)) and boxes[2] - boxes[0] == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: encode_boxes(
                f32(BOX["xyxy"]), f32(ANCHOR["xyxy"]), box_format="yxyx"
            ),
            "box_format='yxyx'",
        ),
        (
            lambda: decode_boxes(f32(DELTAS), f32(ANCHOR["xyxy"]), box_format="cxcywh"),
            "box_format='cxcywh'",
        ),
        (
            lambda: box_iou(f32(BOX["xyxy"]), f32(BOX["xyxy"]), "XYXY"),
            "box_format='XYXY'",
        ),
        (
            lambda: encode_boxes(f32([[0, 0, 1]]), f32([0, 0, 1, 1])),
            r"`boxes`.*boxes.shape=\(1, 3\)",
        ),
        (
            lambda: encode_boxes(f32([0, 0, 1, 1]), f32([0, 0, 1, 1, 1])),
            r"`anchors`.*anchors.shape=\(5,\)",
        ),
        (
            lambda: decode_boxes(f32([[1.0, 2.0]]), f32([0, 0, 1, 1])),
            r"`deltas`.*deltas.shape=\(1, 2\)",
        ),
        (
            lambda: encode_boxes(
                np.zeros((2, 3, 4), "float32") + [0, 0, 1, 1],
                np.zeros((5, 4), "float32") + [0, 0, 1, 1],
            ),
            r"cannot be paired.*boxes.shape=\(2, 3, 4\), anchors.shape=\(5, 4\)",
        ),
        (
            lambda: decode_boxes(
                np.zeros((3, 4), "float32"), np.zeros((2, 4), "float32") + [0, 0, 1, 1]
            ),
            r"cannot be paired.*deltas.shape=\(3, 4\), anchors.shape=\(2, 4\)",
        ),
        (
            lambda: encode_boxes(f32(BOX["xyxy"]), f32(ANCHOR["xyxy"]), (1, 1, 1)),
            "`weights`",
        ),
        (
            lambda: encode_boxes(f32(BOX["xyxy"]), f32(ANCHOR["xyxy"]), (1, 1, 0, 1)),
            "`weights`",
        ),
    ],
)
def test_coder_errors_name_argument_and_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_negative_or_zero_sizes_are_refused_with_the_box():
    ok = f32([[0, 0, 10, 10], [0, 0, 10, 10]])
    # xyxy: the second box has x2 - x1 = 3 - 5 = -2
    bad = f32([[0, 0, 4, 4], [5, 0, 3, 4]])
    with pytest.raises(ValueError, match=r"`boxes`.*box 1 has width -2.0.*\(2, 4\)"):
        encode_boxes(bad, ok)
    # xywh: a negative height
    with pytest.raises(ValueError, match=r"`boxes`.*height -1.0"):
        encode_boxes(f32([0, 0, 2, -1]), f32([0, 0, 3, 3]), box_format="xywh")
    # anchors of zero width are refused by both encode and decode (division by 0)
    flat = f32([0, 0, 0, 5])
    with pytest.raises(ValueError, match=r"`anchors`.*width 0.0"):
        encode_boxes(f32([0, 0, 1, 1]), flat)
    with pytest.raises(ValueError, match=r"`anchors`.*width 0.0"):
        decode_boxes(f32([0, 0, 0, 0]), flat)


def test_size_check_is_skipped_for_keras_inputs():
    # A keras.Input has no values: the coder builds the graph without checking.
    boxes = keras.Input((5, 4))
    deltas = encode_boxes(boxes, f32(np.tile([0, 0, 10, 10], (5, 1))))
    assert tuple(deltas.shape) == (None, 5, 4)


@pytest.mark.skipif(
    BACKEND == "torch", reason="PyTorch runs eagerly: its tensors always have values"
)
def test_size_check_is_skipped_inside_traced_functions():
    # Inside jax.jit or tf.function the values are unknown, so a negative width
    # is not caught: it reaches the log and gives NaN instead of an error.
    bad = f32([0, 0, -2, 4])
    anchor = f32([0, 0, 10, 10])
    if BACKEND == "jax":
        import jax

        out = np.asarray(jax.jit(lambda b: encode_boxes(b, anchor))(bad))
    else:
        import tensorflow as tf

        out = tf.function(lambda b: encode_boxes(b, anchor))(bad).numpy()
    assert np.isnan(out[2])
    with pytest.raises(ValueError, match="width -2.0"):
        encode_boxes(bad, anchor)  # eagerly, the same call is refused


# ---------------------------------------------------------------- IoU and targets


def test_box_iou_hand_values():
    a = f32([0.0, 0.0, 10.0, 10.0])
    others = f32(
        [
            [5.0, 5.0, 15.0, 15.0],  # 25 / (100 + 100 - 25) = 1 / 7
            [0.0, 0.0, 10.0, 10.0],  # identical: 1
            [20.0, 20.0, 30.0, 30.0],  # disjoint: 0
            [0.0, 0.0, 10.0, 5.0],  # inside: 50 / 100
        ]
    )
    np.testing.assert_allclose(
        to_numpy(box_iou(a, others)), [1 / 7, 1.0, 0.0, 0.5], rtol=1e-6
    )
    # The same pairs in xywh give the same numbers.
    a_xywh = to_numpy(convert_boxes(a, "xyxy", "xywh"))
    others_xywh = to_numpy(convert_boxes(others, "xyxy", "xywh"))
    np.testing.assert_allclose(
        to_numpy(box_iou(a_xywh, others_xywh, "xywh")), [1 / 7, 1, 0, 0.5], rtol=1e-6
    )
    # Two boxes without area: 0 / 0 is reported as 0.
    point = f32([1.0, 1.0, 1.0, 1.0])
    assert float(to_numpy(box_iou(point, point))) == 0.0
    # Pairwise by broadcasting: (1, 4) against (4, 4) gives (4,), (2, 1) x (1, 4).
    pairs = box_iou(f32([a, a])[:, None, :], others[None, :, :])
    assert tuple(pairs.shape) == (2, 4)


def test_anchor_targets_positive_negative_ignore():
    anchors = f32([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60]])
    box = f32([[0, 0, 10, 12]])
    # IoU: 100 / 120 = 0.833 (positive), 120 / 400 = 0.3 (negative), 0 (negative).
    # Target of anchor 0: centers (5, 6) vs (5, 5), sizes 10 x 12 vs 10 x 10:
    # (0, 10 * 1 / 10, 5 ln 1, 5 ln 1.2)
    rows = anchor_targets(box, anchors)
    np.testing.assert_allclose(rows[:, 4], [1, 0, 0])
    np.testing.assert_allclose(rows[0, :4], [0, 1, 0, 5 * math.log(1.2)], rtol=1e-6)
    np.testing.assert_array_equal(rows[1:, :4], 0.0)

    # A box of 10 x 4.5 on anchor (0, 0, 10, 10): IoU 45 / 100 = 0.45, between 0.4
    # and 0.5, so ignored; with force_match it is the box's best anchor: positive.
    thin = f32([[0, 0, 10, 4.5]])
    np.testing.assert_array_equal(
        anchor_targets(thin, anchors, force_match=False)[:, 4], [-1, 0, 0]
    )
    np.testing.assert_array_equal(anchor_targets(thin, anchors)[:, 4], [1, 0, 0])
    # No box: every anchor is negative, with zero targets.
    np.testing.assert_array_equal(anchor_targets(np.zeros((0, 4)), anchors), 0.0)


def test_anchor_targets_errors():
    anchors = f32([[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="negative_iou=0.6, positive_iou=0.5"):
        anchor_targets(f32([[0, 0, 1, 1]]), anchors, negative_iou=0.6)
    with pytest.raises(ValueError, match=r"`boxes`.*boxes.shape=\(4,\)"):
        anchor_targets(f32([0, 0, 1, 1]), anchors)
    with pytest.raises(ValueError, match=r"`boxes`.*width -1.0"):
        anchor_targets(f32([[2, 0, 1, 1]]), anchors)


# ---------------------------------------------------------------- the loss


def rows(targets, states):
    """y_true from (..., 4) targets and (...) states."""
    return f32(np.concatenate([f32(targets), f32(states)[..., None]], axis=-1))


def smooth_l1_reference(d, beta):
    """The piecewise definition (Girshick, Fast R-CNN, eq. 3), in float64."""
    d = np.asarray(d, "float64")
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d**2 / beta, a - 0.5 * beta)


def test_no_positives_is_exactly_zero_with_zero_gradients():
    # Negatives and ignored anchors whose targets are garbage (inf, NaN) and whose
    # predictions are huge: none of it may reach the value or the gradient.
    targets = np.full((2, 3, 4), np.inf, "float32")
    targets[1, 0] = np.nan
    y_true = rows(targets, [[0, -1, 0], [-1, -1, 0]])
    y_pred = f32(np.random.default_rng(1).normal(scale=1e3, size=(2, 3, 4)))
    loss = BoxRegressionLoss()
    value, grad = value_and_grad(lambda p: loss(y_true, p), y_pred)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_one_positive_hand_value_and_gradient():
    # One positive anchor with d = p - t = (0.05, -0.5, 0, 2) and beta = 1/9:
    # 0.5 * 0.05**2 * 9 = 0.01125; 0.5 - 1/18 = 0.444444; 0; 2 - 1/18 = 1.944444
    # sum 2.400139, divided by 1 positive. The negative anchor does not count.
    t = f32([[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    y_true = rows(t, [[1, 0]])
    y_pred = f32([[[1.05, 0.5, 1.0, 3.0], [7.0, -7.0, 7.0, 7.0]]])
    value, grad = value_and_grad(lambda p: BoxRegressionLoss()(y_true, p), y_pred)
    np.testing.assert_allclose(
        value, 0.01125 + (0.5 - 1 / 18) + (2 - 1 / 18), rtol=1e-6
    )
    # gradient: clip(d / beta, -1, 1) = (0.45, -1, 0, 1) on the positive, 0 else
    np.testing.assert_allclose(
        grad, [[[0.45, -1.0, 0.0, 1.0], [0, 0, 0, 0]]], rtol=1e-5, atol=1e-7
    )


def test_many_positives_against_torch():
    rng = np.random.default_rng(2)
    targets = f32(rng.normal(size=(3, 10, 4)))
    states = rng.choice([1.0, 0.0, -1.0], size=(3, 10), p=[0.3, 0.5, 0.2])
    states[0, :2] = 1.0  # at least two positives
    y_true = rows(targets, states)
    y_pred = f32(targets + rng.normal(scale=0.3, size=targets.shape))
    positive = states == 1.0
    count = positive.sum()
    for beta in (1 / 9, 1.0):
        expected = (
            torch.nn.functional.smooth_l1_loss(
                torch.tensor(y_pred[positive]),
                torch.tensor(targets[positive]),
                beta=beta,
                reduction="sum",
            ).item()
            / count
        )
        value = to_numpy(BoxRegressionLoss(beta)(y_true, y_pred))
        np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_ignored_anchors_are_as_if_removed():
    rng = np.random.default_rng(3)
    targets = f32(rng.normal(size=(2, 6, 4)))
    y_pred = f32(rng.normal(size=(2, 6, 4)))
    states = np.array([[1, -1, 0, 1, -1, -1], [0, 1, -1, 0, 0, 1]], "float32")
    loss = BoxRegressionLoss(beta=0.5)
    full = to_numpy(loss(rows(targets, states), y_pred))
    kept = states != -1  # four anchors per image are not ignored
    trimmed = to_numpy(
        loss(
            rows(targets[kept].reshape(2, 4, 4), states[kept].reshape(2, 4)),
            y_pred[kept].reshape(2, 4, 4),
        )
    )
    np.testing.assert_allclose(full, trimmed, rtol=1e-6)
    # and both equal the definition: 4 positives
    d = (y_pred - targets)[states == 1]
    np.testing.assert_allclose(full, smooth_l1_reference(d, 0.5).sum() / 4, rtol=1e-6)


def test_coordinate_weights_and_per_coordinate_beta():
    # Two positives, d = (1, 1, 1, 1) and (0.1, 0.1, 0.1, 0.1).
    t = np.zeros((1, 2, 4), "float32")
    y_true = rows(t, [[1, 1]])
    y_pred = f32([[[1, 1, 1, 1], [0.1, 0.1, 0.1, 0.1]]])
    # beta = 1: |d| = 1 gives 0.5, |d| = 0.1 gives 0.005 per coordinate.
    # weights (1, 1, 2, 0.5): (0.5 + 0.005) * (1 + 1 + 2 + 0.5) = 2.2725; / 2
    loss = BoxRegressionLoss(1.0, coordinate_weights=(1, 1, 2, 0.5))
    np.testing.assert_allclose(to_numpy(loss(y_true, y_pred)), 2.2725 / 2, rtol=1e-6)
    # beta (1, 1, 0.5, 0): x, y as above (0.505 each); w with beta 0.5:
    # 1 - 0.25 = 0.75 and 0.5 * 0.01 / 0.5 = 0.01; h with beta 0 is |d|: 1 + 0.1.
    # (0.505 * 2 + 0.76 + 1.1) / 2 = 2.87 / 2
    loss = BoxRegressionLoss((1.0, 1.0, 0.5, 0.0))
    np.testing.assert_allclose(to_numpy(loss(y_true, y_pred)), 2.87 / 2, rtol=1e-6)


def test_normalize_reduction_and_sample_weight():
    # Image 0: one positive with d = (2, 0, 0, 0) -> 2 - 0.5 = 1.5 (beta 1).
    # Image 1: two positives with d = (0, 1, 0, 0) -> 0.5 each, 1.0 in all.
    t = np.zeros((2, 2, 4), "float32")
    y_true = rows(t, [[1, 0], [1, 1]])
    y_pred = np.zeros((2, 2, 4), "float32")
    y_pred[0, 0, 0] = 2.0
    y_pred[1, :, 1] = 1.0
    total = 1.5 + 1.0
    cases = [
        (BoxRegressionLoss(1.0), total / 3),  # 3 positives
        (BoxRegressionLoss(1.0, normalize="none"), total),
        (BoxRegressionLoss(1.0, reduction="sum_over_batch_size"), total / 3 / 2),
        (BoxRegressionLoss(1.0, reduction=None), [1.5 / 3, 1.0 / 3]),
    ]
    for loss, expected in cases:
        np.testing.assert_allclose(to_numpy(loss(y_true, y_pred)), expected, rtol=1e-6)
    # A weight per image: (1.5 * 2 + 1.0 * 0.5) / 3
    weighted = BoxRegressionLoss(1.0)(y_true, y_pred, sample_weight=f32([2.0, 0.5]))
    np.testing.assert_allclose(to_numpy(weighted), 3.5 / 3, rtol=1e-6)


def test_other_penalties_by_spec_and_object():
    # Two positives: d = (0.2, -1, 3, 0) and (0, 0, 0, -0.5); one negative.
    t = np.zeros((1, 3, 4), "float32")
    y_true = rows(t, [[1, 1, 0]])
    y_pred = f32([[[0.2, -1, 3, 0], [0, 0, 0, -0.5], [9, 9, 9, 9]]])
    abs_sum = 0.2 + 1 + 3 + 0.5  # 4.7
    square_sum = 0.04 + 1 + 9 + 0.25  # 10.29
    # Huber, delta 0.5: 0.5 * 0.2**2 = 0.02; 0.5 * (1 - 0.25) = 0.375;
    # 0.5 * (3 - 0.25) = 1.375; 0.5 * 0.5**2 = 0.125 -> 1.895
    cases = {
        "mae": abs_sum / 2,
        "mse": square_sum / 2,
        "smooth_l1:beta=0": abs_sum / 2,
        "huber:delta=0.5": 1.895 / 2,
    }
    for spec, expected in cases.items():
        value = to_numpy(BoxRegressionLoss(loss=spec)(y_true, y_pred))
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=spec)
    as_object = BoxRegressionLoss(loss=smoothl1.HuberLoss(delta=0.5))
    np.testing.assert_allclose(to_numpy(as_object(y_true, y_pred)), 1.895 / 2, 1e-6)


def test_empty_batch_is_zero():
    y_true = np.zeros((0, 5, 5), "float32")
    y_pred = np.zeros((0, 5, 4), "float32")
    value = BoxRegressionLoss()(y_true, y_pred)
    assert tuple(value.shape) == () and float(to_numpy(value)) == 0.0


def test_half_precision_is_computed_in_float32():
    y_true = rows(np.zeros((1, 1, 4)), [[1]])
    # d = 300 in float16: 300 - 1/18 = 299.944 per coordinate; float16 cannot hold
    # 4 * 299.944 to better than 0.25, float32 can.
    y_pred = np.full((1, 1, 4), 300.0, "float16")
    value = BoxRegressionLoss(dtype="float16")(y_true, y_pred)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(value), 4 * (300 - 1 / 18), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": -1.0}, "beta=-1.0"),
        ({"beta": (0.1, 0.1, 0.1)}, r"4 entries.*beta=\(0.1, 0.1, 0.1\)"),
        ({"beta": 0.5, "loss": "huber"}, "beta=0.5, loss='huber'"),
        ({"loss": "nonesuch"}, "Unknown loss 'nonesuch'"),
        ({"normalize": "anchors"}, "normalize='anchors'"),
        ({"coordinate_weights": (1, 1, 1)}, "coordinate_weights"),
        ({"coordinate_weights": (1, 1, -1, 1)}, "coordinate_weights"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_loss_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BoxRegressionLoss(**kwargs)


def test_loss_shape_errors():
    loss = BoxRegressionLoss()
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3, 4\)"):
        loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"y_pred.shape=\(2, 3, 5\)"):
        loss(np.zeros((2, 3, 5)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3, 5\), y_pred.shape="):
        loss(np.zeros((2, 3, 5)), np.zeros((2, 4, 4)))


# ---------------------------------------------------------------- serialization


LOSSES = [
    BoxRegressionLoss(),
    BoxRegressionLoss((0.1, 0.1, 0.05, 0.05), coordinate_weights=(1, 1, 2, 2)),
    BoxRegressionLoss(loss="huber:delta=0.5", normalize="none", name="box"),
    BoxRegressionLoss(loss=smoothl1.WingLoss(width=2.0), dtype="mixed_float16"),
    BoxRegressionLoss(loss="mse", reduction="sum_over_batch_size"),
]
LOSS_IDS = ["default", "per-coordinate", "huber-spec", "wing-object", "mse"]


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_config_round_trip(loss):
    config = loss.get_config()
    json.dumps(config)  # plain JSON
    rebuilt = BoxRegressionLoss.from_config(config)
    assert rebuilt.get_config() == config
    rng = np.random.default_rng(4)
    y_true = rows(rng.normal(size=(2, 3, 4)), [[1, 0, 1], [-1, 1, 0]])
    y_pred = f32(rng.normal(size=(2, 3, 4)))
    np.testing.assert_allclose(
        to_numpy(rebuilt(y_true, y_pred)), to_numpy(loss(y_true, y_pred)), rtol=1e-6
    )


@pytest.mark.parametrize("loss", LOSSES[:4], ids=LOSS_IDS[:4])
def test_keras_file_round_trip_without_custom_objects(tmp_path, loss):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8), keras.layers.Reshape((2, 4))]
    )
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.loss, BoxRegressionLoss)
    assert reloaded.loss.get_config() == loss.get_config()


def test_fit_on_batches_without_positives_leaves_weights_unchanged():
    # Zero loss, zero gradients: plain SGD must not move any weight, and nothing
    # may turn NaN.
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(8, kernel_initializer=keras.initializers.Ones()),
            keras.layers.Reshape((2, 4)),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=BoxRegressionLoss())
    before = [np.array(w) for w in model.get_weights()]
    x = np.ones((4, 3), "float32")
    y = rows(np.full((4, 2, 4), 5.0), np.zeros((4, 2)) - np.eye(4, 2))
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    assert history.history["loss"] == [0.0, 0.0]
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- several devices


def run_multidevice(backend, extra_env):
    env = dict(os.environ, KERAS_BACKEND=backend, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "detection_multidevice.py"), backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_multidevice(result):
    # The data must be able to tell a per-replica normalizer from the global one.
    assert abs(result["per_replica_normalizer"] - result["reference"]) > 1.0
    assert result["replicas"] == 4
    np.testing.assert_allclose(result["single_value"], result["reference"], rtol=1e-6)
    # One SGD step: a different normalizer would change the loss and the weights
    # by the factor between the two (about 3 here); 1e-6 is float32 rounding of
    # gradients summed in another order.
    np.testing.assert_allclose(
        result["multi_fit_loss"], result["single_fit_loss"], rtol=1e-6
    )
    assert result["max_weight_change"] > 1e-3  # the step did move the weights
    assert result["max_weight_difference"] < 1e-6


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="covers the TensorFlow backend (tf.distribute)"
)
def test_tensorflow_mirrored_strategy_equals_one_device():
    """TensorFlow: MirroredStrategy over 4 logical CPU devices."""
    result = run_multidevice("tensorflow", {})
    check_multidevice(result)
    # Each replica's loss over the global count; Keras sums the replicas.
    np.testing.assert_allclose(
        sum(result["replica_values"]), result["reference"], rtol=1e-6
    )
    assert result["replica_values"][0] == 0.0  # a replica without positives


@pytest.mark.skipif(
    BACKEND != "jax", reason="covers the JAX backend (keras.distribution)"
)
def test_jax_data_parallel_equals_one_device():
    """JAX: keras.distribution.DataParallel over 4 host CPU devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    result = run_multidevice(
        "jax", {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4"}
    )
    check_multidevice(result)
    assert result["kernel_devices"] == 4 and result["input_devices"] == 4
    np.testing.assert_allclose(result["sharded_value"], result["reference"], rtol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch case is below")
def test_torch_has_no_keras_data_parallel_path():
    pytest.skip(
        "PyTorch: Keras 3 has no data-parallel training path for the torch backend "
        "(keras.distribution supports JAX; tf.distribute is TensorFlow's), so there "
        "is no multi-device normalizer to test"
    )


# ---------------------------------------------------------------- COCO


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def coco_data():
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "b.jpg", "width": 100, "height": 50},
            {"id": 3, "file_name": "c.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 5},
            {"id": 2, "image_id": 1, "bbox": [0.5, 0, 1, 2.5], "category_id": 6},
            {
                "id": 3,
                "image_id": 2,
                "bbox": [1, 1, 5, 5],
                "category_id": 5,
                "iscrowd": 1,
            },
            {"id": 4, "image_id": 2, "bbox": [3, 3, 0, 7], "category_id": 6},
            {"id": 5, "image_id": 2, "bbox": [2, 2, 4, 4], "category_id": 6},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 6, "name": "dog"}],
    }


def test_load_coco(tmp_path):
    path = write_json(tmp_path / "ann.json", coco_data())
    with pytest.warns(UserWarning, match="left out 1 annotation"):
        coco = load_coco(path)
    assert coco.categories == {5: "cat", 6: "dog"}
    assert (coco.skipped_crowd, coco.skipped_empty) == (1, 1)
    first, second, third = coco.images
    assert (first.file_name, first.width, first.height) == ("a.jpg", 640, 480)
    # [x, y, w, h] = [10, 20, 30, 40] -> corners (10, 20), (40, 60);
    # [0.5, 0, 1, 2.5] -> (0.5, 0), (1.5, 2.5)
    np.testing.assert_allclose(first.boxes, [[10, 20, 40, 60], [0.5, 0, 1.5, 2.5]])
    np.testing.assert_array_equal(first.category_ids, [5, 6])
    # crowd and zero-width left out: [2, 2, 4, 4] -> (2, 2), (6, 6)
    np.testing.assert_allclose(second.boxes, [[2, 2, 6, 6]])
    assert third.boxes.shape == (0, 4) and third.category_ids.shape == (0,)

    with pytest.warns(UserWarning):
        raw = load_coco(path, box_format="xywh", include_crowd=True)
    np.testing.assert_allclose(raw.images[1].boxes, [[1, 1, 5, 5], [2, 2, 4, 4]])
    with pytest.warns(UserWarning):
        centers = load_coco(path, box_format="center_xywh")
    # center of (10, 20, 30, 40) in xywh: (10 + 15, 20 + 20)
    np.testing.assert_allclose(centers.images[0].boxes[0], [25, 40, 30, 40])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("images"), "missing the list 'images'"),
        (lambda d: d["images"][0].pop("width"), r"images\[0\] has no 'width'"),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
            r"annotations\[0\]\['bbox'\] must be 4 numbers",
        ),
        (
            lambda d: d["annotations"][1].update(image_id=9),
            r"annotations\[1\] names image_id=9",
        ),
        (
            lambda d: d["annotations"][0].update(category_id=8),
            r"annotations\[0\] names category_id=8",
        ),
    ],
)
def test_load_coco_errors_name_file_and_entry(tmp_path, change, message):
    data = coco_data()
    change(data)
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match="bad.json.*" + message):
        load_coco(path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json': not JSON"):
        load_coco(tmp_path / "broken.json")


# ---------------------------------------------------------------- the recipe


def run_example(args, tmp_path):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "box_regression.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="the recipe runs the same Keras code on every backend; its smoke test "
    "runs once, on JAX (the fastest here), to keep the suite short",
)
def test_example_tiny_smoke(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "run"
    result = run_example(["--tiny", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "results.csv").read_text().splitlines()
    assert table[0].startswith("loss,")
    names = [line.split(",")[0] for line in table[1:]]
    assert names == [
        "anchors only",
        "smooth_l1 beta=1/9",
        "smooth_l1 beta=1",
        "l1",
        "l2",
    ]
    for line in table[2:]:
        mean_iou = float(line.split(",")[2])
        assert 0.0 < mean_iou <= 1.0
    assert (out / "results.md").read_text().startswith("| loss |")
    assert (out / "boxes.png").read_bytes()[:4] == b"\x89PNG"
    assert "smooth_l1 beta=1/9" in result.stdout
    # An existing run directory is never replaced without --overwrite.
    again = run_example(["--tiny", "--out", str(out)], tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.skipif(BACKEND != "jax", reason="as test_example_tiny_smoke")
def test_example_on_coco_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    images, annotations = [], []
    for i in range(12):
        pixels = rng.integers(0, 60, size=(40, 48, 3), dtype="uint8")
        x, y = int(rng.integers(0, 24)), int(rng.integers(0, 16))
        pixels[y : y + 20, x : x + 20] = 230  # a bright square at a known place
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 48, "height": 40})
        annotations.append(
            {"id": i, "image_id": i, "bbox": [x, y, 20, 20], "category_id": 1}
        )
    path = write_json(
        tmp_path / "ann.json",
        {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "square"}],
        },
    )
    out = tmp_path / "coco_run"
    result = run_example(
        [
            *("--tiny", "--epochs", "1", "--coco", str(path)),
            *("--images", str(tmp_path), "--out", str(out)),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((out / "results.csv").read_text().splitlines()) == 6


@keras.saving.register_keras_serializable(package="smoothl1_tests")
class _ForgetfulLoss(keras.losses.Loss):
    """A loss whose config leaves out its parameter, as keras.losses.Huber's does
    in Keras 3.15: it reloads with scale 1."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, y_true, y_pred):
        return self.scale * keras.ops.mean(keras.ops.abs(y_pred - y_true), axis=-1)


@keras.saving.register_keras_serializable(package="smoothl1_tests")
class _ForgetfulRelativeLoss(keras.losses.Loss):
    """Weights errors by 1 + k |y_true|, and leaves k out of its config."""

    def __init__(self, k=0.0, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    def call(self, y_true, y_pred):
        weight = 1.0 + self.k * keras.ops.abs(y_true)
        return keras.ops.mean(weight * keras.ops.square(y_pred - y_true), axis=-1)


def test_a_loss_that_does_not_reload_as_itself_is_refused():
    # Found by testing: BoxRegressionLoss(loss=keras.losses.Huber(2.0)) reloaded
    # as Huber with delta 1 (one positive anchor at 3: 16 before, 10 after).
    with pytest.raises(ValueError, match="reloads as a different loss"):
        BoxRegressionLoss(loss=_ForgetfulLoss(scale=3.0))
    BoxRegressionLoss(loss=_ForgetfulLoss(scale=1.0))  # reloads as itself
    # A parameter that matters only away from y_true = 0 is checked too, and a
    # per-coordinate PenaltyLoss (which needs four coordinates) is accepted.
    with pytest.raises(ValueError, match="reloads as a different loss"):
        BoxRegressionLoss(loss=_ForgetfulRelativeLoss(k=5.0))
    per_coordinate = smoothl1.SmoothL1Loss(beta=(0.1, 0.1, 0.2, 0.2))
    box = BoxRegressionLoss(loss=per_coordinate)
    assert BoxRegressionLoss.from_config(box.get_config()).penalty_loss.beta == (
        0.1,
        0.1,
        0.2,
        0.2,
    )
    y_true = rows(np.zeros((1, 1, 4)), [[1]])
    y_pred = f32(np.full((1, 1, 4), 3.0))
    # Huber delta 2 at d = 3: 2 * (3 - 1) = 4 per coordinate, 16 for the four.
    for loss in (smoothl1.HuberLoss(2.0), "huber:delta=2"):
        box = BoxRegressionLoss(loss=loss)
        again = BoxRegressionLoss.from_config(box.get_config())
        np.testing.assert_allclose(to_numpy(again(y_true, y_pred)), 16.0, rtol=1e-6)
    try:
        box = BoxRegressionLoss(loss=keras.losses.Huber(2.0))
    except ValueError as error:  # a Keras whose Huber config drops delta
        assert "huber:delta=2" in str(error)
    else:  # a Keras whose Huber config keeps it
        again = BoxRegressionLoss.from_config(box.get_config())
        np.testing.assert_allclose(to_numpy(again(y_true, y_pred)), 16.0, rtol=1e-6)
