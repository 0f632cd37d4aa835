"""Speed and memory of SmoothL1Loss against keras.losses.Huber, PyTorch's native
smooth_l1_loss and the memory-bandwidth floor, on every Keras backend.

    python benchmarks/loss_speed.py            # N = 1e5, 1e6, 1e7 (1 to 2 minutes)
    python benchmarks/loss_speed.py --quick    # N = 1e5, 1e6, fewer repeats
    python benchmarks/loss_speed.py --cpus 1   # each backend pinned to one core

Keras picks one backend per process, so each backend runs in its own subprocess, in
the mode Keras trains in: TensorFlow inside ``tf.function(jit_compile=True)`` (XLA),
JAX inside ``jax.jit``, PyTorch eagerly. For each N (float32 elements, laid out as
``(N / 4, 4)``: one row of four box coordinates per sample, so the losses average
over the last axis as Keras does), every implementation is timed forward (the loss
value) and forward+backward (value and gradient with respect to ``y_pred``):

- ``SmoothL1Loss``: ``smoothl1.SmoothL1Loss(beta=1.0)`` on the backend;
- ``keras Huber``: ``keras.losses.Huber(delta=1.0)`` on the backend (the same
  function at beta = delta = 1);
- ``torch native``: ``torch.nn.functional.smooth_l1_loss`` (mean, beta 1), in the
  PyTorch subprocess only (PyTorch's OpenMP threads, which keep spinning after a
  call, would slow the XLA calls interleaved with them);
- ``backend x + y``: the backend's own elementwise sum in the same mode, which
  pays for a fresh N-sized result as every gradient does;
- ``floor``: ``numpy.add(a, b, out=c)``, which reads two N-sized arrays and
  writes one into an existing buffer: 12 N bytes, the least traffic of a loss and
  its gradient.

The implementations run interleaved (one call of each in turn, in alternating
order, ``repeats`` times, after a warm-up call that also compiles), and each figure
is the median. Ratios compare figures of the same run; absolute times on a shared
machine mean little. On a machine shared with other work, ``--cpus 1`` keeps the
backends' thread pools from waiting on threads the system has descheduled.

Memory kept for the backward pass: on PyTorch, the tensors saved by autograd
(``torch.autograd.graph.saved_tensors_hooks``), counted by distinct storage, with
how many are the inputs themselves; on JAX, the arrays held by ``jax.vjp``'s
backward function outside ``jit`` and the compiled function's temporary memory
(``jax.jit(...).lower(...).compile().memory_analysis()``); on TensorFlow, which
reports no memory for a compiled function on CPU, the N-sized intermediate buffers
in XLA's optimized HLO.

The subprocesses run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed
from their environment (where set, they slow NumPy's floor); the caller's
environment is left alone. Results go to stdout as Markdown tables, progress to
stderr, and all figures to ``--json FILE`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import _worker
import numpy as np

BACKENDS = ("jax", "tensorflow", "torch")
MODES = {"jax": "jax.jit", "tensorflow": "XLA", "torch": "eager"}
SIZES = (10**5, 10**6, 10**7)
QUICK_SIZES = (10**5, 10**6)
COORDINATES = 4
IMPLEMENTATIONS = (
    "SmoothL1Loss",
    "keras Huber",
    "torch native",
    "backend x + y",
    "floor",
)


def repeats_for(n: int, quick: bool) -> int:
    """Fewer repeats for larger N: a 1e7 call of the slowest loss takes seconds."""
    full = {10**5: 51, 10**6: 31, 10**7: 11}
    fast = {10**5: 11, 10**6: 7, 10**7: 3}
    table = fast if quick else full
    return table.get(n, 5)


# ---------------------------------------------------------------- in the worker


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call, with the calls run in turn (forwards, then
    backwards, and so on), after one warm-up call each."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for repeat in range(repeats):
        for name, call in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(_timed(call))
    return {name: statistics.median(t) for name, t in times.items()}


# HLO instructions that compute no new buffer.
_NO_BUFFER = ("parameter(", "bitcast(", "get-tuple-element(", "tuple(", "constant(")


def _hlo_temporaries(text: str, n: int) -> int:
    """N-sized buffers computed in the entry computation of an HLO module that are
    neither parameters nor outputs."""
    lines = text[text.index("\nENTRY") :].splitlines()[1:]
    roots = next((line for line in lines if "ROOT" in line), "")
    count = 0
    for line in lines:
        if "=" not in line or "ROOT" in line or any(op in line for op in _NO_BUFFER):
            continue
        name, _, rest = line.strip().partition(" = ")
        shape = rest.split("{", 1)[0].split(" ", 1)[0]
        if not shape.startswith("f32[") or name in roots:
            continue
        dims = [int(x) for x in shape[4:-1].split(",") if x]
        if dims and int(np.prod(dims)) >= n:
            count += 1
    return count


def _torch_saved(fn: Callable[[], Any], inputs: tuple[Any, ...], n: int) -> dict:
    """Tensors autograd saves for the backward pass of ``fn()``."""
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = fn()
    del value
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    large = {ptr: size for ptr, size in seen.items() if size >= 4 * n}
    return {
        "saved": len(seen),
        "n_sized": len(large),
        "n_sized_inputs": len(set(large) & input_ptrs),
        "bytes": sum(seen.values()),
    }


def _tf_functions(loss: Any) -> tuple[Any, Any]:
    """The loss value, and the value and gradient, each compiled with XLA."""
    import tensorflow as tf

    def value(p: Any, t: Any) -> Any:
        return loss(t, p)

    def value_and_grad(p: Any, t: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(p)
            v = loss(t, p)
        return v, tape.gradient(v, p)

    return (
        tf.function(value, jit_compile=True),
        tf.function(value_and_grad, jit_compile=True),
    )


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=(n // COORDINATES, COORDINATES)).astype("float32")
    # Residuals of scale 2: about half inside beta = 1, half outside.
    y_pred = (y_true + rng.normal(scale=2.0, size=y_true.shape)).astype("float32")
    return y_true, y_pred


Calls = dict[str, Callable[[], Any]]


def _ready(fn: Callable[..., Any], *args: Any) -> Any:
    """Calls a jitted JAX function and waits for its results."""
    import jax

    return jax.block_until_ready(fn(*args))


def _jax_calls(losses: dict, y_true: np.ndarray, y_pred: np.ndarray) -> tuple:
    import jax

    n = y_true.size
    jt, jp = jax.device_put(y_true), jax.device_put(y_pred)
    fwd: Calls = {}
    fb: Calls = {}
    memory: dict[str, dict] = {}
    for name, loss in losses.items():

        def value(p: Any, t: Any, loss: Any = loss) -> Any:
            return loss(t, p)

        f, g = jax.jit(value), jax.jit(jax.value_and_grad(value))
        fwd[name] = partial(_ready, f, jp, jt)
        fb[name] = partial(_ready, g, jp, jt)
        compiled = g.lower(jp, jt).compile()
        analysis = compiled.memory_analysis()
        _, backward = jax.vjp(value, jp, jt)
        kept = [x for x in jax.tree_util.tree_leaves(backward) if hasattr(x, "size")]
        memory[name] = {
            "vjp_arrays_n_sized": sum(int(x.size) >= n for x in kept),
            "vjp_inputs": sum(x is jp or x is jt for x in kept),
            "vjp_bytes": sum(int(x.nbytes) for x in kept),
            "jit_temp_bytes": int(getattr(analysis, "temp_size_in_bytes", -1)),
            "jit_n_sized_temporaries": _hlo_temporaries(compiled.as_text() or "", n),
        }
    fwd["backend x + y"] = partial(_ready, jax.jit(lambda x, y: x + y), jp, jt)
    return fwd, fb, memory


def _tf_calls(losses: dict, y_true: np.ndarray, y_pred: np.ndarray) -> tuple:
    import tensorflow as tf

    n = y_true.size
    tt, tp = tf.constant(y_true), tf.constant(y_pred)
    fwd: Calls = {}
    fb: Calls = {}
    memory: dict[str, dict] = {}
    for name, loss in losses.items():
        f, g = _tf_functions(loss)
        fwd[name] = partial(f, tp, tt)
        fb[name] = partial(g, tp, tt)
        hlo = g.experimental_get_compiler_ir(tp, tt)(stage="optimized_hlo")
        memory[name] = {"jit_n_sized_temporaries": _hlo_temporaries(hlo, n)}
    fwd["backend x + y"] = partial(tf.function(tf.add, jit_compile=True), tp, tt)
    return fwd, fb, memory


def _torch_calls(losses: dict, y_true: np.ndarray, y_pred: np.ndarray) -> tuple:
    import torch

    n = y_true.size
    tt, tp = torch.from_numpy(y_true), torch.from_numpy(y_pred).requires_grad_()
    losses = {
        **losses,
        "torch native": lambda t, p: torch.nn.functional.smooth_l1_loss(p, t),
    }
    fwd: Calls = {}
    fb: Calls = {}
    memory: dict[str, dict] = {}
    for name, loss in losses.items():

        def value_and_grad(loss: Any = loss) -> Any:
            tp.grad = None
            v = loss(tt, tp)
            v.backward()
            return v

        fwd[name] = partial(loss, tt, tp)
        fb[name] = value_and_grad
        memory[name] = _torch_saved(fwd[name], (tt, tp), n)
    fwd["backend x + y"] = partial(torch.add, tt, tp.detach())
    return fwd, fb, memory


def worker(backend: str, sizes: list[int], quick: bool) -> dict:
    import keras

    import smoothl1

    assert keras.backend.backend() == backend
    losses = {
        "SmoothL1Loss": smoothl1.SmoothL1Loss(beta=1.0),
        "keras Huber": keras.losses.Huber(delta=1.0),
    }
    build = {"jax": _jax_calls, "tensorflow": _tf_calls, "torch": _torch_calls}
    results = []
    for n in sizes:
        y_true, y_pred = _data(n)
        fwd, fb, memory = build[backend](losses, y_true, y_pred)
        a, b, c = y_true.ravel(), y_pred.ravel(), np.empty(n, "float32")
        fwd["floor"] = fb["floor"] = partial(np.add, a, b, out=c)
        repeats = repeats_for(n, quick)
        print(f"{backend}: N={n:.0e}, {repeats} repeats", file=sys.stderr)
        forward = _interleaved(fwd, repeats)
        both = _interleaved(fb, repeats)
        results.append(
            {
                "n": n,
                "repeats": repeats,
                "forward_s": forward,
                "forward_backward_s": both,
                "memory": memory,
            }
        )
    return {"backend": backend, "mode": MODES[backend], "sizes": results}


# ---------------------------------------------------------------- in the parent


def run_backend(backend: str, sizes: list[int], quick: bool, cpus: int | None) -> dict:
    arguments = ["--sizes", *map(str, sizes)] + (["--quick"] if quick else [])
    arguments += ["--cpus", str(cpus)] if cpus else []
    return _worker.run_worker(__file__, backend, arguments)


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3g}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}"


def table(results: list[dict]) -> str:
    """One Markdown table per backend: medians and ratios of the same run."""
    out = []
    for result in results:
        out.append(f"\n{result['backend']} ({result['mode']})\n")
        out.append(
            "| N | implementation | fwd ms | fwd / floor | fwd+bwd ms "
            "| fwd+bwd / floor | fwd+bwd / torch native | fwd+bwd / keras Huber |"
        )
        out.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size in result["sizes"]:
            fwd, fb = size["forward_s"], size["forward_backward_s"]
            floor, fb_floor = fwd["floor"], fb["floor"]
            for name in IMPLEMENTATIONS:
                if name not in fwd:
                    continue
                both = fb.get(name) if name != "floor" else None
                out.append(
                    f"| {size['n']:.0e} | {name} | {_ms(fwd[name])} "
                    f"| {_ratio(fwd[name], floor)} | {_ms(both)} "
                    f"| {_ratio(both, fb_floor)} "
                    f"| {_ratio(both, fb.get('torch native'))} "
                    f"| {_ratio(both, fb.get('keras Huber'))} |"
                )
    return "\n".join(out)


def memory_table(results: list[dict]) -> str:
    out = ["\nMemory kept for the backward pass, at the largest N\n"]
    out.append("| backend | implementation | measure |")
    out.append("| --- | --- | --- |")
    for result in results:
        size = result["sizes"][-1]
        for name, m in size["memory"].items():
            if result["backend"] == "torch":
                text = (
                    f"{m['n_sized']} N-sized saved tensors ({m['n_sized_inputs']} of "
                    f"them inputs), {m['saved']} in all, {m['bytes'] / 1e6:.1f} MB"
                )
            elif result["backend"] == "jax":
                text = (
                    f"jax.vjp keeps {m['vjp_arrays_n_sized']} N-sized arrays "
                    f"({m['vjp_inputs']} of them inputs, "
                    f"{m['vjp_bytes'] / 1e6:.1f} MB in all); jit: "
                    f"{m['jit_temp_bytes'] / 1e6:.1f} MB temporary, "
                    f"{m['jit_n_sized_temporaries']} N-sized temporaries"
                )
            else:
                text = f"XLA: {m['jit_n_sized_temporaries']} N-sized temporaries"
            out.append(f"| {result['backend']} | {name} | {text} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e5, 1e6 only")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="pin each backend's subprocess to this many CPUs (default: all); "
        "on a machine shared with other work, 1 keeps thread pools from waiting on "
        "descheduled threads",
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    if args.worker:
        _worker.pin_cpus(args.cpus)
        print(json.dumps(worker(args.worker, sizes, args.quick)))
        return
    start = time.perf_counter()
    results = [run_backend(b, sizes, args.quick, args.cpus) for b in args.backends]
    print(
        f"Medians of interleaved runs; y_true, y_pred float32 of shape (N/4, 4); "
        f"{args.cpus or os.cpu_count()} of {os.cpu_count()} CPUs per backend; "
        f"load average at the end "
        f"{os.getloadavg()[0]:.1f}; {time.perf_counter() - start:.0f} s in all."
    )
    print(table(results))
    print(memory_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
