"""Thin parsers over the typed functions of :mod:`smoothl1.cli`.

Tables for people go to stdout, progress to stderr, machine results to files (and to
stdout with ``--json``). A problem with the input is one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from smoothl1.cli.data import UserError

app = typer.Typer(
    name="smoothl1",
    help="Train and compare Smooth L1 and its robust relatives on real tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)


def fail(error: UserError) -> None:
    sys.stderr.write(f"error: {error}\n")
    raise typer.Exit(code=2)


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UserError(
            f"--hidden must be comma-separated integers such as 64,64; got {text!r}"
        ) from error
    return sizes


# Options shared by fit, compare and suggest-beta: one help text each.
DataArgument = Annotated[
    Optional[str],  # noqa: UP045 (typer reads the annotation)
    typer.Argument(help="CSV, TSV or Parquet file, or a built-in data set name."),
]
TargetOption = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--target", "-t", help="Target column (repeat for several)."),
]
HiddenOption = Annotated[str, typer.Option(help="Hidden layer sizes, relu.")]
LearningRateOption = Annotated[float, typer.Option(help="Adam learning rate.")]
BatchSizeOption = Annotated[int, typer.Option(help="Batch size.")]
TestSplitOption = Annotated[float, typer.Option(help="Held-out test fraction.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the split and the weights.")]
DropMissingOption = Annotated[
    bool, typer.Option(help="Drop rows with missing values instead of refusing.")
]
MaxLevelsOption = Annotated[
    int, typer.Option(help="Most levels a categorical feature may have.")
]
OverwriteOption = Annotated[bool, typer.Option(help="Replace --out if it exists.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")]


@app.command()
def fit(
    data: DataArgument = None,
    target: TargetOption = None,
    loss: Annotated[
        str, typer.Option("--loss", "-l", help="Loss spec, e.g. smooth_l1, huber, mse.")
    ] = "smooth_l1",
    beta: Annotated[
        str,
        typer.Option(
            help="Smooth L1 threshold (standardized target units), or auto: the "
            "suggest-beta proposal."
        ),
    ] = "1.0",
    delta: Annotated[
        float, typer.Option(help="Huber threshold (standardized units).")
    ] = 1.0,
    hidden: HiddenOption = "64,64",
    learning_rate: LearningRateOption = 1e-3,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 50,
    batch_size: BatchSizeOption = 32,
    validation_split: Annotated[
        float, typer.Option(help="Fraction for validation.")
    ] = 0.2,
    test_split: TestSplitOption = 0.2,
    seed: SeedOption = 0,
    drop_missing: DropMissingOption = False,
    max_levels: MaxLevelsOption = 50,
    devices: Annotated[
        int,
        typer.Option(
            help="Data parallel over this many local devices (JAX or TensorFlow)."
        ),
    ] = 1,
    stream: Annotated[
        bool,
        typer.Option(
            help="Read the file in chunks, for tables larger than memory (rows "
            "split by a seeded hash of the row number)."
        ),
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--out", "-o", help="Run directory (default runs/<data>-<loss>-<time>)."
        ),
    ] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print metrics.json to stdout.")
    ] = False,
) -> None:
    """Train Dense 64 relu / Dense 64 relu / Dense 1 on a table and report errors.

    Features and target are standardized with training-split statistics, so --beta
    and --delta are in standard deviations of the target; errors are reported in the
    target's own units.
    """
    from smoothl1.cli.suggest import parse_beta
    from smoothl1.cli.train import FitOptions, fit_table

    try:
        options = FitOptions(
            data=data,
            targets=list(target or []),
            loss=loss,
            beta=parse_beta(beta),
            delta=delta,
            hidden=_hidden(hidden),
            learning_rate=learning_rate,
            epochs=epochs,
            batch_size=batch_size,
            validation_split=validation_split,
            test_split=test_split,
            seed=seed,
            drop_missing=drop_missing,
            max_levels=max_levels,
            out=None if out is None else str(out),
            overwrite=overwrite,
            verbose=not quiet,
            devices=devices,
            stream=stream,
        )
        result = fit_table(options)
    except UserError as error:
        fail(error)
        return
    if json_output:
        sys.stdout.write(json.dumps(result.metrics, indent=2) + "\n")
        return
    from smoothl1.cli.report import fit_table as summary

    if result.metrics["rows_dropped_missing"]:
        stdout.print(
            f"dropped {result.metrics['rows_dropped_missing']} rows with missing values"
        )
    stdout.print(summary(result.metrics))
    stdout.print(f"run directory: {result.run_dir}  ({result.seconds:.1f} s)")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by fit.")],
    data: Annotated[
        str, typer.Argument(help="CSV, TSV or Parquet file with new rows.")
    ],
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", "-o", help="CSV to write (default: stdout)."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Predict new rows with a saved run (writes CSV with one <target>_pred column
    per target)."""
    from smoothl1.cli.predict import predict_table

    try:
        frame = predict_table(run_dir, data)
        if out is None:
            sys.stdout.write(frame.to_csv(index=False))
            return
        if out.exists() and not overwrite:
            raise UserError(
                f"--out {str(out)!r} exists; pass --overwrite to replace it"
            )
        from smoothl1.cli.train import write_atomic

        write_atomic(out, frame.to_csv(index=False))
    except UserError as error:
        fail(error)
        return
    stderr.print(f"wrote {len(frame)} predictions to {out}")


@app.command()
def datasets(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the built-in real data sets (shipped inside installed packages)."""
    from smoothl1.cli.data import dataset_rows

    try:
        rows = dataset_rows()
    except UserError as error:
        fail(error)
        return
    if json_output:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Built-in data sets")
    for column in ("name", "rows", "columns", "target", "source", "citation"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                str(row[c])
                for c in ("name", "rows", "columns", "target", "source", "citation")
            )
        )
    stdout.print(table)


@app.command()
def compare(
    data: DataArgument = None,
    target: TargetOption = None,
    losses: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Comma-separated loss specs (default: mse, mae, huber, log_cosh, "
            "smooth_l1 at beta 0.1, 0.5, 1, 2)."
        ),
    ] = None,
    outliers: Annotated[
        str, typer.Option(help="Fractions of training labels corrupted.")
    ] = "0,0.1,0.2,0.3",
    seeds: Annotated[int, typer.Option(help="Number of seeds.")] = 5,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    hidden: HiddenOption = "64,64",
    learning_rate: LearningRateOption = 1e-3,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 50,
    batch_size: BatchSizeOption = 32,
    validation_split: Annotated[
        float, typer.Option(help="Fraction for validation.")
    ] = 0.2,
    test_split: TestSplitOption = 0.2,
    drop_missing: DropMissingOption = False,
    max_levels: MaxLevelsOption = 50,
    baselines: Annotated[
        bool, typer.Option(help="Add scikit-learn LinearRegression and HuberRegressor.")
    ] = True,
    strategy: Annotated[
        str,
        typer.Option(help="batched: one model per seed; loop: one fit per cell."),
    ] = "batched",
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", "-o", help="Run directory (default runs/compare-...)."),
    ] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Compare losses against fractions of corrupted training labels, over seeds,
    on clean test data; writes results.csv, results.json, report.md, compare.png."""
    from rich.progress import Progress

    from smoothl1.cli.compare import (
        DEFAULT_LOSSES,
        CompareOptions,
        compare_table,
        parse_fractions,
        parse_losses,
    )
    from smoothl1.cli.report import compare_table as table

    progress = Progress(console=stderr, disable=quiet, transient=True)
    try:
        with progress:
            task = progress.add_task("seeds", total=seeds)
            options = CompareOptions(
                data=data,
                targets=list(target or []),
                losses=(
                    parse_losses(losses) if losses is not None else list(DEFAULT_LOSSES)
                ),
                outliers=parse_fractions(outliers),
                seeds=seeds,
                seed=seed,
                hidden=_hidden(hidden),
                learning_rate=learning_rate,
                epochs=epochs,
                batch_size=batch_size,
                validation_split=validation_split,
                test_split=test_split,
                drop_missing=drop_missing,
                max_levels=max_levels,
                baselines=baselines,
                strategy=strategy,
                out=None if out is None else str(out),
                overwrite=overwrite,
                progress=lambda done, total: progress.update(task, completed=done),
            )
            result = compare_table(options)
    except UserError as error:
        fail(error)
        return
    title = f"{options.data or 'diabetes'}: clean test RMSE, mean ± 95 % interval"
    stdout.print(table(result.summary, title))
    stdout.print(f"run directory: {result.run_dir}  ({result.seconds:.1f} s)")


@app.command()
def plot(
    loss: Annotated[
        list[str],
        typer.Option("--loss", "-l", help="Loss spec to draw (repeat for several)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    low: Annotated[float, typer.Option("--min", help="Smallest residual.")] = -3.0,
    high: Annotated[float, typer.Option("--max", help="Largest residual.")] = 3.0,
    overwrite: OverwriteOption = False,
) -> None:
    """Draw penalties and their derivatives side by side, e.g.
    smoothl1 plot --loss smooth_l1:beta=0.5 --loss huber --out shapes.png"""
    from smoothl1.cli.plot import plot_penalties

    try:
        path = plot_penalties(list(loss), out, low, high, overwrite)
    except UserError as error:
        fail(error)
        return
    stdout.print(f"wrote {path}")


@app.command("losses")
def list_losses() -> None:
    """List the loss names that --loss and --losses accept, with their defaults."""
    from smoothl1.registry import known_losses

    table = Table(title="Losses (spec: name:param=value,...)")
    table.add_column("name")
    table.add_column("parameters (defaults)")
    for name, params in known_losses().items():
        table.add_row(name, ", ".join(f"{k}={v:g}" for k, v in params.items()) or "-")
    stdout.print(table)


from smoothl1.cli import suggest as _suggest  # noqa: E402,F401 (registers suggest-beta)
