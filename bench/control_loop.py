"""Benchmark: the daemon's own control loop on the simulated robot.

The real daemon runs as a subprocess (bench/harness.py); the sim's expert
drives in AUTONOMOUS while a dummy ONNX policy runs every tick in shadow mode
and the camera renders 640x480 at 30 fps.  Timing comes from the daemon's own
statistics over its control socket; CPU and RSS from psutil on its pid.

    python bench/control_loop.py --seconds 20 --hz 20 50 --json bench/results/control_loop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import Daemon, measure, print_table, sim_config, sleep_floor

from brain.policy.testing import build_dummy_policy

TARGETS_50HZ = {
    "jitter_p99_ms": 1.0,
    "latency_p99_ms": 15.0,
    "overruns": 0,
    "rss_mb": 250.0,
    "startup_ready_s": 2.0,
}


def run_one(hz: float, seconds: float, tmp: Path, model: Path) -> dict:
    cfg = sim_config(
        tmp,
        f"loop-{hz:g}",
        control={"rate_hz": hz, "autopilot": "expert", "stats_window": 100_000},
        policy={"model": str(model), "threads": 1, "shadow": True},
    )
    d = Daemon(cfg, tmp, f"loop-{hz:g}")
    try:
        ready = d.wait_ready()
        d.cmd("mode", mode="autonomous")
        time.sleep(1.0)  # let the car get going and caches warm
        d.cmd("reset_stats")
        usage = measure(d, seconds)
        stats = d.cmd("stats")
        rc, stop_s = d.stop()
    finally:
        d.kill()
    c = stats["control"]
    sim = stats.get("sim") or {}
    return {
        "hz": hz,
        "seconds": seconds,
        "ticks": c["ticks"],
        "overruns": c["overruns"],
        "jitter_p50_ms": c["jitter_ms"]["p50"],
        "jitter_p99_ms": c["jitter_ms"]["p99"],
        "jitter_max_ms": c["jitter_ms"]["max"],
        "compute_p99_ms": c["compute_ms"]["p99"],
        "latency_p50_ms": c["latency_ms"]["p50"],
        "latency_p99_ms": c["latency_ms"]["p99"],
        "frame_age_p99_ms": c["frame_age_ms"]["p99"],
        "policy_p50_ms": (stats.get("policy") or {}).get("latency_p50_ms"),
        "camera_fps": (stats["sensors"].get("camera") or {}).get("fps"),
        **usage,
        "startup_ready_s": round(ready, 3),
        "shutdown_s": round(stop_s, 3),
        "exit_code": rc,
        "sim_laps": sim.get("laps"),
        "sim_off_track_events": sim.get("off_track_events"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hz", type=float, nargs="+", default=[20.0, 50.0])
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="cb-bench-") as d:
        tmp = Path(d)
        model = tmp / "dummy.onnx"
        build_dummy_policy(model)
        for hz in args.hz:
            floor = sleep_floor(hz)
            results.append({**run_one(hz, args.seconds, tmp, model), **floor})
    print_table(
        "control loop on the simulated robot (expert driving, dummy ONNX policy every tick)",
        results,
        [
            ("hz", "hz"),
            ("ticks", "ticks"),
            ("overruns", "overruns"),
            ("jitter_p50_ms", "jit p50"),
            ("jitter_p99_ms", "jit p99"),
            ("jitter_max_ms", "jit max"),
            ("floor_jitter_p99_ms", "floor p99"),
            ("compute_p99_ms", "tick p99"),
            ("latency_p50_ms", "lat p50"),
            ("latency_p99_ms", "lat p99"),
            ("cpu_percent", "cpu %"),
            ("rss_mb", "rss MB"),
            ("startup_ready_s", "ready s"),
        ],
    )
    at50 = [r for r in results if r["hz"] == 50.0]
    if at50:
        met = {k: at50[0][k] <= v for k, v in TARGETS_50HZ.items()}
        print(
            "targets at 50 Hz:",
            ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()),
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"results": results, "targets_50hz": TARGETS_50HZ}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
