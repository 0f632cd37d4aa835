"""Box regression on real photographs: Smooth L1 (beta 1/9 and 1) against L1 and L2.

A detector's box head, trained as detectors train it: anchors on an 8 x 8 grid,
targets encoded against the anchors (weights 10, 10, 5, 5), the loss on positive
anchors only, normalized by their number (``smoothl1.detection``). Four losses
train the same network from the same initial weights:

- Smooth L1 with beta = 1/9 (Faster R-CNN's box head) and with beta = 1,
- L1 (``mae``) and L2 (``mse``), each applied per coordinate,

and are compared by the IoU of the decoded boxes with the true ones, on images
built from photographs that training never saw.

The data: photographs bundled with scikit-image (``skimage.data``, read from the
installed package, no download). Each image is a random crop of a background
photograph with one or two objects pasted at known positions; an object is the
silhouette of ``skimage.data.horse()``, scaled, stretched and flipped at random,
filled with a crop of another photograph. Training uses the backgrounds rocket,
coffee, brick, camera, astronaut, page and grass, and textures from chelsea and
immunohistochemistry; held-out images use the backgrounds motorcycle, moon and
gravel, and textures from retina and coins. The true box is the tight box of the
pasted silhouette.

With ``--coco FILE --images DIR`` it runs on your own images and COCO-style
annotations instead (class-agnostic; images are resized to the network's input).

Writes into ``--out`` (never into an existing directory unless ``--overwrite``):
``results.csv`` and ``results.md`` (the table), ``boxes.png`` (true against
predicted boxes on held-out images) and ``settings.json``. The table goes to
stdout, progress to stderr.

    pip install -e ".[jax,examples]"
    python examples/box_regression.py --out runs/box_regression
    python examples/box_regression.py --tiny --out /tmp/box_smoke   # about 30 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _recipe
import keras
import numpy as np
from keras import ops

from smoothl1.detection import (
    BoxRegressionLoss,
    anchor_targets,
    box_iou,
    decode_boxes,
    load_coco,
)

IMAGE_SIZE = 64
STRIDE = 8
ANCHOR_SIZES = (16.0, 32.0)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # height / width
# Photographs of skimage.data: training images are built from the first group only,
# held-out images from the second; within a group, any photograph can be the
# background or the texture of an object (never both in one image).
TRAIN_PHOTOS = (
    "rocket",
    "coffee",
    "brick",
    "camera",
    "astronaut",
    "page",
    "grass",
    "chelsea",
    "immunohistochemistry",
)
TEST_PHOTOS = ("motorcycle", "moon", "gravel", "retina", "coins")
# name shown in the table -> BoxRegressionLoss arguments
LOSSES: dict[str, dict[str, Any]] = {
    "smooth_l1 beta=1/9": {"beta": 1.0 / 9.0},
    "smooth_l1 beta=1": {"beta": 1.0},
    "l1": {"loss": "mae"},
    "l2": {"loss": "mse"},
}
# how each is written, for the table
CALLS = {
    "smooth_l1 beta=1/9": "BoxRegressionLoss(beta=1/9)",
    "smooth_l1 beta=1": "BoxRegressionLoss(beta=1.0)",
    "l1": 'BoxRegressionLoss(loss="mae")',
    "l2": 'BoxRegressionLoss(loss="mse")',
}


@dataclasses.dataclass(frozen=True)
class Settings:
    train_images: int = 6000
    test_images: int = 500
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3  # Adam, with a cosine decay to 0
    seed: int = 0


TINY = Settings(train_images=192, test_images=64, epochs=2)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def photograph(name: str) -> np.ndarray:
    """A photograph of ``skimage.data`` as float32 RGB in [0, 1]."""
    from skimage import data

    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype("float32") / 255.0


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) + 0.5) * image.shape[0] / height
    cols = (np.arange(width) + 0.5) * image.shape[1] / width
    return image[rows.astype(int)][:, cols.astype(int)]


def random_crop(
    rng: np.random.Generator, image: np.ndarray, height: int, width: int
) -> np.ndarray:
    """A crop of random position and scale, resized to ``height x width``."""
    limit = min(image.shape[0] / height, image.shape[1] / width)
    scale = rng.uniform(1.0, max(limit, 1.0))
    h = min(image.shape[0], max(1, round(height * scale)))
    w = min(image.shape[1], max(1, round(width * scale)))
    top = rng.integers(0, image.shape[0] - h + 1)
    left = rng.integers(0, image.shape[1] - w + 1)
    return resize_nearest(image[top : top + h, left : left + w], height, width)


def horse_mask() -> np.ndarray:
    from skimage import data

    mask = ~np.asarray(data.horse(), dtype=bool)  # the horse is black on white
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def recolor(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random channel order, gain, and sometimes grey or inverted: objects must be
    found by their outline, not by the colors of a few photographs."""
    image = image[..., rng.permutation(3)] * rng.uniform(0.6, 1.4)
    if rng.random() < 0.3:
        image = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    if rng.random() < 0.2:
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0)


def synthesize(
    count: int, photos: Sequence[str], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``count`` images of IMAGE_SIZE with 1 or 2 pasted objects each, and their
    true boxes (xyxy, pixels). Images are uint8 RGB."""
    pictures = [photograph(n) for n in photos]
    mask = horse_mask()
    size = IMAGE_SIZE
    images = np.empty((count, size, size, 3), "uint8")
    all_boxes = []
    for i in range(count):
        background = int(rng.integers(len(pictures)))
        image = recolor(rng, random_crop(rng, pictures[background], size, size))
        boxes: list[np.ndarray] = []
        for _ in range(int(rng.integers(1, 3))):
            for _attempt in range(20):
                width = rng.uniform(12, 44)
                height = float(
                    np.clip(width * math.exp(rng.uniform(-0.5, 0.5)), 10, 48)
                )
                w, h = round(width), round(height)
                left = int(rng.integers(0, size - w + 1))
                top = int(rng.integers(0, size - h + 1))
                shape = resize_nearest(mask, h, w)
                if rng.random() < 0.5:
                    shape = shape[:, ::-1]
                rows = np.flatnonzero(shape.any(1))
                cols = np.flatnonzero(shape.any(0))
                box = np.array(
                    [
                        left + cols[0],
                        top + rows[0],
                        left + cols[-1] + 1,
                        top + rows[-1] + 1,
                    ],
                    "float32",
                )
                if all(iou_xyxy(box, other) < 0.2 for other in boxes):
                    break
            source = (background + 1 + int(rng.integers(len(pictures) - 1))) % len(
                pictures
            )  # any photograph but the background's
            texture = recolor(rng, random_crop(rng, pictures[source], h, w))
            patch = image[top : top + h, left : left + w]
            patch[shape] = texture[shape]
            boxes.append(box)
        images[i] = np.round(image * 255.0)
        all_boxes.append(np.stack(boxes))
    return images, all_boxes


def from_coco(
    annotations: Path, image_dir: Path, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]:
    """Your images, resized to IMAGE_SIZE, split 80 / 20 into train and test."""
    from PIL import Image

    coco = load_coco(annotations)
    if len(coco.images) < 2:
        raise ValueError(
            f"{annotations}: need at least 2 images, found {len(coco.images)}"
        )
    size = IMAGE_SIZE
    images = np.empty((len(coco.images), size, size, 3), "uint8")
    boxes = []
    for i, item in enumerate(coco.images):
        path = image_dir / item.file_name
        if not path.is_file():
            raise ValueError(
                f"{annotations}: image {item.file_name!r} is not in {image_dir}"
            )
        with Image.open(path) as file:
            rgb = file.convert("RGB").resize((size, size), Image.BILINEAR)
        images[i] = np.asarray(rgb, "uint8")
        scale = np.array([size / item.width, size / item.height] * 2, "float32")
        boxes.append(item.boxes * scale)
    order = rng.permutation(len(images))
    cut = max(1, round(0.8 * len(images)))
    cut = min(cut, len(images) - 1)
    train, test = order[:cut], order[cut:]
    return (
        (images[train], [boxes[i] for i in train]),
        (images[test], [boxes[i] for i in test]),
    )


def grid_anchors() -> np.ndarray:
    """(cells * len(sizes) * len(ratios), 4) anchors in xyxy, in the order of the
    network's output: row, column, then anchor shape."""
    cells = IMAGE_SIZE // STRIDE
    shapes = [
        (s / math.sqrt(r), s * math.sqrt(r))
        for s in ANCHOR_SIZES
        for r in ANCHOR_RATIOS
    ]
    anchors = []
    for row in range(cells):
        for col in range(cells):
            cx, cy = (col + 0.5) * STRIDE, (row + 0.5) * STRIDE
            for w, h in shapes:
                anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.asarray(anchors, "float32")


def targets_for(boxes: list[np.ndarray], anchors: np.ndarray) -> np.ndarray:
    return np.stack([anchor_targets(b, anchors) for b in boxes])


# ---------------------------------------------------------------- model


def build_model(anchors_per_cell: int, seed: int) -> keras.Model:
    """Five 3 x 3 convolutions (three of stride 2, down to the 8 x 8 anchor grid)
    and a 1 x 1 head with 4 deltas per anchor. The same ``seed`` gives the same
    initial weights, so every loss starts from the same network."""

    def conv(filters: int, strides: int, layer: int) -> Any:
        return keras.layers.Conv2D(
            filters,
            3,
            strides=strides,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=100 * seed + layer),
        )

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = conv(32, 2, 1)(inputs)
    x = conv(48, 2, 2)(x)
    x = conv(64, 2, 3)(x)
    x = conv(64, 1, 4)(x)
    x = conv(64, 1, 5)(x)
    # A zero head: training starts from the anchors themselves.
    deltas = keras.layers.Conv2D(anchors_per_cell * 4, 1, kernel_initializer="zeros")(x)
    outputs = keras.layers.Reshape((-1, 4))(deltas)
    return keras.Model(inputs, outputs)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB to float32 with mean 0 and spread about 1."""
    return (images.astype("float32") / 255.0 - 0.5) / 0.25


class Batches(keras.utils.PyDataset):
    """Batches of uint8 images, normalized on the fly, in an order reshuffled by a
    seeded generator after every epoch (the same order for every loss)."""

    def __init__(
        self, images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int
    ) -> None:
        super().__init__()
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return normalize(self.images[rows]), self.targets[rows]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))


def train(
    name: str,
    loss_arguments: dict[str, Any],
    images: np.ndarray,
    targets: np.ndarray,
    settings: Settings,
) -> tuple[keras.Model, float]:
    batches = Batches(images, targets, settings.batch_size, settings.seed)
    model = build_model(len(ANCHOR_SIZES) * len(ANCHOR_RATIOS), settings.seed)
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.learning_rate, settings.epochs * len(batches)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=BoxRegressionLoss(**loss_arguments),
    )
    progress = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log(
            f"{name}: epoch {epoch + 1}/{settings.epochs}, loss {logs['loss']:.4f}"
        )
    )
    start = time.perf_counter()
    model.fit(batches, epochs=settings.epochs, verbose=0, callbacks=[progress])
    return model, time.perf_counter() - start


def decoded_ious(deltas: np.ndarray, y: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of each positive anchor's decoded box with its true box."""
    positive = y[..., 4] == 1.0
    matched_anchors = anchors[np.nonzero(positive)[1]]
    true_boxes = decode_boxes(y[..., :4][positive], matched_anchors)
    predicted = decode_boxes(deltas[positive], matched_anchors)
    return np.asarray(ops.convert_to_numpy(box_iou(predicted, true_boxes)))


# ---------------------------------------------------------------- outputs


def summary_row(name: str, spec: str, ious: np.ndarray, seconds: float) -> dict:
    return {
        "loss": name,
        "spec": spec,
        "mean_iou": round(float(ious.mean()), 4),
        "iou_at_least_0.75": round(float((ious >= 0.75).mean()), 4),
        "positive_anchors": int(ious.size),
        "train_seconds": round(seconds, 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| loss | written as | mean IoU | IoU >= 0.75 | positive anchors | train s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | `{r['spec']}` | {r['mean_iou']:.3f} | "
            f"{100 * r['iou_at_least_0.75']:.1f}% | {r['positive_anchors']} | "
            f"{r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def draw(
    path: Path,
    images: np.ndarray,
    boxes: list[np.ndarray],
    anchors: np.ndarray,
    predictions: dict[str, np.ndarray],
) -> None:
    """True boxes against each loss's box from the object's best anchor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:orange", "tab:blue", "tab:purple"]
    shown = min(8, len(images))
    columns = 4
    figure_rows = math.ceil(shown / columns)
    figure, axes = plt.subplots(
        figure_rows, columns, figsize=(3 * columns, 3 * figure_rows), squeeze=False
    )
    for panel, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if panel >= shown:
            continue
        axis.imshow(images[panel], extent=(0, IMAGE_SIZE, IMAGE_SIZE, 0))
        for truth in boxes[panel]:
            best = int(np.argmax(ops.convert_to_numpy(box_iou(anchors, truth))))
            outline(axis, truth, "lime", "true", 2.5)
            for color, (name, deltas) in zip(colors, predictions.items(), strict=True):
                box = ops.convert_to_numpy(
                    decode_boxes(deltas[panel, best], anchors[best])
                )
                outline(axis, box, color, name, 1.2)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    figure.legend(unique.values(), unique.keys(), loc="lower center", ncol=5)
    figure.suptitle("held-out images: true box (green) and each loss's prediction")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def outline(axis: Any, box: Any, color: str, label: str, width: float) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    axis.add_patch(
        Rectangle(
            (x1, y1),
            x2 - x1,
            y2 - y1,
            fill=False,
            edgecolor=color,
            linewidth=width,
            label=label,
        )
    )


# ---------------------------------------------------------------- main


def run(
    out: Path, settings: Settings, coco: Path | None, image_dir: Path | None
) -> list[dict]:
    rng = np.random.default_rng(settings.seed)
    if coco is not None:
        (x_train, b_train), (x_test, b_test) = from_coco(
            coco, image_dir or coco.parent, rng
        )
        source = f"COCO file {coco}"
    else:
        log("building images from scikit-image photographs ...")
        x_train, b_train = synthesize(settings.train_images, TRAIN_PHOTOS, rng)
        x_test, b_test = synthesize(settings.test_images, TEST_PHOTOS, rng)
        source = "skimage.data photographs"
    anchors = grid_anchors()
    y_train = targets_for(b_train, anchors)
    y_test = targets_for(b_test, anchors)
    log(
        f"{len(x_train)} training and {len(x_test)} held-out images, "
        f"{len(anchors)} anchors; {int((y_train[..., 4] == 1).sum())} positive "
        f"training anchors; backend {keras.backend.backend()}"
    )

    rows = [
        summary_row(
            "anchors only",
            "-",
            decoded_ious(np.zeros_like(y_test[..., :4]), y_test, anchors),
            0.0,
        )
    ]
    predictions = {}
    for name, arguments in LOSSES.items():
        model, seconds = train(name, arguments, x_train, y_train, settings)
        deltas = np.asarray(model.predict(normalize(x_test), batch_size=256, verbose=0))
        predictions[name] = deltas
        ious = decoded_ious(deltas, y_test, anchors)
        rows.append(summary_row(name, CALLS[name], ious, seconds))

    _recipe.write_csv(out / "results.csv", rows)
    table = markdown(rows)
    (out / "results.md").write_text(table)
    (out / "settings.json").write_text(
        json.dumps(
            {
                **dataclasses.asdict(settings),
                "source": source,
                "backend": keras.backend.backend(),
                "image_size": IMAGE_SIZE,
                "anchors": len(anchors),
                "anchor_sizes": ANCHOR_SIZES,
                "anchor_ratios": ANCHOR_RATIOS,
            },
            indent=2,
        )
        + "\n"
    )
    draw(out / "boxes.png", x_test, b_test, anchors, predictions)
    print(table, end="")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/box_regression"),
        help="output directory (default: runs/box_regression)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a smoke-test setting (about 30 s)"
    )
    parser.add_argument("--coco", type=Path, help="COCO-style JSON annotations")
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of the COCO images (default: the JSON's folder)",
    )
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    settings = TINY if args.tiny else Settings()
    settings = dataclasses.replace(settings, seed=args.seed)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.out.exists() and not args.overwrite:
        print(
            f"error: {args.out} exists; choose another --out or pass --overwrite",
            file=sys.stderr,
        )
        return 2
    if args.coco is not None and not args.coco.is_file():
        print(f"error: --coco {args.coco} is not a file", file=sys.stderr)
        return 2

    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".box_regression-", dir=args.out.parent))
    try:
        run(staging, settings, args.coco, args.images)
    except ValueError as error:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
