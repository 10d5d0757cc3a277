"""Benchmark: the daemon's own control loop on the simulated robot.

Starts the real daemon (`python -m brain.cli run`) as a subprocess with a
NOTIFY_SOCKET this script listens on, so start-up time is measured to the real
READY=1.  The sim's expert drives in AUTONOMOUS while a dummy ONNX policy runs
every tick in shadow mode, the camera renders 640x480 at 30 fps.  Timing comes
from the daemon's own statistics over the control socket; CPU and RSS from
psutil on the daemon's pid.

    python bench/control_loop.py --seconds 20 --hz 20 50 --json bench/results/control_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.policy.testing import build_dummy_policy  # noqa: E402
from edge_agent.control_socket import request  # noqa: E402

TARGETS_50HZ = {
    "jitter_p99_ms": 1.0,
    "latency_p99_ms": 15.0,
    "overruns": 0,
    "rss_mb": 250.0,
    "startup_ready_s": 2.0,
}


def make_config(tmp: Path, hz: float, model: Path) -> Path:
    base = yaml.safe_load((ROOT / "configs" / "sim-donkey.yaml").read_text())
    base["control"]["rate_hz"] = hz
    base["control"]["autopilot"] = "expert"
    base["policy"] = {"model": str(model), "threads": 1, "shadow": True}
    base["paths"] = {"state_dir": str(tmp / "state")}
    base["logging"] = {"level": "WARNING", "format": "json"}
    base["control"]["stats_window"] = 100_000
    path = tmp / f"bench-{hz:g}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def run_one(hz: float, seconds: float, tmp: Path, model: Path) -> dict:
    cfg = make_config(tmp, hz, model)
    notify_path = tmp / f"notify-{hz:g}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(15)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain.cli", "run", "--config", str(cfg)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = None
        while ready is None:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg:
                ready = time.monotonic() - t0
        ctl = tmp / "state" / "run" / "control.sock"
        for _ in range(100):
            if ctl.exists():
                break
            time.sleep(0.05)
        _ok(request(ctl, {"cmd": "mode", "mode": "autonomous"}))
        time.sleep(1.0)  # let the car get going and caches warm
        _ok(request(ctl, {"cmd": "reset_stats"}))
        ps = psutil.Process(proc.pid)
        ps.cpu_percent(None)
        rss_peak = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.25)
            rss_peak = max(rss_peak, ps.memory_info().rss / 2**20)
        cpu = ps.cpu_percent(None)
        stats = _ok(request(ctl, {"cmd": "stats"}))
        proc.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        rc = proc.wait(timeout=10)
        stop_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
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
        "cpu_percent": round(cpu, 1),
        "rss_mb": round(rss_peak, 1),
        "startup_ready_s": round(ready, 3),
        "shutdown_s": round(stop_s, 3),
        "exit_code": rc,
        "sim_laps": sim.get("laps"),
        "sim_off_track_events": sim.get("off_track_events"),
    }


def sleep_floor(hz: float, seconds: float = 5.0) -> dict:
    """This machine's own wake-up jitter: a bare thread sleeping to absolute deadlines.

    The daemon's jitter cannot be better than this; report both from one run.
    """
    period = 1.0 / hz
    jit = []
    deadline = time.monotonic() + period
    end = deadline + seconds
    while deadline < end:
        time.sleep(max(0.0, deadline - time.monotonic()))
        jit.append(abs(time.monotonic() - deadline) * 1000)
        deadline += period
    arr = sorted(jit)
    return {
        "floor_jitter_p50_ms": round(arr[len(arr) // 2], 4),
        "floor_jitter_p99_ms": round(arr[int(len(arr) * 0.99)], 4),
    }


def _ok(resp: dict) -> dict:
    if not resp.get("ok"):
        raise RuntimeError(f"daemon refused: {resp.get('error')}")
    return resp.get("result")


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
    cols = [
        ("hz", "hz"),
        ("ticks", "ticks"),
        ("overruns", "overruns"),
        ("jitter_p50_ms", "jit p50"),
        ("jitter_p99_ms", "jit p99"),
        ("jitter_max_ms", "jit max"),
        ("floor_jitter_p99_ms", "floor p99"),
        ("latency_p50_ms", "lat p50"),
        ("latency_p99_ms", "lat p99"),
        ("cpu_percent", "cpu %"),
        ("rss_mb", "rss MB"),
        ("startup_ready_s", "ready s"),
    ]
    print("control loop on the simulated robot (expert driving, dummy ONNX policy every tick)")
    print("  ".join(f"{h:>9}" for _, h in cols))
    for r in results:
        print("  ".join(f"{r[k]!s:>9}" for k, _ in cols))
    at50 = [r for r in results if r["hz"] == 50.0]
    if at50:
        r = at50[0]
        met = {k: r[k] <= v for k, v in TARGETS_50HZ.items()}
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
