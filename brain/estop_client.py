"""`continuon estop`, fast path: SIGUSR1 to the daemon, then its acknowledgement.

This module imports only the standard library and PyYAML: a Pi takes most of a
second to import pydantic, numpy and aiohttp, which the full command line
needs, and an e-stop cannot wait for that.  It finds the daemon through the
pid file the e-stop line writes (checked against the process start time, so a
recycled pid is never signalled), sends the signal and waits for the
acknowledgement record, which says the mode is latched and when neutral was
written.  When it cannot signal (no pid file, or another user: only root and
the service user may), ``run`` returns None and the caller uses the control
socket instead.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from brain import paths
from brain.control.estop_line import ACK_FILE, ESTOP_SIGNAL, PID_FILE, process_start_ticks

SYSTEMD_RUNTIME_DIR = Path("/run/continuon")  # RuntimeDirectory=continuon in the unit
ACK_TIMEOUT_S = 1.0


def _config_paths(config_path: Path) -> tuple[Any, Any]:
    """paths.runtime_dir / paths.state_dir from the YAML, without validating the rest."""
    try:
        import yaml

        raw = yaml.safe_load(config_path.read_text())
    except (OSError, ValueError, ImportError):
        return None, None
    section = raw.get("paths") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        return None, None
    rt, st = section.get("runtime_dir"), section.get("state_dir")
    return (rt if isinstance(rt, str) else None), (st if isinstance(st, str) else None)


def candidate_dirs(config_path: Path) -> list[Path]:
    """Where the daemon's runtime files may be: as configured, then systemd's directory.

    The second only when the config names no directory: that is root (or the service
    user) in a login shell on an installed robot, where $RUNTIME_DIRECTORY is unset and
    the default would point into the caller's home.  A config that names its directories
    is never redirected to another daemon.
    """
    rt, st = _config_paths(config_path)
    out = [paths.runtime_dir(rt, st)]
    unconfigured = rt is None and st is None and not os.environ.get("RUNTIME_DIRECTORY")
    if unconfigured and SYSTEMD_RUNTIME_DIR not in out:
        out.append(SYSTEMD_RUNTIME_DIR)
    return out


def _daemon_ids(runtime_dir: Path) -> tuple[int, int | None] | None:
    """(pid, e-stop thread id) from the pid file, if that process is still the daemon."""
    try:
        info = json.loads((runtime_dir / PID_FILE).read_text())
        pid, ticks = int(info["pid"]), info.get("start_ticks")
        tid = int(info["tid"]) if info.get("tid") is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ticks is None or process_start_ticks(pid) != ticks:
        return None  # the daemon is gone and the pid may belong to someone else now
    if tid is not None and not os.path.exists(f"/proc/{pid}/task/{tid}"):
        tid = None
    return pid, tid


def _send(pid: int, tid: int | None) -> None:
    """To the e-stop thread itself (tgkill) when possible, else to the process."""
    if tid is not None:
        try:
            import ctypes

            tgkill = ctypes.CDLL(None, use_errno=True).tgkill
        except (OSError, AttributeError):  # a libc without tgkill: signal the process
            tgkill = None
        if tgkill is not None:
            if tgkill(pid, tid, int(ESTOP_SIGNAL)) == 0:
                return
            err = ctypes.get_errno()
            kind = PermissionError if err == errno.EPERM else ProcessLookupError
            raise kind(err, os.strerror(err))
    os.kill(pid, ESTOP_SIGNAL)


def _read_ack(runtime_dir: Path) -> dict[str, Any] | None:
    try:
        data = (runtime_dir / ACK_FILE).read_bytes()
        ack = json.loads(data)
    except (OSError, ValueError):
        return None  # absent, or caught mid-rewrite: read again
    return ack if isinstance(ack, dict) else None


def signal_estop(runtime_dir: Path, timeout_s: float = ACK_TIMEOUT_S) -> dict[str, Any] | None:
    """Signal the daemon in ``runtime_dir``; its acknowledgement, or None if it cannot."""
    ids = _daemon_ids(runtime_dir)
    if ids is None:
        return None
    pid, tid = ids
    before = _read_ack(runtime_dir) or {}
    seq = before.get("seq", 0) if before.get("pid") == pid else -1
    t0 = time.monotonic()
    try:
        _send(pid, tid)
    except (PermissionError, ProcessLookupError):
        return None
    while time.monotonic() - t0 < timeout_s:
        ack = _read_ack(runtime_dir)
        if ack and ack.get("pid") == pid and ack.get("seq", 0) > seq:
            return {**ack, "client_ms": round((time.monotonic() - t0) * 1000, 1)}
        time.sleep(0.002)
    return {"state": "unacknowledged", "pid": pid}


def run(config_path: Path) -> int | None:
    """Exit code of the fast path, or None to fall back to the control socket."""
    for d in candidate_dirs(config_path):
        ack = signal_estop(d)
        if ack is None:
            continue
        if ack.get("state") != "latched":
            print(
                f"continuon: sent SIGUSR1 to pid {ack['pid']} but it did not acknowledge "
                f"within {ACK_TIMEOUT_S} s; trying the control socket",
                file=sys.stderr,
            )
            return None
        print(
            f"e-stop latched (signal to pid {ack['pid']}): mode {ack.get('mode')}, actuators "
            f"neutral {ack.get('neutral_ms')} ms after the signal "
            f"(written by the {ack.get('neutral_by')} path)"
        )
        return 0
    return None


def main_args(argv: list[str]) -> tuple[Path | None, bool]:
    """(--config value, whether argv is something only the full parser understands)."""
    config: Path | None = None
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            config = Path(rest.pop(0))
        elif arg.startswith("--config="):
            config = Path(arg.split("=", 1)[1])
        elif arg == "--reason" and rest:
            rest.pop(0)  # the signal carries no text; the log names the sender's pid and uid
        elif arg.startswith("--reason="):
            pass
        else:
            return config, True
    return config, False
