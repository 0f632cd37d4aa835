"""``smoothl1 fit --stream``: tables larger than memory, read in chunks.

The file (CSV, TSV or Parquet) is never held whole. It is read in chunks of
``CHUNK_ROWS`` rows (``pyarrow.csv.open_csv``, ``pyarrow.parquet.ParquetFile``),
several times:

1. A first pass checks the columns and the missing values as ``fit`` does, collects
   the levels of the categorical features (with the same ``--max-levels`` cap) and
   computes the standardization statistics on the training rows only (counts,
   means and sums of squares merged chunk by chunk, in float64).
2. Each epoch streams the training rows through a ``keras.utils.PyDataset``,
   shuffled within windows of ``SHUFFLE_ROWS`` rows (seeded by ``--seed`` and the
   epoch), not across the whole file; the validation rows are a second one.
3. A last pass predicts every split and accumulates the errors; the median
   absolute error and the residual plot use at most ``SAMPLE_ROWS`` evenly spaced
   rows of each split (every row when the split is smaller).

Splitting rows in a stream: the in-memory ``fit`` shuffles the row numbers with
the seed and cuts the fractions exactly; a stream cannot shuffle what it has not
read. Here data row ``r`` (0 for the first row after the header) is sent by a
hash: ``u = splitmix64(r + seed * 0x9E3779B97F4A7C15 mod 2**64) / 2**64``, the
row is a test row if ``u < --test-split``, a validation row if
``u < --test-split + --validation-split``, and a training row otherwise. So the
split of a row depends only on its number and the seed, whatever the chunk
sizes, and each fraction is met on average (binomially), not exactly. Rows
dropped for missing values keep their numbers.

Data types follow the in-memory path: integer and floating columns are numeric
(read as float64, so a later chunk with decimals or gaps is fine); every other
column is categorical, its levels the text of its values (``True``/``False`` for
booleans). A CSV column is typed from the file's first block (4 MiB).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from smoothl1.cli import data as data_mod
from smoothl1.cli import devices as devices_mod
from smoothl1.cli.data import UserError
from smoothl1.cli.train import (
    FitOptions,
    FitResult,
    build_model,
    check_model_options,
    fit_run_directory,
    loss_spec,
    make_loss,
    metrics_header,
    seed_everything,
    stdout_to_stderr,
    write_artifacts,
    write_atomic,
)
from smoothl1.losses import SelfAdjustingSmoothL1Loss

CHUNK_ROWS = 65_536
SHUFFLE_ROWS = 65_536
SAMPLE_ROWS = 100_000
CSV_BLOCK_BYTES = 4 << 20
SPLITS = ("train", "validation", "test")
_GOLDEN = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------- splitting


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer (Steele, Lea and Flood, 2014) on uint64 arrays."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_uniforms(rows: np.ndarray, seed: int) -> np.ndarray:
    """``u`` in [0, 1) for each data row number: a seeded hash of the number."""
    offset = np.uint64((seed * _GOLDEN) % (1 << 64))
    with np.errstate(over="ignore"):
        hashed = _splitmix64(np.asarray(rows, dtype=np.uint64) + offset)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_codes(
    rows: np.ndarray, seed: int, validation_split: float, test_split: float
) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each data row number."""
    u = row_uniforms(rows, seed)
    return np.where(
        u < test_split, 2, np.where(u < test_split + validation_split, 1, 0)
    ).astype(np.int8)


# ---------------------------------------------------------------- reading


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))


@dataclass
class TableFile:
    """A CSV, TSV or Parquet file, read in chunks of rows."""

    path: Path
    kind: str
    columns: list[str]
    numeric: dict[str, bool]
    csv_types: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, source: str | None) -> TableFile:
        """Checks DATA and reads the column names and types."""
        if source is None or source in data_mod.DATASETS:
            name = source or data_mod.DEFAULT_DATASET
            raise UserError(
                f"--stream reads a CSV, TSV or Parquet file; {name!r} is a built-in "
                "data set, which fits in memory: drop --stream"
            )
        path = Path(source)
        kind = data_mod._READERS.get(path.suffix.lower())
        if kind is None:
            raise UserError(
                f"DATA {source!r} is not a file ending in .csv, .tsv, .parquet or .pq"
            )
        if not path.is_file():
            raise UserError(f"DATA file {source!r} does not exist (or is not a file)")
        try:
            if kind == "parquet":
                return cls._open_parquet(path)
            return cls._open_csv(path, kind)
        except UserError:
            raise
        except Exception as error:  # pyarrow's errors have no common base
            message = _first_line(error)
            raise UserError(f"cannot read DATA file {source!r}: {message}") from error

    @classmethod
    def _open_parquet(cls, path: Path) -> TableFile:
        import pyarrow.parquet as pq

        schema = pq.ParquetFile(path).schema_arrow
        metadata = schema.pandas_metadata or {}
        index = {c for c in metadata.get("index_columns", []) if isinstance(c, str)}
        columns = [f.name for f in schema if f.name not in index]
        numeric = {f.name: _is_numeric(f.type) for f in schema}
        return cls(path, "parquet", columns, numeric)

    @classmethod
    def _open_csv(cls, path: Path, kind: str) -> TableFile:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        if path.stat().st_size == 0:
            raise UserError(f"DATA file {str(path)!r} is empty")
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
        )
        schema = reader.schema
        reader.close()
        types: dict[str, Any] = {}
        for f in schema:
            if _is_numeric(f.type) or pa.types.is_null(f.type):
                types[f.name] = pa.float64()
            elif pa.types.is_boolean(f.type):
                types[f.name] = pa.bool_()
            else:
                types[f.name] = pa.string()
        numeric = {name: t == pa.float64() for name, t in types.items()}
        return cls(path, kind, list(schema.names), numeric, types)

    def chunks(
        self, columns: list[str], chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[int, pd.DataFrame]]:
        """``(first data row, frame)`` for each chunk of at most ``chunk_rows``
        rows, in file order, with the given columns."""
        start = 0
        for batch in self._batches(columns, chunk_rows):
            for offset in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(offset, chunk_rows)
                yield start, part.to_pandas()
                start += part.num_rows

    def _batches(self, columns: list[str], chunk_rows: int) -> Iterator[Any]:
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                # pre_buffer=True (pyarrow's default) keeps every row group read
                # so far in memory until the reader closes: the whole file.
                handle = pq.ParquetFile(self.path, pre_buffer=False)
                yield from handle.iter_batches(batch_size=chunk_rows, columns=columns)
                return
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=pcsv.ParseOptions(
                    delimiter="\t" if self.kind == "tsv" else ","
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: self.csv_types[c] for c in columns},
                    include_columns=columns,
                    strings_can_be_null=True,
                ),
            )
            yield from reader
        except UserError:
            raise
        except Exception as error:  # a bad value in a later block, for example
            raise UserError(
                f"cannot read DATA file {str(self.path)!r}: {_first_line(error)}"
            ) from error


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------- first pass


class _Moments:
    """Count, mean and sum of squared deviations of the columns of a float64
    matrix, merged batch by batch (Chan, Golub and LeVeque, 1979)."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def update(self, values: np.ndarray) -> None:
        n = len(values)
        if n == 0:
            return
        # Columns beyond float64's range overflow to inf here, quietly: the
        # statistics are checked, with the column named, in data.scales.
        with np.errstate(over="ignore", invalid="ignore"):
            mean = values.mean(axis=0)
            m2 = ((values - mean) ** 2).sum(axis=0)
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        """The population standard deviation (numpy's default, ddof=0)."""
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass
class StreamTable:
    """What the first pass learns about the file."""

    file: TableFile
    data_name: str
    targets: list[str]
    features: list[str]
    prep: data_mod.Preprocessing
    rows: dict[str, int]
    rows_dropped_missing: int
    seed: int
    validation_split: float
    test_split: float
    drop_missing: bool
    chunk_rows: int

    @property
    def needed(self) -> list[str]:
        return self.features + self.targets

    def coded_frames(self) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        """``(split codes, rows)`` chunk by chunk, in file order, without the
        rows dropped for missing values."""
        for start, frame in self.file.chunks(self.needed, self.chunk_rows):
            codes = split_codes(
                np.arange(start, start + len(frame)),
                self.seed,
                self.validation_split,
                self.test_split,
            )
            if self.drop_missing:
                keep = ~_missing(frame, self.file.numeric).any(axis=1).to_numpy()
                codes, frame = codes[keep], frame.loc[keep]
            yield codes, frame

    def split_arrays(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The standardized ``(x, y)`` float32 arrays of one split, by chunk."""
        code = SPLITS.index(split)
        for codes, frame in self.coded_frames():
            if (codes == code).any():
                part = frame.loc[codes == code]
                yield self.prep.transform_x(part), self.prep.transform_y(part)


def _missing(frame: pd.DataFrame, numeric: dict[str, bool]) -> pd.DataFrame:
    """Missing values as ``fit`` counts them: NaN, None, and +-inf in numbers."""
    out = {}
    for column in frame.columns:
        if numeric.get(column, False):
            values = frame[column].to_numpy("float64", na_value=np.nan)
            out[column] = ~np.isfinite(values)
        else:
            out[column] = frame[column].isna().to_numpy()
    return pd.DataFrame(out, index=frame.index)


def scan(options: FitOptions, chunk_rows: int = CHUNK_ROWS) -> StreamTable:
    """The first pass: checks, levels and training-row statistics.

    Raises:
        UserError: with the messages of the in-memory ``fit`` for a missing or
            non-numeric target, no features, missing values, too many levels and
            too few rows.
    """
    data_mod.check_fractions(options.validation_split, options.test_split)
    file = TableFile.open(options.data)
    targets = list(options.targets)
    if not targets:
        raise UserError(
            "no target column: pass --target COLUMN (columns: "
            f"{', '.join(file.columns)})"
        )
    absent = [t for t in targets if t not in file.columns]
    if absent:
        raise UserError(
            f"target column {absent[0]!r} is not in the table; its columns "
            f"are: {', '.join(file.columns)} (choose one with --target)"
        )
    features = [c for c in file.columns if c not in targets]
    if not features:
        raise UserError("the table has no feature columns besides the target")
    numeric = [c for c in features if file.numeric[c]]
    categorical = [c for c in features if not file.numeric[c]]

    moments = _Moments(len(numeric) + len(targets))
    levels: dict[str, set[str]] = {c: set() for c in categorical}
    train_counts: dict[str, Counter[str]] = {c: Counter() for c in categorical}
    rows = dict.fromkeys(SPLITS, 0)
    missing_counts: Counter[str] = Counter()
    bad_rows, first_bad, total = 0, None, 0
    for start, frame in file.chunks(features + targets, chunk_rows):
        total += len(frame)
        if start == 0:
            _check_targets(frame, targets, file)
        missing = _missing(frame, file.numeric)
        bad = missing.any(axis=1).to_numpy()
        if bad.any():
            missing_counts.update(
                {c: int(n) for c, n in missing.sum().items() if n > 0}
            )
            bad_rows += int(bad.sum())
            if first_bad is None:
                first_bad = start + int(np.flatnonzero(bad)[0])
            if not options.drop_missing:
                continue  # counted for the message; nothing else is needed
            frame = frame.loc[~bad]
        numbers = np.arange(start, start + len(bad))[~bad]
        codes = split_codes(
            numbers, options.seed, options.validation_split, options.test_split
        )
        for code, split in enumerate(SPLITS):
            rows[split] += int((codes == code).sum())
        train = frame.loc[codes == 0]
        for column in categorical:
            values = frame[column].astype(str)
            levels[column].update(values.unique().tolist())
            if len(levels[column]) > options.max_levels:
                raise UserError(
                    f"feature column {column!r} is categorical with more than "
                    f"{options.max_levels} levels (--max-levels {options.max_levels})"
                    "; drop the column, encode it yourself, or raise --max-levels"
                )
            train_counts[column].update(
                train[column].astype(str).value_counts().to_dict()
            )
        moments.update(train[numeric + targets].to_numpy("float64"))

    if total == 0:
        raise UserError(f"DATA file {options.data!r} has no rows")
    if bad_rows and not options.drop_missing:
        by_column = ", ".join(
            f"{c}: {missing_counts[c]}" for c in file.columns if c in missing_counts
        )
        raise UserError(
            f"{bad_rows} rows have missing or infinite values ({by_column}; first at "
            f"{data_mod.data_row(first_bad or 0)}); fix them or pass --drop-missing"
        )
    _check_rows(rows, options)
    prep = _preprocessing(
        features, targets, numeric, levels, train_counts, moments, rows["train"]
    )
    return StreamTable(
        file=file,
        data_name=file.path.stem,
        targets=targets,
        features=features,
        prep=prep,
        rows=rows,
        rows_dropped_missing=bad_rows if options.drop_missing else 0,
        seed=options.seed,
        validation_split=options.validation_split,
        test_split=options.test_split,
        drop_missing=options.drop_missing,
        chunk_rows=chunk_rows,
    )


def _check_targets(frame: pd.DataFrame, targets: list[str], file: TableFile) -> None:
    for target in targets:
        if not file.numeric[target]:
            raise data_mod.non_numeric_target(target, frame[target])


def _check_rows(rows: dict[str, int], options: FitOptions) -> None:
    too_few = (
        rows["train"] < 2
        or (options.test_split > 0 and rows["test"] < 2)
        or (options.validation_split > 0 and rows["validation"] < 2)
    )
    if too_few:
        raise UserError(
            f"{sum(rows.values())} rows are too few for the splits (train "
            f"{rows['train']}, validation {rows['validation']}, test {rows['test']}; "
            "each needs at least 2); use more rows or smaller "
            "--validation-split/--test-split"
        )


def _preprocessing(
    features: list[str],
    targets: list[str],
    numeric: list[str],
    levels: dict[str, set[str]],
    train_counts: dict[str, Counter[str]],
    moments: _Moments,
    n_train: int,
) -> data_mod.Preprocessing:
    """The statistics of ``data.fit_preprocessing``, from the pass's sums: a
    numeric column's mean and population standard deviation, and a one-hot
    column's share ``p`` of training rows and ``sqrt(p (1 - p))``."""
    categories = {c: sorted(levels[c]) for c in levels}
    mean = dict(zip(numeric + targets, moments.mean.tolist(), strict=True))
    std = dict(zip(numeric + targets, moments.std().tolist(), strict=True))
    columns, x_mean, x_std = [], [], []
    for column in features:
        if column in categories:
            for level in categories[column]:
                p = train_counts[column][level] / n_train
                columns.append(f"{column}={level}")
                x_mean.append(p)
                x_std.append(math.sqrt(p * (1.0 - p)))
        else:
            columns.append(column)
            x_mean.append(mean[column])
            x_std.append(std[column])
    x_mean, x_std = data_mod.scales(columns, x_mean, x_std, target=False)
    y_mean, y_std = data_mod.scales(
        targets, [mean[t] for t in targets], [std[t] for t in targets], target=True
    )
    return data_mod.Preprocessing(
        features=features,
        targets=targets,
        categories=categories,
        columns=columns,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
    )


# ---------------------------------------------------------------- batches


class SplitBatches(keras.utils.PyDataset):
    """The batches of one split, read from the file for each epoch.

    Keras asks for batches by index; they are produced in order, so asking for
    another index than the next one starts the pass again (Keras's TensorFlow
    path looks at the first batches before the first epoch, for example). Fit
    with ``shuffle=False``: Keras would otherwise ask for the batches of an
    epoch in a random order, each one a new pass over the file.

    Args:
        table: the first pass's result.
        split: "train" or "validation".
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        rows: rows per epoch (the split's rows, or fewer to fit the devices).
        shuffle: shuffle within windows of ``SHUFFLE_ROWS`` rows, seeded by the
            table's seed and the epoch.
    """

    def __init__(
        self,
        table: StreamTable,
        split: str,
        batch_size: int,
        rows: int,
        shuffle: bool,
    ) -> None:
        super().__init__()
        self.table = table
        self.split = split
        self.batch_size = batch_size
        self.rows = rows
        self.shuffle = shuffle
        self.epoch = 0
        self.passes = 0  # passes over the file started (for the tests)
        self._lock = threading.Lock()
        self._iterator: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
        self._next = 0

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        with self._lock:
            if self._iterator is None or index != self._next:
                self.passes += 1
                self._iterator = self._batches()
                for _ in range(index):
                    next(self._iterator)
            self._next = index + 1
            return next(self._iterator)

    def on_epoch_end(self) -> None:
        with self._lock:
            self.epoch += 1
            self._iterator = None
            self._next = 0

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = (
            np.random.default_rng([self.table.seed, self.epoch])
            if self.shuffle
            else None
        )
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held, left = 0, self.rows
        for x, y in self.table.split_arrays(self.split):
            xs.append(x)
            ys.append(y)
            held += len(x)
            if held < SHUFFLE_ROWS:
                continue
            x_all, y_all = _window(xs, ys, rng)
            # Whole batches only; the rest is shuffled again with the next rows.
            full = min(len(x_all) - len(x_all) % self.batch_size, left)
            yield from _cut(x_all[:full], y_all[:full], self.batch_size)
            left -= full
            if left <= 0:
                return
            xs, ys, held = [x_all[full:]], [y_all[full:]], len(x_all) - full
        if held and left > 0:
            x_all, y_all = _window(xs, ys, rng)
            yield from _cut(x_all[:left], y_all[:left], self.batch_size)


def _cut(
    x: np.ndarray, y: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for begin in range(0, len(x), size):
        yield x[begin : begin + size], y[begin : begin + size]


def _window(
    xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.concatenate(xs), np.concatenate(ys)
    if rng is None:
        return x, y
    order = rng.permutation(len(x))
    return x[order], y[order]


# ---------------------------------------------------------------- errors


class StreamingErrors:
    """The errors of ``train.regression_metrics``, accumulated chunk by chunk.

    MAE, RMSE, R^2 and the fraction beyond beta are exact; the median absolute
    error is that of every ``every``-th row of the split (exact for ``every=1``).
    """

    def __init__(
        self,
        every: int,
        beta_units: np.ndarray | None,
        targets: Sequence[str] | None = None,
    ) -> None:
        self.every = every
        self.beta_units = beta_units
        self.targets = targets
        self.rows = 0
        self.abs_sum: Any = 0.0  # per target column, once rows arrive
        self.sq_sum: Any = 0.0
        self.beyond: Any = 0
        self.ss_res: np.ndarray | None = None
        self.y_moments: _Moments | None = None
        self.sample_true: list[np.ndarray] = []
        self.sample_pred: list[np.ndarray] = []

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        residual = y_pred - y_true
        if self.y_moments is None:
            self.y_moments = _Moments(y_true.shape[1])
            self.ss_res = np.zeros(y_true.shape[1])
        if self.ss_res is None:  # set together with y_moments just above
            raise RuntimeError("streaming metrics lost their residual sums")
        self.y_moments.update(y_true)
        self.ss_res += (residual**2).sum(axis=0)
        self.abs_sum = self.abs_sum + np.abs(residual).sum(axis=0)
        self.sq_sum = self.sq_sum + (residual**2).sum(axis=0)
        if self.beta_units is not None:
            beyond = np.abs(residual) >= self.beta_units
            self.beyond = self.beyond + beyond.sum(axis=0)
        index = np.arange(self.rows, self.rows + len(y_true))
        take = index % self.every == 0
        self.sample_true.append(y_true[take])
        self.sample_pred.append(y_pred[take])
        self.rows += len(y_true)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.sample_true), np.concatenate(self.sample_pred)

    def result(self) -> dict[str, Any]:
        if self.y_moments is None or self.ss_res is None:
            raise RuntimeError("streaming metrics asked for a result before any rows")
        ss_tot = self.y_moments.m2
        r2 = np.where(
            ss_tot > 0, 1 - self.ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan
        )
        y_true, y_pred = self.sample()
        abs_sample = np.abs(y_pred - y_true)

        def errors(columns: Any) -> dict[str, Any]:
            # The errors of the chosen target columns, pooled.
            elements = self.rows * len(np.atleast_1d(r2[columns]))
            out = {
                "mae": float(np.sum(self.abs_sum[columns]) / elements),
                "rmse": math.sqrt(float(np.sum(self.sq_sum[columns])) / elements),
                "median_ae": float(np.median(abs_sample[:, columns])),
                "r2": (
                    float(np.nanmean(r2[columns]))
                    if np.isfinite(r2[columns]).any()
                    else float("nan")
                ),
                "rows": int(self.rows),
            }
            if self.beta_units is not None:
                out["fraction_beyond_beta"] = float(
                    np.sum(self.beyond[columns]) / elements
                )
            return out

        metrics = errors(slice(None))
        if self.targets is not None and len(self.targets) > 1:
            metrics["per_target"] = {
                name: errors([i]) for i, name in enumerate(self.targets)
            }
        return metrics


# ---------------------------------------------------------------- the job


def fit_stream(options: FitOptions, chunk_rows: int = CHUNK_ROWS) -> FitResult:
    """``fit_table`` for ``--stream``: the same run directory, from a file read
    in chunks (see the module docstring for what differs)."""
    start = time.perf_counter()
    check_model_options(options)
    if options.beta == "auto":
        raise UserError(
            "--beta auto needs the table in memory; it does not work with --stream"
        )
    spec = loss_spec(options.loss, float(options.beta), options.delta)
    loss = make_loss(spec)
    parallel = devices_mod.plan(options.devices, options.batch_size)
    scan_start = time.perf_counter()
    table = scan(options, chunk_rows)
    seconds = {"first_pass": time.perf_counter() - scan_start}
    make_loss(spec, len(table.targets))  # one value per target where it takes one
    run = fit_run_directory(options, table.data_name, spec)
    try:
        with parallel.scope():
            metrics = _train_and_write(
                options, spec, loss, table, run.staging, parallel, seconds
            )
        metrics.update(
            data=options.data,
            targets=table.targets,
            rows_dropped_missing=table.rows_dropped_missing,
            backend=keras.backend.backend(),
            stream={
                "chunk_rows": chunk_rows,
                "shuffle_rows": SHUFFLE_ROWS,
                "median_sample_rows": SAMPLE_ROWS,
                "split": "splitmix64 hash of the data row number and the seed",
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
            },
        )
        write_atomic(run.staging / "metrics.json", json.dumps(metrics, indent=2))
        from smoothl1.cli import report

        write_atomic(run.staging / "report.md", report.fit_markdown(metrics, options))
        run_dir = run.commit()
    except BaseException:
        run.discard()
        raise
    return FitResult(run_dir, metrics, time.perf_counter() - start)


def fit_batches(
    model: keras.Model,
    train: SplitBatches,
    validation: SplitBatches | None,
    epochs: int,
    verbose: int = 0,
) -> Any:
    """``model.fit`` on streamed batches, asked for in order."""
    return model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        # Keras would ask for the batches in a random order; they are read in
        # order, and shuffled within windows by SplitBatches itself.
        shuffle=False,
        verbose=verbose,
    )


def _train_and_write(
    options: FitOptions,
    spec: str,
    loss: keras.losses.Loss,
    table: StreamTable,
    folder: Path,
    parallel: devices_mod.DataParallel,
    seconds: dict[str, float],
) -> dict[str, Any]:
    seed_everything(options.seed)
    prep = table.prep
    model = build_model(
        len(prep.columns), len(prep.targets), options.hidden, options.seed
    )
    if isinstance(loss, SelfAdjustingSmoothL1Loss):
        model = loss.attach(model)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss=loss)
    train_rows = parallel.even_rows(table.rows["train"])
    if train_rows == 0:
        raise UserError(
            f"{table.rows['train']} training rows cannot be split over "
            f"--devices {parallel.devices}"
        )
    validation_rows = parallel.even_rows(table.rows["validation"])
    train = SplitBatches(table, "train", options.batch_size, train_rows, True)
    validation = SplitBatches(
        table,
        "validation",
        max(parallel.even_rows(CHUNK_ROWS), parallel.devices),
        validation_rows,
        False,
    )
    fit_start = time.perf_counter()
    with stdout_to_stderr():
        history = fit_batches(
            model,
            train,
            validation if validation_rows else None,
            options.epochs,
            verbose=2 if options.verbose else 0,
        )

    beta_units, metrics = metrics_header(options, spec, loss, prep)
    metrics["rows_by_split"] = dict(table.rows)
    if parallel.devices > 1:
        metrics["devices"] = parallel.to_json()
        metrics["rows_left_out_for_devices"] = {
            "train": table.rows["train"] - train_rows,
            "validation": table.rows["validation"] - validation_rows,
        }
    seconds["training"] = time.perf_counter() - fit_start
    errors_start = time.perf_counter()
    # One pass over the file predicts every split.
    errors = {
        split: StreamingErrors(
            max(1, math.ceil(n / SAMPLE_ROWS)), beta_units, prep.targets
        )
        for split, n in table.rows.items()
    }
    for codes, frame in table.coded_frames():
        y_pred = prep.inverse_y(
            parallel.predict(model, prep.transform_x(frame), batch_size=CHUNK_ROWS)
        )
        y_true = prep.inverse_y(prep.transform_y(frame))
        for code, split in enumerate(SPLITS):
            if (codes == code).any():
                errors[split].update(y_true[codes == code], y_pred[codes == code])
    samples = {}
    for split in SPLITS:
        if table.rows[split]:
            metrics[split] = errors[split].result()
            samples[split] = errors[split].sample()
    seconds["errors"] = time.perf_counter() - errors_start

    write_artifacts(folder, model, prep, history, samples, beta_units)
    return metrics
