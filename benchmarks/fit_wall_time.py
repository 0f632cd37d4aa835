"""Wall time of the README's main-job command, imports included.

Runs ``smoothl1 fit`` (default data, default settings) as a fresh process three times
and prints each time and the median. Run it in the environment the README sets up:

    python benchmarks/fit_wall_time.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(repeats: int = 3) -> None:
    command = shutil.which("smoothl1") or "smoothl1"
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            out = Path(folder) / f"run{i}"
            start = time.perf_counter()
            subprocess.run(
                [command, "fit", "--out", str(out), "--quiet"],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ},
            )
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.2f} s", file=sys.stderr)
    backend = os.environ.get("KERAS_BACKEND", "jax (the command's default)")
    print(
        f"smoothl1 fit, default data and settings, backend {backend}: median "
        f"{statistics.median(times):.2f} s over {repeats} runs "
        f"({', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
