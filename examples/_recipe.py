"""What the use-case recipes of ``examples/`` share: the command line, the photographs
bundled with scikit-image, seeds, tables and the output directory.

Not part of the ``smoothl1`` package: a recipe imports it as a sibling module, so the
recipes stay short and each one reads as its use case only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def choose_backend() -> None:
    """Uses JAX when ``KERAS_BACKEND`` is unset and JAX is installed: it trains these
    small networks fastest on a CPU. Does nothing once Keras is imported."""
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    if importlib.util.find_spec("jax"):
        os.environ["KERAS_BACKEND"] = "jax"


def log(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(message, file=sys.stderr, flush=True)


class RecipeError(Exception):
    """A problem the user can fix (a missing package or file); printed as one line."""


# ---------------------------------------------------------------- bundled data


def skimage_data_file(name: str) -> Path:
    """The path of a file that ships inside the scikit-image wheel.

    Reads the installed package's own ``data`` folder and nothing else:
    ``skimage.data`` downloads some of its images on demand, and a recipe must never
    reach the network.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RecipeError(
            "scikit-image is not installed; install the recipes' extra with "
            "`pip install -e '.[examples]'`"
        )
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise RecipeError(
            f"{name} is not in {path.parent}: this recipe only reads images bundled "
            "in the scikit-image wheel and never downloads; reinstall scikit-image "
            "(`pip install --force-reinstall scikit-image`)"
        )
    return path


def photograph(name: str) -> np.ndarray:
    """A bundled photograph as float32 RGB in [0, 1] (grey images are repeated)."""
    from skimage import io

    image = np.asarray(io.imread(skimage_data_file(name)))
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype("float32") / 255.0


# ---------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class Options:
    out: Path
    overwrite: bool
    tiny: bool
    seeds: tuple[int, ...]


def parse_options(
    description: str,
    name: str,
    default_seeds: int,
    argv: Sequence[str] | None,
) -> Options:
    """``--tiny``, ``--out``, ``--overwrite`` and ``--seeds``, the same in every
    recipe."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / name,
        help=f"output directory (default: runs/{name}); never replaced unless "
        "--overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the smoke-test setting of CI: one seed, little data; its numbers "
        "only show that the recipe runs",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help=f"number of seeds, 0, 1, ... (default: {default_seeds}; 1 with --tiny)",
    )
    args = parser.parse_args(argv)
    count = (
        args.seeds if args.seeds is not None else (1 if args.tiny else default_seeds)
    )
    if count < 1:
        parser.error(f"--seeds must be at least 1, got {count}")
    return Options(args.out, args.overwrite, args.tiny, tuple(range(count)))


def run_recipe(options: Options, body: Callable[[Path], str]) -> int:
    """Runs ``body(directory)`` in a new directory beside ``options.out`` and moves
    it into place when it succeeds; prints the table it returns. Exit codes: 0 done,
    2 a problem the user can fix (nothing is written then)."""
    out = options.out
    if out.exists() and not options.overwrite:
        print(
            f"error: {out} exists; choose another --out or pass --overwrite",
            file=sys.stderr,
        )
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    start = time.perf_counter()
    try:
        table = body(staging)
    except RecipeError as error:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(table, end="")
    log(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0


# ---------------------------------------------------------------- results


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean, and the sample standard deviation over seeds (NaN for one seed:
    one seed shows no spread, which is not a spread of 0; tables print "-")."""
    array = np.asarray(values, dtype="float64")
    spread = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), spread


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of one shape as a CSV file, a column per key of the first row."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_table(
    directory: Path,
    rows: list[dict[str, Any]],
    markdown_columns: Sequence[tuple[str, str, str]],
    *,
    caption: str,
) -> str:
    """Writes ``results.csv`` (every field) and ``results.md`` (the columns
    ``(title, key, format)``, a format such as ``"{:.3f}"`` or ``"{}"``) and returns
    the Markdown."""
    write_csv(directory / "results.csv", rows)
    header = "| " + " | ".join(title for title, _, _ in markdown_columns) + " |"
    rule = "| " + " | ".join(
        "---:" if ":" in form else "---" for _, _, form in markdown_columns
    )
    lines = [header, rule + " |"]
    for row in rows:
        cells = [_cell(row[key], form) for _, key, form in markdown_columns]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n\n" + caption.strip() + "\n"
    (directory / "results.md").write_text(table)
    return table


def _cell(value: Any, form: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return form.format(value)


def write_settings(directory: Path, settings: Any, **extra: Any) -> None:
    import keras

    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {}
    values.update(extra, backend=keras.backend.backend(), keras=keras.__version__)
    (directory / "settings.json").write_text(json.dumps(values, indent=2) + "\n")
