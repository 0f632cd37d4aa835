"""BoxRegressionLoss on several virtual CPU devices against one device.

Run by ``tests/test_detection.py`` in a fresh process, because the devices must be
configured before TensorFlow or JAX starts:

    python tests/detection_multidevice.py tensorflow   # tf.distribute.MirroredStrategy
    python tests/detection_multidevice.py jax          # keras.distribution.DataParallel

The JAX run needs ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in its
environment. Prints one JSON object with the measured values; the test asserts.
Nothing runs on import (pytest imports every module here for doctests).
"""

from __future__ import annotations

import json
import os
import sys

REPLICAS = 4
BATCH = 8  # two images per replica
ANCHORS = 6
# Positives per image: replica 0 (images 0, 1) has none, replica 1 has 1, replica 2
# has 2 and replica 3 has 6, so that each replica's own count differs from the
# global one (9) and a per-replica normalizer would give another loss.
POSITIVES = [0, 0, 1, 0, 1, 1, 3, 3]


def make_data():
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(BATCH, 3)).astype("float32")
    targets = rng.normal(size=(BATCH, ANCHORS, 4)).astype("float32")
    state = np.zeros((BATCH, ANCHORS), "float32")
    for image, count in enumerate(POSITIVES):
        state[image, :count] = 1.0
        state[image, count] = -1.0  # one ignored anchor per image
    # Targets of non-positive anchors are garbage; they must not count.
    targets[state != 1.0] = 1e6
    y = np.concatenate([targets, state[..., None]], axis=-1)
    y_pred = rng.normal(size=(BATCH, ANCHORS, 4)).astype("float32")
    return x, y, y_pred


def reference_values(y, y_pred, beta):
    """The loss from the definition, in NumPy: the global one, and the one a
    per-replica normalizer would give (summed over replicas, as Keras does)."""
    import numpy as np

    d = (y_pred - y[..., :4]).astype("float64")
    a = np.abs(d)
    rho = np.where(a < beta, 0.5 * d**2 / beta, a - 0.5 * beta)  # Fast R-CNN
    positive = y[..., 4] == 1.0
    per_image = (rho * positive[..., None]).sum(axis=(1, 2))
    global_value = per_image.sum() / max(positive.sum(), 1)
    local = 0.0
    size = BATCH // REPLICAS
    for r in range(REPLICAS):
        part = slice(r * size, (r + 1) * size)
        local += per_image[part].sum() / max(positive[part].sum(), 1)
    return float(global_value), float(local)


def build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                ANCHORS * 4,
                kernel_initializer=keras.initializers.GlorotUniform(seed=1),
                bias_initializer=keras.initializers.RandomNormal(seed=2),
            ),
            keras.layers.Reshape((ANCHORS, 4)),
        ]
    )


def one_step(model, x, y):
    import keras
    import numpy as np

    from smoothl1.detection import BoxRegressionLoss

    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=BoxRegressionLoss(beta=0.5),
    )
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    weights = [np.asarray(w) for w in model.get_weights()]
    return float(history.history["loss"][0]), weights


def run_tensorflow():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(REPLICAS)]
    )
    import numpy as np

    from smoothl1.detection import BoxRegressionLoss

    x, y, y_pred = make_data()
    loss = BoxRegressionLoss(beta=0.5)
    single_value = float(loss(y, y_pred))

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    size = BATCH // REPLICAS

    def part(array):
        def value_fn(context):
            r = context.replica_id_in_sync_group
            return tf.constant(array[r * size : (r + 1) * size])

        return strategy.experimental_distribute_values_from_function(value_fn)

    per_replica = strategy.run(loss, args=(part(y), part(y_pred)))
    replica_values = [
        float(v) for v in strategy.experimental_local_results(per_replica)
    ]

    single_model = build_model()
    initial = single_model.get_weights()
    single_loss, single_weights = one_step(single_model, x, y)
    with strategy.scope():
        model = build_model()
        model.set_weights(initial)
    multi_loss, multi_weights = one_step(model, x, y)

    global_value, local_value = reference_values(y, y_pred, 0.5)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "reference": global_value,
        "per_replica_normalizer": local_value,
        "single_value": single_value,
        "replica_values": replica_values,
        "single_fit_loss": single_loss,
        "multi_fit_loss": multi_loss,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(single_weights, multi_weights, strict=True)
        ),
        "max_weight_change": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(initial, single_weights, strict=True)
        ),
    }


def run_jax():
    import jax
    import keras
    import numpy as np

    from smoothl1.detection import BoxRegressionLoss

    devices = keras.distribution.list_devices("cpu")
    x, y, y_pred = make_data()
    loss = BoxRegressionLoss(beta=0.5)
    single_value = float(loss(y, y_pred))

    single_model = build_model()
    initial = single_model.get_weights()
    single_loss, single_weights = one_step(single_model, x, y)

    distribution = keras.distribution.DataParallel(devices=devices)
    with distribution.scope():
        model = build_model()
        model.set_weights(initial)
        multi_loss, multi_weights = one_step(model, x, y)
        kernel_devices = len(model.trainable_variables[0].value.sharding.device_set)

    # The loss alone, jitted, on inputs split over the devices along the batch.
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")), ("batch",))
    by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    y_sharded = jax.device_put(y, by_batch)
    p_sharded = jax.device_put(y_pred, by_batch)
    sharded_value = float(jax.jit(loss)(y_sharded, p_sharded))

    global_value, local_value = reference_values(y, y_pred, 0.5)
    return {
        "replicas": len(devices),
        "kernel_devices": kernel_devices,
        "input_devices": len(y_sharded.sharding.device_set),
        "reference": global_value,
        "per_replica_normalizer": local_value,
        "single_value": single_value,
        "sharded_value": sharded_value,
        "single_fit_loss": single_loss,
        "multi_fit_loss": multi_loss,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(single_weights, multi_weights, strict=True)
        ),
        "max_weight_change": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(initial, single_weights, strict=True)
        ),
    }


def main(backend: str) -> None:
    if os.environ.get("KERAS_BACKEND") != backend:
        raise SystemExit(f"set KERAS_BACKEND={backend} for this run")
    result = run_tensorflow() if backend == "tensorflow" else run_jax()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
