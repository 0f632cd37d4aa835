"""``smoothl1 fit --devices`` on four virtual CPU devices, against one device.

Run by ``tests/test_devices.py`` in a fresh process, because the devices must be
configured before TensorFlow or JAX starts:

    python tests/devices_cli.py tensorflow FOLDER  # 4 logical CPUs
    python tests/devices_cli.py jax FOLDER         # needs XLA_FLAGS (4 devices)

Prints one JSON object: the exit code, stderr and metrics of each command; the
test asserts. Nothing runs on import (pytest imports every module here for
doctests).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DEVICES = 4
# diabetes, 442 rows: test round(0.2 * 442) = 88, validation round(0.2036 * 442)
# = 90, train 264 = 8 batches of 32 and one of 8, all of which split over 4
# devices; 90 validation rows leave 2 out.
SPLITS = ["--test-split", "0.2", "--validation-split", "0.2036"]
COMMON = ["--epochs", "2", "--batch-size", "32", "--quiet", "--json"]


def stream_seed(rows):
    """The first seed whose hash split of ``rows`` rows (20 % validation, 20 %
    test) gives training and validation counts divisible by the devices."""
    import numpy as np

    from smoothl1.cli import stream

    for seed in range(100):
        codes = stream.split_codes(np.arange(rows), seed, 0.2, 0.2)
        counts = np.bincount(codes, minlength=3)
        if counts[0] % DEVICES == 0 and counts[1] % DEVICES == 0:
            return seed
    raise AssertionError("no seed in 0..99")


def run(folder):
    from typer.testing import CliRunner

    from smoothl1.cli import data as data_mod
    from smoothl1.cli.app import app

    runner = CliRunner()
    folder = Path(folder)
    csv = folder / "diabetes.csv"
    data_mod.load_builtin("diabetes").to_csv(csv, index=False)
    seed = str(stream_seed(442))
    commands = {
        "one": ["diabetes", *SPLITS, "--devices", "1"],
        "four": ["diabetes", *SPLITS, "--devices", "4"],
        "stream_one": [str(csv), "-t", "target", "--stream", "--seed", seed],
        "stream_four": [
            str(csv),
            *("-t", "target", "--stream", "--seed", seed, "--devices", "4"),
        ],
        "too_many": ["diabetes", "--devices", "8"],
        "uneven_batch": ["diabetes", "--devices", "3"],
    }
    out = {}
    for name, args in commands.items():
        result = runner.invoke(
            app, ["fit", *args, *COMMON, "--out", str(folder / name)]
        )
        out[name] = {
            "exit_code": result.exit_code,
            "stderr": result.stderr,
            "metrics": json.loads(result.stdout) if result.exit_code == 0 else None,
        }
    return out


def main(backend: str, folder: str) -> None:
    if os.environ.get("KERAS_BACKEND") != backend:
        raise SystemExit(f"set KERAS_BACKEND={backend} for this run")
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(DEVICES)]
        )
    print(json.dumps(run(folder)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
