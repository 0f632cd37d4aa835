"""SelfAdjustingSmoothL1Loss on two replicas against the same global batch on one.

Run by ``tests/test_beta.py`` in a fresh process, because the devices (or the
process group) must be set up before the backend starts:

    python tests/beta_multireplica.py tensorflow  # MirroredStrategy, 2 logical CPUs
    python tests/beta_multireplica.py jax         # keras.distribution.DataParallel
    python tests/beta_multireplica.py torch       # torch.distributed, 2 processes

The JAX run needs ``XLA_FLAGS=--xla_force_host_platform_device_count=2``. Prints one
JSON object (the running state after training, and the number of replicas); the
test compares it with a NumPy simulation of the rule on the global batches.
Nothing runs on import (pytest imports every module here for doctests).
"""

from __future__ import annotations

import json
import os
import sys

REPLICAS = 2
BATCH = 8  # global batch: 4 rows per replica
MOMENTUM, BETA_MIN, BETA_MAX = 0.5, 1e-3, 4.0


def make_batches():
    """Two global batches of residuals whose halves differ in mean, so that the
    average of per-replica variances differs from the global variance."""
    import numpy as np

    rng = np.random.default_rng(11)
    first = rng.normal(size=(BATCH // 2, 2)) * 0.2
    second = 1.5 + rng.normal(size=(BATCH // 2, 2)) * 0.2
    batch = np.concatenate([first, second])
    return np.concatenate([batch, batch[::-1] * 0.5]).astype("float32")


def _identity_model(loss):
    import keras

    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(2, use_bias=False, kernel_initializer="identity"),
        ]
    )
    model = loss.attach(model)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    return model


def _fit_and_report(replicas):
    import numpy as np

    import smoothl1

    x = make_batches()
    loss = smoothl1.SelfAdjustingSmoothL1Loss(
        momentum=MOMENTUM, beta_min=BETA_MIN, beta_max=BETA_MAX
    )
    model = _identity_model(loss)
    model.fit(x, np.zeros_like(x), batch_size=BATCH, shuffle=False, verbose=0)
    state = model.layers[-1]
    return {
        "replicas": replicas,
        "mean": np.asarray(state.running_mean.numpy()).tolist(),
        "var": np.asarray(state.running_var.numpy()).tolist(),
    }


def run_tensorflow():
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    with strategy.scope():
        result = _fit_and_report(strategy.num_replicas_in_sync)
    print(json.dumps(result))


def run_jax():
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    devices = keras.distribution.list_devices("cpu")
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    print(json.dumps(_fit_and_report(len(devices))))


def _torch_worker(rank, port, queue):
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=REPLICAS
    )
    import smoothl1

    x = make_batches()
    loss = smoothl1.SelfAdjustingSmoothL1Loss(
        momentum=MOMENTUM, beta_min=BETA_MIN, beta_max=BETA_MAX
    )
    layer = loss.state_layer()
    half = BATCH // REPLICAS
    for start in range(0, len(x), BATCH):  # each rank sees its half of each batch
        part = x[start + rank * half : start + (rank + 1) * half]
        layer(part, training=True)  # the forward pass
        loss(np.zeros_like(part), part)
    queue.put(
        (
            rank,
            np.asarray(layer.running_mean.numpy()).tolist(),
            np.asarray(layer.running_var.numpy()).tolist(),
        )
    )
    dist.destroy_process_group()


def run_torch():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_torch_worker, args=(rank, port, queue))
        for rank in range(REPLICAS)
    ]
    for worker in workers:
        worker.start()
    results = sorted(queue.get(timeout=240) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    if any(worker.exitcode != 0 for worker in workers):
        raise SystemExit("a torch worker failed")
    _, mean, var = results[0]
    print(
        json.dumps(
            {
                "replicas": REPLICAS,
                "mean": mean,
                "var": var,
                "ranks_agree": all(r[1:] == (mean, var) for r in results),
            }
        )
    )


if __name__ == "__main__":
    {"tensorflow": run_tensorflow, "jax": run_jax, "torch": run_torch}[sys.argv[1]]()
