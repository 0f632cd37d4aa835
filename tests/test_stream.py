"""``smoothl1 fit --stream``: the row split, the first pass's statistics, the
batches, the streamed errors and the command, on small files.

Reference values: an independent SplitMix64 in Python integers; the in-memory
path (``data.check_columns`` and ``data.fit_preprocessing``) on the same training
rows; ``train.regression_metrics`` on the whole arrays; and hand arithmetic in
the comments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from smoothl1.cli import data as data_mod
from smoothl1.cli import stream
from smoothl1.cli.app import app
from smoothl1.cli.data import UserError
from smoothl1.cli.train import FitOptions, regression_metrics

runner = CliRunner()
FAST = ["--epochs", "2", "--quiet"]
MASK = (1 << 64) - 1
# float64 statistics merged chunk by chunk against numpy over the whole column:
# the same sums in another order, some 1e-16 relative per operation.
STATS_RTOL = 1e-12


def invoke(*args: str):
    return runner.invoke(app, list(args))


def splitmix64(x: int) -> int:
    """SplitMix64 (Steele, Lea and Flood, 2014) on Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_row_hash_is_splitmix64_of_row_and_seed():
    for seed in (0, 1, 12345, -3):
        rows = [0, 1, 2, 41, 10**7, 2**40 + 7]
        expected = [
            (splitmix64((r + seed * 0x9E3779B97F4A7C15) & MASK) >> 11) / 2**53
            for r in rows
        ]
        assert stream.row_uniforms(np.array(rows), seed).tolist() == expected


def test_split_fractions_and_seed():
    rows = np.arange(100_000)
    codes = stream.split_codes(rows, 0, 0.2, 0.1)
    counts = np.bincount(codes, minlength=3)
    # Binomial: sd sqrt(n p (1 - p)) = 126 for p = 0.2 and 95 for p = 0.1;
    # 5 sd either side.
    assert abs(counts[1] - 20_000) < 5 * 126
    assert abs(counts[2] - 10_000) < 5 * 95
    assert (stream.split_codes(rows, 0, 0.2, 0.1) == codes).all()  # deterministic
    other = stream.split_codes(rows, 1, 0.2, 0.1)
    # Another seed moves rows: two independent draws agree with probability
    # 0.7^2 + 0.2^2 + 0.1^2 = 0.54, so about 46,000 rows differ.
    assert 40_000 < (other != codes).sum() < 52_000


# ---------------------------------------------------------------- first pass


def mixed_table(rows: int = 1500) -> pd.DataFrame:
    """Diamonds rows (3 string categoricals, 6 numbers) with a boolean and an
    integer feature added, and price as the target."""
    frame = data_mod.load_builtin("diamonds").iloc[:rows].reset_index(drop=True)
    frame["big"] = frame["carat"] > 0.7
    frame["count"] = (np.arange(rows) % 7).astype("int64")
    return frame


def write(frame: pd.DataFrame, folder: Path, kind: str) -> Path:
    path = folder / f"table.{kind}"
    if kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if kind == "tsv" else ",")
    return path


def in_memory_reference(path: Path, options: FitOptions):
    """The in-memory path's preprocessing on the stream's training rows."""
    frame, _, _ = data_mod.read_table(str(path))
    original_rows = np.arange(len(frame))
    if options.drop_missing:
        missing = frame.isna() | frame.isin([np.inf, -np.inf])
        original_rows = original_rows[~missing.any(axis=1).to_numpy()]
    frame, features, categories, dropped = data_mod.check_columns(
        frame, options.targets, options.drop_missing, options.max_levels
    )
    codes = stream.split_codes(
        original_rows, options.seed, options.validation_split, options.test_split
    )
    train = frame.iloc[np.flatnonzero(codes == 0)]
    prep = data_mod.fit_preprocessing(train, features, options.targets, categories)
    return prep, np.bincount(codes, minlength=3), dropped


def check_same_preprocessing(streamed, expected) -> None:
    assert streamed.features == expected.features
    assert streamed.targets == expected.targets
    assert streamed.categories == expected.categories
    assert streamed.columns == expected.columns
    for name in ("x_mean", "x_std", "y_mean", "y_std"):
        np.testing.assert_allclose(
            getattr(streamed, name),
            getattr(expected, name),
            rtol=STATS_RTOL,
            atol=1e-15,
            err_msg=name,
        )


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_first_pass_statistics_equal_the_in_memory_path(tmp_path, kind):
    path = write(mixed_table(), tmp_path, kind)
    options = FitOptions(data=str(path), targets=["price"], seed=4)
    # 97-row chunks: the statistics are merged across 16 chunk boundaries.
    table = stream.scan(options, chunk_rows=97)
    expected, counts, _ = in_memory_reference(path, options)
    check_same_preprocessing(table.prep, expected)
    assert [table.rows[s] for s in stream.SPLITS] == counts.tolist()
    assert table.prep.categories["big"] == ["False", "True"]
    assert "count" not in table.prep.categories  # an integer column is numeric


def test_drop_missing_equals_the_in_memory_path(tmp_path):
    frame = mixed_table(600)
    frame.loc[[3, 250], "depth"] = np.nan
    frame.loc[250, "cut"] = None
    frame.loc[401, "x"] = np.inf
    path = write(frame, tmp_path, "csv")
    options = FitOptions(data=str(path), targets=["price"], drop_missing=True)
    table = stream.scan(options, chunk_rows=64)
    expected, counts, dropped = in_memory_reference(path, options)
    check_same_preprocessing(table.prep, expected)
    assert table.rows_dropped_missing == dropped == 3  # rows 3, 250 and 401
    assert [table.rows[s] for s in stream.SPLITS] == counts.tolist()


def test_missing_values_are_refused_with_the_in_memory_message(tmp_path):
    frame = mixed_table(600)
    frame.loc[[3, 250], "depth"] = np.nan
    frame.loc[250, "cut"] = None
    frame.loc[401, "x"] = np.inf
    path = write(frame, tmp_path, "parquet")
    options = FitOptions(data=str(path), targets=["price"])
    with pytest.raises(UserError) as streamed:
        stream.scan(options, chunk_rows=64)
    with pytest.raises(UserError) as in_memory:
        data_mod.check_columns(data_mod.read_table(str(path))[0], ["price"], False, 50)
    assert str(streamed.value) == str(in_memory.value)
    # rows 3, 250, 401 (0-based); cut once, depth twice, x once; first: data row 4
    assert str(streamed.value).startswith("3 rows have missing or infinite values")
    assert "data row 4" in str(streamed.value)


@pytest.mark.parametrize(
    "targets, message",
    [
        (["nope"], "target column 'nope' is not in the table"),
        (["cut"], "target column 'cut' is not numeric ('Ideal' at data row 1 "),
    ],
)
def test_target_errors_match_the_in_memory_path(tmp_path, targets, message):
    path = write(mixed_table(50), tmp_path, "csv")
    with pytest.raises(UserError) as streamed:
        stream.scan(FitOptions(data=str(path), targets=targets))
    with pytest.raises(UserError) as in_memory:
        data_mod.check_columns(data_mod.read_table(str(path))[0], targets, False, 50)
    assert str(streamed.value) == str(in_memory.value)
    assert message in str(streamed.value)


def test_too_many_levels_stops_the_pass(tmp_path):
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(300)], "y": range(300)})
    path = write(frame, tmp_path, "csv")
    options = FitOptions(data=str(path), targets=["y"], max_levels=10)
    with pytest.raises(UserError, match="more than 10 levels.*--max-levels"):
        stream.scan(options, chunk_rows=7)


# ---------------------------------------------------------------- batches


def test_each_training_row_once_per_epoch_shuffled_in_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "SHUFFLE_ROWS", 50)
    path = write(mixed_table(400), tmp_path, "parquet")
    options = FitOptions(data=str(path), targets=["price"], seed=2)
    table = stream.scan(options, chunk_rows=33)
    n = table.rows["train"]
    x_all = np.concatenate([x for x, _ in table.split_arrays("train")])
    batches = stream.SplitBatches(table, "train", 16, n, shuffle=True)
    assert len(batches) == math.ceil(n / 16)
    epochs = []
    for _ in range(2):
        parts = [batches[i] for i in range(len(batches))]
        assert all(len(x) == 16 for x, _ in parts[:-1])
        assert len(parts[-1][0]) == n - 16 * (len(parts) - 1)
        epochs.append(np.concatenate([x for x, _ in parts]))
        batches.on_epoch_end()
    for seen in epochs:  # the same rows, each once
        np.testing.assert_array_equal(
            seen[np.lexsort(seen.T)], x_all[np.lexsort(x_all.T)]
        )
    assert not np.array_equal(epochs[0], epochs[1])  # another order each epoch
    assert not np.array_equal(epochs[0], x_all)  # and not the file's order
    # Asking again for an earlier batch restarts the pass: the same batch.
    third = batches[3][0]
    assert len(batches[5][0]) == 16
    np.testing.assert_array_equal(batches[3][0], third)
    # A new reader's first epoch is the first epoch above (rows 48 to 63).
    again = stream.SplitBatches(table, "train", 16, n, shuffle=True)
    np.testing.assert_array_equal(again[3][0], epochs[0][48:64])
    # Fewer rows per epoch (for the devices): the last rows are left out, also
    # when the cut falls inside the first window (40 of its first 48 rows).
    for rows in (n - 3, 40):
        cut = stream.SplitBatches(table, "train", 16, rows, shuffle=False)
        parts = [cut[i][0] for i in range(len(cut))]
        assert [len(p) for p in parts[:-1]] == [16] * (len(parts) - 1)
        np.testing.assert_array_equal(np.concatenate(parts), x_all[:rows])


def test_fit_reads_the_file_once_per_epoch(tmp_path):
    """Keras asks for the batches in order, so each epoch is one pass over the
    file (Keras's TensorFlow path reads the first batches once more before the
    first epoch); asked in a random order, each batch would be a pass."""

    from smoothl1.cli.train import build_model

    path = write(mixed_table(300), tmp_path, "csv")
    table = stream.scan(FitOptions(data=str(path), targets=["price"]), chunk_rows=50)
    train = stream.SplitBatches(table, "train", 16, table.rows["train"], True)
    validation = stream.SplitBatches(
        table, "validation", 16, table.rows["validation"], False
    )
    assert len(train) > 10  # 300 rows, about 180 for training: 12 batches
    model = build_model(len(table.prep.columns), 1, [8], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    stream.fit_batches(model, train, validation, epochs=3)
    assert 3 <= train.passes <= 4
    assert 3 <= validation.passes <= 4


def test_streamed_errors_equal_regression_metrics():
    rng = np.random.default_rng(5)
    y_true = rng.normal(size=(1000, 2)) * [1.0, 30.0]
    y_pred = y_true + rng.standard_t(3, size=(1000, 2))
    beta = np.array([0.5, 2.0])
    expected = regression_metrics(y_true, y_pred, beta, ["a", "b"])
    errors = stream.StreamingErrors(1, beta, ["a", "b"])
    for part in np.array_split(np.arange(1000), 7):
        errors.update(y_true[part], y_pred[part])
    got = errors.result()
    assert got.keys() == expected.keys()
    for key in expected:
        if key == "per_target":
            continue
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, err_msg=key)
    for name in ("a", "b"):
        mine, theirs = got["per_target"][name], expected["per_target"][name]
        assert mine.keys() == theirs.keys()
        for key in theirs:
            np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-12, err_msg=key)
    # Every 3rd row for the median: rows 0, 3, ..., 999 of the split.
    sampled = stream.StreamingErrors(3, beta)
    for part in np.array_split(np.arange(1000), 7):
        sampled.update(y_true[part], y_pred[part])
    median = np.median(np.abs(y_pred[::3] - y_true[::3]))
    assert sampled.result()["median_ae"] == median
    assert sampled.result()["mae"] == got["mae"]


# ---------------------------------------------------------------- the command


def test_fit_stream_writes_the_run_and_predict_reproduces(tmp_path):
    frame = mixed_table(1200)
    path = write(frame, tmp_path, "csv")
    out = tmp_path / "run"
    result = invoke(
        "fit", str(path), "-t", "price", "--stream", "--out", str(out), *FAST, "--json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for name in ("model.keras", "preprocessing.json", "history.csv", "report.md"):
        assert (out / name).is_file(), name
    codes = stream.split_codes(np.arange(len(frame)), 0, 0.2, 0.2)
    assert [metrics[s]["rows"] for s in stream.SPLITS] == np.bincount(codes).tolist()
    assert len(pd.read_csv(out / "history.csv")) == 2
    # The saved model and preprocessing give the streamed test errors.
    test_rows = tmp_path / "test_rows.csv"
    frame.iloc[np.flatnonzero(codes == 2)].to_csv(test_rows, index=False)
    predicted = tmp_path / "pred.csv"
    result = invoke("predict", str(out), str(test_rows), "--out", str(predicted))
    assert result.exit_code == 0, result.output
    y_pred = pd.read_csv(predicted)["price_pred"].to_numpy()
    y_true = frame["price"].to_numpy()[codes == 2]
    np.testing.assert_allclose(
        np.abs(y_pred - y_true).mean(), metrics["test"]["mae"], rtol=1e-5
    )


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_bad_input_exits_2_with_one_line(tmp_path):
    good = str(write(mixed_table(100), tmp_path, "csv"))
    cases = [
        (["diabetes"], "is a built-in data set"),
        ([], "'diabetes' is a built-in data set"),
        ([str(tmp_path / "nope.csv"), "-t", "y"], "does not exist"),
        ([str(tmp_path / "t.xlsx"), "-t", "y"], "not a file ending in .csv"),
        ([_csv(tmp_path, "", "empty.csv"), "-t", "y"], "is empty"),
        ([_csv(tmp_path, "a,y\n", "header.csv"), "-t", "y"], "has no rows"),
        ([_csv(tmp_path, "x", "bad.parquet"), "-t", "y"], "cannot read DATA file"),
        ([good], "no target column: pass --target"),
        ([good, "-t", "nope"], "target column 'nope' is not in the table"),
        ([good, "-t", "price", "--beta", "auto"], "--beta auto needs the table"),
        ([good, "-t", "price", "--test-split", "1.5"], "--test-split must be in"),
        ([good, "-t", "price", "--max-levels", "2"], "more than 2 levels"),
        (
            [_csv(tmp_path, "a,y\n1,2\n2,3\n3,4\n", "few.csv"), "-t", "y"],
            "too few for the splits",
        ),
    ]
    for args, message in cases:
        result = invoke("fit", *args, "--stream", "--out", str(tmp_path / "r"), *FAST)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
        assert not (tmp_path / "r").exists()
