"""Super-resolution (x2) on real photographs: Smooth L1 against Charbonnier, L1, L2.

A small sub-pixel CNN (ESPCN-style: three convolutions, then a pixel shuffle,
``keras.ops.depth_to_space``) learns the residual between a photograph and its
bicubic x2 enlargement, on the luminance channel. The same network, from the same
initial weights and on the same training patches, is trained with each loss:

- Smooth L1 with beta = 0.01 and beta = 0.1 (intensities are in [0, 1], so the
  thresholds are 2.55 and 25.5 grey levels: one below the typical residual, one
  above it),
- Charbonnier (LapSRN form, epsilon = 1e-3), L1 (``mae``) and L2 (``mse``),

and is scored by PSNR and SSIM (``skimage.metrics``) on whole photographs that
training never saw, with bicubic enlargement as the baseline.

The data: photographs bundled in the scikit-image wheel, read from the installed
package (never downloaded). Training patches come from astronaut, camera, rocket,
brick, grass, gravel, coins, page and moon; the held-out photographs are chelsea,
coffee and the left view of the motorcycle stereo pair. A low-resolution image is
the mean of each 2 x 2 block of the original (``downscale_local_mean``).

Writes into ``--out`` (never into an existing directory unless ``--overwrite``):
``results.csv`` and ``results.md`` (the table), ``per_seed.csv`` (every seed and
photograph), ``super_resolution.png`` (one crop: bicubic against each loss) and
``settings.json``. The table goes to stdout, progress to stderr.

    pip install -e ".[jax,examples]"
    python examples/super_resolution.py --out runs/super_resolution
    python examples/super_resolution.py --tiny --out /tmp/sr_smoke
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

SCALE = 2
TRAIN_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "rocket.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "page.png",
    "moon.png",
)
TEST_PHOTOS = ("chelsea.png", "coffee.png", "motorcycle_left.png")
# The crop of the picture: chelsea's left eye and the fur around it (rows, columns).
PICTURE_CROP = ("chelsea.png", slice(64, 160), slice(120, 216))
# name shown in the table -> smoothl1.get spec
LOSSES = {
    "smooth_l1 beta=0.01": "smooth_l1:beta=0.01",
    "smooth_l1 beta=0.1": "smooth_l1:beta=0.1",
    "charbonnier": "charbonnier:epsilon=0.001",
    "l1": "mae",
    "l2": "mse",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    patches: int = 4096  # training patches per seed
    patch_size: int = 16  # low-resolution side; the target is 32 x 32
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    filters: int = 32
    test_crop: int | None = None  # None: whole held-out photographs


TINY = Settings(patches=256, epochs=1, filters=16, test_crop=128)


# ---------------------------------------------------------------- data


def luminance(name: str) -> np.ndarray:
    """A bundled photograph's luminance in [0, 1], cut to even height and width."""
    from skimage.color import rgb2gray

    image = rgb2gray(_recipe.photograph(name)).astype("float32")
    height, width = image.shape
    return image[: height - height % SCALE, : width - width % SCALE]


def shrink(image: np.ndarray) -> np.ndarray:
    """The low-resolution image: the mean of each SCALE x SCALE block."""
    from skimage.transform import downscale_local_mean

    return downscale_local_mean(image, (SCALE, SCALE)).astype("float32")


def bicubic(small: np.ndarray) -> np.ndarray:
    """Bicubic enlargement by SCALE: the baseline, and the network's skip path."""
    from skimage.transform import resize

    shape = (small.shape[0] * SCALE, small.shape[1] * SCALE)
    return resize(small, shape, order=3, mode="reflect", anti_aliasing=False).astype(
        "float32"
    )


def training_patches(
    photos: Sequence[np.ndarray], settings: Settings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low, enlarged, high)``: random low-resolution patches, their bicubic
    enlargement and the original pixels, cut from the same places."""
    pairs = [(shrink(p), p) for p in photos]
    enlarged = [bicubic(small) for small, _ in pairs]
    size, big = settings.patch_size, settings.patch_size * SCALE
    low = np.empty((settings.patches, size, size, 1), "float32")
    up = np.empty((settings.patches, big, big, 1), "float32")
    high = np.empty_like(up)
    for i in range(settings.patches):
        k = int(rng.integers(len(pairs)))
        small, original = pairs[k]
        row = int(rng.integers(0, small.shape[0] - size + 1))
        col = int(rng.integers(0, small.shape[1] - size + 1))
        low[i, ..., 0] = small[row : row + size, col : col + size]
        rows = slice(row * SCALE, row * SCALE + big)
        cols = slice(col * SCALE, col * SCALE + big)
        up[i, ..., 0] = enlarged[k][rows, cols]
        high[i, ..., 0] = original[rows, cols]
    return low, up, high


def center_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return image
    top = (image.shape[0] - size) // 2 // SCALE * SCALE
    left = (image.shape[1] - size) // 2 // SCALE * SCALE
    return image[top : top + size, left : left + size]


# ---------------------------------------------------------------- model


def build_model(filters: int, seed: int) -> Any:
    """ESPCN-style: convolutions at low resolution, SCALE**2 output channels
    rearranged into a SCALE x larger image, added to the bicubic enlargement."""
    import keras
    from keras import ops

    class PixelShuffle(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return ops.depth_to_space(x, SCALE)

    def conv(units: int, size: int, offset: int, activation: str | None) -> Any:
        return keras.layers.Conv2D(
            units,
            size,
            padding="same",
            activation=activation,
            kernel_initializer=keras.initializers.HeNormal(seed=1000 * seed + offset),
        )

    low = keras.Input((None, None, 1), name="low")
    enlarged = keras.Input((None, None, 1), name="bicubic")
    x = conv(filters, 5, 1, "relu")(low)
    x = conv(filters, 3, 2, "relu")(x)
    # A zero last layer: training starts from the bicubic enlargement itself.
    x = keras.layers.Conv2D(SCALE**2, 3, padding="same", kernel_initializer="zeros")(x)
    output = keras.layers.Add()([enlarged, PixelShuffle()(x)])
    return keras.Model([low, enlarged], output)


def train(
    name: str,
    spec: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: Settings,
    seed: int,
) -> tuple[Any, float]:
    import keras

    import smoothl1

    low, up, high = data
    model = build_model(settings.filters, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=smoothl1.get(spec),
    )
    order_rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = order_rng.permutation(len(low))
        history = model.fit(
            [low[order], up[order]],
            high[order],
            batch_size=settings.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        loss = history.history["loss"][0]
        _recipe.log(
            f"seed {seed}, {name}: epoch {epoch + 1}/{settings.epochs}, loss {loss:.5f}"
        )
    return model, time.perf_counter() - start


def enlarge(model: Any, image: np.ndarray) -> np.ndarray:
    """The model's x2 enlargement of ``shrink(image)``, clipped to [0, 1]."""
    small = shrink(image)
    output = model.predict(
        [small[None, ..., None], bicubic(small)[None, ..., None]], verbose=0
    )
    return np.clip(np.asarray(output)[0, ..., 0], 0.0, 1.0)


def scores(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM, with a SCALE-pixel border left out, as is usual in
    super-resolution benchmarks (the border has no neighbours on one side)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    inner = (slice(SCALE, -SCALE), slice(SCALE, -SCALE))
    truth, estimate = truth[inner], np.clip(estimate, 0.0, 1.0)[inner]
    return (
        float(peak_signal_noise_ratio(truth, estimate, data_range=1.0)),
        float(structural_similarity(truth, estimate, data_range=1.0)),
    )


# ---------------------------------------------------------------- outputs


def draw(path: Path, panels: dict[str, np.ndarray], truth: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False
    )
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (title, image) in zip(axes.ravel(), panels.items(), strict=False):
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if title not in ("input (low resolution)", "original"):
            psnr = 10 * np.log10(1.0 / np.mean((np.clip(image, 0, 1) - truth) ** 2))
            title = f"{title}\n{psnr:.2f} dB on this crop"
        axis.set_title(title, fontsize=9)
    figure.suptitle("x2 super-resolution of a held-out photograph (seed 0)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def run(directory: Path, settings: Settings, seeds: Sequence[int]) -> str:
    import keras

    train_photos = [luminance(name) for name in TRAIN_PHOTOS]
    test_photos = {
        name: center_crop(luminance(name), settings.test_crop) for name in TEST_PHOTOS
    }
    _recipe.log(
        f"{len(train_photos)} training and {len(test_photos)} held-out photographs; "
        f"{len(seeds)} seed(s); backend {keras.backend.backend()}"
    )

    per_seed: list[dict[str, Any]] = []
    seconds: dict[str, list[float]] = {name: [] for name in ["bicubic", *LOSSES]}
    crop_name, crop_rows, crop_cols = PICTURE_CROP
    crop_image = luminance(crop_name)
    crop_truth = crop_image[crop_rows, crop_cols]
    panels = {
        "input (low resolution)": np.kron(
            shrink(crop_image)[
                crop_rows.start // SCALE : crop_rows.stop // SCALE,
                crop_cols.start // SCALE : crop_cols.stop // SCALE,
            ],
            np.ones((SCALE, SCALE), "float32"),
        ),
        "bicubic": bicubic(shrink(crop_image))[crop_rows, crop_cols],
    }
    for seed in seeds:
        for photo, image in test_photos.items():
            psnr, ssim = scores(image, bicubic(shrink(image)))
            per_seed.append(row("bicubic", "-", seed, photo, psnr, ssim))
        seconds["bicubic"].append(0.0)
        data = training_patches(train_photos, settings, np.random.default_rng(seed))
        for name, spec in LOSSES.items():
            model, elapsed = train(name, spec, data, settings, seed)
            seconds[name].append(elapsed)
            for photo, image in test_photos.items():
                psnr, ssim = scores(image, enlarge(model, image))
                per_seed.append(row(name, spec, seed, photo, psnr, ssim))
            if seed == seeds[0]:
                panels[name] = enlarge(model, crop_image)[crop_rows, crop_cols]
    panels["original"] = crop_truth

    _recipe.write_csv(directory / "per_seed.csv", per_seed)
    rows = summarize(per_seed, seconds)
    table = _recipe.write_table(
        directory,
        rows,
        [
            ("loss", "loss", "{}"),
            ("spec", "spec", "`{}`"),
            ("PSNR dB", "psnr", "{:.2f}"),
            ("± sd", "psnr_sd", "{:.2f}"),
            ("gain over bicubic dB", "psnr_gain", "{:+.2f}"),
            ("SSIM", "ssim", "{:.4f}"),
            ("± sd", "ssim_sd", "{:.4f}"),
            ("train s", "train_seconds", "{:.0f}"),
        ],
        caption=(
            f"x2, luminance, mean over {len(test_photos)} held-out photographs "
            f"({', '.join(Path(p).stem for p in test_photos)}"
            f"{'' if settings.test_crop is None else ', centre crops'}), "
            f"{SCALE}-pixel border left out. Mean and standard deviation over "
            f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); a seed draws the "
            "training patches and the initial weights, the same for every loss. "
            f"Backend {keras.backend.backend()}."
        ),
    )
    draw(directory / "super_resolution.png", panels, crop_truth)
    _recipe.write_settings(
        directory,
        settings,
        seeds=list(seeds),
        scale=SCALE,
        train_photos=TRAIN_PHOTOS,
        test_photos=TEST_PHOTOS,
        losses=LOSSES,
    )
    return table


def row(
    name: str, spec: str, seed: int, photo: str, psnr: float, ssim: float
) -> dict[str, Any]:
    return {
        "loss": name,
        "spec": spec,
        "seed": seed,
        "photo": Path(photo).stem,
        "psnr": round(psnr, 4),
        "ssim": round(ssim, 5),
    }


def summarize(
    per_seed: list[dict[str, Any]], seconds: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """One row per loss: the mean over photographs, then mean and spread over
    seeds."""
    rows = []
    baseline = None
    for name in seconds:
        entries = [r for r in per_seed if r["loss"] == name]
        seeds = sorted({r["seed"] for r in entries})
        psnr = [np.mean([r["psnr"] for r in entries if r["seed"] == s]) for s in seeds]
        ssim = [np.mean([r["ssim"] for r in entries if r["seed"] == s]) for s in seeds]
        psnr_mean, psnr_sd = _recipe.mean_and_spread(psnr)
        ssim_mean, ssim_sd = _recipe.mean_and_spread(ssim)
        if baseline is None:
            baseline = psnr_mean
        rows.append(
            {
                "loss": name,
                "spec": entries[0]["spec"],
                "psnr": round(psnr_mean, 3),
                "psnr_sd": round(psnr_sd, 3),
                "psnr_gain": round(psnr_mean - baseline, 3),
                "ssim": round(ssim_mean, 4),
                "ssim_sd": round(ssim_sd, 4),
                "seeds": len(seeds),
                "train_seconds": round(float(np.mean(seconds[name])), 1),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    options = _recipe.parse_options(
        __doc__.split("\n\n")[0], "super_resolution", 3, argv
    )
    settings = TINY if options.tiny else Settings()
    return _recipe.run_recipe(
        options, lambda directory: run(directory, settings, options.seeds)
    )


if __name__ == "__main__":
    sys.exit(main())
