"""``smoothl1 compare``: the batched grid equals separate fits, the corruption scheme,
and the command's files and errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from smoothl1.cli import compare as cmp
from smoothl1.cli import data as data_mod
from smoothl1.cli import ensemble
from smoothl1.cli.app import app
from smoothl1.cli.train import build_model, make_loss, seed_everything

runner = CliRunner()


def _seed_data(seed: int, options: cmp.CompareOptions) -> cmp.SeedData:
    frame = data_mod.load_builtin("diabetes")
    frame, features, categories, _ = data_mod.check_columns(
        frame, ["target"], False, 50
    )
    return cmp.seed_data(frame, features, ["target"], categories, options, seed)


def test_batched_members_equal_separate_fits():
    options = cmp.CompareOptions(epochs=3, hidden=[16, 16], batch_size=32)
    specs = ["smooth_l1:beta=0.5", "mse", "huber:delta=2"]
    fractions = [0.0, 0.2]
    trainer = cmp.BatchedTrainer(specs, fractions, options)
    # Seed 3 first, then seed 4: the second run also checks that re-initializing the
    # shared model and optimizer gives a fresh start.
    trainer.train(_seed_data(3, options), 3)
    data = _seed_data(4, options)
    test_pred, probe = trainer.train(data, 4)
    for k, member in enumerate(trainer.members):
        single_pred, single_probe = cmp.train_single(data, member, options, 4)
        np.testing.assert_allclose(
            test_pred[:, k], single_pred[:, 0], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            np.array(probe.val_loss)[:, k],
            np.array(single_probe.val_loss)[:, 0],
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            np.array(probe.grad_norm)[:, k],
            np.array(single_probe.grad_norm)[:, 0],
            rtol=1e-3,
        )


def test_member_weights_equal_a_separate_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 5)).astype("float32")
    y = rng.normal(size=(70, 1)).astype("float32")
    losses = [make_loss("smooth_l1:beta=0.5"), make_loss("mae")]
    model = ensemble.build_ensemble(5, 1, [8], seeds=[7, 7])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=ensemble.MemberSum([(losses[0], 0, 1), (losses[1], 1, 2)]),
    )
    seed_everything(7)
    model.fit(x, np.stack([y, y], axis=1), epochs=2, batch_size=16, verbose=0)
    for m, loss in enumerate(losses):
        single = build_model(5, 1, [8], seed=7)
        single.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
        seed_everything(7)
        single.fit(x, y, epochs=2, batch_size=16, verbose=0)
        member = [keras.ops.convert_to_numpy(w)[m] for w in model.weights]
        for got, want in zip(member, single.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_corruption_scheme():
    order, shift = cmp.corruption(100, 2, seed=1)
    assert sorted(order) == list(range(100))
    assert np.all((np.abs(shift) >= 5) & (np.abs(shift) <= 10))
    y = np.zeros((100, 2), "float32")
    small = cmp.corrupt(y, 0.1, order, shift)
    large = cmp.corrupt(y, 0.3, order, shift)
    changed_small = set(np.flatnonzero(small[:, 0]))
    changed_large = set(np.flatnonzero(large[:, 0]))
    assert len(changed_small) == 10 and len(changed_large) == 30  # round(f * 100)
    assert changed_small <= changed_large
    assert np.array_equal(cmp.corrupt(y, 0.0, order, shift), y)
    # Same seed, same corruption; another seed, another.
    assert np.array_equal(cmp.corruption(100, 2, seed=1)[1], shift)
    assert not np.array_equal(cmp.corruption(100, 2, seed=2)[1], shift)


def test_parse_losses_keeps_parameter_lists_together():
    assert cmp.parse_losses("mse,wing:width=5,curvature=1,smooth_l1:beta=0.5") == [
        "mse",
        "wing:width=5,curvature=1",
        "smooth_l1:beta=0.5",
    ]


def test_command_writes_results(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare", "stackloss", "--losses", "mse,smooth_l1:beta=0.5",
            "--outliers", "0,0.2", "--seeds", "2", "--epochs", "2",
            "--validation-split", "0.2", "--test-split", "0.2", "--out", str(out),
            "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "results.json", "report.md", "compare.png"):
        assert (out / name).is_file(), name
    rows = pd.read_csv(out / "results.csv")
    # 2 losses x 2 fractions x 2 seeds, plus 2 baselines x 2 fractions x 2 seeds
    assert len(rows) == 8 + 8
    assert set(rows["loss"]) == {
        "mse",
        "smooth_l1:beta=0.5",
        "sklearn:LinearRegression",
        "sklearn:HuberRegressor",
    }
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert len(summary) == 8
    for cell in summary:
        runs = rows[
            (rows["loss"] == cell["loss"]) & (rows["outliers"] == cell["outliers"])
        ]
        assert cell["test_rmse"] == pytest.approx(runs["test_rmse"].mean())
    assert "smooth_l1:beta=0.5" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--losses", "nonsense"], "--losses 'nonsense': Unknown loss"),
        (["--outliers", "0,1.5"], "--outliers fractions must be in [0, 1)"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--strategy", "fast"], "--strategy must be batched or loop"),
        (["--losses", "mse,self_adjusting"], "cannot share the batched grid"),
    ],
)
def test_bad_options(tmp_path, args, message):
    result = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "c").exists()


def test_existing_directory_untouched(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    result = runner.invoke(app, ["compare", "--out", str(out), "-q", "--seeds", "1"])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert list(out.iterdir()) == []
