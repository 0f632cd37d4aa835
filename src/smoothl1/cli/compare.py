"""``smoothl1 compare``: losses against outlier fractions, over seeds, on one table.

The grid is (loss, outlier fraction) for each seed. A seed fixes the split, the
initial weights, the batch order and which training labels are corrupted, so every
cell of one seed sees the same data. All cells of one seed train together as one
Keras model of independent members (:mod:`smoothl1.cli.ensemble`); ``--strategy loop``
trains them one ``fit`` at a time instead, for the benchmark and the equivalence test.

Corruption (training labels only; validation and test stay clean). For each seed, a
seeded permutation of the training rows and, per row and target, a magnitude
``u ~ U(5, 10)`` and a sign ``s = +-1`` are drawn once. At fraction ``f`` the first
``round(f * n_train)`` rows of the permutation have their label replaced by
``y + s * u * std(y)``, with ``std(y)`` the training split's standard deviation. The
corrupted rows of a smaller fraction are a subset of those of a larger one.

The target is standardized with the clean training split's mean and standard
deviation in every cell, so ``beta`` means the same in every cell (a user who only
had the corrupted labels would see a larger standard deviation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from smoothl1 import registry
from smoothl1.cli import data as data_mod
from smoothl1.cli import ensemble
from smoothl1.cli.data import UserError
from smoothl1.cli.train import (
    RunDirectory,
    build_model,
    check_model_options,
    make_loss,
    seed_everything,
    write_atomic,
)
from smoothl1.losses import SelfAdjustingSmoothL1Loss

DEFAULT_LOSSES = [
    "mse",
    "mae",
    "huber",
    "log_cosh",
    "smooth_l1:beta=0.1",
    "smooth_l1:beta=0.5",
    "smooth_l1:beta=1",
    "smooth_l1:beta=2",
]
DEFAULT_OUTLIERS = [0.0, 0.1, 0.2, 0.3]
BASELINES = ["sklearn:LinearRegression", "sklearn:HuberRegressor"]


@dataclass
class CompareOptions(data_mod.TableOptions):
    """The options of ``smoothl1 compare``, with its defaults (``seed`` is the
    first of ``seeds`` consecutive seeds)."""

    losses: list[str] = field(default_factory=lambda: list(DEFAULT_LOSSES))
    outliers: list[float] = field(default_factory=lambda: list(DEFAULT_OUTLIERS))
    seeds: int = 5
    baselines: bool = True
    strategy: str = "batched"
    progress: Callable[[int, int], None] | None = None


def parse_losses(text: str) -> list[str]:
    """Splits ``"mse,huber:delta=2,wing:width=5,curvature=1"`` into specs: a piece
    of the form ``key=value`` with no ``:`` continues the previous spec."""
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    if not specs:
        raise UserError("--losses is empty; give names such as mse,smooth_l1:beta=0.5")
    return specs


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as error:
        raise UserError(
            f"--outliers must be comma-separated fractions; got {text!r}"
        ) from error
    if not values or any(not 0 <= v < 1 for v in values):
        raise UserError(f"--outliers fractions must be in [0, 1); got {text!r}")
    return values


def corruption(
    n_train: int, n_targets: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's row order and signed magnitudes ``s * u`` (standard deviations)."""
    rng = np.random.default_rng([seed, 20190])
    order = rng.permutation(n_train)
    magnitude = rng.uniform(5.0, 10.0, size=(n_train, n_targets))
    sign = rng.choice([-1.0, 1.0], size=(n_train, n_targets))
    return order, sign * magnitude


def corrupt(
    y: np.ndarray, fraction: float, order: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """Standardized labels with the first ``round(fraction * n)`` rows of ``order``
    moved by ``shift`` (that is, ``y + s * u * std(y)`` in the target's units)."""
    rows = order[: int(round(fraction * len(y)))]
    out = y.copy()
    out[rows] = out[rows] + shift[rows].astype(out.dtype)
    return out


# ---------------------------------------------------------------- one seed


@dataclass
class SeedData:
    prep: data_mod.Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    order: np.ndarray
    shift: np.ndarray


def seed_data(
    frame: pd.DataFrame,
    features: list[str],
    targets: list[str],
    categories: dict[str, list[str]],
    options: CompareOptions,
    seed: int,
) -> SeedData:
    splits = data_mod.split_indices(
        len(frame), options.validation_split, options.test_split, seed
    )
    train = frame.iloc[splits.train]
    prep = data_mod.fit_preprocessing(train, features, targets, categories)

    def xy(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = frame.iloc[idx]
        return prep.transform_x(part), prep.transform_y(part)

    x_train, y_train = xy(splits.train)
    x_val, y_val = xy(splits.validation)
    x_test, y_test = xy(splits.test)
    order, shift = corruption(len(x_train), len(targets), seed)
    return SeedData(prep, x_train, y_train, x_val, y_val, x_test, y_test, order, shift)


@dataclass
class Member:
    loss_spec: str
    fraction: float


class EpochProbe(keras.callbacks.Callback):
    """Each epoch: every member's own loss on the clean validation split, and the
    norm of its full-batch training gradient."""

    def __init__(
        self,
        val_losses: Callable[[], np.ndarray],
        gradient_norms: Callable[[], np.ndarray],
    ) -> None:
        super().__init__()
        self.val_losses = val_losses
        self.gradient_norms = gradient_norms
        self.val_loss: list[np.ndarray] = []
        self.grad_norm: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.val_loss.append(self.val_losses())
        self.grad_norm.append(self.gradient_norms())


class BatchedTrainer:
    """Every member of a seed in one model. The model and its compiled steps are
    built once and re-initialized for each seed (splits of one table have the same
    sizes for every seed), so Keras compiles the training step once per run."""

    def __init__(
        self, specs: list[str], fractions: list[float], options: CompareOptions
    ):
        self.options = options
        # Members ordered loss-major, so each loss's members are contiguous.
        self.members = [Member(spec, f) for spec in specs for f in fractions]
        self.groups = [
            (
                make_loss(spec, option="--losses"),
                i * len(fractions),
                (i + 1) * len(fractions),
            )
            for i, spec in enumerate(specs)
        ]
        self.total = ensemble.MemberSum(self.groups)
        self.model: keras.Model | None = None

    def train(self, data: SeedData, seed: int) -> tuple[np.ndarray, EpochProbe]:
        options = self.options
        seeds = [seed] * len(self.members)
        if self.model is None:
            self.model = ensemble.build_ensemble(
                data.x_train.shape[1], data.y_train.shape[1], options.hidden, seeds
            )
            optimizer = keras.optimizers.Adam(options.learning_rate)
            self.model.compile(optimizer=optimizer, loss=self.total)
            # The fresh optimizer state (step 0, zero moments, the learning rate),
            # restored before every later seed.
            optimizer.build(self.model.trainable_variables)
            self.fresh_optimizer = [
                keras.ops.convert_to_numpy(v.value) for v in optimizer.variables
            ]
        else:
            ensemble.reset_ensemble(self.model, seeds)
            for variable, value in zip(
                self.model.optimizer.variables, self.fresh_optimizer, strict=True
            ):
                variable.assign(value)
        model = self.model
        labels = np.stack(
            [
                corrupt(data.y_train, m.fraction, data.order, data.shift)
                for m in self.members
            ],
            axis=1,
        )

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(x, batch_size=max(len(x), 1), verbose=0))

        probe = EpochProbe(
            lambda: (
                ensemble.per_member_losses(self.groups, data.y_val, predict(data.x_val))
                if len(data.x_val)
                else np.full(len(self.members), np.nan)
            ),
            lambda: ensemble.member_gradient_norms(
                model, self.total, data.x_train, labels, len(self.members)
            ),
        )
        seed_everything(seed)
        _fit(model, data.x_train, labels, probe, options, seed)
        return predict(data.x_test), probe


def train_single(
    data: SeedData, member: Member, options: CompareOptions, seed: int
) -> tuple[np.ndarray, EpochProbe]:
    """One member as a plain ``fit`` of the classic model, as a user would loop it."""
    loss = make_loss(member.loss_spec)
    labels = corrupt(data.y_train, member.fraction, data.order, data.shift)
    model = build_model(
        data.x_train.shape[1], data.y_train.shape[1], options.hidden, seed
    )
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss=loss)

    def predict(x: np.ndarray) -> np.ndarray:
        out = model.predict(x, batch_size=max(len(x), 1), verbose=0)
        return np.asarray(out)[:, None, :]

    probe = EpochProbe(
        lambda: (
            ensemble.per_member_losses([(loss, 0, 1)], data.y_val, predict(data.x_val))
            if len(data.x_val)
            else np.full(1, np.nan)
        ),
        lambda: ensemble.member_gradient_norms(model, loss, data.x_train, labels, 1),
    )
    seed_everything(seed)
    _fit(model, data.x_train, labels, probe, options, seed)
    return predict(data.x_test), probe


def result_rows(
    data: SeedData,
    members: list[Member],
    test_pred: np.ndarray,
    probe: EpochProbe,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per member: clean-test errors in target units, best epoch, gradient
    norms."""
    y_true = data.prep.inverse_y(data.y_test)
    val = np.array(probe.val_loss)
    grads = np.array(probe.grad_norm)
    rows = []
    for k, member in enumerate(members):
        residual = data.prep.inverse_y(test_pred[:, k]) - y_true
        has_val = len(val) and np.isfinite(val[:, k]).all()
        rows.append(
            {
                "seed": seed,
                "loss": member.loss_spec,
                "outliers": member.fraction,
                "test_rmse": float(np.sqrt(np.mean(residual**2))),
                "test_mae": float(np.mean(np.abs(residual))),
                "best_epoch": int(np.argmin(val[:, k])) + 1 if has_val else None,
                "grad_norm_mean": float(grads[:, k].mean()),
                "grad_norm_max": float(grads[:, k].max()),
            }
        )
    return rows


def _fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    probe: EpochProbe,
    options: CompareOptions,
    seed: int,
) -> None:
    batches = ensemble.OrderedBatches(x, y, options.batch_size, seed)
    model.fit(
        batches,
        epochs=options.epochs,
        shuffle=False,  # the order is the batches' own; Keras must not reorder them
        verbose=0,
        callbacks=[batches.callback, probe],
    )


def baseline_rows(data: SeedData, fractions: list[float], seed: int) -> list[dict]:
    """scikit-learn's LinearRegression and HuberRegressor on the same splits and the
    same corrupted labels (one model per target)."""
    from sklearn.linear_model import HuberRegressor, LinearRegression

    rows = []
    y_true = data.prep.inverse_y(data.y_test)
    for fraction in fractions:
        labels = corrupt(data.y_train, fraction, data.order, data.shift)
        for name, factory in (
            ("sklearn:LinearRegression", LinearRegression),
            ("sklearn:HuberRegressor", lambda: HuberRegressor(max_iter=1000)),
        ):
            pred = np.column_stack(
                [
                    factory().fit(data.x_train, labels[:, t]).predict(data.x_test)
                    for t in range(labels.shape[1])
                ]
            )
            residual = data.prep.inverse_y(pred) - y_true
            rows.append(
                {
                    "seed": seed,
                    "loss": name,
                    "outliers": fraction,
                    "test_rmse": float(np.sqrt(np.mean(residual**2))),
                    "test_mae": float(np.mean(np.abs(residual))),
                    "best_epoch": None,
                    "grad_norm_mean": None,
                    "grad_norm_max": None,
                }
            )
    return rows


# ---------------------------------------------------------------- the job


def summarize(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean and 95 % t-interval half-width over seeds, per (loss, outliers)."""
    from scipy import stats

    frame = pd.DataFrame(rows)
    out = []
    for (loss, fraction), cell in frame.groupby(["loss", "outliers"], sort=False):
        row: dict[str, Any] = {"loss": loss, "outliers": fraction, "seeds": len(cell)}
        for column in ("test_rmse", "test_mae"):
            values = cell[column].to_numpy(float)
            row[column] = float(values.mean())
            row[f"{column}_ci95"] = (
                float(
                    stats.t.ppf(0.975, len(values) - 1)
                    * values.std(ddof=1)
                    / np.sqrt(len(values))
                )
                if len(values) > 1
                else float("nan")
            )
        for column in ("best_epoch", "grad_norm_mean", "grad_norm_max"):
            values = pd.to_numeric(cell[column], errors="coerce").to_numpy(float)
            row[column] = (
                float(np.nanmean(values)) if np.isfinite(values).any() else None
            )
        out.append(row)
    return pd.DataFrame(out)


@dataclass
class CompareResult:
    run_dir: Path
    summary: pd.DataFrame
    rows: list[dict[str, Any]]
    seconds: float


def compare_table(options: CompareOptions) -> CompareResult:
    start = time.perf_counter()
    check_model_options(options)
    if options.seeds < 1:
        raise UserError(f"--seeds must be at least 1; got {options.seeds}")
    if options.test_split <= 0:
        raise UserError("--test-split must be above 0: compare measures test error")
    if options.strategy not in ("batched", "loop"):
        raise UserError(f"--strategy must be batched or loop; got {options.strategy!r}")
    for spec in options.losses:
        if isinstance(make_loss(spec, option="--losses"), SelfAdjustingSmoothL1Loss):
            raise UserError(
                f"--losses {spec!r}: the self-adjusting loss keeps a running state in "
                "a layer of its own model, so it cannot share the batched grid; "
                "measure it with `smoothl1 fit --loss self_adjusting`"
            )
    specs = [
        registry.spec_of(make_loss(spec, option="--losses")) for spec in options.losses
    ]
    frame, data_name, default_target = data_mod.read_table(options.data)
    targets = options.targets or ([default_target] if default_target else [])
    if not targets:
        raise UserError(
            "no target column: pass --target COLUMN (columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    frame, features, categories, dropped = data_mod.check_columns(
        frame, targets, options.drop_missing, options.max_levels
    )
    for spec in specs:
        make_loss(spec, len(targets), option="--losses")
    trainer = BatchedTrainer(specs, options.outliers, options)
    seeds = [options.seed + i for i in range(options.seeds)]
    run = RunDirectory(
        options.out,
        f"compare-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}",
        options.overwrite,
    )
    try:
        rows: list[dict[str, Any]] = []
        for done, seed in enumerate(seeds):
            data = seed_data(frame, features, targets, categories, options, seed)
            if options.strategy == "batched":
                test_pred, probe = trainer.train(data, seed)
                rows += result_rows(data, trainer.members, test_pred, probe, seed)
            else:
                for member in trainer.members:
                    test_pred, probe = train_single(data, member, options, seed)
                    rows += result_rows(data, [member], test_pred, probe, seed)
            if options.baselines:
                rows += baseline_rows(data, options.outliers, seed)
            if options.progress:
                options.progress(done + 1, len(seeds))
        summary = summarize(rows)
        _write_outputs(run.staging, rows, summary, options, data_name, targets, dropped)
        run_dir = run.commit()
    except BaseException:
        run.discard()
        raise
    return CompareResult(run_dir, summary, rows, time.perf_counter() - start)


def _write_outputs(
    folder: Path,
    rows: list[dict[str, Any]],
    summary: pd.DataFrame,
    options: CompareOptions,
    data_name: str,
    targets: list[str],
    dropped: int,
) -> None:
    from smoothl1.cli import report

    write_atomic(folder / "results.csv", pd.DataFrame(rows).to_csv(index=False))
    payload = {
        "data": data_name,
        "targets": targets,
        "rows_dropped_missing": dropped,
        "backend": keras.backend.backend(),
        "options": {
            k: v for k, v in options.__dict__.items() if k not in ("progress",)
        },
        "summary": json.loads(summary.to_json(orient="records")),
        "runs": rows,
    }
    write_atomic(folder / "results.json", json.dumps(payload, indent=2))
    write_atomic(
        folder / "report.md", report.compare_markdown(summary, payload, options)
    )
    report.compare_plot(summary, data_name, folder / "compare.png")
