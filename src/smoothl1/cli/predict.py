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
    prep = data_mod.Preprocessing.from_json(json.loads(prep_path.read_text()))
    frame, _, _ = data_mod.read_table(source)
    data_mod.check_prediction_rows(frame, prep)
    x = prep.transform_x(frame)
    if not np.isfinite(x).all():
        raise UserError("the rows have non-finite feature values")
    model = keras.saving.load_model(model_path)
    y = prep.inverse_y(model.predict(x, batch_size=1024, verbose=0))
    return pd.DataFrame({f"{t}_pred": y[:, i] for i, t in enumerate(prep.targets)})
