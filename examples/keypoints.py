"""2-D keypoints with corrupted labels: Smooth L1 against Wing, Adaptive Wing and L2.

Each image shows a photographic print (a photograph with a white border) lying on
another photograph, turned, sheared and scaled by a random affine transform; the
keypoints are the print's four corners and its centre, known exactly because the
transform is. Two kinds of network find them:

- coordinate regression (convolutions, then two Dense layers giving 5 x 2
  pixel coordinates), trained with Smooth L1 (beta = 1 px), Wing (width 10,
  curvature 2, the Wing paper's values, here in pixels) or L2 (``mse``);
- heatmap regression (one 16 x 16 map per keypoint, a Gaussian of 1 cell = 4 px
  at the keypoint), trained with Adaptive Wing (the paper's values, and its
  weighted loss map: weight 10 on the dilated foreground) or, with the same
  weights, L2 (``general_robust:alpha=2``, that is ``d**2 / 2``). Adaptive Wing is
  a heatmap loss, so it is compared on its own kind of head.

A fraction of the training images have all their keypoint labels replaced by
random positions (gross annotation errors); held-out labels are exact. Networks of
one kind start from the same weights and see the same images in the same order.
The score is the normalized mean error (NME): the mean distance between predicted
and true keypoints over the square root of the area of the true keypoints' bounding
box, and the failure rate, the share of images with an NME above 10%.

The data: photographs bundled in the scikit-image wheel, read from the installed
package (never downloaded). Training prints show astronaut, camera, coffee, rocket,
brick or coins on grass, page, moon or immunohistochemistry; held-out prints show
chelsea or the motorcycle on gravel or retina.

Writes into ``--out`` (never into an existing directory unless ``--overwrite``):
``results.csv`` and ``results.md`` (the table), ``per_seed.csv``, ``keypoints.png``
(held-out images with the true and predicted keypoints) and ``settings.json``. The
table goes to stdout, progress to stderr. The default is one seed (about 4 minutes
on one quiet 2-core machine); ``--seeds 2`` adds the spread between seeds and
doubles the time.

    pip install -e ".[jax,examples]"
    python examples/keypoints.py --out runs/keypoints
    python examples/keypoints.py --seeds 2 --out runs/keypoints_2_seeds
    python examples/keypoints.py --tiny --out /tmp/keypoints_smoke
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _recipe
import numpy as np

_recipe.choose_backend()

SIZE = 64  # image side, px
CARD = 28  # side of the print before the transform, px
BORDER = 2  # white border of the print, px
KEYPOINTS = 5  # four corners, then the centre
HEATMAP_STRIDE = 4  # image px per heatmap cell
HEATMAP = SIZE // HEATMAP_STRIDE
SIGMA = 1.0  # heatmap cells
FOREGROUND_WEIGHT = 10.0  # Adaptive Wing's weighted loss map
TRAIN_PRINTS = (
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "rocket.jpg",
    "brick.png",
    "coins.png",
)
TRAIN_BACKGROUNDS = ("grass.png", "page.png", "moon.png", "ihc.png")
TEST_PRINTS = ("chelsea.png", "motorcycle_left.png")
TEST_BACKGROUNDS = ("gravel.png", "retina.jpg")
# name shown in the table -> (head, smoothl1.get spec or a loss built in `make_loss`)
MODELS = {
    "smooth_l1 beta=1": ("coordinates", "smooth_l1:beta=1"),
    "wing": ("coordinates", "wing:width=10,curvature=2"),
    "l2": ("coordinates", "mse"),
    "adaptive_wing": ("heatmaps", "adaptive_wing"),
    "l2 (heatmaps)": ("heatmaps", "general_robust:alpha=2"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    train_images: int = 2000
    test_images: int = 500
    corrupted_fractions: tuple[float, ...] = (0.0, 0.3)
    coordinate_epochs: int = 15
    heatmap_epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3


TINY = Settings(
    train_images=128,
    test_images=32,
    corrupted_fractions=(0.3,),
    coordinate_epochs=1,
    heatmap_epochs=1,
)


# ---------------------------------------------------------------- data


def grey(name: str, short_side: int | None = None) -> np.ndarray:
    """A bundled photograph's luminance in [0, 1], optionally shrunk so that its
    shorter side is ``short_side`` (backgrounds: cheap random crops later)."""
    from skimage.color import rgb2gray
    from skimage.transform import rescale, resize

    image = rgb2gray(_recipe.photograph(name)).astype("float32")
    if short_side is None:
        return resize(image, (CARD, CARD), anti_aliasing=True).astype("float32")
    factor = short_side / min(image.shape)
    return rescale(image, factor, anti_aliasing=True).astype("float32")


def card_corners() -> np.ndarray:
    """The keypoints on the untransformed print, in pixel-centre coordinates (x, y):
    its outer corners, then its centre."""
    low, high = -0.5, CARD - 0.5
    middle = 0.5 * (low + high)
    return np.array(
        [[low, low], [high, low], [high, high], [low, high], [middle, middle]]
    )


def random_affine(rng: np.random.Generator) -> np.ndarray:
    """A 3 x 3 transform from print to image coordinates that keeps the print at
    least 2 px inside the image: rotation within 30 degrees (so "top left" stays
    meaningful), scale 0.8 to 1.3, aspect within exp(0.2), shear within 0.2."""
    corners = card_corners()
    center = corners[-1]
    while True:
        angle = math.radians(rng.uniform(-30, 30))
        scale = rng.uniform(0.8, 1.3)
        aspect = math.exp(rng.uniform(-0.2, 0.2))
        shear = rng.uniform(-0.2, 0.2)
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        linear = rotation @ np.array(
            [[scale * aspect, shear * scale], [0.0, scale / aspect]]
        )
        placed = (corners - center) @ linear.T
        low, high = placed.min(0), placed.max(0)
        if (high - low).max() < SIZE - 5:
            break
    shift = np.array(
        [
            rng.uniform(2 - low[0], SIZE - 3 - high[0]),
            rng.uniform(2 - low[1], SIZE - 3 - high[1]),
        ]
    )
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = shift - linear @ center
    return matrix


def synthesize(
    count: int,
    prints: Sequence[np.ndarray],
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (count, SIZE, SIZE, 1) and their keypoints (count, 5, 2)."""
    from skimage.transform import AffineTransform, resize, warp

    images = np.empty((count, SIZE, SIZE, 1), "float32")
    keypoints = np.empty((count, KEYPOINTS, 2), "float32")
    ones = np.ones((CARD, CARD), "float32")
    for i in range(count):
        background = backgrounds[rng.integers(len(backgrounds))]
        side = int(rng.integers(SIZE, min(background.shape) + 1))
        top = int(rng.integers(0, background.shape[0] - side + 1))
        left = int(rng.integers(0, background.shape[1] - side + 1))
        crop = background[top : top + side, left : left + side]
        scene = resize(crop, (SIZE, SIZE), order=1, anti_aliasing=False)
        scene = scene * rng.uniform(0.3, 0.8)  # the table is darker than the print
        card = prints[rng.integers(len(prints))].copy()
        card[:BORDER] = card[-BORDER:] = 1.0
        card[:, :BORDER] = card[:, -BORDER:] = 1.0
        card = card * rng.uniform(0.8, 1.1)
        transform = AffineTransform(matrix=random_affine(rng))
        shape = (SIZE, SIZE)
        warped = warp(card, transform.inverse, output_shape=shape, order=1)
        cover = warp(ones, transform.inverse, output_shape=shape, order=1)
        images[i, ..., 0] = scene * (1 - cover) + warped * cover
        keypoints[i] = transform(card_corners())
    return images, keypoints


def corrupt(
    keypoints: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Replaces every keypoint of ``fraction`` of the images by a random position."""
    keypoints = keypoints.copy()
    chosen = rng.random(len(keypoints)) < fraction
    keypoints[chosen] = rng.uniform(0, SIZE - 1, (int(chosen.sum()), KEYPOINTS, 2))
    return keypoints


def heatmaps(keypoints: np.ndarray) -> np.ndarray:
    """(n, HEATMAP, HEATMAP, KEYPOINTS) Gaussians; cell j covers image pixels
    HEATMAP_STRIDE * j to HEATMAP_STRIDE * (j + 1) - 1."""
    cells = np.arange(HEATMAP, dtype="float32")
    centers = (keypoints - (HEATMAP_STRIDE - 1) / 2) / HEATMAP_STRIDE
    along_x = np.exp(-0.5 * ((cells - centers[..., 0:1]) / SIGMA) ** 2)
    along_y = np.exp(-0.5 * ((cells - centers[..., 1:2]) / SIGMA) ** 2)
    return np.einsum("nky,nkx->nyxk", along_y, along_x).astype("float32")


def loss_weights(maps: np.ndarray) -> np.ndarray:
    """Adaptive Wing's weighted loss map: FOREGROUND_WEIGHT where a 3 x 3 dilation
    of the target is at least 0.2, 1 elsewhere."""
    from scipy.ndimage import grey_dilation

    foreground = grey_dilation(maps, size=(1, 3, 3, 1)) >= 0.2
    return np.where(foreground, FOREGROUND_WEIGHT, 1.0).astype("float32")


def decode(maps: np.ndarray) -> np.ndarray:
    """Keypoints from heatmaps: the arg-max cell, refined by the centroid of the
    positive values in its 3 x 3 neighbourhood."""
    n, height, width, k = maps.shape
    flat = maps.transpose(0, 3, 1, 2).reshape(n, k, -1)
    peak = flat.argmax(-1)
    rows, cols = np.divmod(peak, width)
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1), (0, 0)))
    total = np.zeros((n, k))
    sum_x = np.zeros((n, k))
    sum_y = np.zeros((n, k))
    images = np.arange(n)[:, None]
    channels = np.arange(k)[None, :]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            value = padded[images, rows + 1 + dy, cols + 1 + dx, channels]
            value = np.clip(value, 0.0, None)
            total += value
            sum_x += value * (cols + dx)
            sum_y += value * (rows + dy)
    safe = np.where(total > 0, total, 1.0)
    x = np.where(total > 0, sum_x / safe, cols)
    y = np.where(total > 0, sum_y / safe, rows)
    offset = (HEATMAP_STRIDE - 1) / 2
    return np.stack([x, y], -1) * HEATMAP_STRIDE + offset


def normalized_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per image: mean keypoint distance / sqrt(area of the true bounding box)."""
    distance = np.linalg.norm(predicted - truth, axis=-1).mean(-1)
    extent = truth.max(1) - truth.min(1)
    return distance / np.sqrt(extent[:, 0] * extent[:, 1])


# ---------------------------------------------------------------- models


def conv(filters: int, strides: int, seed: int, dilation: int = 1) -> Any:
    import keras

    return keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        activation="relu",
        kernel_initializer=keras.initializers.HeNormal(seed=seed),
    )


def coordinate_model(seed: int) -> Any:
    import keras

    base = 100 * seed
    inputs = keras.Input((SIZE, SIZE, 1))
    x = conv(16, 2, base + 1)(inputs)
    x = conv(32, 2, base + 2)(x)
    x = conv(64, 2, base + 3)(x)
    x = conv(64, 2, base + 4)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(
        64,
        activation="relu",
        kernel_initializer=keras.initializers.HeNormal(seed=base + 5),
    )(x)
    # Zero last layer: every keypoint starts at the image centre.
    x = keras.layers.Dense(KEYPOINTS * 2, kernel_initializer="zeros")(x)
    return keras.Model(inputs, keras.layers.Reshape((KEYPOINTS, 2))(x))


def heatmap_model(seed: int) -> Any:
    import keras

    base = 100 * seed + 50
    inputs = keras.Input((SIZE, SIZE, 1))
    x = conv(16, 2, base + 1)(inputs)
    x = conv(32, 2, base + 2)(x)
    x = conv(32, 1, base + 3)(x)
    x = conv(32, 1, base + 4, dilation=2)(x)
    x = conv(32, 1, base + 5, dilation=4)(x)
    outputs = keras.layers.Conv2D(
        KEYPOINTS, 1, kernel_initializer=keras.initializers.HeNormal(seed=base + 6)
    )(x)
    return keras.Model(inputs, outputs)


def make_loss(head: str, spec: str) -> Any:
    import smoothl1

    loss = smoothl1.get(spec)
    if head == "heatmaps":
        # One value per heatmap cell, so that the weighted loss map applies.
        loss = type(loss).from_config({**loss.get_config(), "axis": None})
    return loss


def train(
    label: str,
    head: str,
    spec: str,
    images: np.ndarray,
    keypoints: np.ndarray,
    settings: Settings,
    seed: int,
) -> tuple[Any, float]:
    import keras

    if head == "coordinates":
        model = coordinate_model(seed)
        targets = keypoints - SIZE / 2
        weights = None
        epochs = settings.coordinate_epochs
    else:
        model = heatmap_model(seed)
        targets = heatmaps(keypoints)
        weights = loss_weights(targets)
        epochs = settings.heatmap_epochs
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=make_loss(head, spec),
    )
    x = normalize(images)
    order_rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        order = order_rng.permutation(len(x))
        history = model.fit(
            x[order],
            targets[order],
            sample_weight=None if weights is None else weights[order],
            batch_size=settings.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
    loss = history.history["loss"][0]
    _recipe.log(f"{label}: {epochs} epochs, last loss {loss:.4f}")
    return model, time.perf_counter() - start


def normalize(images: np.ndarray) -> np.ndarray:
    return (images - 0.5) / 0.25


def predict(model: Any, head: str, images: np.ndarray) -> np.ndarray:
    output = np.asarray(model.predict(normalize(images), batch_size=256, verbose=0))
    return output + SIZE / 2 if head == "coordinates" else decode(output)


# ---------------------------------------------------------------- outputs


def draw(
    path: Path,
    images: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    fraction: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:cyan"]
    markers = ["o", "s", "^", "D", "v"]
    shown = min(8, len(images))
    columns = 4
    rows = -(-shown // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.8 * columns, 2.8 * rows + 0.6), squeeze=False
    )
    for panel, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if panel >= shown:
            continue
        axis.imshow(images[panel, ..., 0], cmap="gray", vmin=0, vmax=1)
        axis.plot(*truth[panel].T, "+", color="lime", ms=12, mew=2, label="true")
        for color, marker, (name, points) in zip(
            colors, markers, predictions.items(), strict=False
        ):
            axis.plot(
                *points[panel].T,
                marker,
                color=color,
                ms=4,
                mfc="none",
                label=name,
                linestyle="none",
            )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    figure.suptitle(
        f"held-out images; trained with {100 * fraction:.0f}% corrupted labels (seed 0)"
    )
    figure.tight_layout(rect=(0, 0.07, 1, 0.95))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def run(directory: Path, settings: Settings, seeds: Sequence[int]) -> str:
    import keras

    train_prints = [grey(name) for name in TRAIN_PRINTS]
    test_prints = [grey(name) for name in TEST_PRINTS]
    train_scenes = [grey(name, 160) for name in TRAIN_BACKGROUNDS]
    test_scenes = [grey(name, 160) for name in TEST_BACKGROUNDS]
    _recipe.log(
        f"{settings.train_images} training and {settings.test_images} held-out "
        f"images per seed; {len(seeds)} seed(s); backend {keras.backend.backend()}"
    )
    per_seed: list[dict[str, Any]] = []
    worst = max(settings.corrupted_fractions)
    picture: dict[str, np.ndarray] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x_train, k_train = synthesize(
            settings.train_images, train_prints, train_scenes, rng
        )
        x_test, k_test = synthesize(settings.test_images, test_prints, test_scenes, rng)
        if seed == seeds[0]:
            picture_images, picture_truth = x_test, k_test
        for fraction in settings.corrupted_fractions:
            labels = corrupt(k_train, fraction, rng)
            for name, (head, spec) in MODELS.items():
                label = f"seed {seed}, {100 * fraction:.0f}% corrupted, {name}"
                model, seconds = train(
                    label, head, spec, x_train, labels, settings, seed
                )
                predicted = predict(model, head, x_test)
                errors = normalized_errors(predicted, k_test)
                per_seed.append(
                    {
                        "model": name,
                        "head": head,
                        "spec": spec,
                        "corrupted": fraction,
                        "seed": seed,
                        "nme": round(float(errors.mean()), 5),
                        "failure_rate": round(float((errors > 0.1).mean()), 4),
                        "train_seconds": round(seconds, 1),
                    }
                )
                if seed == seeds[0] and fraction == worst:
                    picture[name] = predicted

    _recipe.write_csv(directory / "per_seed.csv", per_seed)
    rows = summarize(per_seed)
    table = _recipe.write_table(
        directory,
        rows,
        [
            ("head", "head", "{}"),
            ("loss", "model", "{}"),
            ("spec", "spec", "`{}`"),
            ("corrupted labels", "corrupted_text", "{}"),
            ("NME %", "nme_percent", "{:.2f}"),
            ("± sd", "nme_percent_sd", "{:.2f}"),
            ("NME > 10 %", "failure_percent", "{:.1f}"),
            ("train s", "train_seconds", "{:.0f}"),
        ],
        caption=(
            f"{settings.test_images} held-out images per seed, 5 keypoints each; "
            "NME normalized by the square root of the true keypoints' bounding-box "
            f"area. Mean and standard deviation over {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}); a seed draws the images, the "
            "corruption and the initial weights, the same for every loss of a head. "
            f"Coordinate heads train {settings.coordinate_epochs} epochs, heatmap "
            f"heads {settings.heatmap_epochs}. Backend {keras.backend.backend()}."
        ),
    )
    draw(directory / "keypoints.png", picture_images, picture_truth, picture, worst)
    _recipe.write_settings(
        directory,
        settings,
        seeds=list(seeds),
        image_size=SIZE,
        heatmap_size=HEATMAP,
        models={name: list(value) for name, value in MODELS.items()},
    )
    return table


def summarize(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per corruption level and model: mean and spread over seeds."""
    rows = []
    fractions = sorted({r["corrupted"] for r in per_seed})
    for fraction in fractions:
        for name in MODELS:
            mine = [
                r for r in per_seed if (r["model"], r["corrupted"]) == (name, fraction)
            ]
            nme, nme_sd = _recipe.mean_and_spread([100 * r["nme"] for r in mine])
            failures, _ = _recipe.mean_and_spread(
                [100 * r["failure_rate"] for r in mine]
            )
            rows.append(
                {
                    "model": name,
                    "head": mine[0]["head"],
                    "spec": mine[0]["spec"],
                    "corrupted": fraction,
                    "corrupted_text": f"{100 * fraction:.0f}%",
                    "nme_percent": round(nme, 3),
                    "nme_percent_sd": round(nme_sd, 3),
                    "failure_percent": round(failures, 2),
                    "seeds": len(mine),
                    "train_seconds": round(
                        float(np.mean([r["train_seconds"] for r in mine])), 1
                    ),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    options = _recipe.parse_options(__doc__.split("\n\n")[0], "keypoints", 1, argv)
    settings = TINY if options.tiny else Settings()
    return _recipe.run_recipe(
        options, lambda directory: run(directory, settings, options.seeds)
    )


if __name__ == "__main__":
    sys.exit(main())
