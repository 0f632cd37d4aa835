"""``smoothl1 fit --devices N``: data parallelism over the local devices.

Each global batch is split evenly over N devices, which hold a copy of the model
each and add up their gradients; the result is the training of one device on the
same global batches (``tests/test_distributed.py`` shows it for every reduction of
the loss).

- JAX: ``keras.distribution.DataParallel`` over the first N of ``jax.local_devices()``
  (GPUs or TPUs when JAX has them, else the host; on a CPU,
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the host into N
  devices, which is for trying things out: it adds no cores).
- TensorFlow: ``tf.distribute.MirroredStrategy`` over the first N logical GPUs, or
  logical CPUs when there is no GPU.
- PyTorch: Keras has no data-parallel ``fit`` for this backend; N > 1 is refused.

Keras's JAX path needs every batch, the last one of an epoch included, to split
evenly over the devices, and Keras's own losses (``mse``, ``mae``, ``log_cosh``)
are exact under ``tf.distribute`` only when it does. So the batch size must be a
multiple of N, and the training and validation rows are cut to a multiple of N
(at most N - 1 rows each, the last ones of the split); predictions pad instead,
so that every row gets one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smoothl1.cli.data import UserError

_CPU_HINT = (
    "; on a CPU, JAX can split the host into N devices for trying this out with "
    "XLA_FLAGS=--xla_force_host_platform_device_count=N"
)


def local_devices(backend: str) -> list[str]:
    """The names of the devices that ``--devices`` spreads a batch over, in
    order: accelerators when the backend has some, else the host CPUs."""
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.local_devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_logical_devices("GPU") or (
            tf.config.list_logical_devices("CPU")
        )
        return [d.name for d in found]
    return []


@dataclass
class DataParallel:
    """A plan for ``--devices``: which devices, and how batches fit them."""

    devices: int = 1
    backend: str = ""
    names: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Builds, trains and predicts inside this to run on the devices."""
        if self.devices == 1:
            yield
            return
        if self.backend == "jax":
            import keras

            distribution = keras.distribution.DataParallel(devices=self.names)
            with distribution.scope():
                yield
            return
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(devices=self.names).scope():
            yield

    def even_rows(self, rows: int) -> int:
        """The largest number of rows <= ``rows`` that splits over the devices."""
        return rows - rows % self.devices

    def even(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The arrays cut to ``even_rows`` rows (the last rows are left out)."""
        keep = self.even_rows(len(arrays[0]))
        return tuple(a[:keep] for a in arrays)

    def predict(self, model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
        """``model.predict`` on every row of ``x``: padded with zero rows to a
        multiple of the devices, in batches that are a multiple too."""
        if self.devices == 1 or len(x) == 0:
            return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
        pad = -len(x) % self.devices
        padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        size = max(self.devices, min(len(padded), self.even_rows(batch_size)))
        return np.asarray(model.predict(padded, batch_size=size, verbose=0))[: len(x)]

    def to_json(self) -> dict[str, Any]:
        return {"devices": self.devices, "names": self.names}


def plan(devices: int, batch_size: int) -> DataParallel:
    """Checks ``--devices`` against the active backend and ``--batch-size``.

    Raises:
        UserError: N < 1, a backend without a data-parallel path, more devices
            than the backend sees, or a batch size that does not split evenly.
    """
    if devices < 1:
        raise UserError(f"--devices must be positive; got {devices}")
    if devices == 1:
        return DataParallel()
    import keras

    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise UserError(
            f"--devices {devices}: the {backend} backend has no data-parallel "
            "training in Keras; use KERAS_BACKEND=jax (keras.distribution) or "
            "KERAS_BACKEND=tensorflow (tf.distribute)"
        )
    names = local_devices(backend)
    if devices > len(names):
        hint = _CPU_HINT if all("cpu" in n.lower() for n in names) else ""
        raise UserError(
            f"--devices {devices}: the {backend} backend sees {len(names)} local "
            f"device(s) ({', '.join(names)}){hint}"
        )
    if batch_size % devices:
        raise UserError(
            f"--batch-size {batch_size} is not a multiple of --devices {devices}; "
            "every device takes an equal share of each batch"
        )
    return DataParallel(devices, backend, names[:devices])
