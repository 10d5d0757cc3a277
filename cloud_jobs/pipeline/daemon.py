"""The robot daemon as a child process, driven through its own CLI (the control socket)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cloud_jobs.pipeline.stages import StageFailed


def continuon_exe() -> list[str]:
    """``continuon`` from the same environment as this Python (works from a venv without PATH)."""
    exe = Path(sys.executable).with_name("continuon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "brain.cli"]


class DaemonProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        self._logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*continuon_exe(), "run", "--config", str(self.config), "--log-format", "json"],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StageFailed(f"the daemon exited with {self.proc.returncode}; see {self.log}")
            try:
                st = self.ctl("status")
                if st.get("control_running"):
                    return st
            except StageFailed as exc:
                last = str(exc)
            time.sleep(0.3)
        raise StageFailed(f"the daemon did not come up in {timeout:.0f} s: {last}")

    def ctl(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """One ``continuon <args> --config ...`` call; its JSON reply."""
        argv = [*continuon_exe(), *args, "--config", str(self.config)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise StageFailed(f"`continuon {' '.join(args)}` failed: {' | '.join(msg[-3:])}")
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else {}
        except json.JSONDecodeError:
            return {"text": proc.stdout}

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._logf.close()
