"""What the per-backend benchmarks share: each backend runs in its own process
(Keras picks its backend once per process), optionally pinned to a few CPUs, and
reports one line of JSON.

Not a benchmark itself: ``loss_speed.py`` and ``train_step.py`` import it as a
sibling module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Where set, these slow NumPy's reference kernels; the caller's own environment is
# left alone, only the workers' is cleaned.
_SLOWING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run_worker(script: str, backend: str, arguments: list[str]) -> dict:
    """Runs ``script --worker BACKEND ARGUMENTS`` with ``KERAS_BACKEND=BACKEND`` and
    returns the JSON of its last line of output."""
    env = {k: v for k, v in os.environ.items() if k not in _SLOWING}
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, script, "--worker", backend, *arguments]
    out = subprocess.run(
        command, env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def pin_cpus(cpus: int | None) -> None:
    """Keeps this process on its first ``cpus`` allowed CPUs (all when None). Call
    it before any backend starts its thread pools, which size themselves by the
    CPUs the process may use."""
    if cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])
