"""``smoothl1 predict``: a saved run applied to new rows."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import smoothl1  # noqa: F401  (registers the losses, so the model loads without custom_objects)
from smoothl1.cli import data as data_mod
from smoothl1.cli.data import UserError


def predict_table(run_dir: Path, source: str) -> pd.DataFrame:
    """Predictions of the run's model for the rows of ``source``, in target units."""
    model_path, prep_path = run_dir / "model.keras", run_dir / "preprocessing.json"
    if not model_path.is_file() or not prep_path.is_file():
        raise UserError(
            f"{str(run_dir)!r} is not a run directory of `smoothl1 fit` (it needs "
            "model.keras and preprocessing.json)"
        )
    try:
        prep = data_mod.Preprocessing.from_json(json.loads(prep_path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{str(prep_path)!r} is damaged ({error}); rerun `smoothl1 fit` to make "
            "the run again"
        ) from error
    frame, _, _ = data_mod.read_table(source)
    frame = data_mod.numbers_as_numbers(frame, categorical=prep.categories)
    data_mod.check_prediction_rows(frame, prep)
    with np.errstate(over="ignore", invalid="ignore"):
        x = prep.transform_x(frame)
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise UserError(
            f"feature {prep.columns[column]!r} is infinite, or too large to scale, "
            f"at {data_mod.data_row(row)}"
        )
    try:
        model = keras.saving.load_model(model_path)
    except Exception as error:  # noqa: BLE001 (Keras raises many kinds here)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{str(model_path)!r} cannot be loaded ({message}); rerun `smoothl1 fit`"
        ) from error
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if not shape or shape[-1] != x.shape[1]:
        raise UserError(
            f"{str(model_path)!r} takes inputs of shape {shape}, but "
            f"preprocessing.json gives {x.shape[1]} columns; the run directory was "
            "edited or mixed with another"
        )
    y = prep.inverse_y(model.predict(x, batch_size=1024, verbose=0))
    return pd.DataFrame({f"{t}_pred": y[:, i] for i, t in enumerate(prep.targets)})
