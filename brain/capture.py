"""Sensor capture: one thread per sensor feeding a latest-frame buffer.

Drivers block in ``read()`` until the next frame, so each sensor gets its own
thread; the control loop never waits for a camera, it takes whatever is newest
and judges its age.  The asyncio side sees each sensor as one supervised task
whose life is the thread's: a driver that raises ends the task with that
exception, and the supervisor restarts it with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from brain.control.timing import RollingSeries
from brain.hardware.protocols import Camera, DepthCamera, DepthFrame, Frame
from brain.threads import run_thread

_log = logging.getLogger(__name__)


class LatestFrame:
    """A one-slot, thread-safe buffer: writers replace, readers never block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: Frame | DepthFrame | None = None

    def put(self, item: Frame | DepthFrame) -> None:
        with self._lock:
            self._item = item

    def get(self) -> Frame | DepthFrame | None:
        with self._lock:
            return self._item


@dataclass(slots=True)
class SensorStats:
    frames: int = 0
    errors: int = 0
    last_error: str | None = None
    started_at: float | None = None

    def fps(self, now: float) -> float:
        if not self.started_at or now <= self.started_at:
            return 0.0
        return self.frames / (now - self.started_at)


@dataclass(frozen=True, slots=True)
class CameraArrival:
    """The newest camera frame with its arrival number and time (the injected clock)."""

    frame: Frame | None
    count: int  # camera frames published so far: a gap between two ticks is frames without one
    t_arrival: float | None


class SensorHub:
    """The latest camera and depth frames, plus the skew between them.

    ``on_camera`` (set by a frame-triggered control loop) is called on the capture
    thread after each camera frame is in place, so a tick can start at once.
    """

    def __init__(self, window: int = 3000, clock: Callable[[], float] = time.monotonic) -> None:
        self.camera = LatestFrame()
        self.depth = LatestFrame()
        self.has_camera = False
        self.has_depth = False
        self.skew = RollingSeries(window)
        # Capture-time spacing of consecutive camera frames: the camera's real period.
        self.camera_interval = RollingSeries(window)
        self.stats: dict[str, SensorStats] = {}
        self.on_camera: Callable[[], None] | None = None
        self._clock = clock
        self._arrival_lock = threading.Lock()
        self._arrival = CameraArrival(None, 0, None)

    def camera_arrival(self) -> CameraArrival:
        with self._arrival_lock:
            return self._arrival

    def publish(self, name: str, frame: Frame | DepthFrame) -> None:
        if isinstance(frame, DepthFrame):
            self.depth.put(frame)
            other = self.camera.get()
        else:
            with self._arrival_lock:
                prev = self._arrival
                self._arrival = CameraArrival(frame, prev.count + 1, self._clock())
                self.camera.put(frame)
            if prev.frame is not None and frame.t_capture > prev.frame.t_capture:
                self.camera_interval.add(frame.t_capture - prev.frame.t_capture)
            other = self.depth.get()
        # Skew is measured when the later of a pair arrives: |t_cam - t_depth|.
        if other is not None and isinstance(frame, DepthFrame):
            self.skew.add(abs(frame.t_capture - other.t_capture))
        st = self.stats.setdefault(name, SensorStats())
        st.frames += 1
        notify = self.on_camera
        if notify is not None and not isinstance(frame, DepthFrame):
            notify()

    def latest(self) -> tuple[Frame | None, DepthFrame | None]:
        cam = self.camera.get()
        dep = self.depth.get()
        return cam if isinstance(cam, Frame) else None, dep if isinstance(dep, DepthFrame) else None

    def summary(self) -> dict[str, object]:
        now = self._clock()
        cam, dep = self.latest()
        out: dict[str, object] = {
            name: {
                "frames": st.frames,
                "errors": st.errors,
                "fps": round(st.fps(now), 2),
                "last_error": st.last_error,
            }
            for name, st in self.stats.items()
        }
        out["camera_age_ms"] = round((now - cam.t_capture) * 1000, 2) if cam else None
        out["depth_age_ms"] = round((now - dep.t_capture) * 1000, 2) if dep else None
        out["skew_ms"] = self.skew.summary() if self.has_depth and self.has_camera else None
        out["camera_period_ms"] = self.camera_interval.summary() if self.has_camera else None
        return out


class CaptureWorker:
    """Reads one sensor on its own thread until stopped; run() is the supervised task."""

    def __init__(
        self,
        name: str,
        read: Callable[[float], Frame | DepthFrame],
        hub: SensorHub,
        *,
        timeout_s: float = 1.0,
        max_consecutive_errors: int = 5,
    ) -> None:
        self.name = name
        self._read = read
        self._hub = hub
        self._timeout = timeout_s
        self._max_errors = max_consecutive_errors
        self._stop = threading.Event()

    @classmethod
    def for_camera(cls, cam: Camera, hub: SensorHub) -> CaptureWorker:
        hub.has_camera = True
        return cls("camera", cam.read, hub, timeout_s=max(1.0, 3.0 / cam.fps))

    @classmethod
    def for_depth(cls, cam: DepthCamera, hub: SensorHub) -> CaptureWorker:
        hub.has_depth = True
        return cls("depth", cam.read_depth, hub, timeout_s=max(1.0, 3.0 / cam.fps))

    def _loop(self) -> None:
        st = self._hub.stats.setdefault(self.name, SensorStats())
        st.started_at = time.monotonic()
        st.frames = 0
        errors = 0
        while not self._stop.is_set():
            try:
                frame = self._read(self._timeout)
            except Exception as exc:
                errors += 1
                st.errors += 1
                st.last_error = f"{type(exc).__name__}: {exc}"
                if errors >= self._max_errors:
                    raise
                _log.warning("%s read failed (%d in a row): %s", self.name, errors, exc)
                continue
            errors = 0
            self._hub.publish(self.name, frame)

    async def run(self) -> None:
        self._stop.clear()
        await run_thread(
            f"capture-{self.name}", self._loop, self._stop.set, join_timeout_s=self._timeout + 0.5
        )
