"""Reports for people: tables, Markdown and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.table import Table  # noqa: E402

SPLITS = ("train", "validation", "test")
COLUMNS = [
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("median_ae", "median |d|"),
    ("r2", "R^2"),
    ("fraction_beyond_beta", "|d| >= beta"),
]


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fit_table(metrics: dict[str, Any]) -> Table:
    """The summary table of ``smoothl1 fit`` (errors in the target's units)."""
    table = Table(title=f"{metrics['data']}: {metrics['loss']}, target units")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    for split in SPLITS:
        if split in metrics:
            row = metrics[split]
            table.add_row(
                split, str(row["rows"]), *(_format(row.get(key)) for key, _ in COLUMNS)
            )
    return table


def fit_markdown(metrics: dict[str, Any], options: Any) -> str:
    lines = [
        f"# smoothl1 fit: {metrics['data']}",
        "",
        f"- target: {', '.join(metrics['targets'])}",
        f"- loss: `{metrics['loss']}` (beta in target units: "
        f"{metrics['beta_in_target_units']})",
        f"- model: Dense {' / Dense '.join(map(str, options.hidden))} (relu) / "
        f"Dense {len(metrics['targets'])}, Adam lr {options.learning_rate:g}, "
        f"{options.epochs} epochs, batch {options.batch_size}",
        f"- splits: validation {options.validation_split:g}, test "
        f"{options.test_split:g}, seed {options.seed}; backend {metrics['backend']}",
        f"- rows dropped for missing values: {metrics['rows_dropped_missing']}",
        "",
        "| split | rows | " + " | ".join(label for _, label in COLUMNS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for split in SPLITS:
        if split in metrics:
            row = metrics[split]
            cells = " | ".join(_format(row.get(key)) for key, _ in COLUMNS)
            lines.append(f"| {split} | {row['rows']} | {cells} |")
    lines += [
        "",
        "Errors are in the target's own units. `|d| >= beta` is the fraction of "
        "residuals in the linear (L1) region of the loss.",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    if "test" in metrics or "validation" in metrics:
        lines += ["![residuals](residuals.png)", ""]
    return "\n".join(lines)


def learning_curves(history: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in history.columns:
        if column == "epoch":
            continue
        ax.plot(history["epoch"], history[column], label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (standardized target)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def residual_plots(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    beta_units: np.ndarray | None,
    targets: list[str],
    split: str,
    path: Path,
) -> None:
    """Predicted against true, and the residual histogram with the +-beta band, for
    the first target."""
    t, p = y_true[:, 0], y_pred[:, 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(t, p, s=8, alpha=0.6)
    low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    left.plot([low, high], [low, high], color="black", linewidth=1)
    left.set_xlabel(f"true {targets[0]}")
    left.set_ylabel(f"predicted {targets[0]}")
    left.set_title(f"{split} split")
    right.hist(p - t, bins=40, color="tab:blue", alpha=0.8)
    if beta_units is not None:
        band = float(np.ravel(beta_units)[0])
        right.axvspan(
            -band,
            band,
            color="tab:orange",
            alpha=0.25,
            zorder=0,
            label=f"|d| < beta ({band:.3g})",
        )
        right.legend()
    right.set_xlabel("residual d = predicted - true")
    right.set_ylabel("rows")
    right.set_title("Residuals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- compare


def _interval(mean: float, half: float) -> str:
    return f"{mean:.4g}" if not np.isfinite(half) else f"{mean:.4g}±{half:.2g}"


def compare_table(summary: pd.DataFrame, title: str) -> Table:
    """Clean-test RMSE (mean ± 95 % t-interval over seeds) per loss and outlier
    fraction."""
    fractions = sorted(summary["outliers"].unique())
    table = Table(title=title, caption="columns: fraction of training labels corrupted")
    table.add_column("loss", overflow="fold")
    for fraction in fractions:
        table.add_column(f"{fraction:g}", justify="right", overflow="fold")
    table.add_column("best ep.", justify="right")
    table.add_column("|grad| mean/max", justify="right")
    for loss, cell in summary.groupby("loss", sort=False):
        by_fraction = cell.set_index("outliers")
        grads = cell["grad_norm_mean"].dropna()
        table.add_row(
            str(loss),
            *(
                _interval(
                    by_fraction.loc[f, "test_rmse"],
                    by_fraction.loc[f, "test_rmse_ci95"],
                )
                for f in fractions
            ),
            _format(cell["best_epoch"].dropna().mean()) if len(grads) else "-",
            (
                f"{grads.mean():.3g}/{cell['grad_norm_max'].max():.3g}"
                if len(grads)
                else "-"
            ),
        )
    return table


def compare_markdown(
    summary: pd.DataFrame, payload: dict[str, Any], options: Any
) -> str:
    fractions = sorted(summary["outliers"].unique())
    header = "| loss | " + " | ".join(f"RMSE @ {f:g}" for f in fractions)
    header += " | " + " | ".join(f"MAE @ {f:g}" for f in fractions)
    header += " | best epoch | grad norm mean | grad norm max |"
    lines = [
        f"# smoothl1 compare: {payload['data']}",
        "",
        f"- target: {', '.join(payload['targets'])}; backend {payload['backend']}",
        f"- {options.seeds} seeds from {options.seed}; {options.epochs} epochs, batch "
        f"{options.batch_size}, Adam lr {options.learning_rate:g}, hidden "
        f"{options.hidden}",
        "- outliers: the fraction of training labels replaced by "
        "y + s * U(5, 10) * std(y) (random sign s); validation and test are clean",
        "- errors: clean test split, target units, mean ± 95 % t-interval over seeds",
        "- best epoch: epoch of the lowest validation loss (mean over seeds); gradient "
        "norm: full-batch training gradient at the end of each epoch",
        "",
        header,
        "| --- " * (2 * len(fractions) + 4) + "|",
    ]
    for loss, cell in summary.groupby("loss", sort=False):
        by_fraction = cell.set_index("outliers")
        cells = [
            _interval(by_fraction.loc[f, key], by_fraction.loc[f, f"{key}_ci95"])
            for key in ("test_rmse", "test_mae")
            for f in fractions
        ]
        extra = [
            _format(cell[c].dropna().mean()) if cell[c].notna().any() else "-"
            for c in ("best_epoch", "grad_norm_mean")
        ]
        extra.append(
            _format(float(cell["grad_norm_max"].max()))
            if cell["grad_norm_max"].notna().any()
            else "-"
        )
        lines.append(f"| `{loss}` | " + " | ".join(cells + extra) + " |")
    lines += ["", "![compare](compare.png)", ""]
    return "\n".join(lines)


def compare_plot(summary: pd.DataFrame, data_name: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss, cell in summary.groupby("loss", sort=False):
        cell = cell.sort_values("outliers")
        x = cell["outliers"].to_numpy(float)
        y = cell["test_rmse"].to_numpy(float)
        half = np.nan_to_num(cell["test_rmse_ci95"].to_numpy(float))
        style = "--" if str(loss).startswith("sklearn") else "-"
        (line,) = ax.plot(x, y, style, marker="o", label=str(loss))
        ax.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("fraction of training labels corrupted")
    ax.set_ylabel("clean test RMSE (target units)")
    ax.set_title(f"{data_name}: test error against outliers (95 % t-intervals)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
