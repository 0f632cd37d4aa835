"""The backend the `smoothl1` command uses when the user has not chosen one.

Keras picks its backend once, when it is first imported, from ``KERAS_BACKEND`` (or
``~/.keras/keras.json``, which Keras writes with "tensorflow" on its first run). The
command prefers JAX when ``KERAS_BACKEND`` is unset: it imports in about 4 s here
against 7 s for TensorFlow and PyTorch, and its jitted steps make the small models of
the command the fastest. This module does not import Keras, and it changes nothing
when smoothl1 is imported as a library: a library must not pick a backend for its
user.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PREFERENCE = ("jax", "torch", "tensorflow")


def running_as_command() -> bool:
    """True when this process is the ``smoothl1`` console script or
    ``python -m smoothl1``."""
    orig_argv = getattr(sys, "orig_argv", [])
    as_module = len(orig_argv) >= 3 and orig_argv[1:3] == ["-m", "smoothl1"]
    return as_module or (bool(sys.argv) and Path(sys.argv[0]).name == "smoothl1")


def choose_command_backend() -> None:
    """Sets ``KERAS_BACKEND`` to the first installed of jax, torch, tensorflow, when
    this process is the command, the variable is unset and Keras is not yet
    imported."""
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    if not running_as_command():
        return
    for backend in PREFERENCE:
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return
