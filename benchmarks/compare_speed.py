"""The batched grid of ``smoothl1 compare`` against looping separate ``fit`` calls.

Runs the default grid (8 losses x 4 outlier fractions x 5 seeds, 50 epochs) on
``diabetes`` twice in this process, once per strategy, and prints both wall times,
their ratio, and the largest difference between the two strategies' results:

    python benchmarks/compare_speed.py [--seeds 5] [--epochs 50]

Keras picks its backend once per process; set KERAS_BACKEND to choose (default jax).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from smoothl1.cli.compare import CompareOptions, compare_table  # noqa: E402


def run(
    strategy: str, seeds: int, epochs: int, folder: str
) -> tuple[float, pd.DataFrame]:
    options = CompareOptions(
        seeds=seeds,
        epochs=epochs,
        strategy=strategy,
        baselines=False,
        out=os.path.join(folder, strategy),
    )
    start = time.perf_counter()
    result = compare_table(options)
    return time.perf_counter() - start, pd.DataFrame(result.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        batched_time, batched = run("batched", args.seeds, args.epochs, folder)
        loop_time, loop = run("loop", args.seeds, args.epochs, folder)
    keys = ["seed", "loss", "outliers"]
    merged = batched.merge(loop, on=keys, suffixes=("_batched", "_loop"))
    columns = ["test_rmse", "test_mae", "grad_norm_mean", "grad_norm_max"]
    worst = {
        c: float(
            np.max(
                np.abs(merged[f"{c}_batched"] - merged[f"{c}_loop"])
                / np.abs(merged[f"{c}_loop"])
            )
        )
        for c in columns
    }
    same_epoch = float(
        (merged["best_epoch_batched"] == merged["best_epoch_loop"]).mean()
    )
    print(
        f"backend {keras.backend.backend()}, diabetes, {len(merged)} grid cells "
        f"({args.seeds} seeds, {args.epochs} epochs)"
    )
    print(f"batched: {batched_time:.1f} s   loop of separate fits: {loop_time:.1f} s")
    print(f"speed-up: {loop_time / batched_time:.1f}x")
    print(
        "largest relative difference between strategies: "
        + ", ".join(f"{c} {v:.1e}" for c, v in worst.items())
        + f"; same best epoch in {same_epoch:.0%} of cells"
    )


if __name__ == "__main__":
    main()
