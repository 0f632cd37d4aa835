"""SmoothL1Loss trained on several virtual CPU devices against one device.

Run by ``tests/test_distributed.py`` in a fresh process, because the devices must
be configured before TensorFlow or JAX starts:

    python tests/distributed_multidevice.py tensorflow  # MirroredStrategy, 4 CPUs
    python tests/distributed_multidevice.py jax         # keras.distribution

The JAX run needs ``XLA_FLAGS=--xla_force_host_platform_device_count=4``. Prints one
JSON object with the measured values; the test asserts. Nothing runs on import
(pytest imports every module here for doctests).

Every configuration (reduction x axis x with or without ``sample_weight``) trains
its own copy of the classic model (Dense 64 relu, Dense 64 relu, Dense 2). The
copies are branches of one Keras model, one output each with its own loss, so
that one ``fit`` (one compiled step) trains eight of them: the branches share no
weight, so each one's gradient, and with SGD each one's update, is that of its
own loss alone. Weighted and unweighted configurations are two models, so that
the unweighted ones get ``sample_weight=None`` (under MirroredStrategy Keras
cannot take None for some outputs only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

REPLICAS = 4
BATCH = 8  # global batch: two rows per device
ROWS = 24  # three global batches
UNEVEN_ROWS = 22  # TensorFlow only: the last batch of 6 rows goes 2, 2, 2, 0
FEATURES, TARGETS = 5, 2
BETA = 0.5
EPOCHS = 2
LEARNING_RATE = 0.01
REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight")
CONFIGS = [
    {"reduction": reduction, "axis": axis, "weighted": weighted}
    for reduction in REDUCTIONS
    for axis in (-1, None)
    for weighted in (False, True)
]
# The uneven run: the default reduction, and the one whose divisor is the weights.
UNEVEN = [
    CONFIGS.index({"reduction": r, "axis": -1, "weighted": w})
    for r, w in (("sum_over_batch_size", False), ("mean_with_sample_weight", True))
]


def make_data(rows=ROWS):
    """Features, targets (residuals both below and above beta), predictions for
    the loss-only checks, and weights: one per row (``axis=-1``) and one per
    element (``axis=None``). The weights grow along the rows, so that each
    device's total weight differs from the others'."""
    import numpy as np

    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = (2.0 * rng.normal(size=(rows, TARGETS))).astype("float32")
    y_pred = (2.0 * rng.normal(size=(rows, TARGETS))).astype("float32")
    ramp = np.linspace(0.1, 3.0, rows)
    per_row = (ramp * rng.uniform(0.5, 1.5, rows)).astype("float32")
    per_element = (ramp[:, None] * rng.uniform(0.5, 1.5, (rows, TARGETS))).astype(
        "float32"
    )
    return {
        "x": x,
        "y": y,
        "y_pred": y_pred,
        "per_row": per_row,
        "per_element": per_element,
    }


def name(index):
    return f"c{index:02d}"


def weights_for(config, data):
    if not config["weighted"]:
        return None
    return data["per_row"] if config["axis"] == -1 else data["per_element"]


def build(indices):
    """One classic model per configuration, side by side on the same input."""
    import keras

    from smoothl1 import SmoothL1Loss
    from smoothl1.cli.train import build_model

    inputs = keras.Input((FEATURES,))
    outputs = {}
    for i in indices:
        branch = build_model(FEATURES, TARGETS, [64, 64], seed=0)
        branch.name = name(i)
        outputs[name(i)] = branch(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss={
            name(i): SmoothL1Loss(
                BETA, axis=CONFIGS[i]["axis"], reduction=CONFIGS[i]["reduction"]
            )
            for i in indices
        },
    )
    return model


def branch_weights(model, indices):
    import numpy as np

    return {
        name(i): [np.asarray(w) for w in model.get_layer(name(i)).get_weights()]
        for i in indices
    }


def sample_weight(weights, rows):
    """No ``sample_weight`` when no branch has weights; otherwise ones for the
    unweighted branches (equal to no weights in every reduction: sum of ones is
    the count). Under MirroredStrategy Keras cannot take None for some outputs
    only, so the runs with every branch unweighted are the ones that show
    ``sample_weight=None``."""
    import numpy as np

    if all(w is None for w in weights.values()):
        return None
    ones = {-1: np.ones(rows, "float32"), None: np.ones((rows, TARGETS), "float32")}
    return {
        name(i): ones[CONFIGS[i]["axis"]] if w is None else w
        for i, w in weights.items()
    }


def train(scope, indices, data):
    """Builds and trains the branches ``indices`` in ``scope``; returns the
    logged losses (per branch, and Keras's total) and the branch weights
    before and after."""
    with scope():
        model = build(indices)
        before = branch_weights(model, indices)
        weights = {i: weights_for(CONFIGS[i], data) for i in indices}
        history = model.fit(
            data["x"],
            {name(i): data["y"] for i in indices},
            sample_weight=sample_weight(weights, len(data["x"])),
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
        ).history
        after = branch_weights(model, indices)
    logs = {key: [float(v) for v in values] for key, values in history.items()}
    return logs, before, after


def train_all(scope, data, groups):
    logs, before, after = {}, {}, {}
    for group, indices in groups.items():
        group_logs, group_before, group_after = train(scope, indices, data)
        logs[group] = group_logs
        before.update(group_before)
        after.update(group_after)
    return logs, before, after


def compare(single, multi):
    """For each branch: the largest difference between the weights trained on
    one device and on several, and how far training moved them."""
    import numpy as np

    single_logs, initial, single_trained = single
    multi_logs, multi_initial, multi_trained = multi
    out = {}
    for key in single_trained:
        out[key] = {
            "initial_difference": max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(initial[key], multi_initial[key], strict=True)
            ),
            "weight_difference": max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(single_trained[key], multi_trained[key], strict=True)
            ),
            "weight_change": max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(initial[key], single_trained[key], strict=True)
            ),
        }
    return {"single": single_logs, "multi": multi_logs, "branches": out}


def groups_of_configs():
    return {
        "unweighted": [i for i, c in enumerate(CONFIGS) if not c["weighted"]],
        "weighted": [i for i, c in enumerate(CONFIGS) if c["weighted"]],
    }


def loss_values(call):
    """``call(loss, y_true, y_pred, sample_weight)`` for every reduction, axis
    and weighting on the first global batch; the results as lists."""
    import numpy as np

    from smoothl1 import SmoothL1Loss

    data = make_data()
    y, y_pred = data["y"][:BATCH], data["y_pred"][:BATCH]
    values = {}
    for reduction in (*REDUCTIONS, "none"):
        for axis in (-1, None):
            weights = (data["per_row"] if axis == -1 else data["per_element"])[:BATCH]
            for weighted, w in ((False, None), (True, weights)):
                loss = SmoothL1Loss(BETA, axis=axis, reduction=reduction)
                result = call(loss, y, y_pred, w)
                values[f"{reduction}|{axis}|{weighted}"] = np.asarray(
                    result, "float64"
                ).tolist()
    return values


def run_tensorflow():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(REPLICAS)]
    )
    import numpy as np

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    data = make_data()
    groups = groups_of_configs()
    single = train_all(contextlib.nullcontext, data, groups)
    multi = train_all(strategy.scope, data, groups)

    # The last batch of 6 rows cannot be split evenly. Keras logs each output's
    # own loss with a static batch size (unknown here), so on such a batch only
    # its total "loss" is weighted by rows, on one device as on several.
    uneven_data = make_data(UNEVEN_ROWS)
    uneven_groups = {"mixed": UNEVEN}
    uneven_single = train_all(contextlib.nullcontext, uneven_data, uneven_groups)
    uneven_multi = train_all(strategy.scope, uneven_data, uneven_groups)

    size = BATCH // REPLICAS

    def part(array):
        def value_fn(context):
            r = context.replica_id_in_sync_group
            return tf.constant(array[r * size : (r + 1) * size])

        return strategy.experimental_distribute_values_from_function(value_fn)

    def per_replica(loss, y, y_pred, w):
        """Each replica's value on its quarter of the batch, in replica order
        (reduction "none": the values of its rows, concatenated)."""
        args = (part(y), part(y_pred)) + (() if w is None else (part(w),))
        results = strategy.experimental_local_results(strategy.run(loss, args=args))
        if loss.reduction == "none":
            return np.concatenate([np.asarray(v) for v in results])
        return [float(v) for v in results]

    def cross_replica(loss, y, y_pred, w):
        with strategy.scope():  # in the scope, outside the replicas
            return loss(y, y_pred, w)

    return {
        "replicas": strategy.num_replicas_in_sync,
        "even": compare(single, multi),
        "uneven": compare(uneven_single, uneven_multi),
        "single_values": loss_values(lambda loss, y, p, w: loss(y, p, w)),
        "replica_values": loss_values(per_replica),
        "cross_replica_values": loss_values(cross_replica),
    }


def run_jax():
    import jax
    import keras
    import numpy as np

    devices = keras.distribution.list_devices("cpu")
    distribution = keras.distribution.DataParallel(devices=devices)
    data = make_data()
    groups = groups_of_configs()
    single = train_all(contextlib.nullcontext, data, groups)
    multi = train_all(distribution.scope, data, groups)
    with distribution.scope():
        kernel = build([0]).trainable_variables[0]
        kernel_devices = len(kernel.value.sharding.device_set)

    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")), ("batch",))
    by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    input_devices = []

    def sharded(loss, y, y_pred, w):
        """The loss jitted on the batch split over the devices along its rows."""
        arrays = [jax.device_put(a, by_batch) for a in (y, y_pred, w) if a is not None]
        input_devices.append(len(arrays[0].sharding.device_set))
        return jax.jit(loss)(*arrays)

    return {
        "replicas": len(devices),
        "kernel_devices": kernel_devices,
        "even": compare(single, multi),
        "single_values": loss_values(lambda loss, y, p, w: loss(y, p, w)),
        "sharded_values": loss_values(sharded),
        "input_devices": sorted(set(input_devices)),
    }


def main(backend: str) -> None:
    if os.environ.get("KERAS_BACKEND") != backend:
        raise SystemExit(f"set KERAS_BACKEND={backend} for this run")
    result = run_tensorflow() if backend == "tensorflow" else run_jax()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
