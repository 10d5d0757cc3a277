"""The recorder: control-loop steps into RLDS episode files, off the control thread.

The control loop calls ``hook`` once per tick; it must never wait on a disk.
So the hook only decides (is recording armed, does the mode record, did the
mode change) and puts a reference to the step on a bounded queue; a full
queue drops the step and counts it.  A writer thread encodes images and
appends records.  A mode change ends the episode: one episode is one mode.

A write error (disk full, quota, I/O error) stops recording once: the episode
is committed as truncated with what reached the disk, recording disarms, one
error is logged, and ``status()["fault"]`` says why until space is back or
recording is started again.  No episode starts while free space is below the
floor, so a full disk never collects empty episode directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain import __version__
from brain.config import Config
from brain.control.loop import Step
from brain.logs import log_fields
from brain.recording_fault import (
    ERROR,
    LOW_SPACE,
    RecordingFault,
    describe,
    kind_of,
    new_fault,
)
from rlds.images import encode_jpeg, encode_png16
from rlds.recovery import recover
from rlds.storage import StorageBudget, purge_discarded
from rlds.types import StepInput
from rlds.writer import EpisodeWriter

_log = logging.getLogger(__name__)

_END = "end"
_IDLE = "idle"
_PIPELINE_DEPTH = 4  # steps whose images may be in the encoder pool at once
_SPACE_CHECK_S = 1.0  # how often free space is looked at while recording or after a fault
# "Space is back" after ENOSPC needs at least this much even when the floor is 0,
# or the few KiB the truncated commit frees would count.
_SPACE_BACK_MIN_BYTES = 1 << 20


class RecordingRefused(RuntimeError):
    """Recording cannot start; the message says why (e.g. the disk is nearly full)."""


class _NoRoom(RuntimeError):
    """An episode may not start: below the free-space floor or over the quota."""


@dataclass
class RecorderStats:
    steps_queued: int = 0
    steps_written: int = 0
    steps_dropped: int = 0
    episodes_committed: int = 0
    episodes_failed: int = 0  # left interrupted for recovery (the commit itself failed)
    episodes_truncated: int = 0  # committed as truncated after a write error
    last_error: str | None = None
    last_episode: str | None = None
    writer: dict[str, Any] = field(default_factory=dict)


class Recorder:
    def __init__(
        self,
        config: Config,
        *,
        sensor_specs: dict[str, Any],
        model_version: Callable[[], str | None] = lambda: None,
        root: Path | None = None,
    ) -> None:
        self.cfg = config
        self.rc = config.recording
        self.root = root or config.episodes_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.budget = StorageBudget(
            self.root,
            quota_bytes=int(self.rc.quota_gb * 1e9) if self.rc.quota_gb else None,
            min_free_bytes=int(self.rc.min_free_mb * 1e6),
        )
        self._sensor_specs = sensor_specs
        self._has_camera = "image" in sensor_specs
        self._has_depth = "depth" in sensor_specs
        self._model_version = model_version
        self._queue: queue.Queue[Step | str | None] = queue.Queue(self.rc.queue_size)
        self._armed = self.rc.auto_record
        self._tags: list[str] = list(self.rc.tags)
        self._active_gen: int | None = None  # mode generation of the episode being fed
        self._lock = threading.Lock()
        self.stats = RecorderStats()
        self._thread: threading.Thread | None = None
        self._writer: EpisodeWriter | None = None
        self._writer_gen: int | None = None
        self._encodes: OrderedDict[tuple[str, int], Future[bytes]] = OrderedDict()
        self._drain_deadline: float | None = None
        self._fault: RecordingFault | None = None
        self._next_space_check = 0.0

    # ------------------------------------------------------------------ lifecycle

    def recover(self) -> list[Any]:
        """Run at start-up, before recording: finish what a crash or power cut interrupted."""
        reports = recover(self.root, min_steps=self.rc.min_steps)
        for r in reports:
            _log.warning("episode recovery: %s", r, extra=log_fields(recovery=str(r)))
        self.purge_discarded()
        return reports

    def purge_discarded(self) -> None:
        """Keep ``.discarded/`` within its configured size and age."""
        rc = self.rc
        try:
            purged = purge_discarded(
                self.root,
                max_bytes=None if rc.discarded_max_mb is None else int(rc.discarded_max_mb * 1e6),
                max_age_s=None
                if rc.discarded_max_age_days is None
                else rc.discarded_max_age_days * 86400.0,
            )
        except OSError as exc:
            _log.error("could not purge %s/.discarded: %s", self.root, exc)
            return
        if purged:
            _log.info(
                "purged %d discarded episode(s) (%d bytes) from %s/.discarded",
                len(purged),
                sum(p.bytes for p in purged),
                self.root,
            )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Commit the open episode and stop the writer thread, within ``timeout``.

        Steps still queued when 60 % of the time is used up are dropped (and
        counted) so that what was written is committed in time, rather than
        the whole episode being left to recovery by a slow drain.
        """
        thread = self._thread
        if thread is None:
            return
        self._drain_deadline = time.monotonic() + 0.6 * timeout
        self._put_blocking(_END)
        self._put_blocking(None)
        thread.join(timeout)
        if thread.is_alive():
            _log.error(
                "recorder did not finish within %.1f s; the episode will be recovered", timeout
            )
        self._thread = None

    # ------------------------------------------------------------------ commands (any thread)

    def start_recording(self, tags: list[str] | None = None) -> dict[str, Any]:
        ok, reason = self.budget.can_start()
        if not ok:
            raise RecordingRefused(reason)
        with self._lock:
            self._armed = True
            self._fault = None  # restarting acknowledges it; a new error reports itself
            if tags is not None:
                self._tags = list(self.rc.tags) + list(tags)
        return self.status()

    def stop_recording(self) -> dict[str, Any]:
        with self._lock:
            self._armed = False
        return self.status()

    def status(self) -> dict[str, Any]:
        s = self.stats
        writer = self._writer
        fault = self._fault
        return {
            "armed": self._armed,
            "fault": fault.as_dict() if fault is not None else None,
            "recording": writer is not None,
            "episode_id": writer.episode_id if writer is not None else None,
            "root": str(self.root),
            "steps_written": s.steps_written,
            "steps_dropped": s.steps_dropped,
            "episodes_committed": s.episodes_committed,
            "episodes_failed": s.episodes_failed,
            "episodes_truncated": s.episodes_truncated,
            "last_episode": s.last_episode,
            "last_error": s.last_error,
            "queue_depth": self._queue.qsize(),
            "writer": s.writer,
        }

    # ------------------------------------------------------------------ the control thread

    def hook(self, step: Step) -> None:
        """Called once per tick on the control thread: decide, enqueue, never block."""
        gen = step.mode_generation
        # Every recorded step carries the same observations: a tick before the
        # first camera frame (or depth frame) has arrived is not recorded.
        complete = (step.frame is not None or not self._has_camera) and (
            step.depth is not None or not self._has_depth
        )
        if step.recordable and self._armed and complete:
            if self._active_gen is not None and gen != self._active_gen:
                self._offer(_END)  # the mode changed: that episode is over
            self._active_gen = gen
            self._offer(step)
        elif self._active_gen is not None:
            self._active_gen = None
            self._offer(_END)

    def _offer(self, item: Step | str) -> None:
        try:
            self._queue.put_nowait(item)
            if item is not _END:
                self.stats.steps_queued += 1
        except queue.Full:
            if item is _END:
                # An end marker must not be lost, or two modes would share an episode;
                # the writer ends the episode itself when the generation changes.
                return
            self.stats.steps_dropped += 1

    def _put_blocking(self, item: Step | str | None) -> None:
        try:
            self._queue.put(item, timeout=5.0)
        except queue.Full:
            _log.error("recorder queue stayed full for 5 s")

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        """Writer thread: images are encoded on a small pool, records appended in order.

        Encoding (JPEG ~3 ms, 16-bit PNG ~15 ms at 640x480) dominates; the pool
        encodes the next frames while this thread appends the previous step, so
        depth at 30 fps keeps up.  A frame shared by consecutive ticks is
        encoded once (keyed by its sequence number).
        """
        pending: deque[tuple[Step, dict[str, Future[bytes]]]] = deque()
        with ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="recorder-encode", initializer=_lower_priority
        ) as pool:
            while True:
                if pending:
                    wait: float | None = 0.005
                else:  # a fault that space can clear is re-checked while idle
                    wait = _SPACE_CHECK_S if self._fault is not None else None
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = _IDLE
                if self._fault is not None:
                    self._check_fault_cleared()
                if isinstance(item, Step):
                    deadline = self._drain_deadline
                    if deadline is not None and time.monotonic() > deadline:
                        self.stats.steps_dropped += 1  # shutting down: commit what we have
                    else:
                        pending.append((item, self._encode_async(pool, item)))
                flush_all = item is None or item == _END
                while pending and (
                    flush_all
                    or len(pending) > _PIPELINE_DEPTH
                    or all(f.done() for f in pending[0][1].values())
                ):
                    step, futures = pending.popleft()
                    self._write_guarded(step, futures)
                if item is None:
                    self._finish()
                    return
                if item == _END:
                    self._finish()

    def _encode_async(self, pool: ThreadPoolExecutor, step: Step) -> dict[str, Future[bytes]]:
        jobs: dict[str, Future[bytes]] = {}
        for name, frame in (("image", step.frame), ("depth", step.depth)):
            if frame is None:
                continue
            key = (name, frame.seq)
            fut = self._encodes.get(key)
            if fut is None:
                if name == "image":
                    fut = pool.submit(encode_jpeg, frame.data, self.rc.jpeg_quality)
                else:
                    fut = pool.submit(encode_png16, frame.data)
                self._encodes[key] = fut
                while len(self._encodes) > 8:
                    self._encodes.popitem(last=False)
            jobs[name] = fut
        return jobs

    def _write_guarded(self, step: Step, futures: dict[str, Future[bytes]]) -> None:
        try:
            encoded = {name: f.result() for name, f in futures.items()}
            self._write(step, encoded)
        except _NoRoom as exc:
            self._stop(LOW_SPACE, f"no new episode: {exc}", None)
        except Exception as exc:  # a disk error ends recording, never the daemon
            self._stop_on_error(exc)

    def _write(self, step: Step, encoded: dict[str, bytes]) -> None:
        w = self._writer
        gen = step.mode_generation
        if w is not None and self._writer_gen != gen:
            self._finish()  # a lost end marker: the generation tells us anyway
            w = None
        if w is None:
            if not self._armed:  # queued before a fault (or stop) disarmed recording
                self.stats.steps_dropped += 1
                return
            w = self._open(step)
            self._writer_gen = gen
        obs: dict[str, Any] = {}
        ts: dict[str, float] = {}
        extra: dict[str, Any] = {
            "mode": step.mode.value,
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
            extra["command"] = [float(v) for v in step.command]
        if "shadow_action" in step.extra and step.extra["shadow_action"] is not None:
            extra["shadow_action"] = [float(v) for v in step.extra["shadow_action"]]
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
            f"free space on {self.root} fell below the floor of {self.rc.min_free_mb:g} MB; "
            f"episode {episode} was committed",
            episode,
        )

    def _open(self, step: Step) -> EpisodeWriter:
        problem = self.budget.check_room()  # before any directory is made
        if problem is not None:
            raise _NoRoom(problem)
        self._next_space_check = time.monotonic() + _SPACE_CHECK_S
        cfg = self.cfg
        meta = {
            "robot_id": cfg.robot.id,
            "robot_kind": cfg.robot.kind,
            "config_hash": cfg.config_hash(),
            "software_version": __version__,
            "model_version": self._model_version(),
            "mode": step.mode.value,
            "source": step.source,
            "rate_hz": cfg.control.rate_hz,
            "action_names": list(cfg.action_names),
            "sensors": self._sensor_specs,
            "tags": list(self._tags),
            "sim": cfg.sim.model_dump(mode="json") if cfg.uses_sim else None,
            "started_wall": time.time(),
        }
        if step.depth is not None:
            meta["depth_scale"] = step.depth.depth_scale
        self._writer = EpisodeWriter(
            self.root,
            meta,
            jpeg_quality=self.rc.jpeg_quality,
            fsync_interval_s=self.rc.fsync_interval_s,
        )
        _log.info(
            "recording episode %s (%s)",
            self._writer.episode_id,
            step.mode.value,
            extra=log_fields(episode_id=self._writer.episode_id),
        )
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
            _log.info(
                "episode %s committed",
                w.episode_id,
                extra=log_fields(episode_id=w.episode_id),
            )
        try:
            evicted = self.budget.evict()
            if evicted:
                _log.info("storage quota: evicted exported episodes %s", evicted)
        except Exception:
            _log.exception("eviction failed")

    # ------------------------------------------------------------------ faults (writer thread)

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
        """Disarm, remember why, and log it once (a traceback only for what is not a disk error)."""
        fault = new_fault(kind, f"recording stopped: {message}", episode_id)
        with self._lock:
            self._armed = False
            self._fault = fault
        self.stats.last_error = fault.message
        _log.error(
            "%s",
            fault.message,
            exc_info=exc if kind == ERROR and exc is not None else None,
            extra=log_fields(episode_id=episode_id, fault=kind),
        )

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
            with self._lock:
                if self._fault is fault:
                    self._fault = None
            _log.info("recording: free space is back on %s; recording can be started", self.root)


def _lower_priority() -> None:
    """Encoder threads yield the CPU to the control loop (nice +10 for this thread only)."""
    # Not Linux, or not permitted: run at normal priority.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
