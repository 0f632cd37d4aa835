"""The `smoothl1` command line. See ``smoothl1 --help``."""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``smoothl1`` console script and ``python -m smoothl1``."""
    from smoothl1.cli.app import app

    app()
