"""SmoothL1Loss under data parallelism: several virtual CPU devices against one.

The classic model (Dense 64 relu, Dense 64 relu, Dense 2) is trained with every
reduction, ``axis=-1`` and ``axis=None``, with and without ``sample_weight``, on
one device and on four, on the same global batches, with plain SGD (which, unlike
Adam, passes a wrong loss scale straight into the weights). The devices must be
set up before the backend starts, so ``tests/distributed_multidevice.py`` runs in
a fresh process and prints what it measured; the assertions are here.

Backends: TensorFlow (``tf.distribute.MirroredStrategy`` over 4 logical CPUs) and
JAX (``keras.distribution.DataParallel`` over 4 host CPU devices forced by
``XLA_FLAGS``). Keras 3 has no data-parallel training for the PyTorch backend:
``keras.distribution`` is implemented for JAX only, and ``tf.distribute`` is
TensorFlow's; with PyTorch one wraps the model in ``DistributedDataParallel`` and
writes the training loop oneself, outside ``fit``.

Reference values: the single-device run in the same process, and the piecewise
definition of Smooth L1 (Fast R-CNN) with Keras's reductions written out in NumPy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import distributed_multidevice as setup
from conftest import BACKEND

ROOT = Path(__file__).resolve().parent.parent
# float32 training on 4 devices sums the gradients of the replicas in another
# order than one device: a few float32 roundings (6e-8 relative each) per step.
# The weights are of order 0.1 to 1, so 1e-6 is some 10 roundings; a wrong loss
# scale would move them by a fraction of the change training makes (> 1e-3).
WEIGHT_ATOL = 1e-6
LOSS_RTOL = 1e-6
MOVED = 1e-3


def run(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if backend == "jax":
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "distributed_multidevice.py"), backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> dict:
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip("multi-device runs cover TensorFlow and JAX")
    return run(BACKEND)


# ---------------------------------------------------------------- NumPy reference


def smooth_l1(d: np.ndarray, beta: float) -> np.ndarray:
    """The piecewise definition (Fast R-CNN), in float64."""
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d**2 / beta, a - 0.5 * beta)


def reference(
    y: np.ndarray,
    y_pred: np.ndarray,
    weight: np.ndarray | None,
    reduction: str,
    axis: int | None,
) -> np.ndarray:
    """Keras's reductions of ``keras.losses.Loss`` over per-sample (``axis=-1``)
    or per-element (``axis=None``) values; weights have the values' shape."""
    values = smooth_l1(y_pred.astype("float64") - y, setup.BETA)
    if axis == -1:
        values = values.mean(axis=-1)
    weighted = values if weight is None else values * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_with_sample_weight" and weight is not None:
        return weighted.sum() / weight.sum()
    return weighted.sum() / values.size  # sum_over_batch_size, mean


def first_batch() -> dict:
    data = setup.make_data()
    return {k: v[: setup.BATCH].astype("float64") for k, v in data.items()}


def cases():
    """(key, reduction, axis, weights or None) for every value the run reports."""
    batch = first_batch()
    for reduction in (*setup.REDUCTIONS, "none"):
        for axis in (-1, None):
            weights = batch["per_row"] if axis == -1 else batch["per_element"]
            for weighted in (False, True):
                key = f"{reduction}|{axis}|{weighted}"
                yield key, reduction, axis, weights if weighted else None


def test_reference_tells_global_from_per_device_normalizers():
    """The data can tell the global reduction from the per-device one that
    Keras alone computes under tf.distribute, so the tests below can fail."""
    batch = first_batch()
    y, y_pred, w = batch["y"], batch["y_pred"], batch["per_row"]
    values = smooth_l1(y_pred - y, setup.BETA).mean(axis=-1) * w
    glob = values.sum() / w.sum()
    # Keras per replica: its own weighted mean, divided by the replicas; summed.
    quarters = np.split(np.arange(setup.BATCH), setup.REPLICAS)
    local = sum(values[q].sum() / w[q].sum() for q in quarters) / setup.REPLICAS
    assert abs(local - glob) > 0.1 * glob
    # (The uneven batch needs no data: 6 rows as 2, 2, 2, 0, Keras divides each
    # replica's sum by its own 2 rows and by 4 replicas, the sum by 8, not 6.)


# ---------------------------------------------------------------- training


def check_training(part: dict, branches: list[str], logged: str | None = None) -> None:
    """Same start, moved weights, equal trained weights and equal logged losses
    (every logged loss, or only the one named ``logged``)."""
    assert sorted(part["branches"]) == sorted(branches)
    for key, branch in part["branches"].items():
        assert branch["initial_difference"] == 0.0, key  # same start on both
        assert branch["weight_change"] > MOVED, key  # training did move them
        assert branch["weight_difference"] < WEIGHT_ATOL, key
    for group, logs in part["single"].items():
        assert part["multi"][group].keys() == logs.keys()
        for name, values in logs.items():
            if logged is not None and name != logged:
                continue
            assert len(values) == setup.EPOCHS
            np.testing.assert_allclose(
                part["multi"][group][name], values, rtol=LOSS_RTOL, err_msg=name
            )


def test_training_on_four_devices_equals_one_device(measured):
    """Every reduction x axis x weighting: the same logged losses (per branch and
    Keras's total) and the same trained weights as on one device."""
    assert measured["replicas"] == 4
    branches = [setup.name(i) for i in range(len(setup.CONFIGS))]
    check_training(measured["even"], branches)
    # Reductions equal by definition log equal losses: without weights, mean and
    # mean_with_sample_weight are sum_over_batch_size.
    unweighted = measured["even"]["multi"]["unweighted"]
    default = setup.CONFIGS.index(
        {"reduction": "sum_over_batch_size", "axis": -1, "weighted": False}
    )
    for reduction in ("mean", "mean_with_sample_weight"):
        index = setup.CONFIGS.index(
            {"reduction": reduction, "axis": -1, "weighted": False}
        )
        np.testing.assert_allclose(
            unweighted[f"{setup.name(index)}_loss"],
            unweighted[f"{setup.name(default)}_loss"],
            rtol=LOSS_RTOL,
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow splits unevenly")
def test_uneven_last_batch_equals_one_device(measured):
    """22 rows in batches of 8: the last 6 rows go 2, 2, 2, 0 to the replicas.
    The gradients and Keras's logged total loss are still those of one device,
    for the default reduction and for the weighted mean (two branches of one
    model; Keras logs each output's own loss unweighted by rows, so on uneven
    batches only the total compares)."""
    branches = [setup.name(i) for i in setup.UNEVEN]
    check_training(measured["uneven"], branches, logged="loss")


# ---------------------------------------------------------------- loss values


def test_single_device_values_match_the_definition(measured):
    batch = first_batch()
    for key, reduction, axis, weights in cases():
        expected = reference(batch["y"], batch["y_pred"], weights, reduction, axis)
        np.testing.assert_allclose(
            measured["single_values"][key], expected, rtol=LOSS_RTOL, err_msg=key
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute replicas")
def test_replica_values_add_up_to_the_global_batch(measured):
    """strategy.run on a batch split in four: each replica returns its rows' sum
    over the global divisor, so that the four add up to the one-device loss (the
    gradients that MirroredStrategy sums do too); "none" gives each row's value.
    In the strategy's scope but outside its replicas, the whole batch is one
    value, not divided by the number of replicas."""
    batch = first_batch()
    quarters = np.split(np.arange(setup.BATCH), setup.REPLICAS)
    for key, reduction, axis, weights in cases():
        single = np.asarray(measured["single_values"][key])
        replicas = np.asarray(measured["replica_values"][key])
        if reduction == "none":
            np.testing.assert_allclose(replicas, single, rtol=LOSS_RTOL, err_msg=key)
            continue
        np.testing.assert_allclose(replicas.sum(), single, rtol=LOSS_RTOL, err_msg=key)
        full = reference(batch["y"], batch["y_pred"], weights, "none", axis)
        divisor = {"sum": 1.0}.get(reduction, full.size)
        if reduction == "mean_with_sample_weight" and weights is not None:
            divisor = weights.sum()
        expected = [full[q].sum() / divisor for q in quarters]
        np.testing.assert_allclose(replicas, expected, rtol=LOSS_RTOL, err_msg=key)
        np.testing.assert_allclose(
            measured["cross_replica_values"][key], single, rtol=LOSS_RTOL
        )


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_sharded_values_equal_one_device(measured):
    """The loss jitted on a batch sharded over the four devices along its rows
    (as keras.distribution.DataParallel feeds it) is the one-device loss."""
    assert measured["kernel_devices"] == 4  # variables replicated on all four
    assert measured["input_devices"] == [4]
    for key, *_ in cases():
        np.testing.assert_allclose(
            measured["sharded_values"][key],
            measured["single_values"][key],
            rtol=LOSS_RTOL,
            err_msg=key,
        )


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch case")
def test_torch_has_no_keras_data_parallel_training():
    pytest.skip(
        "PyTorch: Keras 3 has no data-parallel fit for the torch backend "
        "(keras.distribution is implemented for JAX only; tf.distribute is "
        "TensorFlow's); DistributedDataParallel needs a hand-written loop"
    )
