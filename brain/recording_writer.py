"""The episode-writer process: encodes frames and appends RLDS records, beside the daemon.

Started by ``brain.recorder.Recorder`` as ``python -m brain.recording_writer``
with three inherited file descriptors: the step pipe (messages in), the event
pipe (status, faults and log lines out) and the shared frame ring.  Running here
rather than on threads of the daemon keeps JPEG/PNG encoding and file I/O off
the control process's GIL.  It imports only numpy, OpenCV and ``rlds``.

It dies with the daemon (``PR_SET_PDEATHSIG``), so a SIGKILL of the daemon
leaves the open episode interrupted for recovery, exactly as when both ran in
one process; when the step pipe closes without a ``close`` message it exits
without committing, for the same reason.  Logging goes back to the daemon as
events so that every line lands in the daemon's log, once.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brain.procinfo import return_large_buffers_to_the_os
from brain.recording_fault import (
    ERROR,
    LOW_SPACE,
    RecordingFault,
    describe,
    kind_of,
    new_fault,
)
from brain.recording_wire import SlotRing, pack, read_message, write_all
from rlds.images import encode_jpeg, encode_png16
from rlds.storage import StorageBudget
from rlds.types import StepInput
from rlds.writer import EpisodeWriter

_END = "end"
_IDLE = "idle"
_PIPELINE_DEPTH = 4  # steps whose images may be in the encoder pool at once
_SPACE_CHECK_S = 1.0  # how often free space is looked at while recording or after a fault
# "Space is back" after ENOSPC needs at least this much even when the floor is 0,
# or the few KiB the truncated commit frees would count.
_SPACE_BACK_MIN_BYTES = 1 << 20
_STATUS_EVERY_S = 0.1
_PR_SET_PDEATHSIG = 1


class _NoRoom(RuntimeError):
    """An episode may not start: below the free-space floor or over the quota."""


@dataclass(frozen=True, slots=True)
class WireFrame:
    data: np.ndarray
    t_capture: float
    seq: int
    depth_scale: float = 0.001


@dataclass(slots=True)
class WireStep:
    """A control tick as it arrives here (``brain.control.loop.Step`` without the objects)."""

    t: float
    action: np.ndarray
    mode: str
    mode_generation: int
    source: str
    neutral: bool
    safety_reason: str | None
    command: list[float] | None
    shadow_action: list[float] | None
    frame: WireFrame | None
    depth: WireFrame | None


@dataclass
class WriterCounters:
    steps_received: int = 0
    steps_written: int = 0
    steps_dropped: int = 0
    episodes_committed: int = 0
    episodes_failed: int = 0  # left interrupted for recovery (the commit itself failed)
    episodes_truncated: int = 0  # committed as truncated after a write error
    last_error: str | None = None
    last_episode: str | None = None
    writer: dict[str, Any] = field(default_factory=dict)


class WriterCore:
    """The writer thread: images encoded on a small pool, records appended in order.

    Encoding (JPEG ~3 ms, 16-bit PNG ~15 ms at 640x480) dominates; the pool
    encodes the next frames while this thread appends the previous step, so
    depth at 30 fps keeps up.  A frame shared by consecutive ticks is encoded
    once (keyed by its sequence number).
    """

    def __init__(self, cfg: dict[str, Any], emit: Any) -> None:
        self.cfg = cfg
        self.root = Path(cfg["root"])
        self.budget = StorageBudget(
            self.root, quota_bytes=cfg["quota_bytes"], min_free_bytes=cfg["min_free_bytes"]
        )
        self.queue: queue.Queue[Any] = queue.Queue(cfg["queue_size"])
        self.armed = bool(cfg["armed"])
        self.epoch = int(cfg["epoch"])
        self.meta: dict[str, Any] = dict(cfg["episode_meta"])
        self.stats = WriterCounters()
        self._emit = emit
        self._writer: EpisodeWriter | None = None
        self._writer_gen: int | None = None
        self._encodes: OrderedDict[tuple[str, int], Future[bytes]] = OrderedDict()
        self._drain_deadline: float | None = None
        self._fault: RecordingFault | None = None
        self._next_space_check = 0.0
        self._next_status = 0.0

    # ------------------------------------------------------------------ events out

    def log(self, level: str, message: str, **fields: Any) -> None:
        self._emit({"log": (level, message, fields)})

    def status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_status:
            return
        self._next_status = now + _STATUS_EVERY_S
        w = self._writer
        s = self.stats
        self._emit(
            {
                "status": {
                    "epoch": self.epoch,
                    "recording": w is not None,
                    "episode_id": w.episode_id if w is not None else None,
                    "steps_received": s.steps_received,
                    "steps_written": s.steps_written,
                    "steps_dropped": s.steps_dropped,
                    "episodes_committed": s.episodes_committed,
                    "episodes_failed": s.episodes_failed,
                    "episodes_truncated": s.episodes_truncated,
                    "last_episode": s.last_episode,
                    "last_error": s.last_error,
                    "queue_depth": self.queue.qsize(),
                    "writer": s.writer,
                }
            }
        )

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        pending: deque[tuple[WireStep, dict[str, Future[bytes]]]] = deque()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode") as pool:
            while True:
                if pending:
                    wait: float | None = 0.005
                else:  # a fault that space can clear is re-checked while idle
                    wait = _SPACE_CHECK_S if self._fault is not None else _STATUS_EVERY_S
                try:
                    item = self.queue.get(timeout=wait)
                except queue.Empty:
                    item = _IDLE
                if self._fault is not None:
                    self._check_fault_cleared()
                if isinstance(item, tuple):
                    self._command(item)
                elif isinstance(item, WireStep):
                    deadline = self._drain_deadline
                    if deadline is not None and time.monotonic() > deadline:
                        self.stats.steps_dropped += 1  # shutting down: commit what we have
                    else:
                        pending.append((item, self._encode_async(pool, item)))
                flush_all = item is None or item == _END or isinstance(item, tuple)
                while pending and (
                    flush_all
                    or len(pending) > _PIPELINE_DEPTH
                    or all(f.done() for f in pending[0][1].values())
                ):
                    step, futures = pending.popleft()
                    self._write_guarded(step, futures)
                if item is None:
                    self._finish()
                    self.status(force=True)
                    return
                if item == _END:
                    self._finish()
                self.status(force=item in (_IDLE, _END))

    def _command(self, item: tuple[Any, ...]) -> None:
        """Arm/disarm, in order with the steps (the daemon decides; faults disarm here first)."""
        kind = item[0]
        if kind == "arm":
            _, self.epoch, meta, budget = item
            self.meta.update(meta)
            self.budget.quota_bytes = budget["quota"]
            self.budget.min_free_bytes = int(budget["min_free"])
            self.armed = True
            self._fault = None  # restarting acknowledges it; a new error reports itself
        elif kind == "meta":
            self.meta.update(item[1])
        elif kind == "disarm":
            self.armed = False
        elif kind == "drain":
            self._drain_deadline = time.monotonic() + float(item[1])

    def _encode_async(self, pool: ThreadPoolExecutor, step: WireStep) -> dict[str, Future[bytes]]:
        jobs: dict[str, Future[bytes]] = {}
        for name, frame in (("image", step.frame), ("depth", step.depth)):
            if frame is None:
                continue
            key = (name, frame.seq)
            fut = self._encodes.get(key)
            if fut is None:
                if name == "image":
                    fut = pool.submit(encode_jpeg, frame.data, self.cfg["jpeg_quality"])
                else:
                    fut = pool.submit(encode_png16, frame.data)
                self._encodes[key] = fut
                while len(self._encodes) > 8:
                    self._encodes.popitem(last=False)
            jobs[name] = fut
        return jobs

    def _write_guarded(self, step: WireStep, futures: dict[str, Future[bytes]]) -> None:
        try:
            encoded = {name: f.result() for name, f in futures.items()}
            self._write(step, encoded)
        except _NoRoom as exc:
            self._stop(LOW_SPACE, f"no new episode: {exc}", None)
        except Exception as exc:  # a disk error ends recording, never the daemon
            self._stop_on_error(exc)

    def _write(self, step: WireStep, encoded: dict[str, bytes]) -> None:
        w = self._writer
        gen = step.mode_generation
        if w is not None and self._writer_gen != gen:
            self._finish()  # a lost end marker: the generation tells us anyway
            w = None
        if w is None:
            if not self.armed:  # queued before a fault (or stop) disarmed recording
                self.stats.steps_dropped += 1
                return
            w = self._open(step)
            self._writer_gen = gen
        obs: dict[str, Any] = {}
        ts: dict[str, float] = {}
        extra: dict[str, Any] = {
            "mode": step.mode,
            "source": step.source,
            "neutral": step.neutral,
            "safety_reason": step.safety_reason,
        }
        if step.frame is not None:
            obs["image"] = step.frame.data
            ts["image"] = step.frame.t_capture
            extra["frame_seq"] = step.frame.seq
        if step.depth is not None:
            obs["depth"] = step.depth.data
            ts["depth"] = step.depth.t_capture
            extra["depth_seq"] = step.depth.seq
        if step.command is not None:
            extra["command"] = step.command
        if step.shadow_action is not None:
            extra["shadow_action"] = step.shadow_action
        w.append(
            StepInput(
                t=step.t,
                action=step.action,
                observation=obs,
                timestamps=ts,
                extra=extra,
                encoded=encoded,
            )
        )
        self.stats.steps_written += 1
        if self.stats.last_error is not None and w.steps_written > 0:
            self.stats.last_error = None  # recording has resumed: steps reach the disk again
        self._check_space_while_recording()

    def _check_space_while_recording(self) -> None:
        """Below the floor mid-episode: end it cleanly before the disk (and the OS) fills."""
        now = time.monotonic()
        if now < self._next_space_check:
            return
        self._next_space_check = now + _SPACE_CHECK_S
        if self.budget.free_ok():
            return
        w = self._writer
        episode = w.episode_id if w is not None else None
        self._finish()
        self._stop(
            LOW_SPACE,
            f"free space on {self.root} fell below the floor of "
            f"{self.budget.min_free_bytes / 1e6:g} MB; "
            f"episode {episode} was committed",
            episode,
        )

    def _open(self, step: WireStep) -> EpisodeWriter:
        problem = self.budget.check_room()  # before any directory is made
        if problem is not None:
            raise _NoRoom(problem)
        self._next_space_check = time.monotonic() + _SPACE_CHECK_S
        meta = {
            **self.meta,
            "mode": step.mode,
            "source": step.source,
            "started_wall": time.time(),
        }
        if step.depth is not None:
            meta["depth_scale"] = step.depth.depth_scale
        self._writer = EpisodeWriter(
            self.root,
            meta,
            jpeg_quality=self.cfg["jpeg_quality"],
            fsync_interval_s=self.cfg["fsync_interval_s"],
        )
        episode_id = self._writer.episode_id
        self.log("info", f"recording episode {episode_id} ({step.mode})", episode_id=episode_id)
        self.status(force=True)
        return self._writer

    def _finish(self) -> None:
        w = self._writer
        if w is None:
            return
        self._writer = None
        try:
            info = w.close()
        except Exception as exc:
            self.stats.writer = w.stats()
            self._after_failed_write(w, exc)
            return
        self.stats.writer = w.stats()
        if w.failed is not None:  # the held last step hit the error inside close()
            self._after_failed_write(w, None, info)
            return
        if info is not None:
            self.stats.episodes_committed += 1
            self.stats.last_episode = w.episode_id
            self.log("info", f"episode {w.episode_id} committed", episode_id=w.episode_id)
        try:
            evicted = self.budget.evict()
            if evicted:
                self.log("info", f"storage quota: evicted exported episodes {evicted}")
        except Exception:
            self.log("error", "eviction failed\n" + traceback.format_exc())
        self.status(force=True)

    # ------------------------------------------------------------------ faults

    def _stop_on_error(self, exc: BaseException) -> None:
        """A step could not be written: commit what is on disk, then stop recording."""
        w, self._writer = self._writer, None
        if w is None:  # the episode could not even start; the writer removed its directory
            self._stop(kind_of(exc), f"could not start an episode: {describe(exc)}", None, exc)
            return
        try:
            info = w.close()  # after a write error: committed as truncated
        except Exception as commit_exc:
            self.stats.writer = w.stats()
            self._after_failed_write(w, commit_exc, cause=exc)
            return
        self.stats.writer = w.stats()
        self._after_failed_write(w, None, info, cause=exc)

    def _after_failed_write(
        self,
        w: EpisodeWriter,
        commit_exc: BaseException | None,
        info: Any = None,
        cause: BaseException | None = None,
    ) -> None:
        exc = cause or commit_exc or w.error
        what = describe(exc) if exc is not None else "write error"
        where = (w.failed or "").partition(" while ")[2]  # e.g. "writing step 44"
        if where:
            what += f" while {where}"
        if commit_exc is not None:
            self.stats.episodes_failed += 1
            outcome = f"episode {w.episode_id} is left for recovery ({describe(commit_exc)})"
        elif info is None:
            outcome = f"episode {w.episode_id} had no step on disk and was removed"
        else:
            truncated = bool(info.metadata.get("truncated"))
            self.stats.episodes_committed += 1
            self.stats.episodes_truncated += truncated
            self.stats.last_episode = w.episode_id
            how = "committed as truncated" if truncated else "committed"
            outcome = f"episode {w.episode_id} {how} ({info.num_steps} steps)"
        self._stop(kind_of(exc) if exc else ERROR, f"{what}; {outcome}", w.episode_id, exc)

    def _stop(
        self, kind: str, message: str, episode_id: str | None, exc: BaseException | None = None
    ) -> None:
        """Disarm, remember why, tell the daemon (a traceback only for what is not a disk error)."""
        fault = new_fault(kind, f"recording stopped: {message}", episode_id)
        self.armed = False
        self._fault = fault
        self.stats.last_error = fault.message
        tb = None
        if kind == ERROR and exc is not None:
            tb = "".join(traceback.format_exception(exc))
        self._emit({"fault": fault.as_dict(), "epoch": self.epoch, "traceback": tb})
        self.status(force=True)

    def _check_fault_cleared(self) -> None:
        """Space is back: the fault is over (recording stays off until someone starts it)."""
        fault = self._fault
        now = time.monotonic()
        if fault is None or not fault.clears_with_space or now < self._next_space_check:
            return
        self._next_space_check = now + _SPACE_CHECK_S
        try:
            back = self.budget.check_room() is None and (
                fault.kind == LOW_SPACE or self.budget.free_bytes() >= _SPACE_BACK_MIN_BYTES
            )
        except OSError:
            return
        if back:
            self._fault = None
            self._emit({"fault_cleared": fault.as_dict(), "epoch": self.epoch})


# ---------------------------------------------------------------------- the process


def _frame(ring: SlotRing, ref: Any, last: dict[str, WireFrame], name: str) -> WireFrame | None:
    """Rebuild a frame: copied out of its slot, or the previous one again (same seq)."""
    if ref is None:
        return None
    seq, t_capture, slot, shape, dtype, scale = ref
    if slot is None:
        prev = last.get(name)
        if prev is None or prev.seq != seq:
            raise LookupError(f"{name} frame {seq} was never sent")
        return prev
    frame = WireFrame(ring.take(slot, tuple(shape), dtype), t_capture, seq, scale)
    last[name] = frame
    return frame


def _step(ring: SlotRing, m: dict[str, Any], last: dict[str, WireFrame]) -> WireStep:
    return WireStep(
        t=m["t"],
        action=np.asarray(m["action"], np.float64),
        mode=m["mode"],
        mode_generation=m["gen"],
        source=m["source"],
        neutral=m["neutral"],
        safety_reason=m["safety_reason"],
        command=m["command"],
        shadow_action=m["shadow"],
        frame=_frame(ring, m["frame"], last, "image"),
        depth=_frame(ring, m["depth"], last, "depth"),
    )


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def serve(cfg: dict[str, Any]) -> int:
    ppid = os.getppid()
    _die_with_parent()
    if os.getppid() != ppid:  # the daemon died before prctl took effect
        return 1
    step_fd, event_fd = cfg["step_fd"], cfg["event_fd"]
    ring = SlotRing(cfg["ring_fd"], cfg["slots"], cfg["slot_bytes"])
    emit_lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with emit_lock:
            write_all(event_fd, pack(event))

    core = WriterCore(cfg, emit)
    thread = threading.Thread(target=core.run, name="writer")
    thread.start()
    last: dict[str, WireFrame] = {}
    closing = False
    while not closing:
        try:
            m = read_message(step_fd)
        except EOFError:
            # The daemon is gone without saying goodbye: leave the episode as a crash
            # would (interrupted), recovery at its next start finishes it.
            os._exit(0)
        kind = m["k"]
        if kind == "step":
            core.stats.steps_received += 1
            try:
                step = _step(ring, m, last)
            except (LookupError, ValueError) as exc:
                core.stats.steps_dropped += 1
                core.log("warning", f"step dropped: {exc}")
                continue
            try:
                core.queue.put_nowait(step)
            except queue.Full:
                core.stats.steps_dropped += 1
        elif kind == "end":
            with contextlib.suppress(queue.Full):
                core.queue.put_nowait(_END)  # lost: the generation change ends it anyway
        elif kind == "arm":
            core.queue.put(("arm", m["epoch"], m["meta"], m["budget"]))
        elif kind == "meta":
            core.queue.put(("meta", m["meta"]))
        elif kind == "disarm":
            core.queue.put(("disarm",))
        elif kind == "close":
            core.queue.put(("drain", m["drain_s"]))
            core.queue.put(_END)
            core.queue.put(None)
            closing = True
    thread.join()
    return 0


def main() -> int:
    cfg = json.loads(sys.argv[1])
    return_large_buffers_to_the_os()  # frames copied out and encoded: ~50 MB less RSS
    with contextlib.suppress(OSError):  # encoding yields the CPU to the control loop
        os.nice(int(cfg.get("nice", 0)))  # relative to the daemon's niceness
    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
