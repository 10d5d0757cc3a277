"""The recorder's end of one episode-writer process: starting it, and how far behind it is.

The writer (:mod:`brain.recording_writer`) runs beside the control loop: steps reach it
through a non-blocking pipe (the bounded queue) and frames through the shared-memory ring,
and its reports come back on a second pipe.  The recorder (:mod:`brain.recorder`) owns the
link and starts a new writer when one dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain.recording_wire import SlotRing


@dataclass
class WriterLink:
    """One writer process and the pipes to it."""

    proc: subprocess.Popen[bytes]
    step_fd: int  # ours, non-blocking
    event_fd: int
    started: float
    sent: dict[str, int] = field(default_factory=dict)  # sensor -> last frame seq sent
    steps_sent: int = 0
    status: dict[str, Any] = field(default_factory=dict)  # the writer's last report

    def queue_depth(self) -> int:
        """Steps handed over but not yet written: in the pipe, plus in the writer's queue."""
        w = self.status
        in_pipe = max(0, self.steps_sent - int(w.get("steps_received", 0)))
        return in_pipe + int(w.get("queue_depth", 0))


def spawn_writer(cfg: dict[str, Any], ring: SlotRing) -> WriterLink:
    """Start a writer with ``cfg`` (the recorder's writer config) over ``ring``.

    Its PR_SET_PDEATHSIG fires when the *thread* that spawned it ends, so it is spawned only
    from long-lived threads: the daemon's main thread (``Recorder.start``) and the recorder's
    monitor (restarts), which both outlive it.
    """
    step_r, step_w = os.pipe()
    event_r, event_w = os.pipe()
    os.set_blocking(step_w, False)  # the pipe (64 KiB: ~200 steps) is the bounded queue
    cfg = dict(
        cfg,
        step_fd=step_r,
        event_fd=event_w,
        ring_fd=ring.fd,
        slots=ring.n,
        slot_bytes=ring.slot_bytes,
    )
    here = str(Path(__file__).resolve().parent.parent)  # the tree this daemon runs from
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brain.recording_writer", json.dumps(cfg)],
            pass_fds=(step_r, event_w, ring.fd),
            env=env,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(step_r)
        os.close(event_w)
    return WriterLink(proc, step_w, event_r, time.monotonic())


def describe_exit(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-rc).name}"
        return f"was killed by signal {-rc}"
    return f"exited with status {rc}"
