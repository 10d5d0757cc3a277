"""The real daemon on the simulated robot, in process: its config, a recording actuator wrapper,
and starting/stopping it on the test's event loop (shared by every test that drives the daemon)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from brain.config import parse_config
from brain.daemon import Daemon
from brain.hardware.devices import open_devices
from tests.emulation import wall

ROOT = Path(__file__).resolve().parent.parent
FAKE_SITE = Path(__file__).resolve().parent / "fakes" / "site"


def sim_config(tmp_path: Path, **overrides) -> dict:
    raw = yaml.safe_load((ROOT / "configs" / "sim-donkey.yaml").read_text())
    raw["paths"] = {"state_dir": str(tmp_path / "state")}
    raw["logging"] = {"level": "WARNING", "format": "text"}
    raw["hardware"]["camera"].update(width=160, height=120)  # fast renders for tests
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


class RecordingActuators:
    """Wraps the sim's real actuators and records every call with its time."""

    def __init__(self, inner):
        self.inner = inner
        self.action_spec = inner.action_spec
        self.calls: list[tuple[float, str, np.ndarray | None]] = []
        self._lock = threading.Lock()

    def start(self):
        self.inner.start()

    def write(self, action):
        with self._lock:
            self.calls.append((time.monotonic(), "write", np.array(action)))
        self.inner.write(action)

    def neutral(self):
        with self._lock:
            self.calls.append((time.monotonic(), "neutral", None))
        self.inner.neutral()

    def close(self):
        self.inner.close()

    def snapshot(self):
        with self._lock:
            return list(self.calls)


def make_daemon(tmp_path, services=(), **overrides):
    cfg = parse_config(sim_config(tmp_path, **overrides))
    devices = open_devices(cfg)
    devices.actuators = RecordingActuators(devices.actuators)
    daemon = Daemon(cfg, devices=devices, services=list(services))
    return daemon, devices.actuators


async def start_daemon(daemon):
    """Run the daemon as a task on the current loop and return it once it is ready."""
    task = asyncio.create_task(daemon.run())
    await daemon.wait_ready(wall(10))
    return task


async def stop_daemon(daemon, task):
    """Stop the daemon the way SIGTERM does and wait for its task to finish."""
    daemon.request_stop("test")
    await asyncio.wait_for(task, wall(5))


def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    return sock, path


def recv_until(sock, token):
    """Every sd_notify message up to the one containing ``token``."""
    got = []
    while True:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if token in msg:
            return got


def spawn_daemon(
    tmp_path: Path, raw: dict, *, stderr: int | None = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], socket.socket, Path]:
    """``continuon run`` on ``raw`` as a subprocess, returned once READY with its control socket.

    Returns the process, the notify socket (the caller closes it) and the control socket's path.
    """
    cfg = tmp_path / "robot.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    sock, notify = notify_socket(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain.cli", "run", "--config", str(cfg)],
        env=dict(os.environ, NOTIFY_SOCKET=str(notify)),
        cwd=ROOT,
        stderr=stderr,
        text=True,
    )
    ctl = tmp_path / "state" / "run" / "control.sock"
    try:
        recv_until(sock, "READY=1")
        for _ in range(100):
            if ctl.exists():
                break
            time.sleep(0.05)
    except BaseException:  # never leave a daemon behind a failed start
        proc.kill()
        proc.wait(5)
        sock.close()
        raise
    return proc, sock, ctl
