"""The main job: train the classic regression model on a table and measure it.

``fit_table`` is the typed function behind ``smoothl1 fit``; tests call it directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from smoothl1 import registry
from smoothl1.cli import data as data_mod
from smoothl1.cli import devices as devices_mod
from smoothl1.cli.data import UserError
from smoothl1.losses import SelfAdjustingSmoothL1Loss


@dataclass
class FitOptions(data_mod.TableOptions):
    """The options of ``smoothl1 fit``, with its defaults."""

    loss: str = "smooth_l1"
    beta: float | str = 1.0  # a number, or "auto": the suggest-beta proposal
    delta: float = 1.0
    verbose: bool = True
    devices: int = 1  # data parallel over this many local devices (cli/devices.py)
    stream: bool = False  # read the file in chunks (cli/stream.py)


# ---------------------------------------------------------------- pieces


def loss_spec(loss: str, beta: float | Sequence[float], delta: float) -> str:
    name, colon, params = loss.strip().partition(":")
    return _loss_spec(name.strip().lower() + colon + params, beta, delta)


def check_loss_options(loss: str, beta: float | str, delta: float) -> None:
    """``--beta`` serves a plain ``--loss smooth_l1`` only, ``--delta`` a plain
    ``--loss huber``: refuse them beside any other loss, or beside a spec that
    carries its own parameters, rather than train something else than asked.
    (A value equal to the default, 1, cannot be told from an absent option.)"""
    name, colon, _ = loss.strip().partition(":")
    name = name.strip().lower()
    for option, value, owner in (
        ("--beta", beta, "smooth_l1"),
        ("--delta", delta, "huber"),
    ):
        if value == 1.0:
            continue
        if name != owner:
            raise UserError(
                f"{option} {value} applies to --loss {owner} only, not to --loss "
                f"{loss}; give that loss's parameters in its spec (see smoothl1 "
                "losses)"
            )
        if colon:
            raise UserError(
                f"{option} {value} and the parameters in --loss {loss} disagree; "
                f"give the value once, in the spec or with {option}"
            )


def _loss_spec(loss: str, beta: float | Sequence[float], delta: float) -> str:
    """The loss spec for ``--loss NAME --beta B --delta D``: ``--beta`` and
    ``--delta`` fill in ``smooth_l1`` and ``huber`` when the name carries no
    parameters of its own (a sequence of betas, one per target, is joined by
    ``|``)."""
    if ":" in loss:
        return loss
    if loss == "smooth_l1":
        if isinstance(beta, Sequence):
            return "smooth_l1:beta=" + "|".join(f"{b:g}" for b in beta)
        return f"smooth_l1:beta={beta:g}"
    if loss == "huber":
        return f"huber:delta={delta:g}"
    return loss


def make_loss(
    spec: str, n_targets: int | None = None, option: str = "--loss"
) -> keras.losses.Loss:
    """The loss a spec names; with ``n_targets``, also checks that a per-coordinate
    parameter has one value per target column. Errors name ``option``, the
    command-line option the spec came from."""
    try:
        loss = registry.get(spec)
    except ValueError as error:
        raise UserError(f"{option} {spec!r}: {error}") from error
    per_target = [
        v for v in getattr(loss, "params", {}).values() if isinstance(v, tuple)
    ]
    if n_targets is not None and any(len(v) != n_targets for v in per_target):
        raise UserError(
            f"{option} {spec!r}: a per-coordinate parameter needs one value per target "
            f"column, and there are {n_targets}"
        )
    return loss


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and the active backend's generator (Keras's own
    ``set_random_seed`` also imports TensorFlow under every backend, 2-3 s)."""
    random.seed(seed)
    np.random.seed(seed)
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(seed)


def build_model(
    n_features: int, n_targets: int, hidden: list[int], seed: int
) -> keras.Model:
    """Dense(h, relu) for each h in ``hidden``, then one linear output per target;
    every initializer is seeded, so the same seed gives the same weights."""
    layers: list[Any] = [keras.Input((n_features,))]
    for i, units in enumerate(hidden):
        layers.append(
            keras.layers.Dense(
                units,
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
            )
        )
    layers.append(
        keras.layers.Dense(
            n_targets,
            kernel_initializer=keras.initializers.GlorotUniform(
                seed=seed + len(hidden)
            ),
        )
    )
    return keras.Sequential(layers)


def regression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    beta_in_units: np.ndarray | None,
    targets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MAE, RMSE, median absolute error, R^2 (averaged over targets) and the fraction
    of residual elements with ``|d| >= beta`` (in the target's units). With more
    than one of ``targets``, also ``per_target``: the same for each target alone,
    in its own units (the pooled errors mix the targets' units)."""
    residual = y_pred - y_true
    abs_residual = np.abs(residual)
    ss_res = (residual**2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    metrics: dict[str, Any] = {
        "mae": float(abs_residual.mean()),
        "rmse": float(np.sqrt((residual**2).mean())),
        "median_ae": float(np.median(abs_residual)),
        "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
        "rows": int(len(y_true)),
    }
    if beta_in_units is not None:
        metrics["fraction_beyond_beta"] = float((abs_residual >= beta_in_units).mean())
    if targets is not None and len(targets) > 1:
        betas = per_target_betas(beta_in_units, len(targets))
        metrics["per_target"] = {
            name: regression_metrics(
                y_true[:, [i]], y_pred[:, [i]], None if betas is None else betas[[i]]
            )
            for i, name in enumerate(targets)
        }
    return metrics


def per_target_betas(beta_in_units: Any, n_targets: int) -> np.ndarray | None:
    """One beta per target, in its units (a single beta serves every target)."""
    if beta_in_units is None:
        return None
    return np.broadcast_to(np.asarray(beta_in_units, dtype="float64"), (n_targets,))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keras prints its progress bar on stdout; people's tables go there, so the bar
    goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, content: str | bytes) -> None:
    """Writes a file through a temporary name in the same folder, with the
    permissions of an ordinary new file (mkstemp's own are 0600)."""
    mode = "wb" if isinstance(content, bytes) else "w"
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(content)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUN_MARKERS = ("metrics.json", "results.json", "suggestion.json")
# Every file that fit, compare or suggest-beta writes into a run directory.
RUN_FILES = frozenset(
    {
        *RUN_MARKERS,
        "model.keras",
        "preprocessing.json",
        "history.csv",
        "report.md",
        "learning_curves.png",
        "residuals.png",
        "results.csv",
        "compare.png",
        "suggest_beta.png",
    }
)


def _replaceable(path: Path) -> bool:
    """Only an empty directory or an earlier run of this command line may be
    replaced by --overwrite: one of our result files, and nothing but files a run
    writes. Never a folder of the user's own, such as the one holding the data,
    even if a run's files were written into it by hand."""
    entries = list(path.iterdir())
    if not entries:
        return True
    if any(entry.is_dir() or entry.name not in RUN_FILES for entry in entries):
        return False
    return any((path / marker).is_file() for marker in RUN_MARKERS)


class RunDirectory:
    """A run directory that is built aside and moved into place at the end, so an
    existing directory is never replaced unless asked, and never half-replaced.

    Without ``--overwrite`` the name is reserved at once by creating it (empty):
    ``mkdir`` fails for a name that exists, so two runs started together, with one
    ``--out`` or with default names made in the same second, never take the same
    directory; the finished run then replaces only its own empty reservation.
    """

    def __init__(self, out: str | None, default_name: str, overwrite: bool) -> None:
        self.replaces = False  # an earlier run, which --overwrite allowed to go
        self.kept = False  # the finished run could not be moved into place
        self.committed = False
        self.created: list[Path] = []  # folders above the run that this run made
        try:
            if out is None:
                path = self._reserve_default(Path("runs") / default_name)
            else:
                path = Path(out)
                self.replaces = self._check_out(path, overwrite)
                if not self.replaces:
                    self._reserve(path)
            self.path = Path(os.path.abspath(path))
            self.staging = Path(
                tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            )
            os.chmod(self.staging, 0o777 & ~_umask())
        except OSError as error:
            target = Path(default_name if out is None else out)
            blocking = next((p for p in target.parents if p.is_file()), None)
            reason = (
                f"{str(blocking)!r} is a file, not a folder"
                if blocking is not None
                else error.strerror
            )
            raise UserError(
                f"cannot create the run directory {str(target)!r}: {reason}"
            ) from error

    @staticmethod
    def _check_out(path: Path, overwrite: bool) -> bool:
        """Whether ``--out`` names an earlier run that ``--overwrite`` replaces."""
        if path.is_symlink():
            raise UserError(
                f"--out {str(path)!r} is a symbolic link; give the directory itself "
                "(a run never replaces a link or what it points to)"
            )
        if not path.exists():
            return False
        if not path.is_dir():
            raise UserError(
                f"--out {str(path)!r} exists and is not a directory; choose another "
                "--out"
            )
        if not overwrite:
            raise UserError(
                f"run directory {str(path)!r} already exists; choose another --out "
                "or pass --overwrite to replace it"
            )
        if not _replaceable(path):
            raise UserError(
                f"--out {str(path)!r} is not an earlier smoothl1 run directory, "
                "so --overwrite will not replace it; choose another --out"
            )
        return True

    def _make_parents(self, path: Path) -> None:
        """Creates the folders above ``path`` that are missing, remembering them so
        that a failed run removes them again."""
        missing = [p for p in reversed(path.parents) if not p.exists()]
        for folder in missing:
            folder.mkdir(exist_ok=True)
            self.created.append(folder)

    def _reserve(self, path: Path) -> None:
        self._make_parents(path)
        try:
            path.mkdir()
        except FileExistsError as error:
            raise UserError(
                f"run directory {str(path)!r} already exists (another run took it); "
                "choose another --out"
            ) from error

    def _reserve_default(self, base: Path) -> Path:
        self._make_parents(base)
        path, n = base, 1
        while True:
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")

    def commit(self) -> Path:
        """Moves the finished run into place: onto its own empty reservation, or
        over the earlier run that --overwrite allowed to be replaced."""
        if self.replaces and self.path.exists():
            if not _replaceable(self.path):
                self.kept = True
                raise UserError(
                    f"--out {str(self.path)!r} changed during the run and is no "
                    "longer an earlier smoothl1 run; this run is kept in "
                    f"{str(self.staging)!r}"
                )
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            with _signals_held():  # Ctrl-C or SIGTERM wait until both moves are done
                os.replace(self.path, old)
                os.replace(self.staging, self.path)
                self.committed = True
            shutil.rmtree(old, ignore_errors=True)
            return self.path
        try:
            # rename(2) replaces an empty directory (the reservation) and fails
            # for one that is not empty: nothing a user put there is lost.
            with _signals_held():
                os.replace(self.staging, self.path)
                self.committed = True
        except OSError as error:
            self.kept = True
            raise UserError(
                f"run directory {str(self.path)!r} was filled by something else "
                f"during the run; this run is kept in {str(self.staging)!r}"
            ) from error
        return self.path

    def discard(self) -> None:
        """Removes what a failed run left: its staging folder (unless ``commit``
        kept it for the user), its empty reservation and the empty folders it
        made above them. Nothing once the run is in place."""
        if self.committed:
            return
        if not self.kept:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.replaces or self.kept:
            return
        for folder in [self.path, *reversed(self.created)]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder; never a full one


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back (they arrive after the block) so that a run is
    never caught between two moves; in the main thread of a POSIX process only."""
    import signal
    import threading

    if (
        not hasattr(signal, "pthread_sigmask")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def fit_run_directory(options: FitOptions, data_name: str, spec: str) -> RunDirectory:
    """The run directory of ``fit``: ``--out``, or ``runs/<data>-<loss>-<time>``."""
    name = f"{data_name}-{spec.replace(':', '-').replace('=', '')}-"
    return RunDirectory(
        options.out, name + time.strftime("%Y%m%d-%H%M%S"), options.overwrite
    )


# ---------------------------------------------------------------- the job


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, Any]
    seconds: float


@dataclass
class PreparedTable:
    """A table read, checked, split and standardized as ``fit`` does it."""

    data_name: str
    targets: list[str]
    rows_dropped_missing: int
    prep: data_mod.Preprocessing
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]


def fit_table(options: FitOptions) -> FitResult:
    """Loads the table, trains the classic model, writes the run directory."""
    start = time.perf_counter()
    check_model_options(options)
    check_loss_options(options.loss, options.beta, options.delta)
    if options.stream:
        from smoothl1.cli import stream

        return stream.fit_stream(options)
    parallel = devices_mod.plan(options.devices, options.batch_size)
    auto_beta = options.beta == "auto"
    beta = 1.0 if auto_beta else float(options.beta)
    spec = loss_spec(options.loss, beta, options.delta)
    loss = make_loss(spec)  # a bad --loss fails before any data is read
    table = prepare_table(options)
    make_loss(spec, len(table.targets))  # one value per target where it takes one
    suggestion = None
    if auto_beta:  # check_loss_options: a plain --loss smooth_l1
        from smoothl1.cli import suggest

        suggestion = suggest.suggest_for_fit(options, table)
        spec = loss_spec(options.loss, suggestion.betas, options.delta)
        loss = make_loss(spec)

    run = fit_run_directory(options, table.data_name, spec)
    try:
        with parallel.scope():
            metrics = _train_and_write(
                options, spec, loss, table.prep, table.arrays, run.staging, parallel
            )
        metrics.update(
            data=options.data or data_mod.DEFAULT_DATASET,
            targets=table.targets,
            rows_dropped_missing=table.rows_dropped_missing,
            backend=keras.backend.backend(),
        )
        if suggestion is not None:
            metrics["beta_auto"] = suggestion.to_json()
        write_atomic(run.staging / "metrics.json", json.dumps(metrics, indent=2))
        _write_report(run.staging, metrics, options)
        run_dir = run.commit()
    except BaseException:
        run.discard()
        raise
    return FitResult(run_dir, metrics, time.perf_counter() - start)


def prepare_table(options: FitOptions) -> PreparedTable:
    """Reads DATA, checks it, splits it and standardizes it with the training
    split's statistics (the data half of ``fit_table``)."""
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
    splits = data_mod.split_indices(
        len(frame), options.validation_split, options.test_split, options.seed
    )

    train = frame.iloc[splits.train]
    prep = data_mod.fit_preprocessing(train, features, targets, categories)
    arrays = {
        name: (prep.transform_x(frame.iloc[idx]), prep.transform_y(frame.iloc[idx]))
        for name, idx in asdict(splits).items()
    }
    for name, (x, y) in arrays.items():
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise UserError(f"the {name} split has non-finite values after scaling")
    return PreparedTable(data_name, targets, dropped, prep, arrays)


def check_model_options(options: Any) -> None:
    checks = [
        ("--epochs", options.epochs, options.epochs >= 1),
        ("--batch-size", options.batch_size, options.batch_size >= 1),
        (
            "--learning-rate",
            options.learning_rate,
            np.isfinite(options.learning_rate) and options.learning_rate > 0,
        ),
        ("--hidden", options.hidden, all(h >= 1 for h in options.hidden)),
        ("--max-levels", options.max_levels, options.max_levels >= 1),
        ("--seed", options.seed, 0 <= options.seed < 2**32),
    ]
    for name, value, ok in checks:
        if not ok:
            rule = "in [0, 2**32)" if name == "--seed" else "positive"
            raise UserError(f"{name} must be {rule}; got {value}")


def _train_and_write(
    options: FitOptions,
    spec: str,
    loss: keras.losses.Loss,
    prep: data_mod.Preprocessing,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    folder: Path,
    parallel: devices_mod.DataParallel | None = None,
) -> dict[str, Any]:
    seed_everything(options.seed)
    parallel = parallel or devices_mod.DataParallel()
    # Several devices: batches must split evenly (see cli/devices.py).
    x_train, y_train = parallel.even(arrays["train"])
    validation = parallel.even(arrays["validation"])
    model = build_model(
        x_train.shape[1], y_train.shape[1], options.hidden, options.seed
    )
    if isinstance(loss, SelfAdjustingSmoothL1Loss):
        model = loss.attach(model)  # its running state is a layer on the output
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss=loss)
    has_validation = len(validation[0]) > 0
    with stdout_to_stderr():
        history = model.fit(
            x_train,
            y_train,
            validation_data=validation if has_validation else None,
            epochs=options.epochs,
            batch_size=options.batch_size,
            # One validation batch: one compiled evaluation step instead of two.
            validation_batch_size=max(1, len(validation[0])),
            verbose=2 if options.verbose else 0,
        )

    beta_units, metrics = metrics_header(options, spec, loss, prep)
    if parallel.devices > 1:
        metrics["devices"] = parallel.to_json()
        metrics["rows_left_out_for_devices"] = {
            "train": len(arrays["train"][0]) - len(x_train),
            "validation": len(arrays["validation"][0]) - len(validation[0]),
        }
    # One predict call over every split: one compiled step instead of one per size.
    names = [name for name, (x, _) in arrays.items() if len(x)]
    x_all = np.concatenate([arrays[name][0] for name in names])
    y_all = prep.inverse_y(
        parallel.predict(model, x_all, batch_size=min(len(x_all), 65536))
    )
    predictions = {}
    offset = 0
    for name in names:
        x, y = arrays[name]
        y_pred = y_all[offset : offset + len(x)]
        offset += len(x)
        y_true = prep.inverse_y(y)
        predictions[name] = (y_true, y_pred)
        metrics[name] = regression_metrics(y_true, y_pred, beta_units, prep.targets)

    write_artifacts(folder, model, prep, history, predictions, beta_units)
    return metrics


def metrics_header(
    options: FitOptions,
    spec: str,
    loss: keras.losses.Loss,
    prep: data_mod.Preprocessing,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The loss's beta in the targets' units (None for a loss without beta), and
    the first entries of ``metrics.json``: what was trained, and how."""
    beta = getattr(loss, "beta", None)
    beta_units = None if beta is None else np.asarray(beta) * np.asarray(prep.y_std)
    metrics: dict[str, Any] = {
        "loss": spec,
        "beta_in_target_units": None if beta_units is None else beta_units.tolist(),
        "epochs": options.epochs,
        "seed": options.seed,
    }
    return beta_units, metrics


def write_artifacts(
    folder: Path,
    model: keras.Model,
    prep: data_mod.Preprocessing,
    history: keras.callbacks.History,
    residuals: dict[str, tuple[np.ndarray, np.ndarray]],
    beta_units: np.ndarray | None,
) -> None:
    """What every fit leaves in its run directory: ``model.keras``,
    ``preprocessing.json``, ``history.csv``, the learning curves and the residual
    plots of the test split (the validation split when there is no test split).
    ``residuals`` maps a split to its ``(y_true, y_pred)`` in target units."""
    model.save(folder / "model.keras")
    write_atomic(folder / "preprocessing.json", json.dumps(prep.to_json(), indent=2))
    history_frame = pd.DataFrame(history.history)
    history_frame.insert(0, "epoch", np.arange(1, len(history_frame) + 1))
    write_atomic(folder / "history.csv", history_frame.to_csv(index=False))

    from smoothl1.cli import report

    report.learning_curves(history_frame, folder / "learning_curves.png")
    shown = "test" if "test" in residuals else "validation"
    if shown in residuals:
        report.residual_plots(
            *residuals[shown], beta_units, prep.targets, shown, folder / "residuals.png"
        )


def _write_report(folder: Path, metrics: dict[str, Any], options: FitOptions) -> None:
    from smoothl1.cli import report

    write_atomic(folder / "report.md", report.fit_markdown(metrics, options))
