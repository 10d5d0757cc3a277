"""The recorder: control-loop steps into RLDS episode files, off the control process.

The control loop calls ``hook`` once per tick; it must never wait on a disk, on
the GIL behind an encoder, or on another process.  So the hook only decides (is
recording armed, does the mode record, did the mode change), copies a new frame
into a free shared-memory slot and writes one small message to a non-blocking
pipe; no free slot, a full pipe or a writer being restarted drops the step and
counts it.  The episode-writer process (``brain.recording_writer``, started through
``brain.recording_link``) encodes the images and appends the records.  A mode
change ends the episode: one episode is one mode.

A write error (disk full, quota, I/O error) stops recording once: the writer
commits the episode as truncated with what reached the disk, recording disarms,
the writer reports the fault back, one error is logged here, and
``status()["fault"]`` says why until space is back or recording is started
again.  No episode starts while free space is below the floor, so a full disk
never collects empty episode directories.

If the writer process dies (killed, out of memory), the daemon keeps driving:
the interrupted episode is recovered (``rlds.recovery``), a new writer is
started (with a growing delay if it keeps dying), and ``status()`` and
``stats()`` report the restart.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain import __version__
from brain.config import Config
from brain.control.loop import Step
from brain.logs import log_fields
from brain.recording_fault import RecordingFault
from brain.recording_link import WriterLink, describe_exit, spawn_writer
from brain.recording_wire import SlotRing, pack, read_message, send_nowait, send_within
from common.backoff import Backoff, BackoffPolicy
from rlds.recovery import recover
from rlds.storage import StorageBudget, purge_discarded

_log = logging.getLogger(__name__)

# Frames between the control thread and the writer, which copies them out at once: 32 slots
# are ~0.3 s of colour + depth at 50 Hz, enough to ride out a writer that the scheduler
# left waiting (8 filled within 80 ms on a loaded 2-core host and steps were dropped).
FRAME_SLOTS = 32
_META_CHECK_S = 0.5  # how often the model version is looked at for new episodes' metadata
# First and largest delay before starting a dead writer again (doubling in between).
_RESTART_BACKOFF = BackoffPolicy(initial_s=0.2, max_s=30.0)
_STABLE_S = 30.0  # a writer that lived this long resets the restart delay
# The writer's niceness above the daemon's own: it yields the CPU to the control thread.
# Relative, so under systemd (Nice=-5) it runs at 0, level with ordinary processes, and is
# not starved by a busy neighbour the way an absolute +5 was.
_WRITER_NICE = 5


class RecordingRefused(RuntimeError):
    """Recording cannot start; the message says why (e.g. the disk is nearly full)."""


@dataclass
class RecorderStats:
    steps_queued: int = 0
    steps_written: int = 0
    steps_dropped: int = 0  # here (no slot, pipe full, no writer) plus in the writer
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
        self._armed = self.rc.auto_record
        self._epoch = 0  # bumped by every start: a fault from before it is acknowledged
        self._tags: list[str] = list(self.rc.tags)
        self._active_gen: int | None = None  # mode generation of the episode being fed
        self._lock = threading.Lock()  # commands vs the writer's reports
        self._send_lock = threading.Lock()  # the pipe and the ring vs a writer restart
        self.stats = RecorderStats()
        self._fault: RecordingFault | None = None
        self._ring: SlotRing | None = None
        self._link: WriterLink | None = None
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._dropped_here = 0
        # what the writers before the current one did (their counters start at 0)
        self._bases = dict.fromkeys(
            (
                "steps_written",
                "steps_dropped",
                "episodes_committed",
                "episodes_failed",
                "episodes_truncated",
            ),
            0,
        )
        self._restarts = 0
        self._last_exit: str | None = None
        self._meta_sent: dict[str, Any] = {}
        self._too_big_logged = False

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
        if self._monitor is not None:
            return
        self._ring = SlotRing.create(FRAME_SLOTS, self._slot_bytes())
        self._link = self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="recorder", daemon=True)
        self._monitor.start()

    def close(self, timeout: float = 5.0) -> None:
        """Commit the open episode and stop the writer process, within ``timeout``.

        Steps still queued when 60 % of the time is used up are dropped (and
        counted) so that what was written is committed in time, rather than
        the whole episode being left to recovery by a slow drain.
        """
        monitor = self._monitor
        if monitor is None:
            return
        self._closing.set()
        with self._lock:
            link = self._link
        if link is not None and link.steps_sent == 0:
            # Nothing was ever handed to this writer, so it holds no episode: stop it now
            # rather than wait for it to finish starting (its imports take ~0.5 s) to say goodbye.
            link.proc.kill()
            link.proc.wait()
        elif link is not None:
            send_within(link.step_fd, pack({"k": "close", "drain_s": 0.6 * timeout}), 1.0)
            try:
                link.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.error(
                    "episode writer did not finish within %.1f s; the episode will be recovered",
                    timeout,
                )
                link.proc.kill()
                link.proc.wait()
        monitor.join(2.0)
        with self._send_lock:
            if link is not None:
                os.close(link.step_fd)
                self._link = None
            if self._ring is not None:
                self._ring.close()
                self._ring = None
        self._monitor = None

    # ------------------------------------------------------------------ commands (any thread)

    def start_recording(self, tags: list[str] | None = None) -> dict[str, Any]:
        ok, reason = self.budget.can_start()
        if not ok:
            raise RecordingRefused(reason)
        with self._lock:
            self._armed = True
            self._fault = None  # restarting acknowledges it; a new error reports itself
            self._epoch += 1
            if tags is not None:
                self._tags = list(self.rc.tags) + list(tags)
            # The writer checks space with the daemon's budget as it stands at each start.
            budget = {"quota": self.budget.quota_bytes, "min_free": self.budget.min_free_bytes}
            msg = {"k": "arm", "epoch": self._epoch, "meta": self._dynamic_meta(), "budget": budget}
            self._command(msg)
        return self.status()

    def stop_recording(self) -> dict[str, Any]:
        with self._lock:
            self._armed = False
            self._command({"k": "disarm"})
        return self.status()

    def status(self) -> dict[str, Any]:
        s = self.stats
        fault = self._fault
        link = self._link
        w = link.status if link is not None else {}
        return {
            "armed": self._armed,
            "fault": fault.as_dict() if fault is not None else None,
            "recording": bool(w.get("recording")),
            "episode_id": w.get("episode_id"),
            "steps_written": s.steps_written,
            "steps_dropped": s.steps_dropped,
            "episodes_committed": s.episodes_committed,
            "episodes_failed": s.episodes_failed,
            "episodes_truncated": s.episodes_truncated,
            "last_episode": s.last_episode,
            "last_error": s.last_error,
            "queue_depth": link.queue_depth() if link is not None else 0,
            "writer": s.writer,
            "writer_process": self.writer_process(),
        }

    def writer_process(self) -> dict[str, Any]:
        """The episode-writer process, for `continuon stats` and the app."""
        link = self._link
        alive = link is not None and link.proc.poll() is None
        return {
            "pid": link.proc.pid if alive and link is not None else None,
            "alive": alive,
            "restarts": self._restarts,
            "last_exit": self._last_exit,
            "slots_busy": self._ring.busy() if self._ring is not None else 0,
        }

    # ------------------------------------------------------------------ the control thread

    def hook(self, step: Step) -> None:
        """Called once per tick on the control thread: decide, hand over, never block."""
        gen = step.mode_generation
        # Every recorded step carries the same observations: a tick before the
        # first camera frame (or depth frame) has arrived is not recorded.
        complete = (step.frame is not None or not self._has_camera) and (
            step.depth is not None or not self._has_depth
        )
        if step.recordable and self._armed and complete:
            if self._active_gen is not None and gen != self._active_gen:
                self._offer_end()  # the mode changed: that episode is over
            self._active_gen = gen
            self._offer(step)
        elif self._active_gen is not None:
            self._active_gen = None
            self._offer_end()

    def _offer_end(self) -> None:
        # A lost end marker is harmless: the writer ends the episode itself when the
        # generation changes (and a stopped recording opens no new one).
        if self._send_lock.acquire(blocking=False):
            try:
                if self._link is not None:
                    send_nowait(self._link.step_fd, pack({"k": "end"}))
            finally:
                self._send_lock.release()

    def _offer(self, step: Step) -> None:
        self.stats.steps_queued += 1
        if not self._send_lock.acquire(blocking=False):  # a writer restart is under way
            self._drop()
            return
        try:
            link, ring = self._link, self._ring
            if link is None or ring is None or not self._send_step(link, ring, step):
                self._drop()
        except Exception:  # a step the hand-over cannot take is lost, never the tick
            self._drop()
            raise
        finally:
            self._send_lock.release()

    def _send_step(self, link: WriterLink, ring: SlotRing, step: Step) -> bool:
        claimed: list[int] = []
        try:
            if self._hand_over(link, ring, step, claimed):
                return True
        except BaseException:
            for c in claimed:
                ring.release(c)
            raise
        for c in claimed:
            ring.release(c)
        return False

    def _hand_over(self, link: WriterLink, ring: SlotRing, step: Step, claimed: list[int]) -> bool:
        """Frames into slots (``claimed``), then the message; False if either has no room."""
        # name -> (seq, t_capture, slot or None if already sent, shape, dtype, depth scale)
        refs: dict[str, tuple[int, float, int | None, tuple[int, ...], str, float] | None] = {}
        for name, frame in (("image", step.frame), ("depth", step.depth)):
            if frame is None:
                refs[name] = None
                continue
            slot = None
            if link.sent.get(name) != frame.seq:
                slot = ring.put(frame.data)
                if slot is None:
                    self._log_too_big(frame.data)
                    return False
                claimed.append(slot)
            scale = getattr(frame, "depth_scale", 0.001)
            refs[name] = (
                frame.seq,
                frame.t_capture,
                slot,
                frame.data.shape,
                frame.data.dtype.str,
                scale,
            )
        shadow = step.extra.get("shadow_action")
        msg = {
            "k": "step",
            "t": step.t,
            "action": [float(v) for v in step.action],
            "mode": step.mode.value,
            "gen": step.mode_generation,
            "source": step.source,
            "neutral": step.neutral,
            "safety_reason": step.safety_reason,
            "command": None if step.command is None else [float(v) for v in step.command],
            "shadow": None if shadow is None else [float(v) for v in shadow],
            "frame": refs.get("image"),
            "depth": refs.get("depth"),
        }
        if not send_nowait(link.step_fd, pack(msg)):
            return False
        for name in ("image", "depth"):
            ref = refs.get(name)
            if ref is not None:
                link.sent[name] = ref[0]
        link.steps_sent += 1
        return True

    def _drop(self) -> None:
        self._dropped_here += 1
        self.stats.steps_dropped += 1

    def _log_too_big(self, data: Any) -> None:
        if data.nbytes > (self._ring.slot_bytes if self._ring else 0) and not self._too_big_logged:
            self._too_big_logged = True
            _log.error(
                "a %s %s frame does not fit the recorder's %d-byte slots (sized from the "
                "config); such steps are dropped",
                data.shape,
                data.dtype,
                self._ring.slot_bytes if self._ring else 0,
            )

    # ------------------------------------------------------------------ the writer process

    def _slot_bytes(self) -> int:
        sizes = [1]
        for name, per_px in (("image", 3), ("depth", 2)):
            spec = self._sensor_specs.get(name) or {}
            if "width" in spec and "height" in spec:
                sizes.append(int(spec["width"]) * int(spec["height"]) * per_px)
        return max(sizes)

    def _dynamic_meta(self) -> dict[str, Any]:
        try:
            version = self._model_version()
        except Exception:  # a policy being swapped must not stop recording
            version = None
        return {"model_version": version, "tags": list(self._tags)}

    def _writer_config(self) -> dict[str, Any]:
        cfg, rc = self.cfg, self.rc
        return {
            "root": str(self.root),
            "queue_size": rc.queue_size,
            "jpeg_quality": rc.jpeg_quality,
            "fsync_interval_s": rc.fsync_interval_s,
            "quota_bytes": self.budget.quota_bytes,
            "min_free_bytes": self.budget.min_free_bytes,
            "nice": _WRITER_NICE,
            "armed": self._armed,
            "epoch": self._epoch,
            "episode_meta": {
                "robot_id": cfg.robot.id,
                "robot_kind": cfg.robot.kind,
                "config_hash": cfg.config_hash(),
                "software_version": __version__,
                "rate_hz": cfg.control.rate_hz,
                "action_names": list(cfg.action_names),
                "sensors": self._sensor_specs,
                "sim": cfg.sim.model_dump(mode="json") if cfg.uses_sim else None,
                **self._dynamic_meta(),
            },
        }

    def _spawn(self) -> WriterLink:
        """Start a writer (only from long-lived threads: see :func:`spawn_writer`)."""
        assert self._ring is not None
        cfg = self._writer_config()
        self._meta_sent = cfg["episode_meta"]
        return spawn_writer(cfg, self._ring)

    def _command(self, msg: dict[str, Any]) -> None:
        """An arm/disarm/metadata message, in order with the steps (caller holds ``_lock``)."""
        with self._send_lock:
            link = self._link
            if link is not None and not send_within(link.step_fd, pack(msg), 1.0):
                _log.warning("episode writer did not take a %s command", msg["k"])
        if "meta" in msg:
            self._meta_sent = {**self._meta_sent, **msg["meta"]}

    def _watch(self) -> None:
        """The monitor thread: the writer's reports in, its death noticed and handled."""
        backoff = Backoff(_RESTART_BACKOFF)
        next_meta = time.monotonic() + _META_CHECK_S
        while not self._closing.is_set():
            link = self._link
            if link is None:  # dead, or a start failed: try again after a growing delay
                if self._closing.wait(backoff.next_delay()):
                    return
                self._respawn()
                continue
            try:
                self._pump(link, until=next_meta)
            except (EOFError, OSError):
                rc = link.proc.wait()
                os.close(link.event_fd)
                if self._closing.is_set():
                    return
                self._writer_died(link, rc)
                if time.monotonic() - link.started > _STABLE_S:
                    backoff.reset()
                continue
            next_meta = time.monotonic() + _META_CHECK_S
            meta = self._dynamic_meta()
            if any(self._meta_sent.get(k) != v for k, v in meta.items()):
                with self._lock:
                    self._command({"k": "meta", "meta": meta})

    def _pump(self, link: WriterLink, until: float) -> None:
        """Apply the writer's events until ``until`` (EOFError when it is gone)."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([link.event_fd], [], [], left)
            if ready:
                self._apply(link, read_message(link.event_fd))

    def _apply(self, link: WriterLink, event: dict[str, Any]) -> None:
        if "status" in event:
            w = event["status"]
            link.status = w
            s = self.stats
            b = self._bases
            s.steps_written = b["steps_written"] + w["steps_written"]
            s.episodes_committed = b["episodes_committed"] + w["episodes_committed"]
            s.episodes_failed = b["episodes_failed"] + w["episodes_failed"]
            s.episodes_truncated = b["episodes_truncated"] + w["episodes_truncated"]
            s.steps_dropped = self._dropped_here + b["steps_dropped"] + w["steps_dropped"]
            s.last_error = w["last_error"]
            if w["last_episode"] is not None:
                s.last_episode = w["last_episode"]
            if w["writer"]:
                s.writer = w["writer"]
        elif "fault" in event:
            fault = RecordingFault(**event["fault"])
            with self._lock:
                if event["epoch"] != self._epoch:
                    return  # recording was started again since: that fault is acknowledged
                self._armed = False
                self._fault = fault
            self.stats.last_error = fault.message
            text = fault.message
            if event.get("traceback"):
                text += "\n" + event["traceback"].rstrip()
            _log.error("%s", text, extra=log_fields(episode_id=fault.episode_id, fault=fault.kind))
        elif "fault_cleared" in event:
            with self._lock:
                current = self._fault
                if current is None or current.as_dict() != event["fault_cleared"]:
                    return
                self._fault = None
            _log.info("recording: free space is back on %s; recording can be started", self.root)
        elif "log" in event:
            level, message, fields = event["log"]
            _log.log(logging.getLevelName(level.upper()), "%s", message, extra=log_fields(**fields))

    def _writer_died(self, link: WriterLink, rc: int) -> None:
        w = link.status
        for key in self._bases:
            self._bases[key] += int(w.get(key, 0))
        self._restarts += 1
        self._last_exit = describe_exit(rc)
        _log.error(
            "episode writer process %s; the daemon keeps driving, its episode is recovered "
            "and a new writer started (restart %d)",
            self._last_exit,
            self._restarts,
            extra=log_fields(writer_exit=self._last_exit),
        )
        with self._lock, self._send_lock:
            os.close(link.step_fd)
            link.step_fd = -1
            self._link = None  # the hook drops (and counts) until the next writer runs
            if self._ring is not None:
                self._ring.reset()
        try:
            self.recover()
        except Exception:
            _log.exception("recovery after the writer died failed")

    def _respawn(self) -> None:
        with self._lock, self._send_lock:
            if self._closing.is_set():
                return
            try:
                self._link = self._spawn()
            except OSError as exc:
                _log.error("cannot start the episode writer: %s", exc)
