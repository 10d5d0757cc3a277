"""Running the real daemon as a subprocess for benchmarks.

The daemon is started with `python -m brain.cli run` and a NOTIFY_SOCKET that
this process listens on, so start-up is timed to the real READY=1, and it is
driven through its own control socket, exactly as a person would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.control_socket import request  # noqa: E402


def sim_config(tmp: Path, name: str, root: Path = ROOT, **sections: dict[str, Any]) -> Path:
    """configs/sim-donkey.yaml with the given sections merged in, state under ``tmp``.

    ``root``: the tree whose config to start from — a baseline revision rejects keys it
    does not know yet (the strict loader), so it runs with its own.
    """
    cfg = yaml.safe_load((root / "configs" / "sim-donkey.yaml").read_text())
    cfg["paths"] = {"state_dir": str(tmp / name / "state")}
    cfg["logging"] = {"level": "WARNING", "format": "json"}
    cfg["api"] = {"port": 0}  # any free port: other daemons on this machine may hold 8080
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def unit_nice() -> int:
    """The ``Nice=`` that systemd gives the daemon on the robot (0 if the unit sets none)."""
    unit = ROOT / "systemd" / "continuon-brain.service"
    for line in unit.read_text().splitlines():
        if line.startswith("Nice="):
            return int(line.split("=", 1)[1])
    return 0


def _as_the_unit_runs_it() -> None:
    """In the daemon's child before exec: the unit's niceness, where this user may set it."""
    with contextlib.suppress(OSError):
        os.nice(unit_nice() - os.nice(0))


class Daemon:
    def __init__(self, config: Path, tmp: Path, name: str, root: Path = ROOT) -> None:
        """``root``: the source tree to run (another revision, for a before/after in one run)."""
        self.config = config
        self.state = yaml.safe_load(config.read_text())["paths"]["state_dir"]
        self.notify_path = tmp / f"{name}.notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "brain.cli", "run", "--config", str(config)],
            env=env,
            cwd=root,
            preexec_fn=_as_the_unit_runs_it,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.ready_s: float | None = None

    def wait_ready(self) -> float:
        self.sock.settimeout(0.5)
        while self.ready_s is None:
            try:
                if "READY=1" in self.sock.recv(4096).decode():
                    self.ready_s = time.monotonic() - self.t0
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the daemon exited ({self.proc.returncode}): {self.proc.stderr.read()}"
                    ) from None
                if time.monotonic() - self.t0 > 60:
                    raise
        ctl = self.control_path
        for _ in range(200):
            if ctl.exists():
                break
            time.sleep(0.05)
        return self.ready_s

    @property
    def control_path(self) -> Path:
        return Path(self.state) / "run" / "control.sock"

    def cmd(self, cmd: str, **kw: Any) -> Any:
        resp = request(self.control_path, {"cmd": cmd, **kw})
        if not resp.get("ok"):
            raise RuntimeError(f"daemon refused {cmd}: {resp.get('error')}")
        return resp.get("result")

    def stop(self) -> tuple[int, float]:
        self.proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        rc = self.proc.wait(timeout=15)
        self.sock.close()
        return rc, time.monotonic() - t

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.sock.close()


def export_revision(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` under ``dest`` (git archive; the working tree is not touched)."""
    archive = dest / "rev.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev], cwd=ROOT, stdout=out, check=True)
    tree = dest / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def busy_load() -> subprocess.Popen[bytes]:
    """A process spinning one core at normal priority beside the daemon (``--load``)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _tree_cpu_s(ps: psutil.Process) -> float:
    """CPU seconds of a process and its live children (the episode writer)."""
    total = 0.0
    for p in [ps, *ps.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def measure(d: Daemon, seconds: float) -> dict[str, float]:
    """CPU % and peak RSS of the daemon over a window of ``seconds``.

    ``cpu_percent`` is the daemon process alone; ``cpu_percent_tree`` adds its
    children (the episode writer), ``children_rss_mb`` their peak RSS.
    """
    d.ps.cpu_percent(None)
    tree0, t0 = _tree_cpu_s(d.ps), time.monotonic()
    rss = child_rss = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.25)
        rss = max(rss, d.ps.memory_info().rss / 2**20)
        kids = 0.0
        for c in d.ps.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                kids += c.memory_info().rss / 2**20
        child_rss = max(child_rss, kids)
    tree = (_tree_cpu_s(d.ps) - tree0) / (time.monotonic() - t0) * 100
    return {
        "cpu_percent": round(d.ps.cpu_percent(None), 1),
        "cpu_percent_tree": round(tree, 1),
        "rss_mb": round(rss, 1),
        "children_rss_mb": round(child_rss, 1),
    }


def sleep_floor(hz: float, seconds: float = 5.0) -> dict[str, float]:
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


def print_table(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    print(title)
    print("  ".join(f"{h:>10}" for _, h in cols))
    for r in rows:
        print("  ".join(f"{r.get(k)!s:>10}" for k, _ in cols))
