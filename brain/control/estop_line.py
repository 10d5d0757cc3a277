"""The e-stop line: SIGUSR1 latches ESTOP without the event loop.

Every other way in (Robot API, control socket) runs on the asyncio loop and
needs a free file descriptor to accept a connection, so enough network load
can make them unreachable.  A signal needs neither: the kernel delivers it to
a thread of ours that does nothing but wait for it (``sigwaitinfo``), and that
thread latches the mode, waits for the control thread to write neutral (it is
woken by the mode change) and writes neutral itself if the control thread does
not answer in time.  Nothing on the way allocates a descriptor: the
acknowledgement goes into a file opened at start-up, so ``continuon estop``
can tell the operator that the car really stopped.

``continuon estop`` sends the signal to the waiting thread itself (``tgkill``,
its thread id is in the pid file), so no other thread is involved.  For
``systemctl kill -s SIGUSR1`` (sent to the process) SIGUSR1 is blocked in
every thread: ``brain.cli`` blocks it first thing, before numpy or ONNX Runtime
start native threads that would inherit an open mask.  A thread that still has
it open (a daemon embedded in another program) hands it to the Python handler,
which forwards it with ``pthread_kill``; that path needs the main thread to run
Python, which is why the CLI does not rely on it.  Children inherit the blocked
mask, so a ``systemctl kill`` without ``--kill-whom=main`` leaves them pending
instead of killing them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from brain.modes import ModeManager
from common.durable import replace_file

_log = logging.getLogger(__name__)

ESTOP_SIGNAL = signal.SIGUSR1
PID_FILE = "continuon.pid"
ACK_FILE = "estop.ack"
ACK_SIZE = 512  # fixed-size record, rewritten in place with pwrite


class NeutralWriter(Protocol):
    """What the line needs from the control loop (brain.control.loop.ControlLoop)."""

    period: float

    @property
    def neutral_written_t(self) -> float | None: ...

    def emergency_neutral(self, reason: str) -> None: ...


def block() -> None:
    """Block the e-stop signal in this thread and every thread started after it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {ESTOP_SIGNAL})


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a reused pid from the daemon that wrote the file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


class EStopLine:
    """Owns the waiting thread, the pid file and the acknowledgement file."""

    def __init__(
        self,
        modes: ModeManager,
        control: NeutralWriter,
        runtime_dir: Path,
        clock: Callable[[], float],
    ) -> None:
        self._modes = modes
        self._control = control
        self._dir = runtime_dir
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._closing = False
        self._ack_fd: int | None = None
        self._seq = 0
        self._prev_handler: Any = None
        self._handler_installed = False
        self._pid_written = threading.Event()
        self.trips = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Call from the main thread before the control loop starts moving anything."""
        self._dir.mkdir(parents=True, exist_ok=True)
        block()
        self._ack_fd = os.open(self._dir / ACK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.fchmod(self._ack_fd, 0o640)
        self._write_ack({"seq": 0, "pid": os.getpid(), "state": "armed"})
        self._thread = threading.Thread(target=self._wait_loop, name="estop-signal", daemon=True)
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            self._prev_handler = signal.signal(ESTOP_SIGNAL, self._forward)
            self._handler_installed = True
        self._pid_written.wait(5.0)

    def _write_pid_file(self) -> None:
        """From the waiting thread: its native id is where the CLI aims the signal."""
        info = {
            "pid": os.getpid(),
            "tid": threading.get_native_id(),
            "start_ticks": process_start_ticks(os.getpid()),
        }
        try:
            replace_file(self._dir / PID_FILE, json.dumps(info).encode(), mode=0o644)
        except OSError:
            _log.exception("e-stop pid file not written; `continuon estop` will use the socket")
        finally:
            self._pid_written.set()

    def close(self) -> None:
        self._closing = True
        thread = self._thread
        if thread is not None and thread.is_alive() and thread.ident is not None:
            signal.pthread_kill(thread.ident, ESTOP_SIGNAL)
            thread.join(1.0)
        if self._handler_installed:
            signal.signal(ESTOP_SIGNAL, self._prev_handler)
            self._handler_installed = False
        with contextlib.suppress(FileNotFoundError):
            (self._dir / PID_FILE).unlink()
        if self._ack_fd is not None:
            os.close(self._ack_fd)
            self._ack_fd = None
        # The mask stays: an e-stop signal arriving during shutdown must not kill the
        # process before the control thread has written neutral on its way out.

    # ------------------------------------------------------------------ the thread

    def _forward(self, signum: int, frame: Any) -> None:
        thread = self._thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            signal.pthread_kill(thread.ident, ESTOP_SIGNAL)

    def _wait_loop(self) -> None:
        self._write_pid_file()
        while True:
            info = signal.sigwaitinfo({ESTOP_SIGNAL})
            if self._closing:
                return
            try:
                self.trip(f"signal SIGUSR1 from pid {info.si_pid} (uid {info.si_uid})")
            except Exception:  # the line must stay armed for the next press
                _log.exception("e-stop signal handling failed")

    def trip(self, reason: str) -> dict[str, Any]:
        """Latch, see neutral written (or write it), acknowledge.  Any thread."""
        t0 = self._clock()
        self._modes.estop(reason)
        by = "control"
        if not self._wait_neutral(t0):
            by = "direct"  # the control thread did not answer: it may be stuck
            self._control.emergency_neutral("estop_signal")
        neutral_ms = round((self._clock() - t0) * 1000, 2)
        self._seq += 1
        self.trips += 1
        ack = {
            "seq": self._seq,
            "pid": os.getpid(),
            "state": "latched",
            "mode": self._modes.mode.value,
            "neutral_by": by,
            "neutral_ms": neutral_ms,
        }
        self._write_ack(ack)
        _log.warning("e-stop latched by %s; neutral after %.1f ms (%s)", reason, neutral_ms, by)
        return ack

    def _wait_neutral(self, t0: float) -> bool:
        """True once the control thread has written neutral after ``t0``."""
        budget = max(3 * self._control.period, 0.15)
        ready = threading.Event()
        while True:
            t = self._control.neutral_written_t
            if t is not None and t >= t0:
                return True
            if self._clock() - t0 > budget:
                return False
            ready.wait(0.002)  # a plain sleep that releases the GIL

    def _write_ack(self, ack: dict[str, Any]) -> None:
        fd = self._ack_fd
        if fd is None:
            return
        data = json.dumps(ack).encode()[: ACK_SIZE - 1].ljust(ACK_SIZE - 1) + b"\n"
        os.pwrite(fd, data, 0)
