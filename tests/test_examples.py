"""The use-case recipes of ``examples/``: super-resolution, keypoints, 3-D points.

Each recipe runs once in its ``--tiny`` setting, as a fresh process on the active
backend, and the files it writes are checked. A tiny run trains on a few hundred
samples for one or two epochs, so its numbers only show that the recipe runs; the
bounds below come from definitions (SSIM <= 1, a median is at most the 95th
percentile) or from first-order error propagation, never from a measured run.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_recipe(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=BACKEND, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def finite(rows: list[dict[str, str]], *columns: str) -> dict[str, np.ndarray]:
    values = {c: np.array([float(r[c]) for r in rows]) for c in columns}
    for column, array in values.items():
        assert np.isfinite(array).all(), (column, array)
    return values


def check_outputs(out: Path, picture: str, stdout: str) -> list[dict[str, str]]:
    for name in ("results.csv", "results.md", "per_seed.csv", "settings.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert table.startswith("| ")
    # The Markdown table is what the recipe printed.
    assert table.splitlines()[0] in stdout
    assert not list(out.parent.glob(f".{out.name}-*")), "staging directory left"
    return read_rows(out / "results.csv")


# ---------------------------------------------------------------- tiny runs


def test_super_resolution_tiny(tmp_path):
    out = tmp_path / "sr"
    result = run_recipe("super_resolution", ["--tiny", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(out, "super_resolution.png", result.stdout)
    # The baseline, then the losses in the order of the recipe's docstring.
    assert [r["loss"] for r in rows] == [
        "bicubic",
        "smooth_l1 beta=0.01",
        "smooth_l1 beta=0.1",
        "charbonnier",
        "l1",
        "l2",
    ]
    values = finite(rows, "psnr", "ssim", "psnr_gain")
    # PSNR of images in [0, 1] is positive unless the error exceeds the range.
    assert (values["psnr"] > 0).all()
    assert ((values["ssim"] > -1) & (values["ssim"] <= 1)).all()
    # The gain is the difference to the first (bicubic) row.
    np.testing.assert_allclose(
        values["psnr_gain"], values["psnr"] - values["psnr"][0], atol=2e-3
    )
    # The networks start from the bicubic image (a zero last layer), so one epoch
    # cannot take a loss far from it: within 3 dB either way.
    assert (np.abs(values["psnr_gain"]) < 3).all()
    per_seed = read_rows(out / "per_seed.csv")
    assert {r["photo"] for r in per_seed} == {"chelsea", "coffee", "motorcycle_left"}
    assert len(per_seed) == 6 * 3  # six rows, three held-out photographs, one seed


def test_keypoints_tiny(tmp_path):
    out = tmp_path / "kp"
    result = run_recipe("keypoints", ["--tiny", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(out, "keypoints.png", result.stdout)
    models = ["smooth_l1 beta=1", "wing", "l2", "adaptive_wing", "l2 (heatmaps)"]
    # The tiny setting trains every model once, at one corruption level (30%).
    assert [r["model"] for r in rows] == models
    assert [float(r["corrupted"]) for r in rows] == [0.3] * 5
    # One seed shows no spread: the table prints "-", not a spread of 0.
    assert "| - |" in result.stdout and "| 0.00 |" not in result.stdout
    assert [r["head"] for r in rows[:5]] == ["coordinates"] * 3 + ["heatmaps"] * 2
    values = finite(rows, "nme_percent", "failure_percent")
    assert (values["nme_percent"] > 0).all()
    assert ((values["failure_percent"] >= 0) & (values["failure_percent"] <= 100)).all()


def test_points3d_tiny(tmp_path):
    out = tmp_path / "p3"
    result = run_recipe("points3d", ["--tiny", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_outputs(out, "points3d.png", result.stdout)
    names = ["smooth_l1 beta=0.02", "l1", "l2"]
    assert [r["loss"] for r in rows] == ["triangulation", *names * 3]
    assert [r["outliers"] for r in rows[1:]] == ["0.0"] * 3 + ["0.1"] * 3 + ["0.3"] * 3
    values = finite(rows, "median_mm", "p95_mm")
    assert (values["median_mm"] > 0).all()
    assert (values["median_mm"] <= values["p95_mm"]).all()
    # Triangulation error from 0.5 px of noise per coordinate: the disparity error
    # has sd 0.5 * sqrt(2) = 0.71 px, and dZ = Z**2 / (f B) * dd, with Z about
    # 2.75 m (the scene's median depth), f = 994.978 px and B = 0.193 m, is about
    # 28 mm per px, so about 20 mm sd; the median of |dZ| is 0.67 sd, and X and Y
    # scale with Z. A median of 10 to 40 mm allows for the spread of depths.
    assert 10 < values["median_mm"][0] < 40


# ---------------------------------------------------------------- the output folder


@pytest.mark.parametrize("name", ["super_resolution", "keypoints", "points3d"])
def test_existing_output_is_not_replaced(tmp_path, name):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = run_recipe(name, ["--tiny", "--out", str(out)], tmp_path)
    assert result.returncode == 2
    assert "--overwrite" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def recipe_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import _recipe
    import points3d

    return _recipe, points3d


def test_missing_bundled_file_is_a_clear_error(recipe_modules):
    _recipe, _ = recipe_modules
    with pytest.raises(_recipe.RecipeError, match="never downloads"):
        _recipe.skimage_data_file("no_such_image.png")
    assert _recipe.skimage_data_file("chelsea.png").is_file()


def test_projection_matches_the_bundled_disparities(recipe_modules):
    """skimage's docstring: ``img_left[r, c + disp]`` matches ``img_right[r, c]``,
    so a point's left and right columns differ by its disparity."""
    _, points3d = recipe_modules
    points, cols = points3d.scene_points()
    with np.load(points3d._recipe.skimage_data_file("motorcycle_disp.npz")) as data:
        disparity = data["arr_0"]
    rows = np.nonzero(np.isfinite(disparity))[0]
    observed = points3d.project(points)
    np.testing.assert_allclose(observed[:, 0], cols, atol=1e-9)
    np.testing.assert_allclose(observed[:, 1], rows, atol=1e-9)
    np.testing.assert_allclose(
        observed[:, 0] - observed[:, 2], disparity[rows, cols], atol=1e-5
    )
    # Triangulation inverts the projection exactly.
    np.testing.assert_allclose(points3d.triangulate(observed), points, atol=1e-9)
    # Depths: f B / (d + offset), between the extremes of the bundled disparities.
    depth = points[:, 2]
    finite_disparity = disparity[np.isfinite(disparity)]
    f_b = points3d.FOCAL * points3d.BASELINE
    assert math.isclose(
        depth.min(), f_b / (finite_disparity.max() + points3d.CENTER_OFFSET)
    )
