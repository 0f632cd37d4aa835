"""The command line, through typer's runner, on the real built-in data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from smoothl1.cli import data as data_mod
from smoothl1.cli.app import app
from smoothl1.cli.train import regression_metrics

runner = CliRunner()
FAST = ["--epochs", "2", "--quiet"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def diabetes_csv(tmp_path: Path) -> Path:
    path = tmp_path / "diabetes.csv"
    data_mod.load_builtin("diabetes").to_csv(path, index=False)
    return path


def test_fit_default_data_writes_the_run_and_predict_reproduces(tmp_path, diabetes_csv):
    out = tmp_path / "run"
    result = invoke("fit", "--out", str(out), *FAST, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for name in (
        "model.keras",
        "metrics.json",
        "history.csv",
        "report.md",
        "learning_curves.png",
        "residuals.png",
        "preprocessing.json",
    ):
        assert (out / name).is_file(), name
    assert metrics == json.loads((out / "metrics.json").read_text())
    # diabetes: 442 rows; test round(0.2 * 442) = 88, validation 88, train 266
    assert [metrics[s]["rows"] for s in ("train", "validation", "test")] == [
        266,
        88,
        88,
    ]
    for split in ("train", "validation", "test"):
        assert all(math.isfinite(metrics[split][k]) for k in ("mae", "rmse", "r2"))
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]

    # The model reloads without custom_objects and predict reproduces the test MAE.
    model = keras.saving.load_model(out / "model.keras")
    assert model.loss.get_config()["beta"] == 1.0
    frame = data_mod.load_builtin("diabetes")
    splits = data_mod.split_indices(len(frame), 0.2, 0.2, seed=0)
    test_rows = tmp_path / "test_rows.csv"
    frame.iloc[splits.test].to_csv(test_rows, index=False)
    predicted = tmp_path / "pred.csv"
    result = invoke("predict", str(out), str(test_rows), "--out", str(predicted))
    assert result.exit_code == 0, result.output
    y_pred = pd.read_csv(predicted)["target_pred"].to_numpy()
    y_true = frame.iloc[splits.test]["target"].to_numpy()
    np.testing.assert_allclose(
        np.abs(y_pred - y_true).mean(), metrics["test"]["mae"], rtol=1e-5
    )


def test_same_seed_same_metrics(tmp_path):
    a = invoke("fit", "--out", str(tmp_path / "a"), *FAST, "--json", "--seed", "3")
    b = invoke("fit", "--out", str(tmp_path / "b"), *FAST, "--json", "--seed", "3")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    first, second = json.loads(a.stdout), json.loads(b.stdout)
    for split in ("train", "validation", "test"):
        assert first[split] == second[split]


def test_existing_run_directory_is_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    result = invoke("fit", "--out", str(out), *FAST)
    assert result.exit_code == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "precious"
    assert not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_overwrite_replaces_only_when_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier run
    (out / "history.csv").write_text("old")
    result = invoke("fit", "--out", str(out), *FAST, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "history.csv").read_text() != "old"
    assert (out / "model.keras").is_file()


def test_two_runs_never_share_a_run_directory(tmp_path, monkeypatch):
    # Found by testing: two runs started together with one --out (or default names
    # made in the same second) both moved into place, the second over the first.
    from smoothl1.cli.data import UserError
    from smoothl1.cli.train import RunDirectory

    out = tmp_path / "race"
    first = RunDirectory(str(out), "unused", overwrite=False)
    with pytest.raises(UserError, match="already exists"):
        RunDirectory(str(out), "unused", overwrite=False)
    (first.staging / "metrics.json").write_text('{"seed": 1}')
    assert first.commit() == out.resolve()
    assert json.loads((out / "metrics.json").read_text()) == {"seed": 1}

    monkeypatch.chdir(tmp_path)
    a = RunDirectory(None, "same-second", overwrite=False)
    b = RunDirectory(None, "same-second", overwrite=False)
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
    a.discard()  # a failed run leaves neither its staging nor its reservation
    assert not a.path.exists() and not a.staging.exists()


def test_a_failed_run_removes_the_folders_it_made_and_refuses_links(tmp_path):
    # Found by testing: a killed run left the empty parents of a deep --out, and an
    # --out that was a link to an earlier run became a folder beside a stray link.
    from smoothl1.cli.data import UserError
    from smoothl1.cli.train import RunDirectory

    (tmp_path / "keep").mkdir()
    run = RunDirectory(str(tmp_path / "keep" / "a" / "b" / "run"), "unused", False)
    run.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    assert list((tmp_path / "keep").iterdir()) == []

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    (tmp_path / "link").symlink_to(earlier)
    with pytest.raises(UserError, match="is a symbolic link"):
        RunDirectory(str(tmp_path / "link"), "unused", overwrite=True)
    assert (tmp_path / "link").is_symlink() and (earlier / "metrics.json").is_file()


def test_a_run_never_replaces_what_appeared_in_its_reservation(tmp_path):
    from smoothl1.cli.data import UserError
    from smoothl1.cli.train import RunDirectory

    out = tmp_path / "run"
    run = RunDirectory(str(out), "unused", overwrite=False)
    (out / "mine.txt").write_text("precious")  # written by someone during the run
    (run.staging / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="kept in"):
        run.commit()
    run.discard()
    assert (out / "mine.txt").read_text() == "precious"
    assert (run.staging / "metrics.json").is_file()  # the run is not lost either


def test_out_that_is_a_file_is_named_as_such(tmp_path):
    path = tmp_path / "afile"
    path.write_text("mine")
    result = invoke("fit", "--out", str(path), *FAST)
    assert result.exit_code == 2
    assert "is not a directory" in result.stderr and path.read_text() == "mine"


def test_summary_table_on_stdout(tmp_path):
    result = invoke("fit", "stackloss", "--out", str(tmp_path / "r"), *FAST)
    assert result.exit_code == 0, result.output
    assert "stackloss" in result.stdout and "RMSE" in result.stdout
    assert "test" in result.stdout


def test_categorical_features_are_one_hot(tmp_path):
    frame = data_mod.load_builtin("diamonds").iloc[:300]
    path = tmp_path / "diamonds.parquet"
    frame.to_parquet(path)
    out = tmp_path / "run"
    result = invoke("fit", str(path), "--target", "price", "--out", str(out), *FAST)
    assert result.exit_code == 0, result.output
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["categories"]["cut"] == sorted(frame["cut"].astype(str).unique())
    # 6 numeric features + the levels of cut, color and clarity present in these rows
    n_levels = sum(frame[c].nunique() for c in ("cut", "color", "clarity"))
    assert len(prep["columns"]) == 6 + n_levels


def test_several_targets_and_other_losses(tmp_path, diabetes_csv):
    for loss in ("mse", "mae", "huber", "log_cosh"):
        out = tmp_path / loss
        result = invoke(
            "fit",
            str(diabetes_csv),
            "-t",
            "target",
            "-t",
            "bmi",
            "--loss",
            loss,
            "--out",
            str(out),
            *FAST,
            "--json",
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
        assert metrics["targets"] == ["target", "bmi"]


def test_tsv_input(tmp_path):
    path = tmp_path / "stack.tsv"
    data_mod.load_builtin("stackloss").to_csv(path, sep="\t", index=False)
    result = invoke(
        "fit", str(path), "-t", "STACKLOSS", "--out", str(tmp_path / "r"), *FAST
    )
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- bad input


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope.csv", "-t", "y"], "does not exist"),
        (["table.xlsx", "-t", "y"], "neither a built-in data set"),
        (["--target", "nope"], "target column 'nope' is not in the table"),
        (["--beta", "-1"], "--beta must be a finite number >= 0"),
        (["--beta", "nan"], "--beta must be a finite number >= 0"),
        (["--loss", "nonsense"], "--loss 'nonsense'"),
        (["--hidden", "64,x"], "--hidden must be comma-separated integers"),
        (["--epochs", "0"], "--epochs must be positive"),
        (
            ["--validation-split", "0.5", "--test-split", "0.5"],
            "leave rows for training",
        ),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, args, message):
    result = invoke("fit", *FAST, *args, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_bad_files(tmp_path):
    cases = [
        (_csv(tmp_path, "", "empty.csv"), "y", "is empty"),
        (_csv(tmp_path, "a,y\n1,x\n2,z\n", "text.csv"), "y", "is not numeric"),
        # The value named is the first that is not a number, not the first value.
        (
            _csv(tmp_path, "a,y\n1,2.5\n2,-1\n3,oops\n", "late.csv"),
            "y",
            "is not numeric ('oops' at data row 3 (the first row after the header",
        ),
        (
            _csv(tmp_path, "a,y\n1,2\n2,3\n3,4\n", "few.csv"),
            "y",
            "too few for the splits",
        ),
        (_csv(tmp_path, "x", "bad.parquet"), "y", "cannot read DATA file"),
    ]
    for path, target, message in cases:
        result = invoke("fit", path, "-t", target, "--out", str(tmp_path / "r"), *FAST)
        assert result.exit_code == 2, (path, result.output)
        assert message in result.stderr, (path, result.stderr)
        assert not (tmp_path / "r").exists()


def test_missing_values_refused_then_dropped(tmp_path):
    frame = data_mod.load_builtin("diabetes")
    frame.loc[[4, 9], "bmi"] = np.nan
    frame.loc[9, "bp"] = np.nan
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    result = invoke(
        "fit", str(path), "-t", "target", "--out", str(tmp_path / "r"), *FAST
    )
    assert result.exit_code == 2
    # rows 4 and 9 (0-based) -> 2 rows; bmi twice, bp once; first is data row 5
    assert "2 rows have missing" in result.stderr
    assert "bmi: 2, bp: 1" in result.stderr and "data row 5" in result.stderr
    result = invoke(
        "fit",
        str(path),
        "-t",
        "target",
        "--drop-missing",
        "--out",
        str(tmp_path / "r"),
        *FAST,
        "--json",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["rows_dropped_missing"] == 2
    assert sum(metrics[s]["rows"] for s in ("train", "validation", "test")) == 440


def test_too_many_levels(tmp_path):
    rows = "\n".join(f"k{i},{i}" for i in range(30))
    path = _csv(tmp_path, "key,y\n" + rows + "\n")
    result = invoke(
        "fit",
        path,
        "-t",
        "y",
        "--max-levels",
        "10",
        "--out",
        str(tmp_path / "r"),
        *FAST,
    )
    assert result.exit_code == 2
    assert "30 levels" in result.stderr and "--max-levels" in result.stderr


def test_predict_refuses_rows_without_features(tmp_path):
    out = tmp_path / "run"
    assert invoke("fit", "--out", str(out), *FAST).exit_code == 0
    path = _csv(tmp_path, "age,sex\n50,1\n")
    result = invoke("predict", str(out), path)
    assert result.exit_code == 2
    assert "lack feature column" in result.stderr and "'bmi'" in result.stderr
    result = invoke("predict", str(tmp_path), path)
    assert result.exit_code == 2 and "not a run directory" in result.stderr


def test_datasets_lists_real_tables():
    result = invoke("datasets", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    # Sizes of the published tables: diabetes 442 x 11, stack loss 21 x 4,
    # diamonds 53,940 x 10.
    assert (rows["diabetes"]["rows"], rows["diabetes"]["columns"]) == (442, 11)
    assert (rows["stackloss"]["rows"], rows["stackloss"]["columns"]) == (21, 4)
    assert (rows["diamonds"]["rows"], rows["diamonds"]["columns"]) == (53940, 10)
    assert all(row["citation"] for row in rows.values())


def test_regression_metrics_by_hand():
    y_true = np.array([[1.0], [2.0], [3.0], [4.0]])
    y_pred = np.array([[1.0], [3.0], [3.0], [6.0]])
    # residuals 0, 1, 0, 2: MAE 3/4, RMSE sqrt(5/4), median 0.5,
    # R^2 = 1 - 5 / 5 = 0 (ss_tot = 2.25 + 0.25 + 0.25 + 2.25), beyond beta=1: 2/4
    metrics = regression_metrics(y_true, y_pred, np.array([1.0]))
    assert metrics["mae"] == 0.75 and metrics["median_ae"] == 0.5
    assert math.isclose(metrics["rmse"], math.sqrt(1.25))
    assert math.isclose(metrics["r2"], 0.0, abs_tol=1e-12)
    assert metrics["fraction_beyond_beta"] == 0.5


def test_regression_metrics_per_target_by_hand():
    # Two targets in different units: residuals (0, 1, 0, 2) and (10, 0, 0, 30).
    y_true = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    y_pred = y_true + np.array([[0.0, 10.0], [1.0, 0.0], [0.0, 0.0], [2.0, 30.0]])
    metrics = regression_metrics(y_true, y_pred, np.array([1.0, 20.0]), ["u", "v"])
    u, v = metrics["per_target"]["u"], metrics["per_target"]["v"]
    assert u["mae"] == 0.75 and u["fraction_beyond_beta"] == 0.5  # as above
    # v: MAE 40 / 4 = 10, RMSE sqrt(1000 / 4), median of (0, 0, 10, 30) = 5,
    # beyond 20: 1 of 4; y_true is constant, so its R^2 is undefined (nan).
    assert v["mae"] == 10.0 and v["median_ae"] == 5.0
    assert math.isclose(v["rmse"], math.sqrt(250.0))
    assert v["fraction_beyond_beta"] == 0.25 and math.isnan(v["r2"])
    assert metrics["mae"] == (3 + 40) / 8  # pooled over both targets
    assert "per_target" not in regression_metrics(y_true[:, :1], y_pred[:, :1], None)


def test_plot_draws_and_reads_penalties_through_the_loss(tmp_path):
    from smoothl1.cli.plot import penalty_curve

    # smooth L1, beta 0.5: 0.5 * 0.25**2 / 0.5 = 0.0625; 2 - 0.25 = 1.75
    values = penalty_curve("smooth_l1:beta=0.5", np.array([0.25, -2.0]))
    np.testing.assert_allclose(values, [0.0625, 1.75], rtol=1e-6)
    # Keras's MSE through the same path: d**2
    np.testing.assert_allclose(penalty_curve("mse", np.array([3.0])), [9.0])
    out = tmp_path / "shapes.png"
    result = invoke("plot", "--loss", "smooth_l1:beta=0.5", "--loss", "huber",
                    "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = invoke("plot", "--loss", "mse", "--out", str(out))
    assert again.exit_code == 2 and "exists" in again.stderr
    bad = invoke("plot", "--loss", "nope", "--out", str(tmp_path / "x.png"))
    assert bad.exit_code == 2 and "Unknown loss" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "mse", "--beta", "0.5"], "--beta 0.5 applies to --loss smooth_l1"),
        (["--loss", "huber", "--beta", "0.3"], "--beta 0.3 applies to --loss"),
        (["--loss", "smooth_l1", "--delta", "3"], "--delta 3.0 applies to --loss"),
        (["--loss", "smooth_l1:beta=0.5", "--beta", "2"], "disagree"),
        (["--loss", "huber:delta=2", "--delta", "3"], "disagree"),
        (["--loss", "huber", "--beta", "auto"], "--beta auto applies to"),
    ],
)
def test_options_a_loss_does_not_use_are_refused(tmp_path, args, message):
    # Found by testing: each of these trained another loss than asked, silently.
    result = invoke("fit", *FAST, *args, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "r").exists()


def test_beta_auto_works_for_an_upper_case_loss_name(tmp_path):
    result = invoke("fit", *FAST, "--loss", "SMOOTH_L1", "--beta", "auto",
                    "--out", str(tmp_path / "r"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "beta_auto" in json.loads(result.stdout)


def test_losses_lists_every_registry_name():
    from smoothl1.registry import known_losses

    result = invoke("losses")
    assert result.exit_code == 0, result.output
    for name in known_losses():
        assert name in result.stdout


@pytest.mark.parametrize("extra", ["notes.txt", "metrics.json"])
def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, extra):
    # With metrics.json: found by testing, the folder holding the data and a run's
    # result file was replaced, and the data file with it.
    folder = tmp_path / "data"
    folder.mkdir()
    data_mod.load_builtin("stackloss").to_csv(folder / "stack.csv", index=False)
    (folder / extra).write_text("{}")
    result = invoke("fit", str(folder / "stack.csv"), "-t", "STACKLOSS",
                    "--out", str(folder), "--overwrite", *FAST)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "not an earlier smoothl1 run directory" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([extra, "stack.csv"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "-1"], "--seed must be in [0, 2**32)"),
        (["--loss", "smooth_l1:beta=0.1|0.2"], "one value per target column"),
        (["--loss", "SMOOTH_L1", "--beta", "0.5"], None),
    ],
)
def test_more_option_checks(tmp_path, args, message):
    result = invoke("fit", *FAST, *args, "--out", str(tmp_path / "r"), "--json")
    if message is None:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["loss"] == "smooth_l1:beta=0.5"
    else:
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output


def test_files_are_readable_by_others(tmp_path):
    out = tmp_path / "run"
    assert invoke("fit", "--out", str(out), *FAST).exit_code == 0
    assert (out / "metrics.json").stat().st_mode & 0o044 == 0o044
    assert out.stat().st_mode & 0o055 == 0o055


def test_predict_refuses_unseen_levels(tmp_path):
    frame = data_mod.load_builtin("diamonds").iloc[:200]
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    assert (
        invoke("fit", str(path), "-t", "price", "--out", str(out), *FAST).exit_code == 0
    )
    frame = frame.iloc[:3].copy()
    frame["cut"] = ["Ideal", "Brand new", "Ideal"]
    frame.to_csv(tmp_path / "new.csv", index=False)
    result = invoke("predict", str(out), str(tmp_path / "new.csv"))
    assert result.exit_code == 2 and "'Brand new'" in result.stderr


# ------------------------------------------------- found by testing the command


def _stackloss_run(tmp_path: Path) -> tuple[Path, str]:
    table = data_mod.load_builtin("stackloss").to_csv(index=False)
    csv = _csv(tmp_path, table, "s.csv")
    run = tmp_path / "run"
    result = invoke("fit", csv, "-t", "STACKLOSS", "--out", str(run), *FAST)
    assert result.exit_code == 0, result.output
    return run, csv


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: (run / "preprocessing.json").write_text("{bad"), "is damaged"),
        (lambda run: _edit_prep(run, extra=1), "is damaged (expected the keys"),
        (lambda run: _edit_prep(run, x_mean=[0.0]), "3 columns but 1 means"),
        (lambda run: _edit_prep(run, y_std=[]), "1 targets but 1 means and 0"),
        (lambda run: _edit_prep(run, x_std=[1.0, 0.0, 1.0]), "not a positive"),
        (lambda run: (run / "model.keras").write_text("text"), "cannot be loaded"),
    ],
)
def test_predict_on_a_damaged_run_is_one_line(tmp_path, damage, message):
    # Found by testing: each of these was a traceback with exit 1.
    run, csv = _stackloss_run(tmp_path)
    damage(run)
    result = invoke("predict", str(run), csv)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def _edit_prep(run: Path, **changes) -> None:
    path = run / "preprocessing.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_constant_target_and_overflowing_columns_are_refused(tmp_path):
    # Found by testing: a constant target trained (R^2 nan, NaN in metrics.json),
    # and values near 1e200 crashed in the report with a traceback.
    constant = _csv(tmp_path, "a,y\n" + "".join(f"{i},7\n" for i in range(40)))
    result = invoke("fit", constant, "-t", "y", *FAST, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "is constant (7)" in result.stderr
    huge = "a,y\n" + "".join(f"{i}e200,{i}\n" for i in range(40))
    path = _csv(tmp_path, huge, "huge.csv")
    for extra in ([], ["--stream"]):
        result = invoke("fit", path, "-t", "y", *FAST, *extra,
                        "--out", str(tmp_path / "r"))  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "feature column 'a' has values too large" in result.stderr
    assert not (tmp_path / "r").exists()


def test_a_row_longer_than_the_header_is_an_error(tmp_path):
    # Found by testing: pandas took the first field as the index and shifted every
    # column by one, silently.
    path = _csv(tmp_path, "a,b,y\n" + "".join(f"0,{i},{i},1\n" for i in range(30)))
    result = invoke("fit", path, "-t", "y", *FAST, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert "cannot read DATA file" in result.stderr


def test_sigterm_leaves_nothing_behind(tmp_path):
    # Found by testing: SIGTERM (schedulers, `timeout`) left an empty reserved
    # directory and a hidden staging folder; it now unwinds like Ctrl-C.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = "fit diamonds --epochs 500 --quiet --out".split() + [str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "smoothl1", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out.exists(), "the run never reserved its directory"
    time.sleep(2)  # inside training
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_numbers_stored_as_objects_are_numbers_and_typos_are_named(tmp_path):
    # Found by testing: a Parquet decimal column, integers beyond 64 bits and a
    # float column with one typo all became 40-level one-hot categories.
    import decimal

    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    frame = pd.DataFrame(
        {
            "a": a,
            "d": [decimal.Decimal(f"{v:.3f}") for v in rng.normal(size=40)],
            "y": [10**20 + i for i in range(40)],  # beyond uint64: Python ints
        }
    )
    checked, features, categories, _ = data_mod.check_columns(frame, ["y"], False, 50)
    assert categories == {} and features == ["a", "d"]
    assert checked["d"].dtype == "float64" and checked["y"].dtype == "float64"
    assert checked["y"].iloc[3] == float(10**20 + 3)

    typo = pd.DataFrame({"b": [f"{v:.2f}" for v in a], "y": a})
    typo.loc[30, "b"] = "1.2x"
    with pytest.raises(data_mod.UserError, match=r"'1.2x' at data row 31"):
        data_mod.check_columns(typo, ["y"], False, 50)
    # A real category of number-like codes and words stays a category, also when
    # the word is rare (4 %) but repeats: store codes 101 to 110 and A1.
    codes = pd.DataFrame({"c": ["1", "2", "other", "3"] * 10, "y": a})
    _, _, categories, _ = data_mod.check_columns(codes, ["y"], False, 50)
    assert categories == {"c": ["1", "2", "3", "other"]}
    stores = [str(101 + i % 10) for i in range(192)] + ["A1"] * 8
    frame = pd.DataFrame({"store": stores, "y": np.arange(200.0)})
    _, _, categories, _ = data_mod.check_columns(frame, ["y"], False, 50)
    assert categories["store"][-1] == "A1" and len(categories["store"]) == 11
    # Rows to predict that hold only the numeric codes stay text for the trained
    # category, and a column typed as text stays text.
    new_rows = pd.DataFrame({"store": ["101", "102"], "zip": ["02134", "10001"]})
    kept = data_mod.numbers_as_numbers(new_rows, categorical={"store"})
    assert kept["store"].tolist() == ["101", "102"]
    assert kept["zip"].tolist() == ["02134", "10001"]
