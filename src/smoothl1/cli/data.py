"""Tables for the command line: built-in real data sets, users' files, and the checks
and preprocessing that turn a table into standardized arrays.

Nothing here imports Keras, and nothing reaches the network: the built-in data sets
are files shipped inside well-kept packages, read from where those packages are
installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class UserError(Exception):
    """A problem with what the user asked for; the command prints it in one line and
    exits with code 2."""


# ---------------------------------------------------------------- built-in data


@dataclass(frozen=True)
class Dataset:
    name: str
    target: str
    package: str
    description: str
    citation: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="diabetes",
            target="target",
            package="scikit-learn",
            description=(
                "Disease progression one year after baseline, 442 patients, 10 "
                "baseline variables (unscaled)."
            ),
            citation=(
                "Efron, Hastie, Johnstone and Tibshirani (2004), Least Angle "
                "Regression, Annals of Statistics 32(2)."
            ),
        ),
        Dataset(
            name="stackloss",
            target="STACKLOSS",
            package="statsmodels",
            description=(
                "Ammonia lost in a plant on 21 days; the classic robust-regression "
                "set, with known outliers (observations 1, 3, 4 and 21)."
            ),
            citation=(
                "Brownlee (1965), Statistical Theory and Methodology in Science and "
                "Engineering, 2nd ed., Wiley, p. 454."
            ),
        ),
        Dataset(
            name="diamonds",
            target="price",
            package="plotnine",
            description=(
                "Prices (US dollars, heavy right tail) and attributes of 53,940 round "
                "diamonds; cut, color and clarity are categorical."
            ),
            citation=(
                "Wickham (2016), ggplot2: Elegant Graphics for Data Analysis, "
                "Springer; data set `diamonds`."
            ),
        ),
    ]
}

DEFAULT_DATASET = "diabetes"
_DIABETES_COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in data set needs the package `{pip_name}`; install it with "
            f"`pip install {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_builtin(name: str) -> pd.DataFrame:
    """Reads a built-in data set from the package that ships it (no download)."""
    if name == "diabetes":
        folder = _package_dir("sklearn", "scikit-learn") / "datasets" / "data"
        features = pd.read_csv(
            folder / "diabetes_data_raw.csv.gz", sep=" ", header=None
        )
        features.columns = _DIABETES_COLUMNS
        target = pd.read_csv(folder / "diabetes_target.csv.gz", header=None)[0]
        return features.assign(target=target)
    if name == "stackloss":
        folder = _package_dir("statsmodels", "statsmodels")
        return pd.read_csv(folder / "datasets" / "stackloss" / "stackloss.csv")
    if name == "diamonds":
        folder = _package_dir("plotnine", "plotnine")
        return pd.read_csv(folder / "data" / "diamonds.csv")
    raise UserError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def dataset_rows() -> list[dict[str, Any]]:
    """One row per built-in data set: name, rows, columns, target, source, citation."""
    rows = []
    for dataset in DATASETS.values():
        frame = load_builtin(dataset.name)
        rows.append(
            {
                "name": dataset.name,
                "rows": len(frame),
                "columns": frame.shape[1],
                "target": dataset.target,
                "source": f"{dataset.package} (shipped with the package)",
                "description": dataset.description,
                "citation": dataset.citation,
            }
        )
    return rows


# ---------------------------------------------------------------- reading tables

_READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def read_table(source: str | None) -> tuple[pd.DataFrame, str, str | None]:
    """Reads DATA: a built-in name or a CSV/TSV/Parquet path (by extension).

    Returns:
        The table, a short name for run directories, and the default target column
        (for a built-in data set) or None.
    """
    source = source or DEFAULT_DATASET
    if source in DATASETS:
        return load_builtin(source), source, DATASETS[source].target

    path = Path(source)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"DATA {source!r} is neither a built-in data set ({', '.join(DATASETS)}) "
            "nor a file ending in .csv, .tsv, .parquet or .pq"
        )
    if not path.is_file():
        raise UserError(f"DATA file {source!r} does not exist (or is not a file)")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            # index_col=False, and its warning made an error: a row with more
            # fields than the header is refused, neither shifted into the index
            # nor cut short.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(
                    path, sep="\t" if kind == "tsv" else ",", index_col=False
                )
    except pd.errors.EmptyDataError as error:
        raise UserError(f"DATA file {source!r} is empty") from error
    except (
        OSError,
        ValueError,
        pd.errors.ParserError,
        pd.errors.ParserWarning,
        UnicodeDecodeError,
    ) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot read DATA file {source!r}: {message}") from error
    if frame.empty:
        raise UserError(f"DATA file {source!r} has no rows")
    return frame, path.stem, None


# ---------------------------------------------------------------- preprocessing


@dataclass
class Preprocessing:
    """Everything needed to turn new rows into model inputs, fitted on the training
    split only, and to turn predictions back into the target's units."""

    features: list[str]
    targets: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    x_mean: list[float] = field(default_factory=list)
    x_std: list[float] = field(default_factory=list)
    y_mean: list[float] = field(default_factory=list)
    y_std: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> Preprocessing:
        """Reads ``to_json``'s dictionary back, checking that its parts agree
        (``ValueError`` names the first that does not)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"expected the keys {sorted(names)}, found {keys}")
        prep = cls(**data)
        n_columns, n_targets = len(prep.columns), len(prep.targets)
        if not (len(prep.x_mean) == len(prep.x_std) == n_columns > 0):
            raise ValueError(
                f"{n_columns} columns but {len(prep.x_mean)} means and "
                f"{len(prep.x_std)} standard deviations"
            )
        if not (len(prep.y_mean) == len(prep.y_std) == n_targets > 0):
            raise ValueError(
                f"{n_targets} targets but {len(prep.y_mean)} means and "
                f"{len(prep.y_std)} standard deviations"
            )
        scales = np.asarray([*prep.x_std, *prep.y_std], dtype="float64")
        centres = np.asarray([*prep.x_mean, *prep.y_mean], dtype="float64")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise ValueError("a standard deviation is not a positive number")
        if not np.isfinite(centres).all():
            raise ValueError("a mean is not a finite number")
        expected = [
            f"{c}={level}" if c in prep.categories else c
            for c in prep.features
            for level in prep.categories.get(c, [None])
        ]
        if sorted(expected) != sorted(prep.columns):
            raise ValueError("its columns do not match its features and categories")
        return prep

    def encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One-hot encodes the categorical features with the training levels."""
        parts = []
        for column in self.features:
            if column in self.categories:
                values = frame[column].astype(str)
                for level in self.categories[column]:
                    parts.append(
                        (values == level).astype("float64").rename(f"{column}={level}")
                    )
            else:
                parts.append(frame[column].astype("float64"))
        return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=frame.index)

    def transform_x(self, frame: pd.DataFrame) -> np.ndarray:
        encoded = self.encode(frame)[self.columns].to_numpy("float64")
        return ((encoded - self.x_mean) / self.x_std).astype("float32")

    def transform_y(self, frame: pd.DataFrame) -> np.ndarray:
        y = frame[self.targets].to_numpy("float64")
        return ((y - self.y_mean) / self.y_std).astype("float32")

    def inverse_y(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, "float64") * self.y_std + self.y_mean


def check_columns(
    frame: pd.DataFrame, targets: list[str], drop_missing: bool, max_levels: int
) -> tuple[pd.DataFrame, list[str], dict[str, list[str]], int]:
    """Checks the table and picks its features.

    Returns:
        The table (rows with missing values dropped if asked), the feature columns,
        the levels of each categorical feature (sorted), and the number of rows
        dropped.
    """
    frame = numbers_as_numbers(frame)
    missing_targets = [t for t in targets if t not in frame.columns]
    if missing_targets:
        raise UserError(
            f"target column {missing_targets[0]!r} is not in the table; its columns "
            f"are: {', '.join(map(str, frame.columns))} (choose one with --target)"
        )
    for target in targets:
        if not pd.api.types.is_numeric_dtype(
            frame[target]
        ) or pd.api.types.is_bool_dtype(frame[target]):
            raise non_numeric_target(target, frame[target])
    features = [c for c in frame.columns if c not in targets]
    if not features:
        raise UserError("the table has no feature columns besides the target")

    dropped = 0
    missing = frame.isna() | frame.isin([np.inf, -np.inf])
    if missing.to_numpy().any():
        counts = missing.sum()
        counts = counts[counts > 0]
        bad_rows = missing.any(axis=1).to_numpy()
        first = int(np.flatnonzero(bad_rows)[0])
        by_column = ", ".join(f"{c}: {n}" for c, n in counts.items())
        if not drop_missing:
            raise UserError(
                f"{int(bad_rows.sum())} rows have missing or infinite values "
                f"({by_column}; first at {data_row(first)}); fix them or pass "
                "--drop-missing"
            )
        keep = ~missing.any(axis=1)
        dropped = int((~keep).sum())
        frame = frame.loc[keep].reset_index(drop=True)

    categories: dict[str, list[str]] = {}
    for column in features:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(
            series
        ):
            levels = sorted(series.astype(str).unique().tolist())
            if len(levels) > max_levels:
                raise UserError(
                    f"feature column {column!r} is categorical with {len(levels)} "
                    f"levels, more than --max-levels {max_levels}; drop the column, "
                    "encode it "
                    "yourself, or raise --max-levels"
                )
            categories[str(column)] = levels
    return frame, [str(c) for c in features], categories, dropped


@dataclass
class Splits:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


MOSTLY_NUMERIC = 0.9


def numbers_as_numbers(
    frame: pd.DataFrame, categorical: Collection[str] = ()
) -> pd.DataFrame:
    """Columns of numbers that the reader left as objects that are not text
    (Parquet decimals, integers beyond 64 bits) as float64; a column typed as text
    stays text, and the ``categorical`` columns (a trained model's categories) are
    left alone. A column whose
    values are numbers but for a few that each occur once (typos in a numeric
    column) is refused, naming the first, rather than one-hot encoded as a category
    of every distinct value; a non-number that repeats (store codes 101, 102 and
    A1, say) makes the column a category, as any text column."""
    converted = {}
    for column in frame.columns:
        series = frame[column]
        if column in categorical:
            continue
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        if not (
            pd.api.types.is_object_dtype(series)
            or isinstance(series.dtype, pd.StringDtype)
        ):
            continue
        present = series.dropna()
        if present.empty:
            continue
        numbers = pd.to_numeric(present, errors="coerce")
        share = float(numbers.notna().mean())
        if share < MOSTLY_NUMERIC:
            continue  # text: a category, the usual case
        if present.map(lambda v: isinstance(v, bool)).any():
            continue
        if share == 1.0:
            if present.map(lambda v: isinstance(v, str)).any():
                continue
            converted[column] = numbers.reindex(series.index).astype("float64")
        elif present[numbers.isna()].is_unique:
            position, value = first_non_numeric(series) or (0, "?")
            raise UserError(
                f"column {column!r} holds numbers but {value!r} at "
                f"{data_row(position)} is not one ({100 * share:.0f} % of its values "
                "are numbers); fix the value, or drop the column"
            )
    if converted:
        frame = frame.copy()
        for column, values in converted.items():
            frame[column] = values
    return frame


def data_row(position: int) -> str:
    """How messages name a row: counted from 1 at the first row after the header
    (pandas position 0; file line 2 of a CSV without quoted line breaks)."""
    return f"data row {position + 1} (the first row after the header is 1)"


def first_non_numeric(values: pd.Series) -> tuple[int, str] | None:
    """The position and text of the first present value of a column that does not
    read as a number, or None."""
    present = values.notna().to_numpy()
    numbers = pd.to_numeric(values, errors="coerce").notna().to_numpy()
    bad = np.flatnonzero(present & ~numbers)
    if bad.size == 0:
        return None
    return int(bad[0]), str(values.iloc[int(bad[0])])


def non_numeric_target(target: str, values: pd.Series) -> UserError:
    """The error for a target column that is not numeric, naming the first value
    that is not a number (``values`` may be the first chunk of a large file)."""
    if values.notna().sum() == 0:
        return UserError(f"target column {target!r} has no values")
    bad = first_non_numeric(values)
    shown = (
        f"{bad[1]!r} at {data_row(bad[0])}"
        if bad is not None
        else f"values of type {values.dtype}"
    )
    return UserError(
        f"target column {target!r} is not numeric ({shown}); regression needs a "
        "numeric target"
    )


@dataclass
class TableOptions:
    """The data, split, model and output options that ``fit``, ``compare`` and
    ``suggest-beta`` share, with their defaults."""

    data: str | None = None
    targets: list[str] = field(default_factory=list)
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    learning_rate: float = 1e-3
    epochs: int = 50
    batch_size: int = 32
    validation_split: float = 0.2
    test_split: float = 0.2
    seed: int = 0
    drop_missing: bool = False
    max_levels: int = 50
    out: str | None = None
    overwrite: bool = False


def check_fractions(validation_split: float, test_split: float) -> None:
    """Both fractions in [0, 1), leaving rows for training."""
    for name, value in (
        ("--validation-split", validation_split),
        ("--test-split", test_split),
    ):
        if not 0 <= value < 1:
            raise UserError(f"{name} must be in [0, 1); got {value}")
    if validation_split + test_split >= 1:
        raise UserError(
            "--validation-split plus --test-split must leave rows for training; got "
            f"{validation_split} + {test_split}"
        )


def split_indices(
    n_rows: int, validation_split: float, test_split: float, seed: int
) -> Splits:
    """Seeded shuffle, then the test rows, the validation rows, and the rest."""
    check_fractions(validation_split, test_split)
    order = np.random.default_rng(seed).permutation(n_rows)
    n_test = int(round(n_rows * test_split))
    n_validation = int(round(n_rows * validation_split))
    n_train = n_rows - n_test - n_validation
    too_few = (
        n_train < 2
        or (test_split > 0 and n_test < 2)
        or (validation_split > 0 and n_validation < 2)
    )
    if too_few:
        raise UserError(
            f"{n_rows} rows are too few for the splits (train {n_train}, validation "
            f"{n_validation}, test {n_test}; each needs at least 2); use more rows or "
            "smaller --validation-split/--test-split"
        )
    return Splits(
        train=np.sort(order[n_test + n_validation :]),
        validation=np.sort(order[n_test : n_test + n_validation]),
        test=np.sort(order[:n_test]),
    )


def fit_preprocessing(
    train: pd.DataFrame,
    features: list[str],
    targets: list[str],
    categories: dict[str, list[str]],
) -> Preprocessing:
    """Standardization statistics from the training split only."""
    prep = Preprocessing(features=features, targets=targets, categories=categories)
    encoded = prep.encode(train)
    prep.columns = [str(c) for c in encoded.columns]
    x = encoded.to_numpy("float64")
    y = train[targets].to_numpy("float64")
    with np.errstate(over="ignore", invalid="ignore"):
        x_mean, x_std = x.mean(axis=0), x.std(axis=0)
        y_mean, y_std = y.mean(axis=0), y.std(axis=0)
    prep.x_mean, prep.x_std = scales(prep.columns, x_mean, x_std, target=False)
    prep.y_mean, prep.y_std = scales(targets, y_mean, y_std, target=True)
    return prep


def scales(
    names: list[str], means: Any, stds: Any, *, target: bool
) -> tuple[list[float], list[float]]:
    """Means and standard deviations of the training split, checked: a column
    whose statistics overflow float64 is refused, as is a constant target (there
    is nothing to learn, and every error would be divided by 0); a constant
    feature is divided by 1."""
    kind = "target" if target else "feature"
    for name, mean, std in zip(names, means, stds, strict=True):
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise UserError(
                f"{kind} column {name!r} has values too large to standardize (its "
                "standard deviation overflows); rescale the column, e.g. to "
                "thousands or millions of its unit"
            )
        if target and std == 0:
            raise UserError(
                f"target column {name!r} is constant ({mean:g}) in the training "
                "split; there is nothing to learn"
            )
    return [float(m) for m in means], [float(s) if s > 0 else 1.0 for s in stds]


def check_prediction_rows(frame: pd.DataFrame, prep: Preprocessing) -> None:
    """Refuses rows that lack a feature column, or that have missing features."""
    absent = [c for c in prep.features if c not in frame.columns]
    if absent:
        raise UserError(
            f"the rows lack feature column(s) {', '.join(map(repr, absent))} that the "
            "model was trained on"
        )
    missing = frame[prep.features].isna().any(axis=1).to_numpy()
    if missing.any():
        raise UserError(
            f"{int(missing.sum())} rows have missing feature values (first at "
            f"{data_row(int(np.flatnonzero(missing)[0]))}); fill or drop them"
        )
    for column, levels in prep.categories.items():
        values = frame[column].astype(str)
        unseen = sorted(set(values) - set(levels))
        if unseen:
            shown = ", ".join(map(repr, unseen[:5]))
            raise UserError(
                f"feature column {column!r} has level(s) {shown}"
                f" not seen in training (known: {', '.join(map(repr, levels[:10]))}); "
                "the model has no input for them"
            )
    for column in prep.features:
        if column not in prep.categories and not pd.api.types.is_numeric_dtype(
            frame[column]
        ):
            bad = first_non_numeric(frame[column])
            shown = "" if bad is None else f" ({bad[1]!r} at {data_row(bad[0])})"
            raise UserError(
                f"feature column {column!r} was numeric in training but is not here"
                f"{shown}"
            )
