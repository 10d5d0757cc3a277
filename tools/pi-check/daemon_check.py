"""Inside the arm64 root: the installed daemon on the simulated robot, driven like an operator
drives it (the `continuon` commands), with the figures `make pi-check` reports.

Start (time to READY=1 on the sd_notify socket) -> `continuon status` -> `continuon mode
autonomous` until LAPS laps with 0 off-track events -> resident memory -> `continuon estop`
(latched: autonomy is refused, the output is neutral) -> SIGTERM -> STOPPING=1, exit 0.

    daemon_check.py --continuon /opt/continuon/venv/bin/continuon --config SIM.yaml --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from edge_agent.control_socket import request


class CheckFailed(RuntimeError):
    pass


def write_config(src: Path, work: Path, width: int, height: int, rate_hz: int) -> Path:
    """The shipped sim config, scaled down for emulation (small camera, low rate)."""
    raw = yaml.safe_load(src.read_text())
    raw["paths"] = {"state_dir": str(work / "state")}
    raw["hardware"]["camera"].update(width=width, height=height, fps=rate_hz)
    raw["control"]["rate_hz"] = rate_hz
    # one frame period plus the emulated render time; the default assumes a 30 fps camera
    raw["control"]["max_frame_age_ms"] = max(raw["control"].get("max_frame_age_ms", 150), 400)
    raw.setdefault("logging", {})["format"] = "text"
    # The check shares the host's network: the Robot API on loopback and a free port.  mDNS is
    # off: qemu-user lacks the multicast socket options it needs (ENOPROTOOPT).
    raw["api"] = {**raw.get("api", {}), "host": "127.0.0.1", "port": 0}
    raw["discovery"] = {**raw.get("discovery", {}), "enabled": False}
    out = work / "robot-sim.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def recv_until(sock: socket.socket, token: str, timeout: float) -> list[str]:
    msgs: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        msgs.append(msg)
        if token in msg:
            return msgs
    raise CheckFailed(f"no {token} on the notify socket within {timeout:.0f} s (got {msgs})")


def cli(exe: str, cfg: Path, *args: str, ok: bool = True) -> str:
    proc = subprocess.run(
        [exe, *args, "--config", str(cfg)], capture_output=True, text=True, timeout=120
    )
    print(f"$ continuon {' '.join(args)}  -> rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
    if ok and proc.returncode != 0:
        raise CheckFailed(f"continuon {' '.join(args)} failed (rc {proc.returncode})")
    if not ok and proc.returncode == 0:
        raise CheckFailed(f"continuon {' '.join(args)} should have been refused")
    return proc.stdout


def drive(ctl: Path, laps: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = request(ctl, {"cmd": "stats"})["result"]
        sim = stats["sim"]
        if sim["off_track_events"]:
            raise CheckFailed(f"the car left the track: {sim}")
        if sim["laps"] >= laps:
            return stats
        if time.monotonic() > deadline:
            raise CheckFailed(f"only {sim['laps']} laps in {timeout:.0f} s: {sim}")
        time.sleep(2.0)


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(Path(args.config), work, args.width, args.height, args.rate)
    notify = work / "notify.sock"
    notify.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    t0 = time.monotonic()
    proc = subprocess.Popen([args.continuon, "run", "--config", str(cfg)], env=env)
    result: dict = {"config": str(cfg)}
    try:
        recv_until(sock, "READY=1", args.ready_timeout)
        result["start_to_ready_s"] = round(time.monotonic() - t0, 2)
        print(f"READY after {result['start_to_ready_s']} s")
        ctl = work / "state" / "run" / "control.sock"
        cli(args.continuon, cfg, "status")
        cli(args.continuon, cfg, "mode", "autonomous")
        t_auto = time.monotonic()
        stats = drive(ctl, args.laps, args.drive_timeout)
        result["autonomous_s"] = round(time.monotonic() - t_auto, 1)
        sim, control = stats["sim"], stats["control"]
        result.update(
            laps=sim["laps"],
            off_track_events=sim["off_track_events"],
            lap_times_s=[round(x, 1) for x in sim["lap_times_s"]],
            control={k: control.get(k) for k in ("ticks", "overruns", "skipped", "faults")},
        )
        result["rss_mib"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
        cli(args.continuon, cfg, "stats")
        cli(args.continuon, cfg, "estop", "--reason", "pi-check")
        status = request(ctl, {"cmd": "status"})["result"]
        if status.get("mode") != "estop":
            raise CheckFailed(f"estop did not latch: {status}")
        cli(args.continuon, cfg, "mode", "autonomous", ok=False)  # latched: refused
        time.sleep(0.5)
        last = request(ctl, {"cmd": "stats"})["result"]["control"]
        if last.get("last_neutral") is not True:
            raise CheckFailed(f"output not neutral after estop: {last}")
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        recv_until(sock, "STOPPING=1", 30)
        rc = proc.wait(timeout=60)
        result["sigterm_to_exit_s"] = round(time.monotonic() - t_term, 2)
        result["exit_code"] = rc
        if rc != 0:
            raise CheckFailed(f"daemon exited {rc} after SIGTERM")
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--continuon", required=True)
    p.add_argument("--config", required=True, help="the shipped sim config to scale down")
    p.add_argument("--work", required=True)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--rate", type=int, default=10)
    p.add_argument("--laps", type=int, default=2)
    p.add_argument("--ready-timeout", type=float, default=300)
    p.add_argument("--drive-timeout", type=float, default=300)
    args = p.parse_args(argv)
    try:
        result = run(args)
    except CheckFailed as exc:
        print(f"FAIL daemon: {exc}")
        return 1
    print("PASS daemon: " + json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
