"""The robust family beside smooth L1: penalties, Loss classes, per-sample functions,
the registry, and saving.

Reference values come from hand arithmetic (in the comments) or from NumPy float64
transcriptions of each paper's piecewise formula (the ``ref_*`` functions below),
which evaluate every branch as the paper writes it, with ``np.where``, and share no
code or rewriting with the branch-free penalties under test. Keras's own ``Huber``
is the reference for ``HuberLoss``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

import smoothl1
from helpers import to_numpy, value_and_grad
from smoothl1 import (
    AdaptiveWingLoss,
    BalancedL1Loss,
    CharbonnierLoss,
    GeneralRobustLoss,
    HuberLoss,
    SmoothL1Loss,
    WingLoss,
    penalties,
)

INF = math.inf
# float32 against a float64 reference, through up to ~10 transcendental operations:
# each rounds to 6e-8 relative; rounding z / 2 = 50 alone moves exp(z / 2) by
# 50 * 6e-8 = 3e-6 relative. 2e-5 leaves a margin; atol covers values near 0.
TOL = {"rtol": 2e-5, "atol": 1e-6}
RESIDUALS = np.array(
    [-8.0, -3.0, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 0.5, 1.0, 2.0, 3.0, 8.0, 12.0]
)


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype="float32")


# ----------------------------------------------------- references (papers, float64)


def ref_balanced_l1(d, alpha=0.5, gamma=1.5, beta=1.0):
    # Libra R-CNN eq. (8)-(10), with beta placed as in the authors' mmdetection code.
    a = np.abs(d)
    b = np.e ** (gamma / alpha) - 1
    inner = alpha / b * (b * a + 1) * np.log(b * a / beta + 1) - alpha * a
    return np.where(a < beta, inner, gamma * a + gamma / b - alpha * beta)


def ref_wing(d, w=10.0, eps=2.0):
    # Feng et al. 2018, eq. (5).
    a = np.abs(d)
    c = w - w * np.log(1 + w / eps)
    return np.where(a < w, w * np.log(1 + a / eps), a - c)


def ref_adaptive_wing(d, y, alpha=2.1, omega=14.0, eps=1.0, theta=0.5):
    # Wang et al. 2019, eq. (8): A and C as printed there, epsilon in the small piece.
    a = np.abs(d)
    p = alpha - np.asarray(y, dtype="float64")
    r = theta / eps
    big_a = omega * (1 / (1 + r**p)) * p * r ** (p - 1) * (1 / eps)
    c = theta * big_a - omega * np.log(1 + r**p)
    return np.where(a < theta, omega * np.log(1 + (a / eps) ** p), big_a * a - c)


def ref_charbonnier(d, eps=1e-3):
    # Lai et al. 2017 (LapSRN), eq. (2).
    return np.sqrt(np.asarray(d, dtype="float64") ** 2 + eps**2)


def ref_general(d, alpha, c=1.0):
    # Barron 2019, eq. (1) and its limits (eq. (3)-(5) and the alpha -> +inf limit).
    z = (np.asarray(d, dtype="float64") / c) ** 2
    if alpha == 2:
        return 0.5 * z
    if alpha == 0:
        return np.log(0.5 * z + 1)
    if alpha == -INF:
        return 1 - np.exp(-0.5 * z)
    if alpha == INF:
        return np.exp(0.5 * z) - 1
    b = abs(alpha - 2)
    return b / alpha * ((z / b + 1) ** (alpha / 2) - 1)


def ref_general_grad(d, alpha, c=1.0):
    # d rho / d d = d / c**2 * (z / b + 1)**(alpha / 2 - 1), and its limits.
    d = np.asarray(d, dtype="float64")
    z = (d / c) ** 2
    if alpha == 2:
        return d / c**2
    if alpha == 0:
        return 2 * d / (d**2 + 2 * c**2)
    if alpha == -INF:
        return d / c**2 * np.exp(-0.5 * z)
    if alpha == INF:
        return d / c**2 * np.exp(0.5 * z)
    b = abs(alpha - 2)
    return d / c**2 * (z / b + 1) ** (alpha / 2 - 1)


def numeric_grad(ref, d, h=1e-6):
    # Central difference of a float64 reference: error about h**2 * rho''' / 6.
    return (ref(d + h) - ref(d - h)) / (2 * h)


# ---------------------------------------------------------------- hand values


@pytest.mark.parametrize(
    "fn, d, expected",
    [
        # b = e**3 - 1 = 19.0855369; |d| = 0.5: 0.5 / b * (0.5 b + 1) * ln(0.5 b + 1)
        # - 0.25 = 0.0261978 * 10.5427685 * 2.3554402 - 0.25 = 0.4005675
        (penalties.balanced_l1, 0.5, 0.4005675069053246),
        # |d| = beta = 1: 1.5 * 1 + 1.5 / b - 0.5 * 1 = 1.0785935
        (penalties.balanced_l1, -1.0, 1.5 + 1.5 / (math.e**3 - 1) - 0.5),
        # |d| = 3: 1.5 * 3 + 1.5 / b - 0.5 = 4.0785935
        (penalties.balanced_l1, 3.0, 4.5 + 1.5 / (math.e**3 - 1) - 0.5),
        (penalties.wing, 2.0, 10 * math.log(2)),  # 10 ln(1 + 2 / 2) = 6.9314718
        # |d| = w = 10: 10 ln 6 = 17.9175947 from both pieces (|d| - C = 10 ln 6)
        (penalties.wing, -10.0, 10 * math.log(6)),
        # 12 - C, C = 10 - 10 ln 6 = -7.9175947: 19.9175947
        (penalties.wing, 12.0, 12 - (10 - 10 * math.log(6))),
        (penalties.charbonnier, 0.0, 1e-3),  # sqrt(0 + 1e-3**2)
        (penalties.charbonnier, -0.75, math.sqrt(0.75**2 + 1e-6)),
        # alpha = 1 (default), d = 2: sqrt(4 + 1) - 1 = 1.2360680
        (penalties.general_robust, 2.0, math.sqrt(5) - 1),
    ],
)
def test_penalty_hand_values(fn, d, expected):
    value = to_numpy(fn(f32([d])))
    np.testing.assert_allclose(value, [expected], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "d, y, expected",
    [
        # y = 1.1, p = 1: 14 ln(1 + 0.25 / 1) = 3.1240
        (0.25, 1.1, 14 * math.log(1.25)),
        # y = 0, p = 2.1, |d| = theta: 14 ln(1 + 0.5**2.1) = 14 ln(1.2332582) = 2.9352
        (-0.5, 0.0, 14 * math.log(1 + 0.5**2.1)),
        # y = 0.1, p = 2, |d| = 1: A = 14 / (1 + 0.25) * 2 * 0.5 / 1 = 11.2,
        # C = 0.5 * 11.2 - 14 ln 1.25 = 2.4760, A * 1 - C = 8.7240
        (1.0, 0.1, 11.2 - (5.6 - 14 * math.log(1.25))),
        (0.0, 0.7, 0.0),  # 14 ln(1 + 0) = 0
    ],
)
def test_adaptive_wing_hand_values(d, y, expected):
    value = to_numpy(penalties.adaptive_wing(f32([d]), f32([y])))
    np.testing.assert_allclose(value, [expected], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "alpha, scale, d, expected",
    [
        (2.0, 2.0, 3.0, 1.125),  # 0.5 * (3 / 2)**2
        (0.0, 1.0, 2.0, math.log(3)),  # ln(0.5 * 4 + 1)
        (-2.0, 1.0, 2.0, 1.0),  # Geman-McClure 2 z / (z + 4) = 8 / 8
        (-INF, 1.0, 2.0, 1 - math.exp(-2)),  # 1 - exp(-4 / 2)
        (INF, 1.0, 2.0, math.exp(2) - 1),  # exp(4 / 2) - 1
        (4.0, 1.0, 2.0, 4.0),  # b = 2: 2 / 4 * ((4 / 2 + 1)**2 - 1) = 0.5 * 8
        # b = 1.5, z = 22.5: 1.5 / 0.5 * ((22.5 / 1.5 + 1)**0.25 - 1) = 3 * (2 - 1)
        (0.5, 1.0, math.sqrt(22.5), 3.0),
        (1.0, 0.5, 1.5, math.sqrt(10) - 1),  # z = 9: sqrt(9 + 1) - 1
    ],
)
def test_general_robust_hand_values(alpha, scale, d, expected):
    value = to_numpy(penalties.general_robust(f32([d, -d]), alpha, scale))
    np.testing.assert_allclose(value, [expected, expected], rtol=1e-6)


# -------------------------------------------------- against the papers' formulas


FAMILY = [
    ("balanced_l1", penalties.balanced_l1, ref_balanced_l1, {}),
    ("balanced_l1 b2", penalties.balanced_l1, ref_balanced_l1, {"beta": 2.0}),
    ("balanced_l1 b.5", penalties.balanced_l1, ref_balanced_l1, {"beta": 0.5}),
    ("balanced_l1 a g", penalties.balanced_l1, ref_balanced_l1, {"alpha": 1.0}),
    ("wing", penalties.wing, ref_wing, {}),
    ("wing 2 .5", penalties.wing, ref_wing, {"width": 2.0, "curvature": 0.5}),
    ("charbonnier", penalties.charbonnier, ref_charbonnier, {}),
    ("charbonnier .3", penalties.charbonnier, ref_charbonnier, {"epsilon": 0.3}),
]
REF_KEYS = {"width": "w", "curvature": "eps", "epsilon": "eps"}


@pytest.mark.parametrize("label, fn, ref, params", FAMILY, ids=[f[0] for f in FAMILY])
def test_penalty_matches_paper_formula(label, fn, ref, params):
    ref_params = {REF_KEYS.get(k, k): v for k, v in params.items()}
    value = to_numpy(fn(f32(RESIDUALS), **params))
    np.testing.assert_allclose(value, ref(RESIDUALS, **ref_params), **TOL)
    # and the gradient: a central difference of the float64 formula, away from the
    # kinks at 0 and at the branch points (where one-sided slopes differ)
    d = f32([-7.0, -2.5, -0.7, 0.2, 0.45, 0.9, 1.7, 5.0])
    _, grad = value_and_grad(lambda x: fn(x, **params), d)
    expected = numeric_grad(lambda x: ref(x, **ref_params), d.astype("float64"))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [2.1, 2.5, 1.5])
@pytest.mark.parametrize("omega, eps, theta", [(14.0, 1.0, 0.5), (10.0, 0.5, 0.8)])
def test_adaptive_wing_matches_paper_formula(alpha, omega, eps, theta):
    rng = np.random.default_rng(0)
    y = f32(rng.uniform(0.0, 1.0, size=RESIDUALS.shape))
    params = {"alpha": alpha, "omega": omega, "epsilon": eps, "theta": theta}
    value = to_numpy(penalties.adaptive_wing(f32(RESIDUALS), y, **params))
    expected = ref_adaptive_wing(RESIDUALS, y, alpha, omega, eps, theta)
    np.testing.assert_allclose(value, expected, **TOL)
    d = f32([-3.0, -0.7, -0.2, 0.05, 0.3, 1.1, 4.0, 9.0])
    y = y[: d.size]
    _, grad = value_and_grad(lambda x: penalties.adaptive_wing(x, y, **params), d)
    expected = numeric_grad(
        lambda x: ref_adaptive_wing(x, y, alpha, omega, eps, theta), d.astype("float64")
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_adaptive_wing_small_piece_divides_by_epsilon_not_omega():
    # With epsilon = 1 and omega = 14, the released code's (|d| / omega)**p gives
    # 14 ln(1 + (0.25 / 14)**1) = 0.2478 at y = 1.1; the paper's gives 3.1240.
    value = float(to_numpy(penalties.adaptive_wing(f32([0.25]), f32([1.1])))[0])
    assert math.isclose(value, 14 * math.log(1 + 0.25 / 1.0), rel_tol=1e-6)
    assert not math.isclose(value, 14 * math.log(1 + 0.25 / 14.0), rel_tol=0.1)


ALPHAS = [-INF, -16.0, -2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 8.0, INF]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_general_robust_matches_paper_formula_and_gradient(alpha, scale):
    # |d / scale| <= 10 keeps z / 2 <= 50, below the +inf cap of 80.
    d = RESIDUALS[np.abs(RESIDUALS / scale) <= 10]
    value, grad = value_and_grad(
        lambda x: penalties.general_robust(x, alpha, scale), f32(d)
    )
    np.testing.assert_allclose(value, ref_general(d, alpha, scale), **TOL)
    np.testing.assert_allclose(grad, ref_general_grad(d, alpha, scale), **TOL)


@pytest.mark.parametrize(
    "alpha, closed_form",
    [
        (2.0, lambda z: 0.5 * z),
        (0.0, lambda z: np.log(0.5 * z + 1)),
        (1.0, lambda z: np.sqrt(z + 1) - 1),
        (-INF, lambda z: 1 - np.exp(-0.5 * z)),
        (INF, lambda z: np.exp(0.5 * z) - 1),
        (-2.0, lambda z: 2 * z / (z + 4)),  # Geman-McClure
    ],
)
def test_general_robust_named_cases(alpha, closed_form):
    # Barron 2019, section 2: the special cases in closed form, z = (d / c)**2.
    scale = 1.5
    value = to_numpy(penalties.general_robust(f32(RESIDUALS), alpha, scale))
    np.testing.assert_allclose(value, closed_form((RESIDUALS / scale) ** 2), **TOL)


@pytest.mark.parametrize(
    "limit, nearby, rtol",
    [
        # The general form is continuous in alpha: each limit is its value nearby.
        # The distance, from ref_general in float64 for these d: 4.1e-3 relative at
        # alpha = 2 +- 1e-3, 1.7e-4 at +-1e-3, 1.7e-5 at -1e5, 1.3e-4 at 1e5; each
        # tolerance is about twice that, so a limit off by more would fail.
        (2.0, [2.0 - 1e-3, 2.0 + 1e-3], 1e-2),
        (0.0, [-1e-3, 1e-3], 4e-4),
        (-INF, [-1e5], 4e-5),
        (INF, [1e5], 3e-4),
    ],
)
def test_general_robust_limits_are_the_limits_of_the_general_form(limit, nearby, rtol):
    d = f32([-2.0, -0.5, 0.1, 1.0, 3.0])
    at_limit = to_numpy(penalties.general_robust(d, limit))
    for alpha in nearby:
        value = to_numpy(penalties.general_robust(d, alpha))
        np.testing.assert_allclose(value, at_limit, rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(value, ref_general(d, alpha), **TOL)


def test_general_robust_positive_infinity_is_capped():
    # The docstring's cap: z / 2 held at 80 beyond |d| = scale * sqrt(160) = 12.65
    # (scale = 1), value exp(80) - 1 and gradient 0 there.
    d = f32([12.0, 13.0, 1e3, -1e30])
    value, grad = value_and_grad(lambda x: penalties.general_robust(x, INF), d)
    np.testing.assert_allclose(value[0], math.expm1(72.0), rtol=1e-5)  # 144 / 2
    np.testing.assert_allclose(value[1:], math.expm1(80.0), rtol=1e-5)
    np.testing.assert_allclose(grad[0], 12 * math.exp(72.0), rtol=1e-5)
    np.testing.assert_array_equal(grad[1:], 0.0)


# ------------------------------------------ continuity at every branch point


def one_sided(fn, point, h):
    """Values and gradients at point - h and point + h (float32)."""
    value, grad = value_and_grad(fn, f32([point - h, point + h]))
    return value, grad


BRANCHES = [
    # label, penalty, branch point, max |slope| near it, slope jump (0: smooth)
    ("balanced beta=1", lambda x: penalties.balanced_l1(x), 1.0, 1.5, 0.0),
    ("wing w=10", lambda x: penalties.wing(x), 10.0, 1.0, 1 - 10 / 12),  # 1 - w/(w+e)
    ("wing w=2", lambda x: penalties.wing(x, 2.0, 0.5), 2.0, 1.0, 1 - 2 / 2.5),
    (
        "adaptive wing y=0",
        lambda x: penalties.adaptive_wing(x, np.zeros(2, "float32")),
        0.5,
        12.0,
        0.0,
    ),
    (
        "adaptive wing y=1",
        lambda x: penalties.adaptive_wing(x, np.ones(2, "float32")),
        0.5,
        12.0,
        0.0,
    ),
]


@pytest.mark.parametrize(
    "label, fn, point, slope, jump", BRANCHES, ids=[b[0] for b in BRANCHES]
)
def test_continuous_at_branch_point_and_slope_as_the_paper_says(
    label, fn, point, slope, jump
):
    h = 1e-5 * point
    for side in (1.0, -1.0):  # both signs of d
        value, grad = value_and_grad(fn, f32([side * (point - h), side * (point + h)]))
        # no jump in the value: only what the slope covers over 2h, plus float32
        # rounding of values below 20 (ulp 2e-6)
        assert abs(value[1] - value[0]) <= 2 * h * slope + 1e-5
        # the slope jumps by `jump` (0 where the paper claims a smooth join);
        # |rho''| < 10 near these points, so over 2h <= 2e-4 it moves by < 2e-3
        assert abs(side * (grad[1] - grad[0]) - jump) < 1e-3


def test_balanced_l1_slope_jumps_at_beta_unless_beta_is_one():
    # d/dx of the inner piece at x = beta: alpha ln(b + 1) + alpha (b beta + 1) /
    # (b beta + beta) - alpha = gamma + alpha ((b beta + 1) / (beta (b + 1)) - 1).
    # For beta = 2: b = e**3 - 1, (2b + 1) / (2 e**3) - 1 = -0.4751; times 0.5.
    b = math.e**3 - 1
    inner_slope = 1.5 + 0.5 * ((2 * b + 1) / (2 * (b + 1)) - 1)
    value, grad = value_and_grad(
        lambda x: penalties.balanced_l1(x, beta=2.0), f32([2.0 - 1e-4, 2.0 + 1e-4])
    )
    assert abs(value[1] - value[0]) < 1e-3  # continuous
    np.testing.assert_allclose(grad, [inner_slope, 1.5], rtol=1e-3)
    # and at d = 0 the one-sided slope is alpha (1 / beta - 1) = -0.25 for beta = 2
    _, grad = value_and_grad(lambda x: penalties.balanced_l1(x, beta=2.0), f32([1e-6]))
    np.testing.assert_allclose(grad, [-0.25], rtol=1e-3)


def test_charbonnier_and_general_robust_are_smooth_at_zero():
    # The slope passes through 0 linearly, with no kink: d / sqrt(d**2 + eps**2)
    # for Charbonnier, and d (z / b + 1)**(alpha / 2 - 1) = d (1 + O(1e-8)) for the
    # general form at c = 1 (z = 1e-8 here), and their limits.
    d = f32([-1e-4, 0.0, 1e-4])
    _, grad = value_and_grad(lambda x: penalties.charbonnier(x, 1e-2), d)
    np.testing.assert_allclose(grad, d / np.sqrt(d.astype("float64") ** 2 + 1e-4))
    for alpha in (-INF, -2.0, 0.0, 1.0, 2.0, INF):
        _, grad = value_and_grad(lambda x, a=alpha: penalties.general_robust(x, a), d)
        np.testing.assert_allclose(grad, d, rtol=1e-6, atol=1e-12)  # rho'(d) ~ d


# ------------------------------------------------------------ finite gradients


EVERY_PENALTY = {
    "huber": lambda x: penalties.huber(x, 2.0),
    "balanced_l1": lambda x: penalties.balanced_l1(x),
    "balanced_l1 beta=2": lambda x: penalties.balanced_l1(x, beta=2.0),
    "wing": lambda x: penalties.wing(x),
    "adaptive_wing": lambda x: penalties.adaptive_wing(x, np.full(x.shape, 0.3)),
    "adaptive_wing p<1": lambda x: penalties.adaptive_wing(
        x, np.full(x.shape, 0.8), alpha=1.5
    ),
    "charbonnier": lambda x: penalties.charbonnier(x),
    **{
        f"general_robust {a}": (lambda x, a=a: penalties.general_robust(x, a))
        for a in ALPHAS
    },
}


@pytest.mark.parametrize("name", list(EVERY_PENALTY))
def test_gradient_finite_everywhere_and_zero_at_zero(name):
    d = f32([0.0, 1e-30, -1e-30, 1e-3, -0.5, 0.5, 1.0, -2.0, 10.0, -13.0, 1e3])
    value, grad = value_and_grad(EVERY_PENALTY[name], d)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)
    assert grad[0] == 0.0  # every docstring: the gradient returned at d = 0 is 0


EXTREME_PARAMETERS = {
    "smooth_l1 beta=1e-6": lambda x: penalties.smooth_l1(x, 1e-6),
    "smooth_l1 beta=1e5": lambda x: penalties.smooth_l1(x, 1e5),
    "huber delta=1e-3": lambda x: penalties.huber(x, 1e-3),
    "huber delta=1e3": lambda x: penalties.huber(x, 1e3),
    "wing width=1e-2": lambda x: penalties.wing(x, width=1e-2, curvature=1e-3),
    "wing width=1e3": lambda x: penalties.wing(x, width=1e3, curvature=1e2),
    "balanced_l1 beta=1e-3": lambda x: penalties.balanced_l1(x, beta=1e-3),
    "charbonnier eps=1e-6": lambda x: penalties.charbonnier(x, epsilon=1e-6),
    **{
        f"general_robust {a} scale={c}": (
            lambda x, a=a, c=c: penalties.general_robust(x, a, scale=c)
        )
        for a in ALPHAS
        for c in (1e-3, 1e3)
    },
}


@pytest.mark.parametrize("name", list(EXTREME_PARAMETERS))
def test_no_nan_gradient_for_extreme_parameters(name):
    # The kind of fault found by testing: Barron at alpha = inf with scale 1e-3 gave
    # a nan gradient on JAX (inf from the clipped branch times the clip's zero
    # gradient). A value may overflow to inf where the penalty grows faster than
    # |d|, and its gradient is then not finite either (documented); wherever the
    # value is finite, so is the gradient, and a value is never nan.
    d = f32([0.0, 1e-6, -1e-6, 0.3, -3.0, 50.0, -1e3, 1e6, 1e30])
    value, grad = value_and_grad(EXTREME_PARAMETERS[name], d)
    assert not np.isnan(value).any(), value
    finite = np.isfinite(value)
    assert np.isfinite(grad[finite]).all(), (value, grad)


@pytest.mark.parametrize(
    "alpha, expected_value, expected_grad",
    [
        # alpha = 0: ln(0.5e60 + 1) = 60 ln 10 - ln 2; slope 2d / (d**2 + 2) = 2e-30
        (0.0, 60 * math.log(10) - math.log(2), 2e-30),
        (1.0, 1e30, 1.0),  # sqrt(1e60 + 1) - 1; slope d / sqrt(d**2 + 1)
        (-2.0, 2.0, 0.0),  # 2 z / (z + 4) -> 2; slope 16 d / (d**2 + 4)**2 -> 0
        (-INF, 1.0, 0.0),  # 1 - exp(-0.5e60); slope underflows to 0
        (INF, math.expm1(80.0), 0.0),  # the cap
        # b = 1.5: 3 ((1e60 / 1.5 + 1)**0.25 - 1) = 3e15 / 1.5**0.25 = 2.71081e15;
        # slope d (d**2 / 1.5)**(-0.75) = 1.5**0.75 * 1e-15 = 1.35540e-15
        (0.5, 3e15 / 1.5**0.25, 1.5**0.75 * 1e-15),
    ],
)
def test_general_robust_at_1e30_in_float32(alpha, expected_value, expected_grad):
    d = f32([1e30, -1e30])
    value, grad = value_and_grad(lambda x: penalties.general_robust(x, alpha), d)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, [expected_value] * 2, rtol=1e-5)
    np.testing.assert_allclose(grad, [expected_grad, -expected_grad], rtol=1e-5)


def test_general_robust_gradient_at_1e30_for_alpha_two():
    # The value 0.5e60 is beyond float32, but its gradient d / c**2 = 1e30 is not.
    _, grad = value_and_grad(lambda x: penalties.general_robust(x, 2.0), f32([1e30]))
    np.testing.assert_allclose(grad, [1e30], rtol=1e-6)


@pytest.mark.parametrize(
    "fn, expected_grad",
    [
        (lambda x: penalties.charbonnier(x), 1.0),
        (lambda x: penalties.wing(x), 1.0),
        (lambda x: penalties.balanced_l1(x), 1.5),  # gamma
        # A = 14 / (1 + 0.5**2.1) * 2.1 * 0.5**1.1 / 1 (y = 0)
        (
            lambda x: penalties.adaptive_wing(x, np.zeros(1)),
            14 / (1 + 0.5**2.1) * 2.1 * 0.5**1.1,
        ),
    ],
)
def test_linear_tails_at_1e30_in_float32(fn, expected_grad):
    value, grad = value_and_grad(fn, f32([1e30]))
    assert np.isfinite(value).all()
    np.testing.assert_allclose(grad, [expected_grad], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_do_not_overflow(dtype):
    d = keras.ops.cast(f32([300.0, -0.5]), dtype)
    # charbonnier: sqrt(300**2 + 1e-6) = 300; 300**2 alone overflows float16 (65504)
    value = to_numpy(keras.ops.cast(penalties.charbonnier(d), "float32"))
    np.testing.assert_allclose(value, [300.0, 0.5], rtol=1e-2)
    # general, alpha = 1: sqrt(9e4 + 1) - 1 = 299.0017
    value = penalties.general_robust(d, 1.0)
    assert keras.backend.standardize_dtype(value.dtype) == dtype
    value = to_numpy(keras.ops.cast(value, "float32"))
    np.testing.assert_allclose(value, [math.sqrt(9e4 + 1) - 1, 0.1180340], rtol=1e-2)


def test_float64_is_kept_and_matches():
    d = RESIDUALS  # float64: jax without x64 computes in float32, the others in 64
    for fn, ref in [
        (penalties.wing, ref_wing),
        (penalties.balanced_l1, ref_balanced_l1),
        (penalties.charbonnier, ref_charbonnier),
        (lambda x: penalties.general_robust(x, 0.5), lambda x: ref_general(x, 0.5)),
    ]:
        np.testing.assert_allclose(to_numpy(fn(d)), ref(d), **TOL)


# ------------------------------------------------------------ the Loss classes


def test_huber_is_delta_times_smooth_l1_and_keras_huber():
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=(8, 5)).astype("float32")
    y_pred = (y_true + 3 * rng.normal(size=(8, 5))).astype("float32")
    for delta in (0.25, 1.0, 2.5):
        ours = float(to_numpy(HuberLoss(delta)(y_true, y_pred)))
        smooth = float(to_numpy(SmoothL1Loss(delta)(y_true, y_pred)))
        keras_huber = float(to_numpy(keras.losses.Huber(delta)(y_true, y_pred)))
        assert math.isclose(ours, delta * smooth, rel_tol=1e-6)
        assert math.isclose(ours, keras_huber, rel_tol=1e-6)
        per_sample = to_numpy(smoothl1.huber(y_true, y_pred, delta))
        expected = to_numpy(keras.losses.huber(y_true, y_pred, delta))
        np.testing.assert_allclose(per_sample, expected, rtol=1e-6)


CLASSES = [
    (HuberLoss, {"delta": 2.0}, smoothl1.huber, "huber_loss"),
    (
        BalancedL1Loss,
        {"alpha": 0.4, "gamma": 1.2, "beta": 0.5},
        smoothl1.balanced_l1,
        "balanced_l1_loss",
    ),
    (WingLoss, {"width": 5.0, "curvature": 1.0}, smoothl1.wing, "wing_loss"),
    (
        AdaptiveWingLoss,
        {"alpha": 2.2, "omega": 10.0, "epsilon": 0.5, "theta": 0.4},
        smoothl1.adaptive_wing,
        "adaptive_wing_loss",
    ),
    (CharbonnierLoss, {"epsilon": 0.01}, smoothl1.charbonnier, "charbonnier_loss"),
    (
        GeneralRobustLoss,
        {"alpha": -INF, "scale": 0.5},
        smoothl1.general_robust,
        "general_robust_loss",
    ),
]
CLASS_IDS = [c[0].__name__ for c in CLASSES]


def heatmap_batch(seed=2, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(0.0, 1.0, size=shape).astype("float32")
    y_pred = (y_true + rng.normal(scale=0.6, size=shape)).astype("float32")
    return y_true, y_pred


@pytest.mark.parametrize("cls, params, fn, name", CLASSES, ids=CLASS_IDS)
def test_class_is_the_mean_of_the_penalty_and_matches_its_function(
    cls, params, fn, name
):
    y_true, y_pred = heatmap_batch()
    d = y_pred - y_true
    penalty = cls.penalty
    if cls.penalty_takes_y_true:
        elementwise = to_numpy(penalty(d, y_true, **params))
    else:
        elementwise = to_numpy(penalty(d, **params))
    loss = cls(**params)
    expected = elementwise.mean(axis=-1).mean()
    assert math.isclose(float(to_numpy(loss(y_true, y_pred))), expected, rel_tol=1e-6)
    np.testing.assert_allclose(
        to_numpy(fn(y_true, y_pred, **params)), elementwise.mean(axis=-1), rtol=1e-6
    )
    per_element = cls(**params, axis=None, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(to_numpy(per_element), elementwise, rtol=1e-6)
    # sample weights pass through Keras's reduction: weight 0 drops a sample
    weights = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    weighted = float(to_numpy(loss(y_true, y_pred, sample_weight=weights)))
    expected = (elementwise.mean(axis=-1) * weights).sum() / 4
    assert math.isclose(weighted, expected, rel_tol=1e-6)


def test_penalties_match_the_references_through_the_classes():
    # The classes feed the residual y_pred - y_true (and, for Adaptive Wing, y_true).
    y_true, y_pred = heatmap_batch(3, (3, 4))
    d = (y_pred - y_true).astype("float64")
    cases = [
        (BalancedL1Loss(), ref_balanced_l1(d)),
        (WingLoss(), ref_wing(d)),
        (AdaptiveWingLoss(), ref_adaptive_wing(d, y_true)),
        (CharbonnierLoss(), ref_charbonnier(d)),
        (GeneralRobustLoss(0.0, 2.0), ref_general(d, 0.0, 2.0)),
    ]
    for loss, elementwise in cases:
        value = float(to_numpy(loss(y_true, y_pred)))
        assert math.isclose(value, elementwise.mean(), rel_tol=1e-5), type(loss)


def test_adaptive_wing_aligns_y_true_before_using_it():
    # y_true (N,) against y_pred (N, 1) is aligned to (N, 1), as for every loss, and
    # the exponent uses the aligned targets: same value as the (N, 1) pair.
    y_true = f32([0.0, 0.5, 1.0])
    y_pred = f32([[0.3], [0.1], [1.4]])
    loss = AdaptiveWingLoss()
    a = float(to_numpy(loss(y_true, y_pred)))
    b = float(to_numpy(loss(y_true[:, None], y_pred)))
    expected = ref_adaptive_wing(y_pred[:, 0] - y_true, y_true).mean()
    assert math.isclose(a, b, rel_tol=1e-7)
    assert math.isclose(a, expected, rel_tol=1e-5)


def test_empty_batch_and_half_precision_for_a_y_true_loss():
    empty = np.zeros((0, 3), "float32")
    assert float(to_numpy(AdaptiveWingLoss()(empty, empty))) == 0.0
    loss = AdaptiveWingLoss(dtype="mixed_float16")
    y_true, y_pred = heatmap_batch()
    value = loss(y_true.astype("float16"), y_pred.astype("float16"))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    reference = ref_adaptive_wing(
        y_pred.astype("float16").astype("float64") - y_true.astype("float16"),
        y_true.astype("float16"),
    ).mean()
    assert math.isclose(float(to_numpy(value)), reference, rel_tol=1e-4)


@pytest.mark.parametrize("cls, params, fn, name", CLASSES, ids=CLASS_IDS)
def test_get_config_keeps_every_argument(cls, params, fn, name):
    default = cls().get_config()
    assert default["name"] == name and default["axis"] == -1
    assert default["reduction"] == "sum_over_batch_size" and default["dtype"] is None
    loss = cls(**params, axis=None, reduction="sum", name="mine", dtype="float64")
    config = loss.get_config()
    assert config == {
        **params,
        "axis": None,
        "reduction": "sum",
        "name": "mine",
        "dtype": "float64",
    }
    clone = cls.from_config(config)
    assert clone.get_config() == config
    for key, value in params.items():
        assert getattr(clone, key) == value


def test_defaults_are_the_papers():
    # The issue's table (each paper's recommended setting).
    assert HuberLoss().delta == 1.0
    loss = BalancedL1Loss()
    assert (loss.alpha, loss.gamma, loss.beta) == (0.5, 1.5, 1.0)
    assert (WingLoss().width, WingLoss().curvature) == (10.0, 2.0)
    loss = AdaptiveWingLoss()
    assert (loss.alpha, loss.omega, loss.epsilon, loss.theta) == (2.1, 14.0, 1.0, 0.5)
    assert CharbonnierLoss().epsilon == 1e-3
    assert (GeneralRobustLoss().alpha, GeneralRobustLoss().scale) == (1.0, 1.0)


@pytest.mark.parametrize("cls", [c[0] for c in CLASSES], ids=CLASS_IDS)
def test_options_are_keyword_only(cls):
    n = len(cls().params)
    with pytest.raises(TypeError):
        cls(*([1.0] * n), -1)


# ------------------------------------------------------------ bad parameters


BAD = [
    (HuberLoss, penalties.huber, {"delta": 0.0}, "delta"),
    (HuberLoss, penalties.huber, {"delta": -1.0}, "delta"),
    (HuberLoss, penalties.huber, {"delta": math.nan}, "delta"),
    (HuberLoss, penalties.huber, {"delta": INF}, "delta"),
    (HuberLoss, penalties.huber, {"delta": "1"}, "delta"),
    (HuberLoss, penalties.huber, {"delta": True}, "delta"),
    (BalancedL1Loss, penalties.balanced_l1, {"alpha": 0.0}, "alpha"),
    (BalancedL1Loss, penalties.balanced_l1, {"gamma": -1.5}, "gamma"),
    (BalancedL1Loss, penalties.balanced_l1, {"beta": 0.0}, "beta"),
    (BalancedL1Loss, penalties.balanced_l1, {"beta": math.nan}, "beta"),
    (BalancedL1Loss, penalties.balanced_l1, {"alpha": None}, "alpha"),
    # gamma / alpha = 1000: exp(1000) overflows a float64
    (BalancedL1Loss, penalties.balanced_l1, {"alpha": 1e-3, "gamma": 1.0}, "gamma"),
    (WingLoss, penalties.wing, {"width": 0.0}, "width"),
    (WingLoss, penalties.wing, {"width": INF}, "width"),
    (WingLoss, penalties.wing, {"curvature": -2.0}, "curvature"),
    (AdaptiveWingLoss, penalties.adaptive_wing, {"alpha": 0.0}, "alpha"),
    (AdaptiveWingLoss, penalties.adaptive_wing, {"omega": -14.0}, "omega"),
    (AdaptiveWingLoss, penalties.adaptive_wing, {"epsilon": 0.0}, "epsilon"),
    (AdaptiveWingLoss, penalties.adaptive_wing, {"theta": math.nan}, "theta"),
    (CharbonnierLoss, penalties.charbonnier, {"epsilon": 0.0}, "epsilon"),
    (CharbonnierLoss, penalties.charbonnier, {"epsilon": -1e-3}, "epsilon"),
    (GeneralRobustLoss, penalties.general_robust, {"alpha": math.nan}, "alpha"),
    (GeneralRobustLoss, penalties.general_robust, {"alpha": "2"}, "alpha"),
    (GeneralRobustLoss, penalties.general_robust, {"scale": 0.0}, "scale"),
    (GeneralRobustLoss, penalties.general_robust, {"scale": INF}, "scale"),
]


@pytest.mark.parametrize("cls, penalty, params, argument", BAD)
def test_bad_parameter_names_the_argument_and_the_value(cls, penalty, params, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as error:
        cls(**params)
    assert f"{argument}={params[argument]!r}" in str(error.value)
    d = np.zeros(2, "float32")
    args = (d, d) if cls is AdaptiveWingLoss else (d,)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        penalty(*args, **params)


def test_bad_axis_is_rejected_by_the_shared_base():
    with pytest.raises(ValueError, match="`axis`"):
        WingLoss(axis="last")  # type: ignore[arg-type]


# ------------------------------------------------------------ the registry


@pytest.mark.parametrize(
    "spec, cls, attributes",
    [
        ("smooth_l1", SmoothL1Loss, {"beta": 1.0}),
        ("smooth_l1:beta=0.5", SmoothL1Loss, {"beta": 0.5}),
        (
            "smooth_l1:beta=0.1|0.1|0.2|0.2",
            SmoothL1Loss,
            {"beta": (0.1, 0.1, 0.2, 0.2)},
        ),
        ("huber", HuberLoss, {"delta": 1.0}),
        ("huber:delta=2", HuberLoss, {"delta": 2.0}),
        (" Huber : delta = 2 ", HuberLoss, {"delta": 2.0}),
        ("wing:width=5,curvature=1", WingLoss, {"width": 5.0, "curvature": 1.0}),
        ("wing:curvature=1", WingLoss, {"width": 10.0, "curvature": 1.0}),
        ("balanced_l1:beta=0.5", BalancedL1Loss, {"alpha": 0.5, "beta": 0.5}),
        ("adaptive_wing:theta=0.4", AdaptiveWingLoss, {"alpha": 2.1, "theta": 0.4}),
        ("charbonnier:epsilon=1e-6", CharbonnierLoss, {"epsilon": 1e-6}),
        ("general_robust:alpha=-inf", GeneralRobustLoss, {"alpha": -INF}),
        ("general_robust:alpha=inf,scale=2", GeneralRobustLoss, {"alpha": INF}),
        ("general_robust:alpha=0", GeneralRobustLoss, {"alpha": 0.0, "scale": 1.0}),
        ("mse", keras.losses.MeanSquaredError, {}),
        ("mae", keras.losses.MeanAbsoluteError, {}),
        ("log_cosh", keras.losses.LogCosh, {}),
    ],
)
def test_get_builds_the_named_loss(spec, cls, attributes):
    loss = smoothl1.get(spec)
    assert type(loss) is cls
    for key, value in attributes.items():
        assert getattr(loss, key) == value


def test_get_passes_a_loss_through_and_rejects_other_types():
    loss = WingLoss(width=3.0)
    assert smoothl1.get(loss) is loss
    keras_loss = keras.losses.Huber()
    assert smoothl1.get(keras_loss) is keras_loss
    with pytest.raises(TypeError, match="spec=3"):
        smoothl1.get(3)  # type: ignore[arg-type]


def test_known_losses_lists_names_parameters_and_defaults():
    known = smoothl1.known_losses()
    assert known == {
        "smooth_l1": {"beta": 1.0},
        "huber": {"delta": 1.0},
        "balanced_l1": {"alpha": 0.5, "gamma": 1.5, "beta": 1.0},
        "wing": {"width": 10.0, "curvature": 2.0},
        "adaptive_wing": {"alpha": 2.1, "omega": 14.0, "epsilon": 1.0, "theta": 0.5},
        "charbonnier": {"epsilon": 1e-3},
        "general_robust": {"alpha": 1.0, "scale": 1.0},
        "self_adjusting": {"momentum": 0.1, "beta_max": 1 / 9, "beta_min": 1e-3},
        "mse": {},
        "mae": {},
        "log_cosh": {},
    }
    for name, defaults in known.items():  # every name builds with its defaults
        loss = smoothl1.get(name)
        for key, value in defaults.items():
            assert getattr(loss, key) == value


@pytest.mark.parametrize(
    "spec, message",
    [
        ("l1_smooth", r"Unknown loss 'l1_smooth'.*smooth_l1, huber, balanced_l1"),
        ("", r"Unknown loss ''.*Known losses: smooth_l1"),
        ("huber:beta=2", r"Unknown parameter 'beta'.*'huber'.*delta=1"),
        ("mse:delta=1", r"Unknown parameter 'delta'.*'mse'.*none"),
        ("wing:width", r"Malformed parameter 'width'.*width=10, curvature=2"),
        ("wing:width=", r"Malformed parameter"),
        ("wing:width=1,width=2", r"'width' is given twice"),
        ("huber:delta=two", r"`delta`.*Received: delta='two'"),
        ("huber:delta=0.5|1", r"`delta`.*'0.5\|1'"),  # lists only for smooth L1 beta
        ("huber:delta=-1", r"`delta`.*delta=-1.0"),  # the class's own check
        ("general_robust:alpha=nan", r"`alpha`"),
        ("smooth_l1:beta=0.1|x", r"`beta`.*'x'"),
    ],
)
def test_get_errors_say_what_is_accepted(spec, message):
    with pytest.raises(ValueError, match=message):
        smoothl1.get(spec)


@pytest.mark.parametrize(
    "loss, spec",
    [
        (SmoothL1Loss(beta=0.5), "smooth_l1:beta=0.5"),
        (SmoothL1Loss([0.1, 0.1, 0.2, 0.2]), "smooth_l1:beta=0.1|0.1|0.2|0.2"),
        (SmoothL1Loss(0.0), "smooth_l1:beta=0"),
        (HuberLoss(), "huber:delta=1"),
        (WingLoss(5, 1), "wing:width=5,curvature=1"),
        (BalancedL1Loss(beta=0.25), "balanced_l1:alpha=0.5,gamma=1.5,beta=0.25"),
        (AdaptiveWingLoss(), "adaptive_wing:alpha=2.1,omega=14,epsilon=1,theta=0.5"),
        (CharbonnierLoss(), "charbonnier:epsilon=0.001"),
        (CharbonnierLoss(1e-20), "charbonnier:epsilon=1e-20"),
        (GeneralRobustLoss(-INF, 2), "general_robust:alpha=-inf,scale=2"),
        (GeneralRobustLoss(INF), "general_robust:alpha=inf,scale=1"),
        (keras.losses.MeanSquaredError(), "mse"),
        (keras.losses.LogCosh(), "log_cosh"),
    ],
)
def test_spec_of_is_canonical_and_round_trips(loss, spec):
    assert smoothl1.spec_of(loss) == spec
    rebuilt = smoothl1.get(spec)
    assert type(rebuilt) is type(loss)
    assert rebuilt.get_config() == loss.get_config()


def test_spec_of_rejects_what_get_cannot_build():
    with pytest.raises(ValueError, match="Huber.*spec_of knows smooth_l1"):
        smoothl1.spec_of(keras.losses.Huber())


# ------------------------------------------------------------ saving


SAVED = [
    HuberLoss(delta=2.0, name="h"),
    BalancedL1Loss(alpha=0.4, gamma=1.2, beta=0.5),
    WingLoss(width=5.0, curvature=1.0),
    AdaptiveWingLoss(alpha=2.2, omega=10.0, epsilon=0.5, theta=0.4),
    CharbonnierLoss(epsilon=0.01, axis=None),
    GeneralRobustLoss(alpha=-INF, scale=0.5),
    GeneralRobustLoss(alpha=INF, scale=2.0, reduction="sum"),
    smoothl1.huber,
    smoothl1.balanced_l1,
    smoothl1.wing,
    smoothl1.adaptive_wing,
    smoothl1.charbonnier,
    smoothl1.general_robust,
]


@pytest.mark.parametrize(
    "loss", SAVED, ids=[getattr(s, "__name__", type(s).__name__) for s in SAVED]
)
def test_keras_file_round_trip_without_custom_objects(tmp_path, loss):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.uniform(0.0, 1.0, size=(16, 2)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    before = model.evaluate(x, y, verbose=0)
    after = reloaded.evaluate(x, y, verbose=0)
    assert np.isfinite(before)
    np.testing.assert_allclose(after, before, rtol=1e-6)
    if isinstance(loss, keras.losses.Loss):
        assert type(reloaded.loss) is type(loss)
        assert reloaded.loss.get_config() == loss.get_config()


def test_public_objects_are_registered_and_exported():
    objects = [c[0] for c in CLASSES] + [c[2] for c in CLASSES]
    for obj in objects:
        name = keras.saving.get_registered_name(obj)
        assert name == f"smoothl1>{obj.__name__}"
        assert keras.saving.get_registered_object(name) is obj
        assert obj.__name__ in smoothl1.__all__
    for name in ("get", "known_losses", "spec_of"):
        assert name in smoothl1.__all__ and callable(getattr(smoothl1, name))
