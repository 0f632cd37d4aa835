"""3-D points from two views with outliers in the labels: Smooth L1 against L1 and L2.

A small network (three Dense layers of 64) reads a point's noisy pixel coordinates
in the two cameras of a real stereo rig, ``(u_left, v_left, u_right, v_right)``,
and regresses its 3-D position ``(X, Y, Z)`` in metres. A fraction of the training
labels is replaced by the position of another, random point of the scene, as a
wrong correspondence would give; test labels are exact. The same network, from the
same initial weights, is trained with

- Smooth L1 with beta = 0.02 m (about the error that the pixel noise alone causes),
- L1 (``mae``) and L2 (``mse``),

and is scored by the median and the 95th percentile of the 3-D error on held-out
points. Closed-form triangulation of the same noisy observations is the reference:
it needs no labels, so outliers cannot touch it, and a network should not be
expected to beat it; the recipe shows what each loss does to a 3-D regressor whose
labels contain gross errors.

The data: the Middlebury 2014 motorcycle scene bundled in the scikit-image wheel
(``motorcycle_disp.npz``, read from the installed package, never downloaded). Its
ground-truth disparities and the calibration printed in the docstring of
``skimage.data.stereo_motorcycle`` (focal length 994.978 px, principal point
(311.193, 254.877) px, principal-point offset 31.086 px, baseline 193.001 mm) give
the real 3-D points of the scene; they are projected into both cameras, and each
pixel coordinate gets Gaussian noise of 0.5 px. Training and held-out points come
from alternating 64-pixel-wide column stripes of the left view, so no held-out point
is a training point's neighbour within a stripe.

Writes into ``--out`` (never into an existing directory unless ``--overwrite``):
``results.csv`` and ``results.md`` (the table), ``per_seed.csv``, ``points3d.png``
(error distributions, and the median error against the outlier fraction) and
``settings.json``. The table goes to stdout, progress to stderr.

    pip install -e ".[jax,examples]"
    python examples/points3d.py --out runs/points3d
    python examples/points3d.py --tiny --out /tmp/points3d_smoke
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _recipe
import numpy as np

_recipe.choose_backend()

# Calibration of the bundled, 4x down-sampled motorcycle pair (skimage.data docs).
FOCAL = 994.978  # px
CENTER_X, CENTER_Y = 311.193, 254.877  # px, left camera
CENTER_OFFSET = 31.086  # px: right principal point minus left, along x
BASELINE = 0.193001  # m
STRIPE = 64  # px: width of the alternating train / held-out column stripes
# name shown in the table -> smoothl1.get spec
LOSSES = {
    "smooth_l1 beta=0.02": "smooth_l1:beta=0.02",
    "l1": "mae",
    "l2": "mse",
}
COLORS = {
    "triangulation": "black",
    "smooth_l1 beta=0.02": "tab:blue",
    "l1": "tab:orange",
    "l2": "tab:red",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    train_points: int = 20000
    test_points: int = 10000
    pixel_noise: float = 0.5  # px, standard deviation on each coordinate
    outlier_fractions: tuple[float, ...] = (0.0, 0.1, 0.3)
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3


TINY = Settings(train_points=2000, test_points=1000, epochs=2)


# ---------------------------------------------------------------- geometry


def scene_points() -> tuple[np.ndarray, np.ndarray]:
    """The scene's 3-D points (metres, left camera frame) and the column of the left
    view each comes from, from the bundled ground-truth disparities."""
    path = _recipe.skimage_data_file("motorcycle_disp.npz")
    with np.load(path) as archive:
        disparity = archive["arr_0"]
    rows, cols = np.nonzero(np.isfinite(disparity))
    depth = FOCAL * BASELINE / (disparity[rows, cols] + CENTER_OFFSET)
    points = np.stack(
        [
            (cols - CENTER_X) * depth / FOCAL,
            (rows - CENTER_Y) * depth / FOCAL,
            depth,
        ],
        axis=-1,
    )
    return points.astype("float64"), cols


def project(points: np.ndarray) -> np.ndarray:
    """``(u_left, v_left, u_right, v_right)`` of each point: the rig is rectified,
    the right camera sits BASELINE to the right, its principal point CENTER_OFFSET
    further along x."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    u_left = FOCAL * x / z + CENTER_X
    v = FOCAL * y / z + CENTER_Y
    u_right = FOCAL * (x - BASELINE) / z + CENTER_X + CENTER_OFFSET
    return np.stack([u_left, v, u_right, v], axis=-1)


def triangulate(observed: np.ndarray) -> np.ndarray:
    """Closed-form triangulation for the rectified pair: depth from the disparity,
    ``v`` averaged over the two views."""
    disparity = observed[:, 0] - observed[:, 2] + CENTER_OFFSET
    depth = FOCAL * BASELINE / disparity
    v = 0.5 * (observed[:, 1] + observed[:, 3])
    return np.stack(
        [
            (observed[:, 0] - CENTER_X) * depth / FOCAL,
            (v - CENTER_Y) * depth / FOCAL,
            depth,
        ],
        axis=-1,
    )


def split(
    points: np.ndarray, cols: np.ndarray, settings: Settings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training points (even stripes) and held-out points (odd)."""
    even = (cols // STRIPE) % 2 == 0
    train = rng.choice(np.flatnonzero(even), settings.train_points, replace=False)
    test = rng.choice(np.flatnonzero(~even), settings.test_points, replace=False)
    return train, test


def corrupt(
    labels: np.ndarray,
    points: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replaces ``fraction`` of the labels by random points of the scene."""
    labels = labels.copy()
    chosen = rng.random(len(labels)) < fraction
    labels[chosen] = points[rng.integers(0, len(points), int(chosen.sum()))]
    return labels


# ---------------------------------------------------------------- model


def build_model(seed: int) -> Any:
    import keras

    inputs = keras.Input((4,))
    x = inputs
    for layer in range(3):
        x = keras.layers.Dense(
            64,
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=100 * seed + layer),
        )(x)
    outputs = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.HeNormal(seed=100 * seed + 10)
    )(x)
    return keras.Model(inputs, outputs)


def train(
    label: str,
    spec: str,
    x: np.ndarray,
    y: np.ndarray,
    settings: Settings,
    seed: int,
) -> tuple[Any, float]:
    import keras

    import smoothl1

    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=smoothl1.get(spec),
    )
    order_rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(settings.epochs):
        order = order_rng.permutation(len(x))
        history = model.fit(
            x[order],
            y[order],
            batch_size=settings.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
    loss = history.history["loss"][0]
    _recipe.log(f"{label}: {settings.epochs} epochs, last loss {loss:.5f}")
    return model, time.perf_counter() - start


def errors_mm(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return 1000.0 * np.linalg.norm(estimate - truth, axis=-1)


# ---------------------------------------------------------------- outputs


def draw(
    path: Path,
    curves: dict[str, np.ndarray],
    rows: list[dict[str, Any]],
    fraction: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, errors in curves.items():
        ordered = np.sort(errors)
        share = np.arange(1, len(ordered) + 1) / len(ordered)
        style = "--" if name == "triangulation" else "-"
        left.plot(ordered, share, style, color=COLORS[name], label=name)
    left.set_xscale("log")
    left.set_xlabel("3-D error of a held-out point (mm)")
    left.set_ylabel("share of held-out points")
    left.set_title(f"{100 * fraction:.0f}% of training labels are outliers (seed 0)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for name in LOSSES:
        mine = [r for r in rows if r["loss"] == name]
        right.plot(
            [100 * r["outliers"] for r in mine],
            [r["median_mm"] for r in mine],
            "o-",
            color=COLORS[name],
            label=name,
        )
    reference = next(r for r in rows if r["loss"] == "triangulation")
    right.axhline(
        reference["median_mm"],
        color=COLORS["triangulation"],
        linestyle="--",
        label="triangulation",
    )
    right.set_yscale("log")
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(ScalarFormatter())
    right.set_xlabel("outliers among the training labels (%)")
    right.set_ylabel("median 3-D error (mm), mean over seeds")
    right.set_title("held-out points")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def run(directory: Path, settings: Settings, seeds: Sequence[int]) -> str:
    import keras

    points, cols = scene_points()
    _recipe.log(
        f"{len(points)} scene points; {settings.train_points} training and "
        f"{settings.test_points} held-out per seed; {len(seeds)} seed(s); backend "
        f"{keras.backend.backend()}"
    )
    per_seed: list[dict[str, Any]] = []
    curves: dict[str, np.ndarray] = {}
    worst = max(settings.outlier_fractions)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train_index, test_index = split(points, cols, settings, rng)
        observed = project(points) + rng.normal(
            0.0, settings.pixel_noise, (len(points), 4)
        )
        x_train, x_test = observed[train_index], observed[test_index]
        truth = points[test_index]
        mean, scale = x_train.mean(0), x_train.std(0)
        center = points[train_index].mean(0)

        reference = errors_mm(triangulate(x_test), truth)
        per_seed.append(entry("triangulation", "-", seed, None, reference, 0.0))
        if seed == seeds[0]:
            curves["triangulation"] = reference
        for fraction in settings.outlier_fractions:
            labels = corrupt(points[train_index], points, fraction, rng)
            for name, spec in LOSSES.items():
                label = f"seed {seed}, {100 * fraction:.0f}% outliers, {name}"
                model, seconds = train(
                    label,
                    spec,
                    ((x_train - mean) / scale).astype("float32"),
                    (labels - center).astype("float32"),
                    settings,
                    seed,
                )
                estimate = np.asarray(
                    model.predict(
                        ((x_test - mean) / scale).astype("float32"),
                        batch_size=4096,
                        verbose=0,
                    )
                )
                errors = errors_mm(estimate + center, truth)
                per_seed.append(entry(name, spec, seed, fraction, errors, seconds))
                if seed == seeds[0] and fraction == worst:
                    curves[name] = errors

    _recipe.write_csv(directory / "per_seed.csv", per_seed)
    rows = summarize(per_seed)
    table = _recipe.write_table(
        directory,
        rows,
        [
            ("loss", "loss", "{}"),
            ("spec", "spec", "`{}`"),
            ("label outliers", "outliers_text", "{}"),
            ("median mm", "median_mm", "{:.1f}"),
            ("± sd", "median_mm_sd", "{:.1f}"),
            ("95th pct mm", "p95_mm", "{:.1f}"),
            ("± sd", "p95_mm_sd", "{:.1f}"),
            ("train s", "train_seconds", "{:.1f}"),
        ],
        caption=(
            f"3-D error of {settings.test_points} held-out points of the Middlebury "
            f"motorcycle scene, pixel noise {settings.pixel_noise} px. Mean and "
            f"standard deviation over {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}); a seed draws the points, the noise, "
            "the outliers and the initial weights, the same for every loss. "
            f"Backend {keras.backend.backend()}."
        ),
    )
    draw(directory / "points3d.png", curves, rows, worst)
    _recipe.write_settings(
        directory, settings, seeds=list(seeds), stripe=STRIPE, losses=LOSSES
    )
    return table


def entry(
    name: str,
    spec: str,
    seed: int,
    fraction: float | None,
    errors: np.ndarray,
    seconds: float,
) -> dict[str, Any]:
    return {
        "loss": name,
        "spec": spec,
        "outliers": "" if fraction is None else fraction,
        "seed": seed,
        "median_mm": round(float(np.median(errors)), 2),
        "p95_mm": round(float(np.percentile(errors, 95)), 2),
        "train_seconds": round(seconds, 2),
    }


def summarize(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per loss and outlier fraction: mean and spread over seeds."""
    rows = []
    keys = list(dict.fromkeys((r["loss"], r["outliers"]) for r in per_seed))
    keys.sort(key=lambda key: (key[1] != "", key[1] or 0.0))
    for name, fraction in keys:
        mine = [r for r in per_seed if (r["loss"], r["outliers"]) == (name, fraction)]
        median, median_sd = _recipe.mean_and_spread([r["median_mm"] for r in mine])
        p95, p95_sd = _recipe.mean_and_spread([r["p95_mm"] for r in mine])
        rows.append(
            {
                "loss": name,
                "spec": mine[0]["spec"],
                "outliers": fraction,
                "outliers_text": "any (needs no labels)"
                if fraction == ""
                else f"{100 * fraction:.0f}%",
                "median_mm": round(median, 2),
                "median_mm_sd": round(median_sd, 2),
                "p95_mm": round(p95, 2),
                "p95_mm_sd": round(p95_sd, 2),
                "seeds": len(mine),
                "train_seconds": round(
                    float(np.mean([r["train_seconds"] for r in mine])), 1
                ),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    options = _recipe.parse_options(__doc__.split("\n\n")[0], "points3d", 3, argv)
    settings = TINY if options.tiny else Settings()
    return _recipe.run_recipe(
        options, lambda directory: run(directory, settings, options.seeds)
    )


if __name__ == "__main__":
    sys.exit(main())
