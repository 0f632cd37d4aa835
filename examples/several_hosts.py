"""Data-parallel training of the classic model across several hosts (JAX).

Not tested across hosts: the test suite runs this script on one host only (with
four virtual CPU devices), where it is ``smoothl1 fit --devices``. What follows is
Keras's documented multi-process start, applied to the command's own pieces.

On every host, the same table (a shared file system, or a copy), the same code,
and four variables; host 0 is the coordinator:

    export KERAS_BACKEND=jax
    export KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234  # host 0, every host
    export KERAS_DISTRIBUTION_NUM_PROCESSES=2              # the number of hosts
    export KERAS_DISTRIBUTION_PROCESS_ID=0                 # 0, 1, ... per host
    python examples/several_hosts.py TABLE --target COLUMN --out DIR

``keras.distribution.initialize()`` reads them and calls
``jax.distributed.initialize``; every host must reach the coordinator's port.
Each host then reads the table, checks it and standardizes it exactly as ``fit``
does (same split, same seed, so the same statistics everywhere), and keeps the
training rows ``i`` with ``i % hosts == host``, cut to the same number on every
host and to a multiple of its devices. A global batch of ``--batch-size`` rows
takes ``--batch-size / hosts`` rows from each host; the devices of all hosts hold
a copy of the model (``keras.distribution.DataParallel`` over every device) and
add up their gradients. Host 0 writes ``model.keras`` and ``preprocessing.json``
into ``--out``; every host prints the test loss, computed over the test rows of
all hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="CSV, TSV or Parquet file, or a built-in set")
    parser.add_argument("--target", action="append", default=[])
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")

    import jax
    import keras
    import numpy as np

    if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        keras.distribution.initialize()  # jax.distributed.initialize, from the env
    host, hosts = jax.process_index(), jax.process_count()
    local_devices = jax.local_device_count()
    if args.batch_size % (hosts * local_devices):
        sys.exit(
            f"--batch-size {args.batch_size} must be a multiple of hosts x devices "
            f"per host = {hosts} x {local_devices}"
        )

    from smoothl1 import SmoothL1Loss
    from smoothl1.cli.train import FitOptions, build_model, prepare_table

    options = FitOptions(data=args.data, targets=args.target, seed=args.seed)
    table = prepare_table(options)  # the same on every host

    def share(name: str) -> tuple[np.ndarray, np.ndarray]:
        """This host's rows of a split: every hosts-th row, the same count on
        every host, a multiple of this host's devices."""
        x, y = table.arrays[name]
        count = len(x) // hosts
        count -= count % local_devices
        return x[host::hosts][:count], y[host::hosts][:count]

    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    )
    model = build_model(
        table.arrays["train"][0].shape[1],
        len(table.targets),
        options.hidden,
        args.seed,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SmoothL1Loss(args.beta))
    x, y = share("train")
    history = model.fit(
        x, y, batch_size=args.batch_size // hosts, epochs=args.epochs, verbose=0
    )
    x_test, y_test = share("test")
    test_loss = model.evaluate(
        x_test, y_test, batch_size=max(local_devices, len(x_test)), verbose=0
    )
    print(
        json.dumps(
            {
                "host": host,
                "hosts": hosts,
                "devices": len(keras.distribution.list_devices()),
                "train_rows_here": len(x),
                "final_loss": history.history["loss"][-1],
                "test_loss": float(test_loss),
            }
        )
    )
    if host == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        model.save(args.out / "model.keras")
        prep = json.dumps(table.prep.to_json(), indent=2)
        (args.out / "preprocessing.json").write_text(prep)


if __name__ == "__main__":
    main()
