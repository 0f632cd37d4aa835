"""``smoothl1 plot``: penalties and their derivatives, side by side."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from smoothl1 import registry
from smoothl1.cli.data import UserError
from smoothl1.cli.train import make_loss, write_atomic
from smoothl1.losses import SelfAdjustingSmoothL1Loss


def penalty_curve(spec: str, residual: np.ndarray) -> np.ndarray:
    """The per-element penalty of ``spec`` at each residual (``y_true = 0``), read
    through the loss itself with no reduction, so Keras's own losses work too."""
    loss = make_loss(spec, n_targets=1)
    if isinstance(loss, SelfAdjustingSmoothL1Loss):
        raise UserError(
            f"--loss {spec!r}: the self-adjusting loss has no fixed shape to draw (its "
            "beta follows training); draw smooth_l1 at the betas it moves between"
        )
    per_sample = type(loss).from_config({**loss.get_config(), "reduction": "none"})
    d = residual.astype("float32")[:, None]
    values = per_sample(np.zeros_like(d), d)
    return np.asarray(keras.ops.convert_to_numpy(values), "float64").reshape(-1)


def plot_penalties(
    specs: list[str], out: Path, low: float, high: float, overwrite: bool
) -> Path:
    """Draws each penalty and its derivative (central differences on a fine grid)
    over ``[low, high]``; a kink shows as a jump in the derivative."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not specs:
        raise UserError("give at least one --loss, e.g. --loss smooth_l1:beta=0.5")
    if not low < high:
        raise UserError(f"--min must be below --max; got {low} and {high}")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png; got {str(out)!r}")
    if out.exists() and not overwrite:
        raise UserError(f"--out {str(out)!r} exists; pass --overwrite to replace it")

    residual = np.linspace(low, high, 2001)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for spec in specs:
        label = registry.spec_of(make_loss(spec))
        values = penalty_curve(spec, residual)
        left.plot(residual, values, label=label)
        right.plot(residual, np.gradient(values, residual), label=label)
    left.set_title("penalty rho(d)")
    right.set_title("derivative rho'(d)")
    for ax in (left, right):
        ax.set_xlabel("residual d = y_pred - y_true")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    write_atomic(out, tmp.read_bytes())
    tmp.unlink()
    return out
