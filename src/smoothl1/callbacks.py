"""Callbacks that show the residuals during training, to choose ``beta`` by."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

DEFAULT_QUANTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


def _quantile_key(prefix: str, q: float) -> str:
    return f"{prefix}_q{int(q):02d}" if float(q).is_integer() else f"{prefix}_q{q:g}"


class ResidualMonitor(keras.callbacks.Callback):
    """Records quantiles of the residual ``d = y_pred - y_true`` on a validation
    sample at the end of every epoch.

    The quantiles (over every element of the sample, by NumPy's default linear
    interpolation) go into the epoch's logs, so ``History`` and the other callbacks
    see them as ``residual_q05``, ``residual_q25``, ... , and, with ``csv_path``,
    into a CSV file with one row per epoch (``epoch`` counts from 1). Watching
    where ``beta`` falls among them shows how much of the data each side of the
    smooth L1 threshold sees as training goes on.

    Args:
        x: validation inputs (an array, or a list or dict of arrays).
        y: validation targets, shaped like the model's output.
        quantiles: percentages in [0, 100].
        csv_path: a CSV file to write, or None.
        overwrite: replace ``csv_path`` if it exists; without it an existing file
            raises ``FileExistsError`` here, before any training.
        max_rows: use a fixed random sample of at most this many rows (chosen once,
            with ``seed``), to keep the prediction cheap; None uses every row.
        seed: seed of that sample.
        batch_size: batch size of the prediction (default: Keras's).
        prefix: the prefix of the log keys.

    Example:

    >>> import numpy as np
    >>> from smoothl1 import ResidualMonitor
    >>> monitor = ResidualMonitor(np.zeros((4, 2)), np.zeros((4, 1)))
    >>> monitor.keys
    ['residual_q05', 'residual_q25', 'residual_q50', 'residual_q75', 'residual_q95']
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        csv_path: str | Path | None = None,
        overwrite: bool = False,
        max_rows: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        prefix: str = "residual",
    ) -> None:
        super().__init__()
        self.quantiles = tuple(float(q) for q in quantiles)
        if not self.quantiles or not all(
            math.isfinite(q) and 0 <= q <= 100 for q in self.quantiles
        ):
            raise ValueError(
                "Invalid value for argument `quantiles`: expected percentages in "
                f"[0, 100]. Received: quantiles={quantiles!r}"
            )
        y = np.asarray(y)
        if len(y) == 0:
            raise ValueError("ResidualMonitor needs at least one validation row.")
        rows = np.arange(len(y))
        if max_rows is not None:
            if max_rows < 1:
                raise ValueError(
                    "Invalid value for argument `max_rows`: expected an integer >= 1 "
                    f"or None. Received: max_rows={max_rows!r}"
                )
            if len(y) > max_rows:
                rng = np.random.default_rng(seed)
                rows = np.sort(rng.choice(len(y), size=max_rows, replace=False))
        self.x = keras.tree.map_structure(lambda a: np.asarray(a)[rows], x)
        self.y = y[rows]
        self.batch_size = batch_size
        self.keys = [_quantile_key(prefix, q) for q in self.quantiles]
        self.csv_path = None if csv_path is None else Path(csv_path)
        self.overwrite = overwrite
        self._started = False  # this callback wrote the file's header
        if self.csv_path is not None and self.csv_path.exists() and not overwrite:
            raise FileExistsError(
                f"ResidualMonitor: {str(self.csv_path)!r} exists; pass overwrite=True "
                "to replace it, or choose another csv_path"
            )
        self.records: list[dict[str, float]] = []

    def residual_quantiles(self) -> dict[str, float]:
        """The quantiles of the current model's residuals on the sample."""
        y_pred = np.asarray(
            self.model.predict(self.x, batch_size=self.batch_size, verbose=0),
            dtype="float64",
        )
        y_true = np.asarray(self.y, dtype="float64")
        if y_true.shape != y_pred.shape and y_true.size == y_pred.size:
            y_true = y_true.reshape(y_pred.shape)  # (N,) against (N, 1)
        values = np.percentile((y_pred - y_true).ravel(), self.quantiles)
        return {key: float(v) for key, v in zip(self.keys, values, strict=True)}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.csv_path is None or self._started:
            return
        if self.csv_path.exists() and not self.overwrite:
            raise FileExistsError(
                f"ResidualMonitor: {str(self.csv_path)!r} exists; pass overwrite=True "
                "to replace it, or choose another csv_path"
            )
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(["epoch", *self.keys])
        self._started = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = self.residual_quantiles()
        if logs is not None:
            logs.update(values)
        self.records.append({"epoch": epoch + 1, **values})
        if self.csv_path is not None:
            with self.csv_path.open("a", newline="") as handle:
                csv.writer(handle).writerow(
                    [epoch + 1, *(repr(values[k]) for k in self.keys)]
                )
