"""Stage bookkeeping: a progress line per stage, timings, a results file that survives a crash."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from common.durable import write_json

# The sim robot's hardware id: the bundle is published for it and the robot checks it.
HARDWARE_ID = "sim-donkey"


def cloud_jobs_cmd() -> list[str]:
    """The ``cloud_jobs`` command of this environment (the stages run it as a subprocess)."""
    exe = Path(sys.executable).with_name("cloud_jobs")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cloud_jobs"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StageFailed(RuntimeError):
    """A stage could not finish; the message says which and why."""


@dataclass(slots=True)
class StageResult:
    name: str
    status: str = "pending"  # pending | running | done | skipped | failed
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Progress:
    """``[3/12] train ........ done 4m12s`` lines; the current stage is always on screen."""

    def __init__(self, names: Sequence[str], out: TextIO = sys.stdout) -> None:
        self.names = list(names)
        self.out = out
        self.width = max(len(n) for n in names) + 2

    def line(self, i: int, name: str, text: str) -> None:
        print(f"[{i + 1:>2}/{len(self.names)}] {name:.<{self.width}} {text}", file=self.out)
        self.out.flush()


def fmt_s(s: float) -> str:
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s" if m else f"{s:.1f}s"


class Stages:
    """Runs stage functions in order; each result is written to ``stages.json`` as it ends."""

    def __init__(self, run_dir: Path, names: Sequence[str], out: TextIO = sys.stdout) -> None:
        self.run_dir = run_dir
        self.results = {n: StageResult(n) for n in names}
        self.progress = Progress(names, out)
        self._order = list(names)

    def _save(self) -> None:
        rows = [asdict(r) for r in self.results.values()]
        write_json(self.run_dir / "stages.json", rows, sort_keys=False)

    def skip(self, name: str, why: str) -> None:
        r = self.results[name]
        r.status, r.detail = "skipped", {"why": why}
        self.progress.line(self._order.index(name), name, f"skipped ({why})")
        self._save()

    def run(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        r = self.results[name]
        i = self._order.index(name)
        r.status = "running"
        self.progress.line(i, name, "...")
        self._save()
        t0 = time.monotonic()
        try:
            r.detail = fn() or {}
        except BaseException as exc:
            r.status, r.seconds = "failed", time.monotonic() - t0
            r.error = f"{type(exc).__name__}: {exc}"
            self.progress.line(i, name, f"FAILED after {fmt_s(r.seconds)}: {r.error}")
            self._save()
            raise
        r.status, r.seconds = "done", time.monotonic() - t0
        summary = r.detail.get("summary")
        tail = f"  {summary}" if summary else ""
        self.progress.line(i, name, f"done {fmt_s(r.seconds)}{tail}")
        self._save()
        return r.detail


def run_cmd(
    argv: Sequence[object],  # str() of each: paths and numbers too
    log: Path,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> str:
    """Run one command, its output appended to ``log``; StageFailed names the command on failure."""
    args = [str(a) for a in argv]
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            raise StageFailed(f"`{' '.join(args[:3])} ...` ran past {timeout:.0f} s") from None
        f.write(proc.stdout)
        f.write(proc.stderr)
    if proc.returncode not in ok_codes:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise StageFailed(
            f"`{' '.join(args[:3])} ...` exited {proc.returncode}: " + " | ".join(tail)
        )
    return proc.stdout
