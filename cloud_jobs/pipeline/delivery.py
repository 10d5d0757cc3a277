"""Delivery: a trained policy to laps on the robot (export, bundle, publish, OTA, drive, bench).

The robot side is the real daemon (``continuon run``) whose updater polls a TUF
repository served over HTTP on loopback, exactly as a robot polls the cloud.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cloud_jobs.pipeline.daemon import DaemonProcess
from cloud_jobs.pipeline.stages import (
    HARDWARE_ID,
    StageFailed,
    cloud_jobs_cmd,
    free_port,
    run_cmd,
)
from cloud_jobs.release import gate_argv

if TYPE_CHECKING:
    from cloud_jobs.pipeline.run import Pipeline

RELEASE_COUNTER = 1  # every run publishes to a fresh repository with fresh keys
# The bundle's own health window: 20 s keeps the demo short (a robot's config may only
# lengthen it); the other thresholds are the bundle defaults.
BUNDLE_SAFETY = {"health_window_s": 20.0}


class Repo:
    """A static file server for the TUF repository (any web server would do)."""

    def __init__(self, root: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._logf = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "http.server", str(port)),
                *("--bind", "127.0.0.1", "--directory", str(root)),
            ],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._logf.close()


T = TypeVar("T")


def _set(value: T | None, what: str) -> T:
    """A value an earlier stage sets; a clear failure if that stage did not run."""
    if value is None:
        raise StageFailed(f"no {what}: the stage that makes it did not run")
    return value


def _wait_for(what: str, fn: Any, timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(poll)
    raise StageFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def export(p: Pipeline) -> dict[str, Any]:
    out = p.run_dir / "export"
    episodes = p.run_dir / "demos"
    if not episodes.is_dir():  # --skip-train: calibrate on the earlier run's demos
        episodes = _set(p.policy_pt, "trained policy").parents[1] / "demos"
    run_cmd(
        [
            *cloud_jobs_cmd(),
            *("export", "--checkpoint", _set(p.policy_pt, "trained policy")),
            *("--episodes", episodes, "--out", out),
            *("--eval-tracks", p.opts.eval_tracks, "--eval-laps", 1, "--quiet"),
        ],
        p.log,
        ok_codes=(0, 1),  # 1: some gate failed; the report says which backends passed
    )
    report_path = out / "export_report.json"
    if not report_path.is_file():
        raise StageFailed(f"cloud_jobs export wrote no {report_path}; see {p.log}")
    report = json.loads(report_path.read_text())
    if not report.get("preferred_backends"):
        raise StageFailed(f"no backend passed the export gates; see {report_path}")
    p.export_dir = out
    p.model_version = report["model_version"]
    sizes = {a["backend"]: a["size"] for a in report.get("artifacts", [])}
    failed = [a["backend"] for a in report.get("artifacts", []) if a.get("gate_passed") is False]
    p.figures["export"] = {
        "failed_gates": failed,
        "model_version": report["model_version"],
        "preferred_backends": report.get("preferred_backends"),
        "artifact_bytes": sizes,
        "parity": report.get("parity"),
        "closed_loop": report.get("closed_loop"),
    }
    shipped = ", ".join(report["preferred_backends"])
    note = f" (gate failed, not shipped: {', '.join(failed)})" if failed else ""
    return {"summary": f"{report['model_version']}: {shipped}{note}"}


def bundle(p: Pipeline) -> dict[str, Any]:
    out = p.run_dir / "bundle.tar"
    run_cmd(
        [
            *cloud_jobs_cmd(),
            *("bundle", _set(p.export_dir, "export"), "--out", out),
            *("--version", _set(p.model_version, "model version")),
            *("--release-counter", RELEASE_COUNTER, "--hardware-id", HARDWARE_ID),
            *("--safety", json.dumps(BUNDLE_SAFETY)),
        ],
        p.log,
    )
    p.bundle = out
    p.figures.setdefault("export", {})["bundle_bytes"] = out.stat().st_size
    return {"summary": f"{out.name} ({out.stat().st_size / 1e6:.2f} MB)"}


def publish(p: Pipeline) -> dict[str, Any]:
    keys, repo = p.run_dir / "keys", p.run_dir / "repo"
    cj = cloud_jobs_cmd()
    run_cmd([*cj, "keys", "init", "--dir", keys, "--threshold", 1, "--root-keys", 1], p.log)
    run_cmd([*cj, "publish", "init", "--repo", repo, "--keys", keys], p.log)
    run_cmd(
        [
            *cj,
            *("publish", "--repo", repo, "--keys", keys, _set(p.bundle, "bundle")),
            *("--release-counter", RELEASE_COUNTER, "--hardware-id", HARDWARE_ID),
            *("--version", _set(p.model_version, "model version")),
            # the same gate, checked again where it binds: the bundle's own checkpoint
            *("--evaluation", _set(p.eval_json, "evaluation"), *gate_argv(p.opts.gate)),
            *(["--force"] if p.opts.force else []),
        ],
        p.log,
    )
    server = Repo(repo, free_port(), p.run_dir / "repo-server.log")
    p.repo = server
    p.trusted_root = repo / "metadata" / "1.root.json"
    return {"summary": f"TUF repository served at {server.url}"}


def update(p: Pipeline) -> dict[str, Any]:
    """A fresh robot (no model) finds the bundle, installs it, drives its trial, commits it."""
    cfg = p.robot_config(
        "drive",
        **{
            "control.autopilot": "policy",
            "ota.repository_url": _set(p.repo, "update repository").url,
            "ota.trusted_root": str(p.trusted_root),
            "ota.hardware_id": HARDWARE_ID,
            "ota.health_window_s": 10.0,
            "ota.min_inferences": 50,
            "ota.check_interval_s": 3600,
        },
    )
    daemon = DaemonProcess(cfg, p.run_dir / "daemon-drive.log")
    p.daemon = daemon
    t0 = time.monotonic()
    daemon.start()

    def swapped() -> dict[str, Any] | None:
        st = daemon.ctl("ota", "status", "--json")
        if st.get("phase") == "failed" or (st.get("failed_versions") or []):
            raise StageFailed(f"the update failed: {st.get('last_error') or st.get('last_result')}")
        return st if st.get("phase") in ("trial", "committed") else None

    st = _wait_for("the updater to install the bundle", swapped, timeout=120)
    t_swap = time.monotonic() - t0
    daemon.ctl("mode", "autonomous")  # the trial judges the model while it drives

    def settled() -> dict[str, Any] | None:
        s = daemon.ctl("ota", "status", "--json")
        return s if s.get("phase") in ("committed", "rolled_back", "failed") else None

    st = _wait_for("the health window", settled, timeout=120)
    if st["phase"] != "committed":
        raise StageFailed(f"the bundle was not committed ({st['phase']}): {st.get('last_error')}")
    p.figures["update"] = {
        "phase": st["phase"],
        "committed": st.get("committed"),
        "seconds_to_swap_after_boot": round(t_swap, 2),
        "health": st.get("health"),
    }
    return {"summary": f"committed {p.model_version} ({t_swap:.1f} s from boot to swap)"}


def drive(p: Pipeline) -> dict[str, Any]:
    """AUTONOMOUS laps on the daemon with the installed model; the sim's metrics are the judge."""
    daemon = _set(p.daemon, "running daemon")
    start = daemon.ctl("stats").get("sim") or {}
    laps0 = int(start.get("laps", 0))
    limit_s = max(30.0, 90.0 * p.opts.drive_laps)

    def done() -> dict[str, Any] | None:
        s = daemon.ctl("stats")
        sim = s.get("sim") or {}
        return s if int(sim.get("laps", 0)) - laps0 >= p.opts.drive_laps else None

    t0 = time.monotonic()
    try:
        stats = _wait_for(f"{p.opts.drive_laps} lap(s)", done, timeout=limit_s, poll=1.0)
    except StageFailed:
        stats = daemon.ctl("stats")  # report what happened; a weak model may not lap
    daemon.ctl("mode", "idle")
    sim = stats.get("sim") or {}
    control, policy = stats.get("control") or {}, stats.get("policy") or {}
    lat = control.get("latency_ms") or {}
    p.figures["drive"] = {
        "track": sim.get("track"),
        "laps": int(sim.get("laps", 0)) - laps0,
        "seconds": round(time.monotonic() - t0, 1),
        "off_track_events": sim.get("off_track_events"),
        "mean_abs_cte_m": sim.get("mean_abs_cte_m"),
        "max_abs_cte_m": sim.get("max_abs_cte_m"),
        "speed_mps": sim.get("speed_mps"),
        "sensor_to_actuation_p50_ms": lat.get("p50"),
        "sensor_to_actuation_p99_ms": lat.get("p99"),
        "inference_p50_ms": policy.get("compute_p50_ms"),
        "inference_p99_ms": policy.get("compute_p99_ms"),
        "deadline_misses": policy.get("deadline_misses"),
        "model_version": policy.get("model_version"),
    }
    d = p.figures["drive"]
    return {"summary": f"{d['laps']} lap(s), {d['off_track_events']} off-track events"}


def bench(p: Pipeline) -> dict[str, Any]:
    out = p.run_dir / "bench.json"
    export_dir = _set(p.export_dir, "export")
    run_cmd(
        [
            *cloud_jobs_cmd(),
            *("bench", "--export-dir", export_dir, "--json", out, "--threads", "1"),
            *("--plot", p.run_dir / "bench_latency.png", "--no-thresholds", "--quiet"),
        ],
        p.log,
    )
    res = json.loads(out.read_text())
    p.figures["bench"] = {k: v for k, v in res.items() if not isinstance(v, list | dict)}
    # A latency histogram of the backend the robot picked, measured here (no torch).
    import numpy as np

    from brain.policy.backends import load_preferred

    report = json.loads((export_dir / "export_report.json").read_text())
    files = {a["backend"]: a["file"] for a in report["artifacts"]}
    model, backend = load_preferred(export_dir, report["preferred_backends"], files, threads=1)

    rng = np.random.default_rng(0)
    h, w = model.input_size
    rec = model.initial_recurrent()
    samples = []
    for _ in range(300):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        t = time.perf_counter()
        _, rec = model.step(img, rec)
        samples.append((time.perf_counter() - t) * 1000)
    p.figures["latency_samples_ms"] = samples[20:]
    p.figures["latency_title"] = f"{backend}, 1 thread, {len(samples) - 20} steps"
    return {"summary": f"{backend} p50 {float(np.median(samples[20:])):.2f} ms"}


def run_delivery_stages(p: Pipeline) -> None:
    s = p.stages
    try:
        s.run("export", lambda: export(p))
        s.run("bundle", lambda: bundle(p))
        s.run("publish", lambda: publish(p))
        s.run("update", lambda: update(p))
        s.run("drive", lambda: drive(p))
        s.run("bench", lambda: bench(p))
    finally:
        if p.daemon is not None:
            p.figures["daemon_exit_code"] = p.daemon.stop()
        if p.repo is not None:
            p.repo.stop()
