"""The `smoothl1` command line. See ``smoothl1 --help``."""

from __future__ import annotations

import signal
import sys
from typing import Any

# The exit status of a process ended by SIGTERM, as shells report it.
TERMINATED = 128 + signal.SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler's cancel, `docker stop`, `timeout`) unwinds like
    # Ctrl-C: the runs' `except BaseException` handlers remove their staging
    # folders and empty reservations before the process ends.
    raise SystemExit(TERMINATED)


def main() -> None:
    """Entry point of the ``smoothl1`` console script and ``python -m smoothl1``."""
    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, _terminate)
    from smoothl1.cli.app import app

    app()
