"""Benchmark: latency of PolicyRunner.infer() against a direct onnxruntime session.run().

Three ways of running the same step graph, each paced at the control rate:

``session.run``   the bare onnxruntime call (image already at model size, state fed back)
``model.step``    LoadedModel.step: image checks/resize, state checks, float64 action
``runner.infer``  PolicyRunner.infer: hand-off to the worker thread and back, NaN checks

``runner.infer - session.run`` is the price of running the model on a worker
thread with a deadline.  Without ``--model`` a dummy policy is built with
``brain.policy.testing`` (needs the ``dev`` extra for ``onnx``).

    python bench/policy_runner.py --seconds 10 --json bench/results/policy_runner.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brain.policy import PolicyRunner, load_model


def _paced(fn: Callable[[], object], seconds: float, rate_hz: float) -> np.ndarray:
    """Call ``fn`` at ``rate_hz`` (0: back to back) for ``seconds``; per-call wall times in s."""
    times: list[float] = []
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.monotonic() >= end:
            break
        if period:
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()
    return np.asarray(times)


def _summary(times: np.ndarray) -> dict[str, float]:
    ms = times * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "n": int(ms.size),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seconds", type=float, default=9.0, help="total run time (split over 3 modes)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--rate-hz", type=float, default=50.0, help="call rate; 0 = back to back")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--model", type=Path, default=None, help="ONNX step graph (default: dummy)")
    ap.add_argument("--deadline-ms", type=float, default=30.0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from brain.policy.testing import build_dummy_policy

            path = build_dummy_policy(Path(tmp) / "dummy.onnx", version="bench-dummy")
        model = load_model(path, threads=args.threads)

    h, w = model.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    per_mode = args.seconds / 3.0

    # 1. bare session.run
    feeds = {"image": image[np.newaxis], **model.initial_recurrent()}
    names = model.output_names

    def direct() -> None:
        outs = model.session.run(names, feeds)
        for spec, value in zip(model.recurrent, outs[1:], strict=True):
            feeds[spec.name] = value

    # 2. LoadedModel.step
    state = {"s": model.initial_recurrent()}

    def step() -> None:
        _, state["s"] = model.step(image, state["s"])

    results: dict[str, dict[str, float]] = {}
    results["session.run"] = _summary(_paced(direct, per_mode, args.rate_hz))
    results["model.step"] = _summary(_paced(step, per_mode, args.rate_hz))

    # 3. PolicyRunner.infer
    misses = {"none": 0}
    with PolicyRunner(model, deadline_s=args.deadline_ms / 1000.0) as runner:

        def infer() -> None:
            if runner.infer(image, time.monotonic()) is None:
                misses["none"] += 1

        results["runner.infer"] = _summary(_paced(infer, per_mode, args.rate_hz))
        stats = runner.stats()

    overhead = {
        "p50_ms": results["runner.infer"]["p50_ms"] - results["session.run"]["p50_ms"],
        "p99_ms": results["runner.infer"]["p99_ms"] - results["session.run"]["p99_ms"],
    }
    report = {
        "benchmark": "policy_runner",
        "model": {
            "path": str(args.model) if args.model else "dummy (brain.policy.testing)",
            "version": model.version,
            "input_hw": list(model.input_size),
            "action_size": model.action_size,
            "recurrent": {s.name: list(s.shape) for s in model.recurrent},
        },
        "config": {
            "seconds": args.seconds,
            "rate_hz": args.rate_hz,
            "threads": args.threads,
            "deadline_ms": args.deadline_ms,
        },
        "env": {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": results,
        "runner_overhead": overhead,
        "runner_none_results": misses["none"],
        "runner_stats": {k: v for k, v in stats.items() if k != "last_error"},
    }

    print(
        f"policy runner benchmark: {h}x{w} input, {model.action_size} actions, "
        f"{args.rate_hz:g} Hz, {args.threads} thread(s), ort {ort.__version__}"
    )
    print(f"{'mode':<14}{'n':>7}{'mean ms':>10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for mode, r in results.items():
        print(
            f"{mode:<14}{r['n']:>7}{r['mean_ms']:>10.3f}{r['p50_ms']:>10.3f}"
            f"{r['p99_ms']:>10.3f}{r['max_ms']:>10.3f}"
        )
    print(
        f"hand-off overhead (runner.infer - session.run): p50 {overhead['p50_ms']:+.3f} ms, "
        f"p99 {overhead['p99_ms']:+.3f} ms; results dropped: {misses['none']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
