"""Choosing beta: LinearFraction, ResidualMonitor, suggest-beta, fit --beta auto and
SelfAdjustingSmoothL1Loss, on the backend chosen by KERAS_BACKEND."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from typer.testing import CliRunner

import smoothl1
from conftest import BACKEND
from helpers import value_and_grad
from smoothl1 import (
    LinearFraction,
    ResidualMonitor,
    SelfAdjustingBetaState,
    SelfAdjustingSmoothL1Loss,
)
from smoothl1.cli import suggest
from smoothl1.cli.app import app
from smoothl1.cli.data import UserError
from smoothl1.cli.train import FitOptions, fit_table

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# P(|Z| >= 1.345) for a standard normal Z: the share of Gaussian residuals that the
# robust rule puts in the L1 region.
GAUSSIAN_TAIL = 2 * scipy.stats.norm.sf(1.345)  # 0.1787
# The running state is float32, the simulation float64; each step rounds a handful
# of float32 operations (about 6e-8 relative each), over at most a dozen steps.
STATE_RTOL, STATE_ATOL = 1e-5, 1e-6


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def identity_model(loss: SelfAdjustingSmoothL1Loss | None = None, units: int = 2):
    """y_pred = x exactly (an identity kernel that SGD with rate 0 never moves), so
    the residuals of a step are the rows of x when y is 0."""
    model = keras.Sequential(
        [
            keras.Input((units,)),
            keras.layers.Dense(units, use_bias=False, kernel_initializer="identity"),
        ]
    )
    if loss is not None:
        model = loss.attach(model)
    return model


# ------------------------------------------------------------ LinearFraction


def test_linear_fraction_counts_elements_at_or_beyond_beta():
    metric = LinearFraction(beta=1.0)
    # |d| = 0.5, 1.0, 3.0, 0.0: 1.0 (the boundary) and 3.0 count -> 2 of 4
    metric.update_state(np.zeros((2, 2)), np.array([[0.5, 1.0], [-3.0, 0.0]]))
    assert float(metric.result()) == 0.5
    # |d| = 2.0, 0.1: one more of two -> 3 of 6
    metric.update_state(np.zeros((1, 2)), np.array([[2.0, -0.1]]))
    assert float(metric.result()) == 0.5
    metric.reset_state()
    assert float(metric.result()) == 0.0  # no element seen: 0, not NaN


def test_linear_fraction_streams_like_numpy_over_batches():
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=(3, 50, 4)).astype("float32")
    y_pred = rng.normal(size=(3, 50, 4)).astype("float32")
    metric = LinearFraction(beta=0.8)
    for t, p in zip(y_true, y_pred, strict=True):
        metric.update_state(t, p)
    expected = np.mean(np.abs(y_pred - y_true) >= np.float32(0.8))
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


def test_linear_fraction_per_coordinate_beta_and_sample_weight():
    y_pred = np.array([[0.6, 0.6], [3.0, 1.0]], dtype="float32")
    y_true = np.zeros_like(y_pred)
    metric = LinearFraction(beta=[0.5, 2.0])
    # column 0 against 0.5: 0.6 and 3.0 count; column 1 against 2.0: none -> 2 of 4
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == 0.5
    weighted = LinearFraction(beta=[0.5, 2.0])
    # sample weights 1 and 3: counted (1 + 3) over weighted elements 2 * (1 + 3)
    weighted.update_state(y_true, y_pred, sample_weight=np.array([1.0, 3.0]))
    assert float(weighted.result()) == 0.5
    only_second = LinearFraction(beta=[0.5, 2.0])
    only_second.update_state(y_true, y_pred, sample_weight=np.array([0.0, 1.0]))
    assert float(only_second.result()) == 0.5  # row 2: 3.0 counts, 1.0 < 2 does not
    everything = LinearFraction(beta=0.0)  # |d| >= 0 for every element
    everything.update_state(y_true, y_pred)
    assert float(everything.result()) == 1.0


def test_linear_fraction_checks_and_serializes():
    with pytest.raises(ValueError, match="`beta`"):
        LinearFraction(beta=-1.0)
    with pytest.raises(ValueError, match="last axis"):
        LinearFraction(beta=[0.1, 0.2, 0.3]).update_state(
            np.zeros((1, 2)), np.ones((1, 2))
        )
    metric = LinearFraction(beta=[0.1, 0.2], name="lf")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert type(restored) is LinearFraction
    assert restored.beta == (0.1, 0.2) and restored.name == "lf"


def test_linear_fraction_in_compiled_model_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2)).astype("float32")
    y = np.zeros_like(x)
    model = identity_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss="mse", metrics=[LinearFraction(0.7)]
    )
    logs = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)  # 3 batches
    np.testing.assert_allclose(
        logs["linear_fraction"], np.mean(np.abs(x) >= np.float32(0.7)), rtol=1e-6
    )


# ------------------------------------------------------------ ResidualMonitor


def test_residual_monitor_writes_quantiles_to_history_and_csv(tmp_path):
    # Residuals 0, 0.01, ..., 1 (101 evenly spaced values): numpy's linear
    # interpolation puts the q-th percentile exactly at q / 100.
    x = np.linspace(0.0, 1.0, 101, dtype="float32").reshape(-1, 1)
    y = np.zeros_like(x)
    model = identity_model(units=1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    path = tmp_path / "quantiles.csv"
    monitor = ResidualMonitor(x, y, csv_path=path)
    history = model.fit(x, y, epochs=2, batch_size=32, callbacks=[monitor], verbose=0)
    expected = [0.05, 0.25, 0.50, 0.75, 0.95]
    for key, value in zip(monitor.keys, expected, strict=True):
        np.testing.assert_allclose(history.history[key], [value, value], atol=1e-7)
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", *monitor.keys]
    assert [row[0] for row in rows[1:]] == ["1", "2"]
    np.testing.assert_allclose(
        np.array([row[1:] for row in rows[1:]], dtype="float64"),
        [expected, expected],
        atol=1e-7,
    )


def test_residual_monitor_follows_the_trained_model():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    monitor = ResidualMonitor(x, y, quantiles=(10, 90))
    history = model.fit(x, y, epochs=3, batch_size=16, callbacks=[monitor], verbose=0)
    # The last epoch's record is the residuals of the final weights (numpy reference).
    d = model.predict(x, verbose=0).astype("float64") - y
    np.testing.assert_allclose(
        [history.history["residual_q10"][-1], history.history["residual_q90"][-1]],
        np.percentile(d.ravel(), [10, 90]),
        rtol=1e-6,
    )
    first, last = monitor.records[0], monitor.records[-1]
    assert (
        last["residual_q90"] - last["residual_q10"]
        < first["residual_q90"] - first["residual_q10"]
    )  # training on a noiseless linear target narrows the residuals


def test_residual_monitor_never_replaces_a_csv_unless_asked(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("precious\n")
    x = np.zeros((4, 1), dtype="float32")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ResidualMonitor(x, x, csv_path=path)
    assert path.read_text() == "precious\n"
    model = identity_model(units=1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    monitor = ResidualMonitor(x, x, csv_path=path, overwrite=True)
    model.fit(x, x, epochs=1, callbacks=[monitor], verbose=0)
    assert path.read_text().splitlines()[0].startswith("epoch,residual_q05")


def test_residual_monitor_sample_and_arguments():
    x = np.arange(100, dtype="float32").reshape(-1, 1)
    monitor = ResidualMonitor(x, x, max_rows=10, seed=3)
    again = ResidualMonitor(x, x, max_rows=10, seed=3)
    assert len(monitor.y) == 10 and np.array_equal(monitor.y, again.y)
    assert np.array_equal(monitor.x, monitor.y)  # the same rows of x and y
    assert ResidualMonitor(x, x, quantiles=(2.5,)).keys == ["residual_q2.5"]
    with pytest.raises(ValueError, match="quantiles"):
        ResidualMonitor(x, x, quantiles=(101,))
    with pytest.raises(ValueError, match="max_rows"):
        ResidualMonitor(x, x, max_rows=0)


# ------------------------------------------------------------ the suggestion rule


def test_rule_is_1345_times_normalized_mad_from_scipy():
    rng = np.random.default_rng(3)
    d = rng.standard_t(df=3, size=(501, 2))
    expected = 1.345 * scipy.stats.median_abs_deviation(d, axis=0, scale="normal")
    np.testing.assert_allclose(suggest.propose_beta(d), expected, rtol=1e-12)
    # 1 / Phi^-1(3/4) = 1.482602...
    np.testing.assert_allclose(suggest.MAD_TO_SIGMA, 1.482602218505602, rtol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_suggestion_on_gaussian_residuals_of_known_scale(sigma):
    rng = np.random.default_rng(4)
    d = rng.normal(0.0, sigma, size=(20_000, 1))
    beta = suggest.propose_beta(d)[0]
    assert abs(beta / (1.345 * sigma) - 1) < 0.10
    # and the share of residuals it puts in the L1 region is the Gaussian tail
    fraction = suggest.linear_fraction(d, beta)[0]
    assert abs(fraction - GAUSSIAN_TAIL) < 0.01  # binomial sd at n = 20000: 0.0027


def test_suggestion_resists_outliers_where_the_standard_deviation_does_not():
    rng = np.random.default_rng(5)
    sigma = 0.5
    d = rng.normal(0.0, sigma, size=(20_000, 1))
    outliers = rng.choice(len(d), size=len(d) // 20, replace=False)  # 5 %
    d[outliers] = 20 * sigma * rng.choice([-1.0, 1.0], size=(len(outliers), 1))
    # With 5 % of |d| far out, the median of |d| solves 0.95 P(|Z| < m) = 0.5, so
    # m = Phi^-1(0.7632) = 0.7155 sigma instead of 0.6745 sigma: 6 % too large.
    beta = suggest.propose_beta(d)[0]
    assert abs(beta / (1.345 * sigma) - 1) < 0.10
    # The same rule on the standard deviation (sqrt(0.95 + 0.05 * 400) = 4.6
    # sigma) would be far off: the test can tell the two apart.
    assert 1.345 * d.std() > 4 * 1.345 * sigma


def test_suggestion_has_one_beta_per_column():
    rng = np.random.default_rng(6)
    d = rng.normal(0.0, [0.1, 2.0], size=(20_000, 2))
    np.testing.assert_allclose(
        suggest.propose_beta(d), 1.345 * np.array([0.1, 2.0]), rtol=0.10
    )


# ------------------------------------------------------------ suggest-beta, end to end


@pytest.fixture(scope="module")
def noisy_table(tmp_path_factory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    """y = x w + noise, noise ~ N(0, 0.5): a model that learns x w leaves the noise."""
    rng = np.random.default_rng(7)
    n = 2000
    x = rng.normal(size=(n, 3))
    noise = rng.normal(0.0, 0.5, size=n)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = x @ np.array([1.0, -1.0, 0.5]) + noise
    path = tmp_path_factory.mktemp("noisy") / "noisy.csv"
    frame.to_csv(path, index=False)
    return path, frame, noise


# 10 epochs at rate 1e-2 fit x w well enough (on each backend the proposal lands
# within 2.5 % of the known value, against a bound of 10 %).
SUGGEST_FAST = {"epochs": 10, "batch_size": 64, "learning_rate": 1e-2, "verbose": False}


def test_suggest_beta_lands_on_the_rule_for_the_known_noise(noisy_table, tmp_path):
    path, frame, noise = noisy_table
    out = tmp_path / "suggestion"
    result = suggest.suggest_beta(
        suggest.SuggestOptions(
            data=str(path), targets=["y"], out=str(out), **SUGGEST_FAST
        )
    )
    # The known scale: the rule applied to the noise actually drawn on the validation
    # rows, in the standardized units fit uses (the training split's y std).
    splits = suggest_splits(len(frame))
    y_std = frame["y"].iloc[splits.train].std(ddof=0)
    expected = suggest.propose_beta(noise[splits.validation])[0] / y_std
    beta = result.suggestion.betas[0]
    assert abs(beta / expected - 1) < 0.10
    np.testing.assert_allclose(
        result.suggestion.betas_in_target_units[0], beta * y_std, rtol=1e-9
    )
    assert result.suggestion.split == "validation"
    assert result.suggestion.rows == len(splits.validation)  # 400
    # binomial sd of a fraction near 0.18 over 400 rows: 0.019; the bound is 3 sd
    assert abs(result.suggestion.linear_fractions[0] - GAUSSIAN_TAIL) < 0.06
    assert result.out_dir == out
    saved = json.loads((out / "suggestion.json").read_text())
    assert saved == result.suggestion.to_json()
    assert "1.345" in saved["reason"] and "95 %" in saved["reason"]
    image = matplotlib.image.imread(out / suggest.PLOT_NAME)
    assert image.shape[:2] == (420, 640)  # one panel: 6.4 x 4.2 inches at 100 dpi


def suggest_splits(n_rows: int):
    from smoothl1.cli.data import split_indices

    return split_indices(n_rows, 0.2, 0.2, seed=0)


def test_suggest_beta_command_prints_reason_and_keeps_existing_output(tmp_path):
    out = tmp_path / "s"
    args = ["suggest-beta", "stackloss", "--epochs", "2", "-q", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Proposed smooth L1 beta" in result.stdout
    assert "1.345 x normalized MAD" in result.stdout
    assert "smoothl1 fit stackloss --target STACKLOSS --beta" in result.stdout
    assert (out / "suggestion.json").is_file() and (out / suggest.PLOT_NAME).is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        suggest.PLOT_NAME,
        "suggestion.json",
    ]
    replaced = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["targets"] == ["STACKLOSS"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "nope"], "target column 'nope' is not in the table"),
        (["--baseline", "huber"], "--baseline must be one of mse, mae"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--hidden", "8,x"], "--hidden must be comma-separated integers"),
        (["missing.csv", "-t", "y"], "does not exist"),
    ],
)
def test_suggest_beta_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["suggest-beta", *args, "--out", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_parse_beta():
    assert (
        suggest.parse_beta("auto") == "auto" and suggest.parse_beta(" AUTO ") == "auto"
    )
    assert suggest.parse_beta("0.25") == 0.25
    with pytest.raises(UserError, match="--beta must be a finite number"):
        suggest.parse_beta("large")


def test_fit_beta_auto_uses_the_suggestion(tmp_path):
    options = FitOptions(
        data="stackloss", beta="auto", epochs=3, out=str(tmp_path / "r"), verbose=False
    )
    metrics = fit_table(options).metrics
    auto = metrics["beta_auto"]
    # the same baseline (same seed, split, model and min(3, 30) epochs) as the command
    same = suggest.suggest_beta(
        suggest.SuggestOptions(
            data="stackloss", epochs=3, out=str(tmp_path / "s"), verbose=False
        )
    ).suggestion
    np.testing.assert_allclose(auto["beta"], same.betas, rtol=1e-5)
    assert metrics["loss"] == f"smooth_l1:beta={auto['beta'][0]:g}"
    np.testing.assert_allclose(
        metrics["beta_in_target_units"],
        [float(f"{auto['beta'][0]:g}") * s for s in _y_std(tmp_path / "r")],
        rtol=1e-9,
    )


def _y_std(run_dir: Path) -> list[float]:
    return json.loads((run_dir / "preprocessing.json").read_text())["y_std"]


# ------------------------------------------------------------ SelfAdjustingSmoothL1Loss


def simulate(batches, momentum, beta_min, beta_max):
    """The rule in NumPy, float64: the beta after each batch."""
    units = batches[0].shape[-1]
    mean, var = np.full(units, beta_max), np.zeros(units)
    betas = []
    for batch in batches:
        a = np.abs(np.asarray(batch, "float64")).reshape(-1, units)
        if len(a) >= 2:  # one row has no variance: the state stays
            mean = (1 - momentum) * mean + momentum * a.mean(axis=0)
            var = (1 - momentum) * var + momentum * a.var(axis=0, ddof=1)
        betas.append(np.clip(mean - var, beta_min, beta_max))
    return np.array(betas)


def smooth_l1_numpy(d, beta):
    """Fast R-CNN's piecewise definition."""
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d**2 / beta, a - 0.5 * beta)


RULE = {"momentum": 0.3, "beta_min": 0.05, "beta_max": 1.0}


def residual_batches() -> list[np.ndarray]:
    """Eight batches of 6 rows x 2 coordinates, one of them a single row: |d| near
    2 with little spread (beta is pushed above beta_max and clipped), spread
    residuals whose variance exceeds their mean (clipped at beta_min), and values
    in between."""
    rng = np.random.default_rng(8)
    signs = rng.choice([-1.0, 1.0], size=(6, 2))
    batches = [signs * (2.0 + 0.05 * rng.normal(size=(6, 2)))]
    for scale in [0.2, 3.0, 4.0, 0.8, 0.3, 0.3, 1.5]:
        batches.append(rng.normal(size=(6, 2)) * [scale, 0.5 * scale])
    batches[5] = batches[5][:1]  # a single row: no update
    return [batch.astype("float32") for batch in batches]


def test_self_adjusting_trajectory_equals_numpy_simulation_step_by_step():
    batches = residual_batches()
    expected = simulate(batches, **RULE)
    assert expected.min() == RULE["beta_min"] and expected.max() == RULE["beta_max"]
    assert ((expected > 0.06) & (expected < 0.9)).any()  # and values in between
    loss = SelfAdjustingSmoothL1Loss(**RULE)
    layer = loss.state_layer()
    for batch, beta in zip(batches, expected, strict=True):
        layer(batch, training=True)  # what the model's forward pass does
        value = loss(np.zeros_like(batch), batch)
        np.testing.assert_allclose(loss.beta, beta, rtol=STATE_RTOL, atol=STATE_ATOL)
        # the penalty is smooth L1 at the beta this batch moved to
        np.testing.assert_allclose(
            to_numpy(value), smooth_l1_numpy(batch, beta).mean(), rtol=1e-5
        )


def test_self_adjusting_state_is_frozen_outside_training():
    batches = residual_batches()
    loss = SelfAdjustingSmoothL1Loss(**RULE)
    layer = loss.state_layer()
    layer(batches[0], training=True)
    loss(np.zeros_like(batches[0]), batches[0])
    before = loss.beta
    for training in (False, None):
        layer(batches[2], training=training)
        loss(np.zeros_like(batches[2]), batches[2])
    assert loss.beta == before


def test_self_adjusting_gradient_is_clipped_residual_over_beta():
    loss = SelfAdjustingSmoothL1Loss(beta_max=0.5, axis=None, reduction="none")
    d = np.array([[-2.0, -0.25, 0.0, 0.1, 0.5, 3.0]], dtype="float32")
    loss.state_layer()(d, training=False)  # no update: beta stays at beta_max

    values, grad = value_and_grad(lambda p: loss(np.zeros_like(d), p), d)
    np.testing.assert_allclose(values, smooth_l1_numpy(d, 0.5), rtol=1e-6)
    np.testing.assert_allclose(grad, np.clip(d / 0.5, -1, 1), rtol=1e-6)


def fit_batches(model, batches, **kwargs):
    x = np.concatenate(batches)
    model.fit(
        x,
        np.zeros_like(x),
        batch_size=len(batches[0]),
        shuffle=False,
        verbose=0,
        **kwargs,
    )


def test_self_adjusting_in_fit_equals_the_simulation(tmp_path):
    """Keras's fit on this backend (for JAX, its stateless step) updates the state
    once per batch, validation and evaluate leave it alone, and save/load keeps it."""
    batches = [b for b in residual_batches() if len(b) == 6]  # fit needs equal batches
    expected = simulate(batches, **RULE)
    loss = SelfAdjustingSmoothL1Loss(**RULE)
    model = identity_model(loss)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)

    # One fit call per batch: the whole trajectory.
    validation = (batches[2] * 10, np.zeros_like(batches[2]))
    for k in range(3):
        fit_batches(model, batches[k : k + 1], validation_data=validation)
        np.testing.assert_allclose(
            loss.beta, expected[k], rtol=STATE_RTOL, atol=STATE_ATOL
        )
    # One fit call over the rest: the state is carried from step to step.
    fit_batches(model, batches[3:5])
    np.testing.assert_allclose(loss.beta, expected[4], rtol=STATE_RTOL, atol=STATE_ATOL)
    state = model.layers[-1]
    assert isinstance(state, SelfAdjustingBetaState) and state.name == loss.state_name
    model.evaluate(*validation, verbose=0)
    model.predict(validation[0], verbose=0)
    np.testing.assert_allclose(loss.beta, expected[4], rtol=STATE_RTOL, atol=STATE_ATOL)

    path = tmp_path / "model.keras"
    model.save(path)
    saved_state = [to_numpy(w) for w in state.weights]
    loaded = keras.saving.load_model(path)  # no custom_objects
    loaded_state = loaded.layers[-1]
    assert loaded_state is not state
    for mine, theirs in zip(saved_state, loaded_state.weights, strict=True):
        np.testing.assert_array_equal(mine, to_numpy(theirs))
    assert isinstance(loaded.loss, SelfAdjustingSmoothL1Loss)
    assert loaded.loss.state_name == loss.state_name
    np.testing.assert_allclose(
        loaded.loss.beta, expected[4], rtol=STATE_RTOL, atol=STATE_ATOL
    )
    # Training the loaded model continues the trajectory from the restored state,
    # in the loaded model's layer only.
    fit_batches(loaded, batches[5:])
    np.testing.assert_allclose(
        loaded.loss.beta, expected[-1], rtol=STATE_RTOL, atol=STATE_ATOL
    )
    for mine, now in zip(saved_state, state.weights, strict=True):
        np.testing.assert_array_equal(mine, to_numpy(now))


def test_self_adjusting_needs_its_layer_and_checks_arguments():
    loss = SelfAdjustingSmoothL1Loss(state_name="a_state_layer_that_never_ran")
    with pytest.raises(ValueError, match="has not run.*loss.attach"):
        loss(np.zeros((2, 1)), np.ones((2, 1)))
    for kwargs, match in [
        ({"momentum": 0.0}, "`momentum`"),
        ({"momentum": 1.5}, r"`momentum`.*\(0, 1\]"),
        ({"beta_max": 0.0}, "`beta_max`"),
        ({"beta_min": 0.5, "beta_max": 0.1}, "beta_min <= beta_max"),
    ]:
        with pytest.raises(ValueError, match=match):
            SelfAdjustingSmoothL1Loss(**kwargs)


def test_self_adjusting_config_and_registry():
    loss = smoothl1.get("self_adjusting:momentum=0.2,beta_max=1")
    assert type(loss) is SelfAdjustingSmoothL1Loss
    assert (loss.momentum, loss.beta_max, loss.beta_min) == (0.2, 1.0, 1e-3)
    assert (
        smoothl1.spec_of(loss)
        == "self_adjusting:momentum=0.2,beta_max=1,beta_min=0.001"
    )
    config = loss.get_config()
    assert config["state_name"] == loss.state_name
    clone = SelfAdjustingSmoothL1Loss.from_config(config)
    assert clone.state_name == loss.state_name and clone.momentum == 0.2
    assert loss.beta is None  # its layer has not been built yet


def test_fit_command_trains_self_adjusting_and_reports_its_beta(tmp_path):
    options = FitOptions(
        data="stackloss",
        loss="self_adjusting:beta_max=2",
        epochs=3,
        out=str(tmp_path / "r"),
        verbose=False,
    )
    metrics = fit_table(options).metrics
    model = keras.saving.load_model(tmp_path / "r" / "model.keras")
    state = model.layers[-1]
    assert isinstance(state, SelfAdjustingBetaState)
    beta = np.clip(
        to_numpy(state.running_mean) - to_numpy(state.running_var), 1e-3, 2.0
    )
    np.testing.assert_allclose(
        metrics["beta_in_target_units"], beta * _y_std(tmp_path / "r"), rtol=1e-6
    )
    assert not np.allclose(beta, 2.0)  # it did move away from the start


@pytest.mark.skipif(BACKEND == "torch" and sys.platform != "linux", reason="gloo")
def test_self_adjusting_state_is_summed_over_replicas():
    """Two replicas, each with half of every batch, end in the state of one device
    that saw the whole batches (a per-replica variance would differ a lot)."""
    env = dict(os.environ)
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "beta_multireplica.py"), BACKEND],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(ROOT / "tests"))
    import beta_multireplica as setup

    x = setup.make_batches().astype("float64")
    mean = np.full(2, setup.BETA_MAX)
    var = np.zeros(2)
    local_var = np.zeros(2)
    for start in range(0, len(x), setup.BATCH):
        a = np.abs(x[start : start + setup.BATCH])
        mean = (1 - setup.MOMENTUM) * mean + setup.MOMENTUM * a.mean(axis=0)
        var = (1 - setup.MOMENTUM) * var + setup.MOMENTUM * a.var(axis=0, ddof=1)
        halves = np.split(a, setup.REPLICAS)
        local = np.mean([h.var(axis=0, ddof=1) for h in halves], axis=0)
        local_var = (1 - setup.MOMENTUM) * local_var + setup.MOMENTUM * local
    assert measured["replicas"] == 2
    assert np.all(np.abs(local_var - var) > 0.1)  # the data tells the two apart
    np.testing.assert_allclose(measured["mean"], mean, rtol=STATE_RTOL)
    np.testing.assert_allclose(measured["var"], var, rtol=STATE_RTOL)
    assert measured.get("ranks_agree", True)
