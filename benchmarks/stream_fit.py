"""Peak memory and rows per second of ``smoothl1 fit --stream`` against the
in-memory ``smoothl1 fit``.

Generates two Parquet tables in a temporary folder (deleted afterwards) with the
same columns: eight normal features, a categorical one with six levels, and a
target that is linear in them plus Student-t noise (3 degrees of freedom). The
large one has 10 million rows, the small one 1 million (it fits in memory). Then
runs, each as a fresh process, one epoch with batches of 1024 rows:

1. the in-memory path on the small table,
2. the streaming path on the small table,
3. the streaming path on the large table,

and prints, for each, the wall time, rows of the table per second (the whole
command: reading, statistics, one epoch, validation, errors, writing the run) and
the peak resident memory of the process (``ru_maxrss`` from ``os.wait4``):

    python benchmarks/stream_fit.py [--rows 10000000] [--small-rows 1000000]

The backend is the command's (JAX unless ``KERAS_BACKEND`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEVELS = ("a", "b", "c", "d", "e", "f")
ROW_GROUP = 1_000_000


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Writes the table in row groups of a million rows (never all in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    coefficients = rng.normal(size=8)
    level_effect = np.linspace(-1.0, 1.0, len(LEVELS))
    writer = None
    try:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            x = rng.normal(size=(n, 8)).astype("float32")
            kind = rng.integers(0, len(LEVELS), n)
            y = x @ coefficients + level_effect[kind] + rng.standard_t(3, n)
            columns = {f"x{i}": x[:, i] for i in range(8)}
            columns["kind"] = pa.DictionaryArray.from_arrays(
                pa.array(kind.astype("int32")), pa.array(LEVELS)
            )
            columns["y"] = y.astype("float32")
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def measure(arguments: list[str], folder: Path) -> dict:
    """Runs ``smoothl1 fit`` as a child process; its wall time, peak resident
    memory and metrics."""
    command = shutil.which("smoothl1") or "smoothl1"
    out = folder / f"run-{time.monotonic_ns()}"
    start = time.perf_counter()
    child = subprocess.Popen(
        [command, "fit", *arguments, "--out", str(out), "--quiet", "--json"],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"smoothl1 fit {' '.join(arguments)} failed")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "metrics": json.loads(output),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    common = ["-t", "y", "--epochs", "1", "--batch-size", str(args.batch_size)]

    with tempfile.TemporaryDirectory(prefix="smoothl1-stream-") as name:
        folder = Path(name)
        sizes = {"small": args.small_rows, "large": args.rows}
        for label, rows in sizes.items():
            start = time.perf_counter()
            generate(folder / f"{label}.parquet", rows, seed=len(label))
            size = (folder / f"{label}.parquet").stat().st_size / 2**20
            print(
                f"generated {rows:,} rows ({size:.0f} MiB) in "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
        runs = [
            ("in memory", "small", []),
            ("--stream", "small", ["--stream"]),
            ("--stream", "large", ["--stream"]),
        ]
        results = []
        for path_label, label, extra in runs:
            print(f"running {path_label} on {label} ...", file=sys.stderr)
            result = measure(
                [str(folder / f"{label}.parquet"), *common, *extra], folder
            )
            result.update(path=path_label, rows=sizes[label])
            results.append(result)

    backend = results[0]["metrics"]["backend"]
    print(
        f"smoothl1 fit, one epoch, batch {args.batch_size}, backend {backend}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'path':<10} {'rows':>11} {'wall s':>8} {'CPU s':>8} {'rows/s':>10} "
        f"{'peak RSS':>10}  phases (s)"
    )
    for r in results:
        phases = r["metrics"].get("stream", {}).get("seconds", {})
        shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) or "-"
        print(
            f"{r['path']:<10} {r['rows']:>11,} {r['seconds']:>8.1f} "
            f"{r['cpu_seconds']:>8.1f} {r['rows'] / r['seconds']:>10,.0f} "
            f"{r['peak_rss_mib']:>7.0f} MiB  {shown}"
        )
    json.dump(
        [{k: v for k, v in r.items() if k != "metrics"} for r in results],
        sys.stderr,
        indent=1,
    )
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
