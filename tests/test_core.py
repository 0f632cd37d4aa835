"""The core: the smooth L1 penalty, SmoothL1Loss, smooth_l1 and the SmoothL1 metric.

Reference values come from hand arithmetic (in the comments), from PyTorch's native
``torch.nn.functional.smooth_l1_loss`` run in the test, or from Keras's own ``huber``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smoothl1
from helpers import RTOL, to_numpy, value_and_grad
from smoothl1 import SmoothL1, SmoothL1Loss, penalties

BETAS = [0.0, 1 / 9, 0.5, 1.0, 3.0]


def torch_smooth_l1(y_pred, y_true, beta):
    """PyTorch's native kernel: elementwise values and the gradient wrt y_pred."""
    pred = torch.tensor(y_pred, requires_grad=True)
    values = torch.nn.functional.smooth_l1_loss(
        pred, torch.tensor(y_true), beta=beta, reduction="none"
    )
    values.sum().backward()
    return values.detach().numpy(), pred.grad.numpy()


# ---------------------------------------------------------------- hand values


@pytest.mark.parametrize(
    "d, beta, expected",
    [
        (0.5, 1.0, 0.125),  # quadratic: 0.5 * 0.5**2 / 1
        (-0.5, 1.0, 0.125),  # symmetric
        (2.0, 1.0, 1.5),  # linear: 2 - 0.5 * 1
        (1.0, 1.0, 0.5),  # boundary |d| = beta: 1 - 0.5 = 0.5 = 0.5 * 1**2 / 1
        (0.1, 0.5, 0.01),  # fractional beta, quadratic: 0.5 * 0.01 / 0.5
        (0.5, 0.5, 0.25),  # fractional beta, boundary: 0.5 - 0.25
        (3.0, 0.5, 2.75),  # fractional beta, linear: 3 - 0.25
        (-3.0, 0.0, 3.0),  # beta = 0 is |d|
        (0.0, 0.0, 0.0),  # beta = 0 at d = 0
        (2.0, 3.0, 2.0 / 3.0),  # wide beta: 0.5 * 4 / 3
        (0.0, 1 / 9, 0.0),  # perfect prediction
    ],
)
def test_penalty_hand_values(d, beta, expected):
    value = to_numpy(penalties.smooth_l1(np.array([d], "float32"), beta))
    np.testing.assert_allclose(value, [expected], rtol=1e-6, atol=1e-7)


def test_per_coordinate_beta_hand_values():
    # betas (0, 0.5, 1, 2) against d = (1, 1, 1, 1):
    # |1| = 1; 1 - 0.25 = 0.75; boundary 0.5; 0.5 * 1 / 2 = 0.25
    d = np.ones((2, 4), "float32")
    value = to_numpy(penalties.smooth_l1(d, [0.0, 0.5, 1.0, 2.0]))
    np.testing.assert_allclose(value, [[1.0, 0.75, 0.5, 0.25]] * 2, rtol=1e-6)


def test_loss_hand_value_and_reductions():
    y_true = np.array([[0.0, 0.0], [1.0, 1.0]], "float32")
    y_pred = np.array([[0.5, 3.0], [1.0, 0.0]], "float32")
    # per element: [[0.125, 2.5], [0, 0.5]]; per sample: [1.3125, 0.25]
    per_sample = [1.3125, 0.25]
    cases = {
        "sum_over_batch_size": (1.3125 + 0.25) / 2,
        "mean": (1.3125 + 0.25) / 2,
        "sum": 1.3125 + 0.25,
        "mean_with_sample_weight": (1.3125 + 0.25) / 2,
    }
    for reduction, expected in cases.items():
        loss = SmoothL1Loss(1.0, reduction=reduction)(y_true, y_pred)
        np.testing.assert_allclose(to_numpy(loss), expected, rtol=1e-6)
    for reduction in ("none", None):
        loss = SmoothL1Loss(1.0, reduction=reduction)(y_true, y_pred)
        np.testing.assert_allclose(to_numpy(loss), per_sample, rtol=1e-6)
    per_element = SmoothL1Loss(1.0, axis=None, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(to_numpy(per_element), [[0.125, 2.5], [0, 0.5]])


# ---------------------------------------------------------------- PyTorch parity


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4), (64, 1)])
def test_parity_with_torch_values_and_gradients(beta, shape):
    rng = np.random.default_rng(hash((beta, shape)) % 2**32)
    y_true = rng.normal(size=shape).astype("float32")
    # A spread of residuals around every threshold, plus exact zeros and boundaries.
    y_pred = (y_true + rng.normal(scale=2.0, size=shape)).astype("float32")
    y_pred.flat[0] = y_true.flat[0]
    if beta > 0 and y_pred.size > 1:
        y_pred.flat[1] = np.float32(y_true.flat[1] + np.float32(beta))

    expected, expected_grad = torch_smooth_l1(y_pred, y_true, beta)
    value, grad = value_and_grad(
        lambda p: penalties.smooth_l1(p - keras.ops.convert_to_tensor(y_true), beta),
        y_pred,
    )
    np.testing.assert_allclose(value, expected, rtol=RTOL["float32"], atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=RTOL["float32"], atol=1e-7)

    # The loss class with axis=None and the default reduction is torch's mean.
    loss = SmoothL1Loss(beta, axis=None)(y_true, y_pred)
    np.testing.assert_allclose(to_numpy(loss), expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("beta", [b for b in BETAS if b > 0])
def test_gradient_is_clipped_ratio(beta):
    d = np.array([-100.0, -beta, -beta / 2, 0.0, beta / 3, beta, 7.0], "float32")
    _, grad = value_and_grad(lambda x: penalties.smooth_l1(x, beta), d)
    np.testing.assert_allclose(grad, np.clip(d / np.float32(beta), -1, 1), rtol=1e-6)


def test_gradient_at_beta_zero_is_sign_and_zero_at_zero():
    d = np.array([-2.0, -1e-30, 0.0, 1e-30, 5.0], "float32")
    _, grad = value_and_grad(lambda x: penalties.smooth_l1(x, 0.0), d)
    np.testing.assert_array_equal(grad, np.sign(d))


@pytest.mark.parametrize("beta", [0.25, 1.0, 2.0])
def test_times_beta_is_keras_huber(beta):
    rng = np.random.default_rng(3)
    y_true = rng.normal(size=(16, 3)).astype("float32")
    y_pred = (y_true + rng.normal(scale=3.0, size=(16, 3))).astype("float32")
    huber = keras.losses.huber(y_true, y_pred, delta=beta)
    ours = smoothl1.smooth_l1(y_true, y_pred, beta=beta)
    np.testing.assert_allclose(beta * to_numpy(ours), to_numpy(huber), rtol=1e-5)


# ---------------------------------------------------------------- properties

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
positive_beta = st.floats(2.0**-10, 2.0**10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(d=finite, beta=positive_beta)
def test_property_symmetric_and_gradient_bounded(d, beta):
    x = np.array([d, -d], "float32")
    value, grad = value_and_grad(lambda v: penalties.smooth_l1(v, beta), x)
    assert value[0] == value[1]
    assert np.all(np.abs(grad) <= 1.0)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))


@settings(max_examples=40, deadline=None)
@given(beta=positive_beta)
def test_property_continuous_at_threshold(beta):
    b = np.float32(beta)
    x = np.array(
        [np.nextafter(b, np.float32(0)), b, np.nextafter(b, np.float32(np.inf))]
    )
    value, grad = value_and_grad(lambda v: penalties.smooth_l1(v, beta), x)
    # Both branches give 0.5 * beta at |d| = beta; neighbours differ by about one ulp.
    np.testing.assert_allclose(value, 0.5 * b, rtol=1e-5)
    np.testing.assert_allclose(grad, 1.0, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(0, 1e4, allow_nan=False, width=32),
    b=st.floats(0, 1e4, allow_nan=False, width=32),
    beta=positive_beta,
)
def test_property_monotone_in_abs_residual(a, b, beta):
    small, large = sorted([a, b])
    value = to_numpy(penalties.smooth_l1(np.array([small, -large], "float32"), beta))
    assert value[0] <= value[1]


@settings(max_examples=30, deadline=None)
@given(d=st.floats(-100, 100, allow_nan=False, width=32))
def test_property_tends_to_l1_as_beta_shrinks(d):
    # |smooth_l1(d; beta) - |d|| <= beta / 2 (the largest gap, reached at |d| >= beta)
    for beta in (1.0, 1e-2, 1e-4):
        value = to_numpy(penalties.smooth_l1(np.array([d], "float32"), beta))[0]
        assert abs(value - abs(np.float32(d))) <= beta / 2 + 1e-5 * abs(d) + 1e-6


# ---------------------------------------------------------------- weights, shapes


def _reference_reduce(values, weights, reduction):
    """Keras's reductions, written out in numpy."""
    weighted = values * weights
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_with_sample_weight":
        return weighted.sum() / weights.sum()
    return weighted.sum() / values.size


@pytest.mark.parametrize(
    "reduction", ["sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]
)
@pytest.mark.parametrize("weight_shape", ["(N,)", "(N, 1)", "full"])
def test_sample_weight(reduction, weight_shape):
    rng = np.random.default_rng(7)
    y_true = rng.normal(size=(6, 4)).astype("float32")
    y_pred = (y_true + rng.normal(scale=2, size=(6, 4))).astype("float32")
    elements, _ = torch_smooth_l1(y_pred, y_true, 0.5)
    if weight_shape == "full":
        weights = rng.uniform(0, 2, size=(6, 4)).astype("float32")
        loss = SmoothL1Loss(0.5, axis=None, reduction=reduction)
        expected = _reference_reduce(elements, weights, reduction)
    else:
        weights = rng.uniform(0, 2, size=(6,)).astype("float32")
        loss = SmoothL1Loss(0.5, reduction=reduction)
        expected = _reference_reduce(elements.mean(axis=-1), weights, reduction)
        weights = weights if weight_shape == "(N,)" else weights[:, None]
    value = loss(y_true, y_pred, sample_weight=weights)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-5)


def test_zero_weights_give_zero_and_ignore_mask_equals_slicing():
    rng = np.random.default_rng(11)
    y_true = rng.normal(size=(5, 4)).astype("float32")
    y_pred = rng.normal(size=(5, 4)).astype("float32")
    loss = SmoothL1Loss(1.0, axis=None, reduction="sum")
    assert float(to_numpy(loss(y_true, y_pred, sample_weight=np.zeros((5, 4))))) == 0
    mask = np.ones((5, 4), "float32")
    mask[:, 2:] = 0  # ignore the last two coordinates
    masked = loss(y_true, y_pred, sample_weight=mask)
    sliced = loss(y_true[:, :2], y_pred[:, :2])
    np.testing.assert_allclose(to_numpy(masked), to_numpy(sliced), rtol=1e-6)


def test_rank_one_against_column_is_aligned_not_broadcast():
    y_true = np.array([0.0, 1.0, 2.0], "float32")
    y_pred = np.array([[0.5], [1.0], [4.0]], "float32")
    # per sample: 0.125, 0, 2 - 0.5 = 1.5 -> mean 1.625 / 3 (an (N, N) broadcast would
    # average nine values instead)
    for a, b in ((y_true, y_pred), (y_pred[:, 0], y_true[:, None])):
        value = SmoothL1Loss(1.0)(a, b)
        np.testing.assert_allclose(to_numpy(value), 1.625 / 3, rtol=1e-6)


def test_mismatched_shapes_name_both():
    with pytest.raises(
        ValueError, match=r"y_true.shape=\(3, 2\), y_pred.shape=\(3, 4\)"
    ):
        SmoothL1Loss()(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"y_true.shape=\(4,\), y_pred.shape=\(3, 1\)"):
        smoothl1.smooth_l1(np.zeros((4,)), np.zeros((3, 1)))


def test_integer_and_float64_inputs():
    y_true = np.array([[0, 2]], "int64")
    y_pred = np.array([[1, 0]], "int32")
    # (0.5 * 1 + (2 - 0.5)) / 2 = 1.0
    np.testing.assert_allclose(to_numpy(SmoothL1Loss()(y_true, y_pred)), 1.0)
    np.testing.assert_allclose(to_numpy(smoothl1.smooth_l1(y_true, y_pred)), [1.0])
    value = smoothl1.smooth_l1(y_true.astype("float64"), y_pred.astype("float64"))
    # float64 stays float64 where the backend has it (JAX without x64 makes float32).
    backend_float64 = keras.ops.convert_to_tensor(np.zeros(1, "float64")).dtype
    assert str(to_numpy(value).dtype) == keras.backend.standardize_dtype(
        backend_float64
    )
    np.testing.assert_allclose(to_numpy(value), [1.0])


def test_empty_batch_is_zero_with_zero_gradient():
    for axis in (-1, None):
        loss = SmoothL1Loss(1.0, axis=axis)
        value, grad = value_and_grad(
            lambda p, loss=loss: loss(np.zeros((0, 4), "float32"), p),
            np.zeros((0, 4), "float32"),
        )
        assert value.shape == () and float(value) == 0.0
        assert grad.shape == (0, 4)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_stay_finite(dtype):
    big = np.array([[60000.0, -60000.0, 0.5, 0.0]], "float32")
    for beta in (1.0, 1000.0):
        x = keras.ops.cast(big, dtype)
        value = to_numpy(penalties.smooth_l1(x, beta)).astype("float32")
        assert np.all(np.isfinite(value)), (dtype, beta, value)
        loss = SmoothL1Loss(beta, dtype=dtype)
        # 60000 - 0.5 * beta per large element, averaged with the small ones.
        total = to_numpy(loss(np.zeros((4, 4), "float32"), np.repeat(big, 4, 0)))
        assert np.isfinite(total)
        assert "float32" in str(total.dtype)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_is_finite(policy):
    keras.config.set_dtype_policy(policy)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss=SmoothL1Loss(0.5))
    x = np.ones((8, 3), "float32")
    y = np.full((8, 1), 60000.0, "float32")
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_half_precision_gradient_finite():
    x = np.array([60000.0, -60000.0, 1e-3, 0.0], "float16")
    _, grad = value_and_grad(lambda v: penalties.smooth_l1(v, 1000.0), x)
    assert np.all(np.isfinite(grad.astype("float32")))
    np.testing.assert_allclose(grad.astype("float32"), [1, -1, 1e-6, 0], atol=1e-3)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "beta",
    [-1.0, float("nan"), float("inf"), "1", None, [], [[1.0]], [1.0, -0.1], True],
)
def test_bad_beta_names_the_argument(beta):
    with pytest.raises(ValueError, match=r"`beta`.*Received: beta="):
        SmoothL1Loss(beta)
    with pytest.raises(ValueError, match="`beta`"):
        SmoothL1(beta)


def test_vector_beta_of_wrong_length():
    with pytest.raises(ValueError, match=r"`beta`: it has 3 entries.*size 4"):
        SmoothL1Loss([1.0, 1.0, 1.0])(np.zeros((2, 4)), np.zeros((2, 4)))


def test_bad_reduction_and_axis():
    with pytest.raises(ValueError, match="`reduction`"):
        SmoothL1Loss(reduction="avg")
    with pytest.raises(ValueError, match="`axis`"):
        SmoothL1Loss(axis="last")


def test_beta_keyword_only_options():
    with pytest.raises(TypeError):
        SmoothL1Loss(1.0, -1)  # type: ignore[misc]


# ---------------------------------------------------------------- serialization


def test_get_config_keeps_every_argument():
    loss = SmoothL1Loss(
        [0.1, 0.1, 0.2, 0.2], axis=None, reduction="sum", name="box", dtype="float64"
    )
    config = loss.get_config()
    assert config == {
        "beta": [0.1, 0.1, 0.2, 0.2],
        "axis": None,
        "reduction": "sum",
        "name": "box",
        "dtype": "float64",
    }
    clone = SmoothL1Loss.from_config(config)
    assert clone.beta == (0.1, 0.1, 0.2, 0.2) and clone.dtype == "float64"
    policy = SmoothL1Loss(dtype=keras.DTypePolicy("mixed_bfloat16"))
    clone = SmoothL1Loss.from_config(policy.get_config())
    assert clone.dtype == "float32"  # half precision is computed in float32
    assert clone.get_config()["dtype"] == policy.get_config()["dtype"]


@pytest.mark.parametrize(
    "loss, metric",
    [
        (SmoothL1Loss([0.5, 2.0], name="sl1"), SmoothL1(beta=0.5)),
        (smoothl1.smooth_l1, smoothl1.smooth_l1),
    ],
)
def test_keras_file_round_trip_without_custom_objects(tmp_path, loss, metric):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=loss, metrics=[metric])
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = reloaded.evaluate(x, y, verbose=0, return_dict=True)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6)
    if isinstance(loss, SmoothL1Loss):
        assert reloaded.loss.get_config() == loss.get_config()


def test_metric_streams_the_mean_and_round_trips():
    metric = SmoothL1(beta=2.0)
    metric.update_state(np.zeros((2, 1)), np.array([[1.0], [4.0]]))
    metric.update_state(np.zeros((1, 1)), np.array([[0.0]]))
    # 0.5 * 1 / 2 = 0.25; 4 - 1 = 3; 0 -> mean (0.25 + 3 + 0) / 3
    assert math.isclose(float(to_numpy(metric.result())), 3.25 / 3, rel_tol=1e-6)
    clone = SmoothL1.from_config(metric.get_config())
    assert clone.beta == 2.0 and clone.name == "smooth_l1"


def test_public_objects_are_registered():
    for obj in (SmoothL1Loss, SmoothL1, smoothl1.smooth_l1):
        name = keras.saving.get_registered_name(obj)
        assert name.startswith("smoothl1>")
        assert keras.saving.get_registered_object(name) is obj


# ---------------------------------------------------------------- regressions


def test_mixed_input_dtypes_in_function_and_metric():
    # int targets against float32 predictions: (0.5 * 0.5**2 + 0.5 * 0.5**2) / 2
    y_true = np.array([[1], [2]])
    y_pred = np.array([[0.5], [2.5]], "float32")
    np.testing.assert_allclose(
        to_numpy(smoothl1.smooth_l1(y_true, y_pred)), [0.125, 0.125]
    )
    metric = SmoothL1()
    metric.update_state(y_true, y_pred)
    assert math.isclose(float(to_numpy(metric.result())), 0.125, rel_tol=1e-6)
    mixed = smoothl1.smooth_l1(y_true.astype("float64"), y_pred)
    np.testing.assert_allclose(to_numpy(mixed), [0.125, 0.125])


@pytest.mark.parametrize("beta", [1e-50, 1e-39, 1e39, [1.0, 1e-45]])
def test_beta_outside_float32_range_is_refused(beta):
    with pytest.raises(ValueError, match="outside float32's normal range"):
        SmoothL1Loss(beta)


@pytest.mark.parametrize("beta", [1e-6, 1e5])
def test_half_precision_penalty_with_extreme_beta(beta):
    d = np.array([0.0, 0.5, 300.0], "float16")
    value = to_numpy(penalties.smooth_l1(d, beta)).astype("float64")
    # Computed in float32: torch's float32 kernel is the reference.
    expected, _ = torch_smooth_l1(d.astype("float32"), np.zeros(3, "float32"), beta)
    np.testing.assert_allclose(value, expected, rtol=2e-3)


def test_per_coordinate_zero_beta_gradient_at_zero():
    # A zero entry is L1 there, with PyTorch's gradient sign(0) = 0 at d = 0.
    x = np.zeros((1, 2), "float32")
    _, grad = value_and_grad(lambda v: penalties.smooth_l1(v, [0.0, 1.0]), x)
    np.testing.assert_array_equal(grad, [[0.0, 0.0]])
    x = np.array([[1.0, 1.0]], "float32")  # boundary of the second coordinate
    _, grad = value_and_grad(lambda v: penalties.smooth_l1(v, [0.0, 1.0]), x)
    np.testing.assert_allclose(grad, [[1.0, 1.0]])


@pytest.mark.parametrize("reduction", ["sum", "mean_with_sample_weight"])
@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_axis_none_takes_per_sample_weights(reduction, shape):
    y_true = np.zeros((2, 3), "float32")
    y_pred = np.full((2, 3), 0.5, "float32")
    weights = np.array([1.0, 0.0], "float32").reshape(shape)
    loss = SmoothL1Loss(1.0, axis=None, reduction=reduction)
    # every element: 0.5 * 0.5**2 = 0.125; sample 1 weighs 1, sample 2 weighs 0:
    # sum = 3 * 0.125; weighted mean = 3 * 0.125 / 3
    expected = 0.375 if reduction == "sum" else 0.125
    np.testing.assert_allclose(to_numpy(loss(y_true, y_pred, weights)), expected)


def test_rank_one_empty_inputs_and_zero_d_beta():
    value = SmoothL1Loss()(np.zeros(0, "float32"), np.zeros(0, "float32"))
    assert float(to_numpy(value)) == 0.0
    assert SmoothL1Loss(np.array(0.5)).beta == 0.5
    with pytest.raises(ValueError, match="`axis`"):
        SmoothL1Loss(axis=5)
