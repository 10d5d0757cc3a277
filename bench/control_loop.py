"""Benchmark: the daemon's own control loop on the simulated robot, both tick triggers.

The real daemon runs as a subprocess (bench/harness.py); the sim's expert
drives in AUTONOMOUS while a dummy ONNX policy runs every tick in shadow mode
and the camera renders 640x480.  Each rate runs twice in the same run, one
daemon after the other: ``timer`` (fixed-rate ticks, the camera at its own
30 fps, the behaviour before frame triggering) and ``frame`` (a tick per new
frame, the camera rendering at the control rate).  Timing comes from the
daemon's own statistics over its control socket; CPU and RSS from psutil on
its pid; the bare-sleep floor is this machine's own wake-up jitter.

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

# Frame trigger at 50 Hz (issue 18); the timer row is reported beside it, not judged.
TARGETS_50HZ = {
    "latency_p50_ms": 8.0,
    "latency_p99_ms": 12.0,
    "jitter_p99_ms": 1.0,
    "overruns": 0,
    "frames_without_tick": 0,
}
TRIGGERS = ("timer", "frame")


def run_one(hz: float, trigger: str, seconds: float, tmp: Path, model: Path) -> dict:
    name = f"loop-{trigger}-{hz:g}"
    cfg = sim_config(
        tmp,
        name,
        control={
            "rate_hz": hz,
            "trigger": trigger,
            "autopilot": "expert",
            "stats_window": 100_000,
        },
        policy={"model": str(model), "threads": 1, "shadow": True},
    )
    d = Daemon(cfg, tmp, name)
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
        "trigger": c["trigger"],
        "seconds": seconds,
        "ticks": c["ticks"],
        "overruns": c["overruns"],
        "frame_ticks": c["frame_ticks"],
        "ticks_without_frame": c["ticks_without_frame"],
        "frames_without_tick": c["frames_without_tick"],
        "frame_period_p50_ms": (c.get("frame_period_ms") or {}).get("p50"),
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
    ap.add_argument("--trigger", nargs="+", choices=TRIGGERS, default=list(TRIGGERS))
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="cb-bench-") as d:
        tmp = Path(d)
        model = tmp / "dummy.onnx"
        build_dummy_policy(model)
        for hz in args.hz:
            floor = sleep_floor(hz)
            for trigger in args.trigger:
                results.append({**run_one(hz, trigger, args.seconds, tmp, model), **floor})
    print_table(
        "control loop on the simulated robot (expert driving, dummy ONNX policy every tick)",
        results,
        [
            ("hz", "hz"),
            ("trigger", "trigger"),
            ("ticks", "ticks"),
            ("overruns", "overruns"),
            ("jitter_p50_ms", "jit p50"),
            ("jitter_p99_ms", "jit p99"),
            ("floor_jitter_p99_ms", "floor p99"),
            ("frame_period_p50_ms", "frame ms"),
            ("latency_p50_ms", "lat p50"),
            ("latency_p99_ms", "lat p99"),
            ("frames_without_tick", "fr no tick"),
            ("ticks_without_frame", "tk no fr"),
            ("compute_p99_ms", "tick p99"),
            ("cpu_percent", "cpu %"),
            ("rss_mb", "rss MB"),
        ],
    )
    at50 = [r for r in results if r["hz"] == 50.0 and r["trigger"] == "frame"]
    if at50:
        met = {k: at50[0][k] <= v for k, v in TARGETS_50HZ.items()}
        print(
            "targets at 50 Hz (frame trigger):",
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
