"""Training-step time of an image-to-image conv net with SmoothL1Loss against
keras.losses.Huber, on every Keras backend.

    python benchmarks/train_step.py            # 256 x 256 x 3 images, batch 8
    python benchmarks/train_step.py --quick    # 128 x 128 x 3, fewer steps
    python benchmarks/train_step.py --cpus 1   # each backend pinned to one core

The net maps an image to an image of the same size (three 3 x 3 convolutions: 16,
16 and 3 filters, ``"same"`` padding), the shape of super-resolution, denoising or
depth models, where the loss covers every pixel: 8 x 256 x 256 x 3 = 1.6 million
elements a step. Copies with the same initial weights are compiled, one with
``smoothl1.SmoothL1Loss(beta=1.0)`` and one with ``keras.losses.Huber(delta=1.0)``
(the same function at beta = delta = 1), and a third with Huber again, whose
ratio to the second measures the noise; all with SGD, in the mode Keras trains in:
XLA on TensorFlow, ``jax.jit`` on JAX, eager on PyTorch. Their ``train_on_batch``
steps alternate (which goes first alternates too), after two warm-up steps each;
the figure is the median step and the ratio of the two medians. Each backend runs
in its own subprocess, with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed
from its environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import _worker
import numpy as np

BACKENDS = ("jax", "tensorflow", "torch")


def worker(backend: str, size: int, batch: int, steps: int) -> dict:
    import keras

    import smoothl1

    assert keras.backend.backend() == backend
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = (x + rng.normal(scale=0.5, size=x.shape)).astype("float32")

    def build(loss: Any, weights: list | None = None) -> keras.Model:
        model = keras.Sequential(
            [
                keras.Input((size, size, 3)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(3, 3, padding="same"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3),
            loss=loss,
            jit_compile=backend != "torch",
        )
        if weights is not None:
            model.set_weights(weights)
        return model

    ours = build(smoothl1.SmoothL1Loss(beta=1.0))
    # The same initial weights for both losses.
    huber = build(keras.losses.Huber(delta=1.0), ours.get_weights())
    # A second, identical Huber model: its ratio to the first is the noise floor.
    control = build(keras.losses.Huber(delta=1.0), ours.get_weights())
    models = {"SmoothL1Loss": ours, "keras Huber": huber, "Huber again": control}
    for model in models.values():
        for _ in range(2):
            model.train_on_batch(x, y)
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(steps):
        print(f"{backend}: step {step + 1} of {steps}", file=sys.stderr)
        order = list(models.items())
        for name, model in order if step % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"backend": backend, "median_step_s": medians, "steps": steps}


def run_backend(backend: str, args: argparse.Namespace) -> dict:
    arguments = ["--size", str(args.size), "--batch", str(args.batch)]
    arguments += ["--steps", str(args.steps)]
    arguments += ["--cpus", str(args.cpus)] if args.cpus else []
    return _worker.run_worker(__file__, backend, arguments)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 x 128, 5 steps")
    parser.add_argument("--size", type=int, default=None, help="image side (256)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="pin each backend's subprocess to this many CPUs (default: all)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (128 if args.quick else 256)
    args.steps = args.steps or (5 if args.quick else 10)
    if args.worker:
        _worker.pin_cpus(args.cpus)
        print(json.dumps(worker(args.worker, args.size, args.batch, args.steps)))
        return
    start = time.perf_counter()
    results = [run_backend(b, args) for b in args.backends]
    print(
        f"Median train_on_batch step of interleaved runs, {args.steps} steps each; "
        f"batch {args.batch} of {args.size} x {args.size} x 3; "
        f"{args.cpus or os.cpu_count()} of {os.cpu_count()} CPUs per backend; load "
        f"average at the end {os.getloadavg()[0]:.1f}; "
        f"{time.perf_counter() - start:.0f} s in all.\n"
    )
    print(
        "| backend | SmoothL1Loss step ms | keras Huber step ms "
        "| SmoothL1Loss / Huber | control: Huber again / Huber |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        t = r["median_step_s"]
        ours, huber, again = t["SmoothL1Loss"], t["keras Huber"], t["Huber again"]
        print(
            f"| {r['backend']} | {ours * 1e3:.0f} | {huber * 1e3:.0f} "
            f"| {ours / huber:.3f} | {again / huber:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
