"""The fast path of smooth L1 against its defining clip-and-split formula.

``penalties.smooth_l1`` and ``SmoothL1Loss`` take a fast path for a number or a
per-coordinate ``beta``: PyTorch's native kernel, a custom gradient (JAX, and
TensorFlow), and one sum over every element in place of Keras's mean of per-sample
means when there is nothing to weight or mask. The reference here is
``penalties._clip_and_split``, the formula of the design notes differentiated
automatically, and Keras's own reduction (reached by passing a weight of ones).

Tolerances: elementwise values and gradients use the core's per-dtype tolerances
(``helpers.RTOL``/``ATOL``). A loss adds one float32 sum taken in another order:
for at most 128 terms of one sign, sequential summation is within 127 * 2**-24
(7.6e-6) of the exact sum, so reduced values are compared to ``SUM_RTOL = 1e-5``.
No timing here: speed is measured by ``benchmarks/loss_speed.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import BACKEND
from helpers import ATOL, RTOL, to_numpy, value_and_grad
from smoothl1 import SmoothL1Loss, penalties

BETAS = [0.0, 1 / 9, 0.5, 1.0, 3.0]
SHAPES = [(1,), (7,), (5, 3), (2, 3, 4), (64, 1), (4, 5)]
SUM_RTOL = 1e-5
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight"]


def residuals(shape, beta, seed):
    """Residuals around every threshold, with exact zeros and |d| = beta."""
    rng = np.random.default_rng(seed)
    d = rng.normal(scale=2.0, size=shape).astype("float32")
    if d.size > 0:
        d.flat[0] = 0.0
    if d.size > 2:
        d.flat[1] = np.float32(beta)
        d.flat[2] = -np.float32(beta)
    return d


def pair(shape, beta, seed):
    rng = np.random.default_rng(seed + 1)
    y_true = rng.normal(size=shape).astype("float32")
    y_pred = (y_true + residuals(shape, beta, seed)).astype("float32")
    return y_true, y_pred


def assert_close(actual, expected, dtype="float32"):
    np.testing.assert_allclose(
        np.asarray(actual, "float64"),
        np.asarray(expected, "float64"),
        rtol=RTOL[dtype],
        atol=ATOL[dtype],
    )


# ---------------------------------------------------------------- elementwise


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_penalty_values_and_gradients_match_the_formula(beta, shape):
    d = residuals(shape, beta, seed=len(shape) * 10 + int(beta * 9))
    fast, fast_grad = value_and_grad(lambda x: penalties.smooth_l1(x, beta), d)
    plain, plain_grad = value_and_grad(lambda x: penalties._clip_and_split(x, beta), d)
    assert_close(fast, plain)
    assert_close(fast_grad, plain_grad)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pair_form_matches_the_formula_for_both_inputs(beta, shape):
    y_true, y_pred = pair(shape, beta, seed=int(beta * 9))
    plain, plain_grad = value_and_grad(
        lambda p: penalties._clip_and_split(
            p - keras.ops.convert_to_tensor(y_true), beta
        ),
        y_pred,
    )
    fast, grad_pred = value_and_grad(
        lambda p: penalties.smooth_l1_between(y_true, p, beta), y_pred
    )
    _, grad_true = value_and_grad(
        lambda t: penalties.smooth_l1_between(t, y_pred, beta), y_true
    )
    assert_close(fast, plain)
    assert_close(grad_pred, plain_grad)
    assert_close(grad_true, -plain_grad)


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 2, 5)])
def test_per_coordinate_beta_matches_the_formula(shape):
    beta = tuple(BETAS)  # one threshold per coordinate of the last axis, 0 included
    d = residuals(shape, 1.0, seed=5)
    d[..., 2] = 0.5  # exactly at its coordinate's beta
    fast, fast_grad = value_and_grad(lambda x: penalties.smooth_l1(x, beta), d)
    plain, plain_grad = value_and_grad(lambda x: penalties._clip_and_split(x, beta), d)
    assert_close(fast, plain)
    assert_close(fast_grad, plain_grad)
    # d.flat[0] = 0 (see residuals) lies under beta = 0: gradient 0, as PyTorch.
    assert fast_grad.flat[0] == 0.0
    all_zero = (0.0,) * 5
    fast, fast_grad = value_and_grad(lambda x: penalties.smooth_l1(x, all_zero), d)
    assert_close(fast, np.abs(d))
    np.testing.assert_array_equal(fast_grad, np.sign(d))


@pytest.mark.parametrize("beta", [b for b in BETAS if b > 0])
def test_gradient_is_exactly_one_at_the_threshold_and_zero_at_zero(beta):
    d = np.array([-beta, 0.0, beta], "float32")
    _, grad = value_and_grad(lambda x: penalties.smooth_l1(x, beta), d)
    np.testing.assert_array_equal(grad, [-1.0, 0.0, 1.0])


def test_beta_zero_gradient_is_sign_with_zero_at_zero():
    d = np.array([-2.0, -1e-30, 0.0, 1e-30, 5.0], "float32")
    for fn in (
        penalties.smooth_l1,
        lambda x, b: penalties.smooth_l1_between(0 * x, x, b),
    ):
        _, grad = value_and_grad(lambda x, fn=fn: fn(x, 0.0), d)
        np.testing.assert_array_equal(grad, np.sign(d))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("beta", [1 / 9, 1.0, 1000.0])
def test_half_precision_matches_the_formula_and_stays_finite(dtype, beta):
    # 60000 is near float16's largest finite value (65504); 500 * 500 overflows it.
    d32 = np.array([60000.0, -60000.0, 500.0, -3.0, 1e-3, 0.0], "float32")

    def half(fn):
        # Computed in half precision; the value is returned as float32 for NumPy.
        return lambda x: keras.ops.cast(fn(keras.ops.cast(x, dtype), beta), "float32")

    fast, fast_grad = value_and_grad(half(penalties.smooth_l1), d32)
    plain, _ = value_and_grad(half(penalties._clip_and_split), d32)
    assert np.all(np.isfinite(fast)) and np.all(np.isfinite(fast_grad))
    assert_close(fast, plain, dtype)
    # The gradient against clip(d / beta, -1, 1) of the rounded inputs, in float64:
    # the formula's own automatic gradient rounds three half-precision products
    # and is itself 2.4% off at d = 1e-3, beta = 1/9 in float16.
    rounded = np.asarray(to_numpy(keras.ops.cast(d32, dtype)), "float64")
    assert_close(fast_grad, np.clip(rounded / beta, -1, 1), dtype)
    h = keras.ops.cast(d32, dtype)
    between = penalties.smooth_l1_between(keras.ops.zeros_like(h), h, beta)
    assert_close(to_numpy(keras.ops.cast(between, "float32")), fast, dtype)


def test_integer_and_mixed_inputs_fall_back_to_the_residual():
    y_true = np.array([[0, 2]], "int32")
    y_pred = np.array([[1.0, 0.0]], "float32")
    # 0.5 * 1 / 1 = 0.5; 2 - 0.5 = 1.5
    value = penalties.smooth_l1_between(y_true, y_pred, 1.0)
    np.testing.assert_allclose(to_numpy(value), [[0.5, 1.5]])


# ---------------------------------------------------------------- losses


def keras_reduction(loss, y_true, y_pred):
    """The same loss through Keras's own reduction: a weight of ones changes no value
    but takes the weighted path, which the one-sum fast path skips."""
    ones = np.ones(y_true.shape[: len(y_true.shape) - (loss.axis == -1)], "float32")
    return loss(y_true, y_pred, sample_weight=ones)


# A per-coordinate beta needs a last axis of its length; a rank-1 input is one
# sample under axis=-1, so it is tested on its own below.
LOSS_CASES = [
    (beta, shape, axis)
    for beta in (0.0, 1 / 9, 1.0, (0.0, 0.5, 1.0, 3.0))
    for shape in ((7,), (5, 3), (2, 3, 4), (16, 4), (0, 4))
    for axis in (-1, None)
    if (not isinstance(beta, tuple) or shape[-1] == 4)
    and not (axis == -1 and len(shape) == 1)
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta, shape, axis", LOSS_CASES)
def test_loss_one_sum_equals_keras_reduction(reduction, beta, shape, axis):
    y_true, y_pred = pair(shape, 1.0, seed=3)
    loss = SmoothL1Loss(beta, axis=axis, reduction=reduction)
    fast, fast_grad = value_and_grad(lambda p: loss(y_true, p), y_pred)
    slow, slow_grad = value_and_grad(lambda p: keras_reduction(loss, y_true, p), y_pred)
    assert fast.shape == ()
    np.testing.assert_allclose(fast, slow, rtol=SUM_RTOL, atol=ATOL["float32"])
    assert_close(fast_grad, slow_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rank_one_and_scalar_inputs(reduction):
    # A rank-1 input is one sample: its mean over the last axis, for every reduction.
    y_pred = np.array([0.5, 3.0, -1.0], "float32")
    # 0.125 + 2.5 + 0.5 = 3.125, over 3 elements
    value = SmoothL1Loss(1.0, reduction=reduction)(np.zeros(3, "float32"), y_pred)
    np.testing.assert_allclose(to_numpy(value), 3.125 / 3, rtol=RTOL["float32"])
    value = SmoothL1Loss(1.0, reduction=reduction)(np.float32(0.0), np.float32(2.0))
    np.testing.assert_allclose(to_numpy(value), 1.5, rtol=RTOL["float32"])


def test_loss_with_a_keras_mask_still_uses_it():
    # Two sequences of three steps; the Masking layer masks the all-zero steps, and a
    # ones kernel makes y_pred the sum of each step's two features.
    x = np.array([[[1, 1], [0, 0], [2, 0]], [[0, 0], [0, 0], [3, 0]]], "float32")
    model = keras.Sequential(
        [
            keras.Input((3, 2)),
            keras.layers.Masking(0.0),
            keras.layers.Dense(1, kernel_initializer="ones", use_bias=False),
        ]
    )
    y_pred = model(x)
    y_true = np.zeros((2, 3, 1), "float32")
    # valid steps: y_pred = 2, 2, 3 -> 1.5, 1.5, 2.5 (beta 1): mean 5.5 / 3
    value = SmoothL1Loss(1.0)(y_true, y_pred)
    np.testing.assert_allclose(to_numpy(value), 5.5 / 3, rtol=RTOL["float32"])


def test_per_element_loss_spreads_a_keras_mask_over_the_last_axis():
    # axis=None with a mask of one entry per step (found by testing: Keras failed to
    # broadcast the (2, 3) mask against the (2, 3, 2) values). A ones kernel gives
    # both outputs the step's feature sum; the second target is 1.
    x = np.array([[[1, 1], [0, 0], [2, 0]], [[0, 0], [0, 0], [3, 0]]], "float32")
    model = keras.Sequential(
        [
            keras.Input((3, 2)),
            keras.layers.Masking(0.0),
            keras.layers.Dense(2, kernel_initializer="ones", use_bias=False),
        ]
    )
    y_pred = model(x)
    y_true = np.zeros((2, 3, 2), "float32")
    y_true[..., 1] = 1.0
    loss = SmoothL1Loss(1.0, axis=None)
    # valid steps: y_pred 2, 2 (sequence 1) and 3 (sequence 2); beta 1:
    # first output 1.5, 1.5, 2.5; second 0.5, 0.5, 1.5; mean of the six: 8 / 6.
    np.testing.assert_allclose(to_numpy(loss(y_true, y_pred)), 8 / 6, rtol=1e-6)
    # weights 1 and 3: sequence 1 sums 4, sequence 2 sums 4; Keras divides the
    # weighted sum by the valid entries: (4 + 3 * 4) / 6.
    weighted = loss(y_true, y_pred, sample_weight=np.array([1.0, 3.0], "float32"))
    np.testing.assert_allclose(to_numpy(weighted), 16 / 6, rtol=1e-6)
    # The caller's tensor keeps its own mask.
    from keras.src.backend import get_keras_mask

    assert tuple(get_keras_mask(y_pred).shape) == (2, 3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_loss_is_float32_and_matches(policy):
    keras.config.set_dtype_policy(policy)
    y_true, y_pred = pair((8, 4), 1.0, seed=9)
    loss = SmoothL1Loss(0.5)
    half = keras.ops.cast(y_pred, keras.config.dtype_policy().compute_dtype)
    value = loss(y_true, half)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    expected = keras_reduction(loss, y_true, half)
    np.testing.assert_allclose(to_numpy(value), to_numpy(expected), rtol=SUM_RTOL)


# ---------------------------------------------------------------- compiled, memory


def test_compiled_training_mode_matches_the_formula():
    y_true, y_pred = pair((32, 4), 1.0, seed=11)
    loss = SmoothL1Loss(1.0)

    def reference(p):
        d = p - keras.ops.convert_to_tensor(y_true)
        return keras.ops.mean(penalties._clip_and_split(d, 1.0))

    if BACKEND == "jax":
        import jax

        fast = jax.jit(jax.value_and_grad(lambda p: loss(y_true, p)))(y_pred)
        slow = jax.jit(jax.value_and_grad(reference))(y_pred)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def both(fn):
            @tf.function(jit_compile=True)
            def run(p):
                with tf.GradientTape() as tape:
                    tape.watch(p)
                    value = fn(p)
                return value, tape.gradient(value, p)

            return run(tf.constant(y_pred))

        fast, slow = both(lambda p: loss(y_true, p)), both(reference)
    else:
        pytest.skip("PyTorch trains eagerly; the eager path is tested above")
    np.testing.assert_allclose(to_numpy(fast[0]), to_numpy(slow[0]), rtol=SUM_RTOL)
    assert_close(to_numpy(fast[1]), to_numpy(slow[1]))


def _n_sized_temporaries(hlo: str, n: int) -> int:
    """The benchmark's count of N-sized temporaries in a compiled HLO module
    (``benchmarks/loss_speed.py``), so that the test and the README's memory table
    count the same thing."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import loss_speed

    return loss_speed._hlo_temporaries(hlo, n)


def test_backward_keeps_only_the_two_inputs():
    y_true, y_pred = pair((256, 4), 1.0, seed=13)
    loss = SmoothL1Loss(1.0)
    if BACKEND == "torch":
        import torch

        t, p = torch.from_numpy(y_true), torch.from_numpy(y_pred).requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda x: saved.append(x) or x, lambda x: x
        ):
            loss(t, p)
        large = [x for x in saved if x.numel() == y_pred.size]
        assert len(large) <= 2
        assert all(x.data_ptr() in (t.data_ptr(), p.data_ptr()) for x in large)
    elif BACKEND == "jax":
        import jax

        t, p = jax.numpy.asarray(y_true), jax.numpy.asarray(y_pred)
        _, backward = jax.vjp(lambda p: loss(t, p), p)
        kept = [x for x in jax.tree_util.tree_leaves(backward) if hasattr(x, "size")]
        # The inputs, flattened: a copy outside jit, a view inside it.
        large = [x for x in kept if x.size == y_pred.size]
        assert len(large) <= 2
        # Inside jit, no N-sized buffer besides the inputs and the gradient: an
        # earlier slope, clip(d / beta, -1, 1), made XLA broadcast a constant to N.
        # (At a million elements, the sizes the fast path is for; XLA on CPU
        # reduces a few thousand through a temporary whatever the formula.)
        big = jax.ShapeDtypeStruct((2**18, 4), "float32")
        step = jax.jit(jax.value_and_grad(lambda p, t: loss(t, p)))
        text = step.lower(big, big).compile().as_text()
        assert _n_sized_temporaries(text, 2**20) == 0, text
    else:
        pytest.skip("TensorFlow does not expose what its tape keeps")


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("path", ["number", "tensor"])
def test_gradient_keeps_its_precision_far_below_beta(path):
    # clip(d / beta, -1, 1) = d / 3 for |d| < beta = 3 (the definition). The form
    # 0.5 c**2 / beta + |d| - |c| differentiates to 1 + (d / beta - 1), which
    # float32 rounds to 0 for d = 1e-7 (found by testing; 100 % relative error).
    d = np.array([1e-7, -1e-7, 1e-4, 2.0, -5.0], dtype="float32")
    beta = 3.0 if path == "number" else keras.ops.convert_to_tensor(np.float32(3.0))
    _, grad = value_and_grad(lambda x: penalties.smooth_l1(x, beta), d)
    expected = np.clip(d.astype("float64") / 3.0, -1.0, 1.0)
    np.testing.assert_allclose(np.asarray(grad, "float64"), expected, rtol=1e-6)
    _, plain_grad = value_and_grad(lambda x: penalties._clip_and_split(x, 3.0), d)
    np.testing.assert_allclose(np.asarray(plain_grad, "float64"), expected, rtol=1e-6)


def test_tensor_beta_of_zero_is_plain_l1():
    # beta = 0 is |d| with gradient sign(d) (0 at d = 0, as PyTorch), also when
    # beta arrives as a backend tensor (a running estimate may reach 0).
    d = np.array([-2.0, 0.0, 0.5], dtype="float32")
    zero = keras.ops.convert_to_tensor(np.float32(0.0))
    value, grad = value_and_grad(lambda x: penalties.smooth_l1(x, zero), d)
    np.testing.assert_array_equal(value, np.abs(d))
    np.testing.assert_array_equal(grad, np.sign(d))
    per_coordinate = keras.ops.convert_to_tensor(np.array([0.0, 1.0, 1.0], "float32"))
    value, _ = value_and_grad(lambda x: penalties.smooth_l1(x, per_coordinate), d)
    # 2.0 under beta 0; 0 under beta 1; 0.5 * 0.5**2 / 1 = 0.125.
    np.testing.assert_allclose(value, [2.0, 0.0, 0.125], rtol=1e-7)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.hessian of the custom JVP")
@pytest.mark.parametrize("beta", [0.5, 1.0, (0.5, 1.0, 2.0, 0.25)])
def test_second_derivative_through_the_custom_jvp(beta):
    import jax
    import jax.numpy as jnp

    # The penalty's second derivative is 1 / beta where |d| < beta (d = 0 too) and 0
    # beyond; the plain formula, differentiated twice by JAX, agrees.
    d = jnp.array([0.0, 0.2, -3.0, 0.1], dtype="float32")
    betas = np.broadcast_to(np.asarray(beta, "float64"), d.shape)
    expected = np.where(np.abs(np.asarray(d)) < betas, 1.0 / betas, 0.0)
    fast = jax.hessian(lambda x: penalties.smooth_l1(x, beta).sum())(d)
    plain = jax.hessian(lambda x: penalties._clip_and_split(x, beta).sum())(d)
    np.testing.assert_allclose(np.diag(np.asarray(fast)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.diag(np.asarray(plain)), expected, rtol=1e-6)


@pytest.mark.skipif(
    BACKEND == "jax", reason="JAX computes float64 as float32 by default"
)
@pytest.mark.parametrize("beta", ["per-coordinate", "tensor"])
def test_float64_stays_float64(beta):
    # Found by testing: on PyTorch, Keras's minimum of float64 tensors is float32,
    # so 0.5 * 1e-6 came out as 4.9995e-07 (1e-4 relative error). The float64
    # formula 0.5 d**2 / beta and |d| - beta / 2 are the reference.
    d = np.array([[0.0, 1e-3, -1e-3, 0.5]], dtype="float64")
    if beta == "per-coordinate":
        betas = np.array([0.0, 1.0, 2.0, 1e-4])
        value, grad = value_and_grad(lambda x: penalties.smooth_l1(x, tuple(betas)), d)
    else:
        betas = np.full(4, 1e-4)
        tensor = keras.ops.convert_to_tensor(np.float64(1e-4), dtype="float64")
        value, grad = value_and_grad(lambda x: penalties.smooth_l1(x, tensor), d)
    a = np.abs(d)
    safe = np.where(betas > 0, betas, 1.0)
    expected = np.where(a < betas, 0.5 * a * a / safe, a - 0.5 * betas)
    assert value.dtype == np.float64
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=0)
    slope = np.where(betas > 0, np.clip(d / safe, -1, 1), np.sign(d))
    np.testing.assert_allclose(grad, slope, rtol=1e-12, atol=0)
