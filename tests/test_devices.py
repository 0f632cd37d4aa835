"""``smoothl1 fit --devices N``: the plan, its errors, and four virtual CPU devices
against one (in memory and with ``--stream``).

The four-device runs need the devices set up before the backend starts, so
``tests/devices_cli.py`` runs them in a fresh process (TensorFlow: 4 logical
CPUs; JAX: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and prints
what the commands returned; the assertions are here. PyTorch has no
data-parallel path in Keras, which the command says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import BACKEND
from smoothl1.cli.app import app
from smoothl1.cli.devices import DataParallel

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# Adam on float32, 18 steps, with the four devices' gradients summed in another
# order than one device's: a few float32 roundings (6e-8 relative) per step.
RTOL = 1e-6


def test_even_cuts_to_a_multiple_of_the_devices():
    plan = DataParallel(devices=4, backend="jax", names=["a", "b", "c", "d"])
    x, y = np.arange(10)[:, None], np.arange(10)
    cut_x, cut_y = plan.even((x, y))
    assert len(cut_x) == len(cut_y) == 8  # 10 - 10 % 4
    np.testing.assert_array_equal(cut_y, np.arange(8))
    assert plan.even_rows(8) == 8 and plan.even_rows(3) == 0


class Recorder:
    """A stand-in for a model: predicts the first feature, records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def predict(self, x, batch_size, verbose):
        self.calls.append((len(x), batch_size))
        return x[:, :1] * 2.0


def test_predict_pads_to_the_devices_and_keeps_every_row():
    plan = DataParallel(devices=4, backend="jax", names=["a", "b", "c", "d"])
    model = Recorder()
    x = np.arange(10, dtype="float32")[:, None]
    np.testing.assert_array_equal(plan.predict(model, x, batch_size=7), x * 2.0)
    # 10 rows padded with 2 to 12; batches of 4 (7 cut to a multiple of 4)
    assert model.calls == [(12, 4)]
    one = Recorder()
    DataParallel().predict(one, x, batch_size=7)
    assert one.calls == [(10, 7)]  # one device: as given


def invoke(*args: str):
    return runner.invoke(app, ["fit", *args, "--epochs", "1", "--quiet"])


def test_devices_must_be_positive(tmp_path):
    result = invoke("--devices", "0", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "--devices must be positive; got 0" in result.stderr
    assert not (tmp_path / "r").exists()


def test_more_devices_than_the_backend_has(tmp_path):
    result = invoke("--devices", "64", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    if BACKEND == "torch":
        assert "the torch backend has no data-parallel training" in result.stderr
    else:
        # This process sets up no extra devices: one CPU.
        assert f"--devices 64: the {BACKEND} backend sees 1 local" in result.stderr
        assert "xla_force_host_platform_device_count" in result.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- four devices


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict:
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip("Keras has data-parallel fit on TensorFlow and JAX only")
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if BACKEND == "jax":
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4"
    folder = tmp_path_factory.mktemp("devices")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "devices_cli.py"), BACKEND, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_same_errors(one: dict, four: dict) -> None:
    for split in ("train", "validation", "test"):
        assert four[split]["rows"] == one[split]["rows"], split
        for key in ("mae", "rmse", "median_ae", "r2", "fraction_beyond_beta"):
            np.testing.assert_allclose(
                four[split][key], one[split][key], rtol=RTOL, err_msg=(split, key)
            )


def test_four_devices_equal_one(commands):
    one, four = commands["one"], commands["four"]
    assert one["exit_code"] == four["exit_code"] == 0, (one, four)
    assert len(four["metrics"]["devices"]["names"]) == 4
    # 264 training rows split over 4 devices; 90 validation rows leave 2 out.
    assert four["metrics"]["rows_left_out_for_devices"] == {
        "train": 0,
        "validation": 2,
    }
    check_same_errors(one["metrics"], four["metrics"])
    # The rows the devices leave out are still predicted and measured.
    assert four["metrics"]["validation"]["rows"] == 90


def test_four_devices_equal_one_when_streaming(commands):
    one, four = commands["stream_one"], commands["stream_four"]
    assert one["exit_code"] == four["exit_code"] == 0, (one, four)
    assert four["metrics"]["rows_left_out_for_devices"] == {
        "train": 0,
        "validation": 0,
    }
    check_same_errors(one["metrics"], four["metrics"])


def test_device_errors_exit_2(commands):
    too_many, uneven = commands["too_many"], commands["uneven_batch"]
    assert too_many["exit_code"] == 2
    assert f"--devices 8: the {BACKEND} backend sees 4 local" in too_many["stderr"]
    assert uneven["exit_code"] == 2
    assert "--batch-size 32 is not a multiple of --devices 3" in uneven["stderr"]


@pytest.mark.skipif(BACKEND != "jax", reason="the several-hosts recipe is for JAX")
def test_several_hosts_recipe_runs_on_one_host(tmp_path):
    """examples/several_hosts.py on one host with four virtual devices (the
    several-host start itself cannot be tested here)."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} " + (
        "--xla_force_host_platform_device_count=4"
    )
    env.pop("KERAS_DISTRIBUTION_NUM_PROCESSES", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    out = tmp_path / "run"
    args = ["diabetes", "--epochs", "2", "--batch-size", "32", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "several_hosts.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # diabetes: 266 training rows, cut to 264 for 4 devices
    assert (report["host"], report["hosts"], report["devices"]) == (0, 1, 4)
    assert report["train_rows_here"] == 264
    assert np.isfinite([report["final_loss"], report["test_loss"]]).all()
    assert (out / "model.keras").is_file() and (out / "preprocessing.json").is_file()
