"""The individual hw-check checks and the runner that strings them together.

Each check is a small function ``check(ctx) -> CheckResult`` that can be run
and tested on its own.  A check with nothing to check (the device is not
configured, or simulated) raises :class:`Skip` with a sentence saying why; the
runner turns that into SKIP.  A configured device whose library cannot be
imported or whose bus is absent raises HardwareUnavailable, which becomes FAIL
with the driver's message (package and fix): a robot that cannot drive must not
pass.  Any other exception is FAIL with its text, so that a bug in one check
never hides the results of the others.

Nothing here moves an actuator unless ``ctx.move`` is set (``--move``); without
it the actuator check writes nothing at all, not even neutral.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brain.config import (
    ArmActuatorsConfig,
    CameraConfig,
    CarActuatorsConfig,
    Config,
    DepthConfig,
    PCA9685Config,
)
from brain.hardware.lazy import EXTENDED_BUS_HINT, PCA9685_HINT, require
from brain.hardware.protocols import Camera, DepthCamera, HardwareUnavailable
from brain.hwcheck import system
from brain.hwcheck.system import FAIL, PASS, SKIP, WARN

log = logging.getLogger(__name__)

STATUSES = (PASS, WARN, FAIL, SKIP)
_RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

#: Timestamp skew between synchronised sensors (DESIGN.md): p99 must not exceed this.
SKEW_LIMIT_S = 0.005
#: Measured frame rate may differ this much (relative) from the configured one.
FPS_TOLERANCE = 0.10
#: Fewer valid depth pixels than this (fraction) is suspicious; none at all fails.
DEPTH_VALID_WARN = 0.2

SMBUS_HINT = "pip install smbus2 (or the [pi] extra for busio/board)"


class Skip(Exception):
    """The check could not run here; the message says why in a plain sentence."""


@dataclass(slots=True)
class CheckResult:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "details": _jsonable(self.details),
        }


def result(status: str, summary: str, **details: Any) -> CheckResult:
    """A result whose name the runner fills in."""
    return CheckResult("", status, summary, dict(details))


def worst(*statuses: str) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


# ----------------------------------------------------------------------------- context


@dataclass
class CheckContext:
    """Everything a check may use, and the devices opened for the run (closed by ``close``).

    ``sim_robot`` may be handed in (tests); otherwise with ``sim`` set one is
    built from the config on first use.  The knobs after ``clock`` make the
    checks quick to test and let them run against a fake host.
    """

    config: Config
    sim: bool = False
    move: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    sim_robot: Any = None
    grab_frames: int = 30
    warmup_frames: int = 3
    depth_frames: int = 10
    skew_seconds: float = 1.0
    read_timeout_s: float = 2.0
    move_step_s: float = 0.05
    dev_dir: Path = Path("/dev")
    thermal_path: Path = system.THERMAL_PATH
    vcgencmd: Callable[..., str | None] = system.run_vcgencmd
    say: Callable[[str], None] = lambda _msg: None
    _camera: Any = field(default=None, repr=False)
    _depth: Any = field(default=None, repr=False)
    _started: list[Any] = field(default_factory=list, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _own_robot: bool = field(default=False, repr=False)
    #: Set once a check has started or written actuators (only ever with ``move``).
    actuators_touched: bool = field(default=False, repr=False)

    # -------------------------------------------------------------- sim

    def sim_camera_config(self) -> CameraConfig:
        cam = self.config.hardware.camera or CameraConfig()
        return cam.model_copy(update={"driver": "sim", "serial": None})

    def sim_depth_config(self) -> DepthConfig:
        """The config's depth settings, or a depth camera matching the colour camera."""
        d = self.config.hardware.depth
        if d is not None:
            return d.model_copy(update={"driver": "sim", "serial": None})
        cam = self.sim_camera_config()
        return DepthConfig(driver="sim", width=cam.width, height=cam.height, fps=cam.fps)

    def robot(self) -> Any:
        """The simulated robot (``--sim``), built on first use."""
        if not self.sim:
            raise RuntimeError("no simulated robot outside --sim")
        if self.sim_robot is None:
            from brain.hardware.sim import SimRobot

            self.sim_robot = SimRobot(
                self.config.sim, self.sim_camera_config(), self.sim_depth_config(), clock=self.clock
            )
            self._own_robot = True
        return self.sim_robot

    # -------------------------------------------------------------- sensors

    def camera(self) -> Camera:
        """The colour camera, opened and started (real drivers: errors propagate)."""
        if self._camera is None:
            if self.sim:
                cam = self.robot().camera
            else:
                from brain.hardware import factory

                hw = self.config.hardware
                assert hw.camera is not None
                cam = factory.open_camera(hw.camera)
                if hw.depth is not None and hw.depth.driver == "realsense":
                    self._depth = factory.open_depth(hw.depth, cam)
            self._start(cam)
            self._camera = cam
        return self._camera

    def depth(self) -> DepthCamera:
        """The depth camera, opened and started (for a RealSense, the colour camera object)."""
        if self._depth is None or self._depth not in self._started:
            if self.sim:
                dev = self.robot().depth
                if dev is None:
                    raise RuntimeError("the simulated robot was built without a depth camera")
                self._start(dev)
                self._depth = dev
            else:
                self.camera()  # a RealSense serves depth from the colour camera's pipeline
                if self._depth is None:
                    raise RuntimeError("no depth stream was opened")
        return self._depth

    def _start(self, dev: Any) -> None:
        if any(d is dev for d in self._started):
            return
        dev.start()
        self._started.append(dev)

    def realsense_devices(self) -> list[dict[str, Any]]:
        """RealSense devices on USB; HardwareUnavailable when pyrealsense2 cannot be imported."""
        if "realsense" not in self._cache:
            from brain.hardware import realsense_camera

            self._cache["realsense"] = realsense_camera.list_devices()
        return self._cache["realsense"]

    def picameras(self) -> list[dict[str, Any]]:
        """Cameras libcamera sees; HardwareUnavailable when picamera2 cannot be imported."""
        if "picamera2" not in self._cache:
            from brain.hardware import picamera2_camera

            self._cache["picamera2"] = picamera2_camera.list_cameras()
        return self._cache["picamera2"]

    def i2c_probe(self) -> dict[str, Any]:
        """Probe the configured PCA9685 address once per run (see :func:`probe_i2c`)."""
        if "i2c" not in self._cache:
            self._cache["i2c"] = probe_i2c(
                self.config.hardware.actuators.pca9685, dev_dir=self.dev_dir, sleep=self.sleep
            )
        return self._cache["i2c"]

    # -------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop what was started; moved sim actuators go to neutral.  Never raises.

        Actuators that were not moved (no ``--move``) are not written here either.
        """
        devices, self._started = self._started, []
        for dev in reversed(devices):
            try:
                dev.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", type(dev).__name__, exc)
        self._camera = self._depth = None
        robot = self.sim_robot
        if robot is not None:
            if self.actuators_touched:
                with contextlib.suppress(Exception):
                    robot.actuators.neutral()
            if self._own_robot and self.actuators_touched:
                closer = getattr(robot, "close", None)
                if closer is not None:
                    try:
                        closer()
                    except Exception as exc:
                        log.warning("closing the simulated robot failed: %s", exc)
            if self._own_robot:
                self.sim_robot = None
                self._own_robot = False


# ----------------------------------------------------------------------------- helpers


def _percentiles(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {}
    return {
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "max_ms": float(arr.max() * 1e3),
    }


def _hw_skip_sim(what: str, key: str) -> Skip:
    return Skip(
        f"{what} simulated in this config ({key}: sim), so there is no hardware to check; "
        "run `continuon hw-check --sim` to check the simulated robot"
    )


# ----------------------------------------------------------------------------- I2C


def probe_i2c(
    cfg: PCA9685Config, *, dev_dir: Path = Path("/dev"), sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Look for a device at ``cfg.address`` on ``cfg.i2c_bus``; reads only, writes nothing.

    Uses busio/board (bus 1) or adafruit_extended_bus (other buses) to scan the
    bus, else smbus2 to read one byte at the address.  Raises HardwareUnavailable
    when the bus device node or every I2C library is missing: the PCA9685 is
    configured, so a bus that cannot be reached means a car that cannot drive.
    Returns ``{"bus", "address", "found", "addresses" (None for a single-address
    probe), "method"}``.
    """
    node = dev_dir / f"i2c-{cfg.i2c_bus}"
    if not node.exists():
        raise HardwareUnavailable(
            f"no I2C bus: {node} does not exist (enable I2C with `sudo raspi-config`, "
            "Interface Options > I2C, and reboot)"
        )
    missing: list[str] = []
    try:
        if cfg.i2c_bus == 1:
            board = require("board", driver="i2c scan", install_hint=PCA9685_HINT)
            busio = require("busio", driver="i2c scan", install_hint=PCA9685_HINT)
            addresses = _scan(busio.I2C(board.SCL, board.SDA), sleep)
            method = "busio"
        else:
            ext = require(
                "adafruit_extended_bus", driver="i2c scan", install_hint=EXTENDED_BUS_HINT
            )
            addresses = _scan(ext.ExtendedI2C(cfg.i2c_bus), sleep)
            method = "adafruit_extended_bus"
        return {
            "bus": cfg.i2c_bus,
            "address": f"0x{cfg.address:02x}",
            "found": cfg.address in addresses,
            "addresses": [f"0x{a:02x}" for a in sorted(addresses)],
            "method": method,
        }
    except HardwareUnavailable as exc:
        missing.append(str(exc))
    try:
        smbus2 = require("smbus2", driver="i2c scan", install_hint=SMBUS_HINT)
    except HardwareUnavailable as exc:
        missing.append(str(exc))
        raise HardwareUnavailable(
            f"no I2C library to scan {node} with ({'; '.join(missing)})"
        ) from exc
    with smbus2.SMBus(cfg.i2c_bus) as bus:
        try:
            bus.read_byte(cfg.address)
            found = True
        except OSError:
            found = False
    return {
        "bus": cfg.i2c_bus,
        "address": f"0x{cfg.address:02x}",
        "found": found,
        "addresses": None,
        "method": "smbus2",
    }


def _scan(i2c: Any, sleep: Callable[[float], None]) -> list[int]:
    try:
        for _ in range(100):
            if i2c.try_lock():
                break
            sleep(0.01)
        else:
            raise RuntimeError("the I2C bus stayed locked by someone else for 1 s")
        try:
            return [int(a) for a in i2c.scan()]
        finally:
            i2c.unlock()
    finally:
        deinit = getattr(i2c, "deinit", None)
        if deinit is not None:
            with contextlib.suppress(Exception):
                deinit()


def check_i2c(ctx: CheckContext) -> CheckResult:
    act = ctx.config.hardware.actuators
    if ctx.sim:
        raise Skip("running against the simulated robot (--sim): its PWM board is simulated")
    if act.driver == "sim":
        raise _hw_skip_sim("the PWM board is", "hardware.actuators.driver")
    bus = act.pca9685.i2c_bus
    try:
        probe = ctx.i2c_probe()
    except HardwareUnavailable:
        raise  # FAIL with the bus's own message (node missing, no I2C library)
    except (OSError, ValueError, RuntimeError) as exc:
        return result(FAIL, f"cannot scan I2C bus {bus}: {type(exc).__name__}: {exc}", bus=bus)
    where = f"{probe['address']} on I2C bus {probe['bus']}"
    if probe["found"]:
        return result(PASS, f"PCA9685 answers at {where}", **probe)
    seen = probe["addresses"]
    others = f" (devices seen: {', '.join(seen) or 'none'})" if seen is not None else ""
    return result(
        FAIL,
        f"no device at {where}{others}: check wiring, power (VCC and V+) and the address "
        f"jumpers; `i2cdetect -y {probe['bus']}` lists what answers",
        **probe,
    )


# ----------------------------------------------------------------------------- cameras


@dataclass
class Grab:
    frames: int = 0
    t_capture: list[float] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    error: str | None = None
    wall_s: float = 0.0
    first_frame_s: float | None = None
    last: Any = None

    def fps(self) -> float | None:
        """From the capture timestamps, so the start-up delay does not count."""
        if len(self.t_capture) < 2:
            return None
        span = self.t_capture[-1] - self.t_capture[0]
        return (len(self.t_capture) - 1) / span if span > 0 else None


def grab(
    read: Callable[[float], Any],
    n: int,
    *,
    clock: Callable[[], float],
    timeout: float,
    warmup: int = 0,
    after_warmup: Callable[[], None] | None = None,
) -> Grab:
    """Read ``warmup`` frames that are not measured, then up to ``n`` that are.

    A camera's first frames come late (sensor start, exposure settling, the
    sim building its renderer), which says nothing about its steady rate, so
    they are only timed (``first_frame_s``).  Frame age is ``now - t_capture``
    as ``read`` returns.
    """
    g = Grab()
    start = clock()
    try:
        for i in range(warmup):
            read(timeout)
            if i == 0:
                g.first_frame_s = clock() - start
    except Exception as exc:
        g.error = f"warm-up: {type(exc).__name__}: {exc}"
        g.wall_s = clock() - start
        return g
    if after_warmup is not None:
        after_warmup()
    start = clock()
    for _ in range(n):
        try:
            frame = read(timeout)
        except Exception as exc:  # a timeout, or a camera that died mid-grab
            g.error = f"{type(exc).__name__}: {exc}"
            break
        now = clock()
        if g.first_frame_s is None:
            g.first_frame_s = now - start
        g.frames += 1
        g.t_capture.append(float(frame.t_capture))
        g.ages.append(now - float(frame.t_capture))
        g.shapes.add(tuple(int(s) for s in frame.data.shape))
        g.last = frame
    g.wall_s = clock() - start
    return g


def _age_gate(ages: list[float], max_age_ms: float) -> tuple[str, str]:
    stats = _percentiles(ages)
    if not stats:
        return PASS, ""
    if stats["p99_ms"] > max_age_ms:
        return FAIL, (
            f"frame age p99 {stats['p99_ms']:.1f} ms exceeds control.max_frame_age_ms "
            f"{max_age_ms:g} (the control loop would drop these frames)"
        )
    return PASS, f"age p99 {stats['p99_ms']:.1f} ms"


def _enumerate_camera(ctx: CheckContext, cfg: CameraConfig) -> dict[str, Any]:
    """Enumerate the configured camera's kind; Skip without its library, FAIL-worthy if absent."""
    if cfg.driver == "picamera2":
        cams = ctx.picameras()
        if not cams:
            raise _Absent(
                "picamera2 sees no camera: check the ribbon cable, then "
                "`rpicam-hello --list-cameras`",
                {"cameras": cams},
            )
        if cfg.index >= len(cams):
            raise _Absent(f"no camera at index {cfg.index} ({len(cams)} found)", {"cameras": cams})
        return {"cameras": cams}
    devices = ctx.realsense_devices()
    return {"realsense_devices": _check_realsense_present(devices, cfg.serial)}


class _Absent(Exception):
    """The library is there but the device is not: a FAIL with details."""

    def __init__(self, message: str, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


def _check_realsense_present(devices: list[dict[str, Any]], serial: str | None) -> list[dict]:
    if not devices:
        raise _Absent(
            "no RealSense device found: check the USB 3 cable and `rs-enumerate-devices`",
            {"realsense_devices": devices},
        )
    if serial and all(str(d.get("serial")) != serial for d in devices):
        raise _Absent(
            f"no RealSense with serial {serial} (found {[d.get('serial') for d in devices]})",
            {"realsense_devices": devices},
        )
    return devices


def check_camera(ctx: CheckContext) -> CheckResult:
    details: dict[str, Any] = {}
    if ctx.sim:
        cfg = ctx.sim_camera_config()
        details["driver"] = "sim"
    else:
        cfg = ctx.config.hardware.camera
        if cfg is None:
            raise Skip("no camera configured (hardware.camera is null)")
        if cfg.driver == "sim":
            raise _hw_skip_sim("the camera is", "hardware.camera.driver")
        details["driver"] = cfg.driver
        try:
            details.update(_enumerate_camera(ctx, cfg))
        except _Absent as exc:
            return result(FAIL, str(exc), **details, **exc.details)
    details["configured"] = {"width": cfg.width, "height": cfg.height, "fps": cfg.fps}
    try:
        cam = ctx.camera()
    except Skip:
        raise
    except Exception as exc:
        return result(FAIL, f"cannot open the camera: {exc}", **details)
    g = grab(
        cam.read,
        ctx.grab_frames,
        clock=ctx.clock,
        timeout=ctx.read_timeout_s,
        warmup=ctx.warmup_frames,
    )
    fps = g.fps()
    details.update(
        frames=g.frames,
        requested_frames=ctx.grab_frames,
        warmup_frames=ctx.warmup_frames,
        first_frame_s=g.first_frame_s,
        wall_s=g.wall_s,
        measured_fps=fps,
        delivered_shapes=sorted(g.shapes),
        frame_age=_percentiles(g.ages),
        error=g.error,
    )
    if g.frames == 0:
        return result(
            FAIL, f"no frames from the camera ({g.error or 'nothing returned'})", **details
        )
    want = (cfg.height, cfg.width, 3)
    status, notes = PASS, []
    if g.shapes != {want}:
        status = WARN
        got = ", ".join(f"{s[1]}x{s[0]}" for s in sorted(g.shapes) if len(s) >= 2)
        notes.append(f"delivers {got}, configured {cfg.width}x{cfg.height}")
    if g.error is not None:
        status = WARN
        notes.append(f"stopped after {g.frames}/{ctx.grab_frames} frames: {g.error}")
    if fps is None:
        status = WARN
        notes.append("too few frames to measure the frame rate")
    elif abs(fps - cfg.fps) > FPS_TOLERANCE * cfg.fps:
        status = WARN
        slow = "slower" if fps < cfg.fps else "faster"
        notes.append(f"{fps:.1f} fps is {slow} than the configured {cfg.fps:g} fps")
    age_status, age_note = _age_gate(g.ages, ctx.config.control.max_frame_age_ms)
    if age_status != PASS:
        notes.append(age_note)
    status = worst(status, age_status)
    head = (
        f"{g.frames} frames {cfg.width}x{cfg.height}, {fps:.1f} fps (configured {cfg.fps:g})"
        if fps is not None
        else f"{g.frames} frames"
    )
    tail = "; ".join(notes) if notes else age_note
    return result(status, f"{head}; {tail}" if tail else head, **details)


def check_depth(ctx: CheckContext) -> CheckResult:
    details: dict[str, Any] = {}
    if ctx.sim:
        details["driver"] = "sim"
    else:
        hw = ctx.config.hardware
        d = hw.depth
        if d is None:
            raise Skip("no depth camera configured (hardware.depth is not set)")
        if d.driver == "sim":
            raise _hw_skip_sim("the depth camera is", "hardware.depth.driver")
        details["driver"] = d.driver
        try:
            details["realsense_devices"] = _check_realsense_present(
                ctx.realsense_devices(), d.serial or (hw.camera.serial if hw.camera else None)
            )
        except _Absent as exc:
            return result(FAIL, str(exc), **details, **exc.details)
    try:
        dev = ctx.depth()
    except Skip:
        raise
    except Exception as exc:
        return result(FAIL, f"cannot open the depth camera: {exc}", **details)
    g = grab(
        dev.read_depth,
        ctx.depth_frames,
        clock=ctx.clock,
        timeout=ctx.read_timeout_s,
        warmup=ctx.warmup_frames,
    )
    details.update(
        frames=g.frames,
        first_frame_s=g.first_frame_s,
        delivered_shapes=sorted(g.shapes),
        expected_shape=[dev.height, dev.width],
        measured_fps=g.fps(),
        frame_age=_percentiles(g.ages),
        error=g.error,
    )
    if g.frames == 0:
        return result(FAIL, f"no depth frames ({g.error or 'nothing returned'})", **details)
    frame = g.last
    data = np.asarray(frame.data)
    valid = data > 0
    ratio = float(np.count_nonzero(valid)) / max(1, data.size)
    scale = float(getattr(frame, "depth_scale", 0.001))
    median_m = float(np.median(data[valid]) * scale) if ratio > 0 else None
    details.update(valid_ratio=ratio, median_depth_m=median_m, depth_scale=scale)
    notes: list[str] = []
    if ratio == 0:
        status = FAIL
        notes.append("no valid depth pixel: is the lens covered or everything out of range?")
    elif ratio < DEPTH_VALID_WARN:
        status = WARN
        notes.append(f"only {ratio:.0%} of the pixels have depth")
    else:
        status = PASS
    if g.shapes != {(dev.height, dev.width)}:
        status = worst(status, WARN)
        notes.append(f"frame shapes {sorted(g.shapes)}, expected {dev.height}x{dev.width}")
    age_status, age_note = _age_gate(g.ages, ctx.config.control.max_frame_age_ms)
    if age_status != PASS:
        notes.append(age_note)
    status = worst(status, age_status)
    head = f"{g.frames} depth frames, {ratio:.0%} valid pixels" + (
        f", median {median_m:.2f} m" if median_m is not None else ""
    )
    return result(status, "; ".join([head, *notes]), **details)


def pair_skews(color_t: list[float], depth_t: list[float]) -> list[float]:
    """|Δt| from each depth timestamp to the nearest colour timestamp.

    Only depth frames inside the colour frames' time span (widened by half a
    colour period) are paired: at the edges of the two reading windows one
    camera may have delivered a frame whose twin the other never read.
    """
    if not color_t or not depth_t:
        return []
    c = np.sort(np.asarray(color_t, dtype=np.float64))
    d = np.asarray(depth_t, dtype=np.float64)
    if c.size >= 2:
        half = float(np.median(np.diff(c))) / 2
        d = d[(d >= c[0] - half) & (d <= c[-1] + half)]
    idx = np.searchsorted(c, d)
    lo = c[np.clip(idx - 1, 0, c.size - 1)]
    hi = c[np.clip(idx, 0, c.size - 1)]
    return np.minimum(np.abs(d - lo), np.abs(d - hi)).tolist()


def check_sync(ctx: CheckContext) -> CheckResult:
    if not ctx.sim:
        hw = ctx.config.hardware
        if hw.camera is None or hw.depth is None:
            raise Skip(
                "only one camera configured: there is no second sensor to measure "
                "timestamp skew against"
            )
        if "sim" in (hw.camera.driver, hw.depth.driver):
            raise _hw_skip_sim("a camera is", "hardware.camera/depth.driver")
        if hw.depth.driver == "realsense":
            try:
                ctx.realsense_devices()
            except HardwareUnavailable as exc:
                raise Skip(f"no skew to measure without the cameras (see camera): {exc}") from exc
    try:
        cam, dev = ctx.camera(), ctx.depth()
    except Skip:
        raise
    except Exception as exc:
        return result(FAIL, f"cannot open the cameras: {exc}")
    grabs: dict[str, Grab] = {}
    window = ctx.skew_seconds
    clock = ctx.clock

    # Both readers finish warming up before either starts measuring, so the windows overlap.
    barrier = threading.Barrier(2, timeout=ctx.read_timeout_s * (ctx.warmup_frames + 1))

    def collect(key: str, read: Callable[[float], Any], rate: float) -> None:
        n = max(2, math.ceil(window * rate))
        try:
            grabs[key] = grab(
                read,
                n,
                clock=clock,
                timeout=ctx.read_timeout_s,
                warmup=ctx.warmup_frames,
                after_warmup=barrier.wait,
            )
            if grabs[key].error and grabs[key].error.startswith("warm-up"):
                barrier.abort()  # do not keep the other reader waiting for us
        except threading.BrokenBarrierError:
            grabs[key] = Grab(error="the other camera did not deliver its first frames")
            barrier.abort()

    threads = [
        threading.Thread(target=collect, args=("color", cam.read, cam.fps), daemon=True),
        threading.Thread(target=collect, args=("depth", dev.read_depth, dev.fps), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(window + (ctx.warmup_frames + 4) * ctx.read_timeout_s + 1.0)
    if any(t.is_alive() for t in threads) or set(grabs) != {"color", "depth"}:
        return result(FAIL, "a camera read hung: no timestamps to compare")
    color, depth = grabs["color"], grabs["depth"]
    nearest = pair_skews(color.t_capture, depth.t_capture)
    # A depth frame further than half a frame period from every colour frame has no twin
    # among the frames read (the colour reader dropped it): that is a missed frame, not skew.
    twin_s = 0.5 / max(float(cam.fps), float(dev.fps))
    skews = [x for x in nearest if x <= twin_s]
    unpaired = len(nearest) - len(skews)
    stats = _percentiles(skews)
    details: dict[str, Any] = {
        "pairs": len(skews),
        "unpaired": unpaired,
        "twin_window_ms": twin_s * 1e3,
        "skew": stats,
        "limit_ms": SKEW_LIMIT_S * 1e3,
        "color": {"frames": color.frames, "age": _percentiles(color.ages), "error": color.error},
        "depth": {"frames": depth.frames, "age": _percentiles(depth.ages), "error": depth.error},
    }
    if len(skews) < 2:
        errors = "; ".join(e for e in (color.error, depth.error) if e)
        return result(FAIL, f"too few frames to pair ({errors or 'none returned'})", **details)
    ages = (
        f"age p99 colour {_percentiles(color.ages)['p99_ms']:.1f} ms, "
        f"depth {_percentiles(depth.ages)['p99_ms']:.1f} ms"
    )
    p99 = stats["p99_ms"]
    head = (
        f"colour-depth skew p99 {p99:.2f} ms over {len(skews)} pairs "
        f"(limit {SKEW_LIMIT_S * 1e3:g} ms)"
    )
    if unpaired:
        head += f", {unpaired} depth frames without a colour twin (dropped by a reader)"
    if p99 > SKEW_LIMIT_S * 1e3:
        return result(FAIL, f"{head}: sensors are not in sync; {ages}", **details)
    return result(PASS, f"{head}; {ages}", **details)


# ----------------------------------------------------------------------------- host


def check_cpu_temp(ctx: CheckContext) -> CheckResult:
    celsius = system.read_temperature(ctx.thermal_path)
    if celsius is None:
        raise Skip(f"no CPU temperature sensor: {ctx.thermal_path} does not exist on this machine")
    status, summary = system.classify_temperature(celsius)
    return result(
        status, summary, celsius=celsius, warn_c=system.TEMP_WARN_C, fail_c=system.TEMP_FAIL_C
    )


def check_throttling(ctx: CheckContext) -> CheckResult:
    out = ctx.vcgencmd("get_throttled")
    if out is None:
        raise Skip("vcgencmd is not installed (it exists on Raspberry Pi OS only)")
    state = system.decode_throttled(out)
    return result(state.status, state.summary(), **state.as_dict())


def check_memory(ctx: CheckContext) -> CheckResult:
    import psutil

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    status = system.classify_memory(vm.percent)
    levels = (
        f"(warning from {system.MEMORY_WARN_PCT:g} %, failing from {system.MEMORY_FAIL_PCT:g} %)"
    )
    summary = (
        f"{vm.percent:.0f} % used, {vm.available / 2**30:.1f} GiB available of "
        f"{vm.total / 2**30:.1f} GiB"
    )
    if status != PASS:
        summary += f" {levels}"
    return result(
        status,
        summary,
        percent=vm.percent,
        total_bytes=vm.total,
        available_bytes=vm.available,
        swap_percent=swap.percent,
    )


def check_disk(ctx: CheckContext) -> CheckResult:
    import psutil

    state_dir = ctx.config.state_dir()
    where = system.nearest_existing(state_dir)
    usage = psutil.disk_usage(str(where))
    status = system.classify_disk(usage.percent)
    shown = (
        str(state_dir)
        if where == state_dir.expanduser().absolute()
        else (f"{state_dir} (not created yet; measured at {where})")
    )
    summary = f"{usage.percent:.0f} % used, {usage.free / 2**30:.1f} GiB free at {shown}"
    if status == FAIL:
        summary += f": above {system.DISK_FAIL_PCT:g} %, episodes and updates will not fit"
    elif status == WARN:
        summary += f" (warning above {system.DISK_WARN_PCT:g} %)"
    return result(
        status,
        summary,
        state_dir=str(state_dir),
        measured_at=str(where),
        percent=usage.percent,
        free_bytes=usage.free,
        total_bytes=usage.total,
    )


# ----------------------------------------------------------------------------- actuators


def check_actuators(ctx: CheckContext) -> CheckResult:
    act = ctx.config.hardware.actuators
    if ctx.sim:
        if isinstance(act, ArmActuatorsConfig):
            raise Skip("the simulated robot is a car: this config's arm has no simulated twin")
        robot = ctx.robot()
        if not ctx.move:
            names = ", ".join(robot.actuators.action_spec.names)
            return result(
                PASS,
                f"simulated actuators ({names}) present; nothing written "
                "(add --move to exercise them)",
                moved=False,
            )
        return _move_sim_car(ctx, robot)
    if act.driver == "sim":
        raise _hw_skip_sim("the actuators are", "hardware.actuators.driver")
    from brain.hardware.pca9685 import require_driver_modules

    require_driver_modules(act.pca9685)  # the daemon's driver, not just a bus scanner
    try:
        probe = ctx.i2c_probe()
    except (OSError, ValueError, RuntimeError) as exc:
        raise Skip(f"the I2C bus could not be scanned (see the i2c check): {exc}") from exc
    if not probe["found"]:
        raise Skip(
            f"no PCA9685 answers at {probe['address']} on I2C bus {probe['bus']} "
            "(see the i2c check): nothing to exercise"
        )
    if not ctx.move:
        return result(
            PASS,
            f"PCA9685 answers at {probe['address']}; nothing written "
            "(add --move, wheels off the ground, to exercise the actuators)",
            moved=False,
            **probe,
        )
    if isinstance(act, CarActuatorsConfig):
        return _move_real_car(ctx, act)
    return _move_real_arm(ctx, act)


def _limit(ctx: CheckContext, name: str, lo: float, hi: float) -> tuple[float, float]:
    """The safety layer's clamp for ``name`` intersected with [lo, hi]."""
    lim = ctx.config.safety.limits.get(name)
    if lim is None:
        return lo, hi
    return max(lo, lim[0]), min(hi, lim[1])


def car_sequence(ctx: CheckContext) -> list[tuple[str, float, float, float]]:
    """(phase, steering, throttle, hold seconds): a slow steering sweep, then a small pulse.

    Steering goes centre→left→centre→right→centre in steps of 0.1, throttle
    stays at neutral; then throttle gets a short small forward pulse (at most
    0.2, within the safety limits) and returns to neutral.
    """
    s_lo, s_hi = _limit(ctx, "steering", -1.0, 1.0)
    _, t_hi = _limit(ctx, "throttle", -1.0, 1.0)
    pulse = max(0.0, min(0.2, t_hi))
    dt = ctx.move_step_s
    seq: list[tuple[str, float, float, float]] = []

    def ramp(phase: str, a: float, b: float) -> None:
        steps = max(1, round(abs(b - a) / 0.1))
        for k in range(1, steps + 1):
            seq.append((phase, a + (b - a) * k / steps, 0.0, dt))

    ramp("steer-left", 0.0, s_lo)
    ramp("steer-center", s_lo, 0.0)
    ramp("steer-right", 0.0, s_hi)
    ramp("steer-center", s_hi, 0.0)
    seq.append(("settle", 0.0, 0.0, 0.3))
    seq.append(("throttle-pulse", 0.0, pulse, 0.5))
    seq.append(("neutral", 0.0, 0.0, 0.0))
    return seq


def _run_car_sequence(
    ctx: CheckContext, actuators: Any, observe: Callable[[str], None] | None = None
) -> list[tuple[str, float, float]]:
    """Write the car sequence; neutral in a ``finally`` whatever happens."""
    written: list[tuple[str, float, float]] = []
    try:
        for phase, steer, throttle, hold in car_sequence(ctx):
            actuators.write(np.array([steer, throttle], dtype=np.float64))
            written.append((phase, steer, throttle))
            end = ctx.clock() + hold
            while True:
                if observe is not None:
                    observe(phase)
                left = end - ctx.clock()
                if left <= 0:
                    break
                ctx.sleep(min(left, 0.02))
    finally:
        actuators.neutral()
    return written


def _move_real_car(ctx: CheckContext, cfg: CarActuatorsConfig) -> CheckResult:
    from brain.hardware.pca9685 import PCA9685Car

    ctx.say(
        "hw-check --move: arming the ESC and moving steering and throttle now; "
        "the wheels must be off the ground"
    )
    car = PCA9685Car(cfg)
    pulses: list[dict[str, int]] = []
    try:
        car.start()  # opens the board, writes neutral, waits arm_seconds for the ESC
        written = _run_car_sequence(
            ctx, car, observe=lambda _p: pulses.append(dict(car.last_pulses_us))
        )
    finally:
        car.close()  # writes neutral again, then releases the bus
    end = dict(car.last_pulses_us)
    steer_us = sorted({p["steering"] for p in pulses if "steering" in p})
    thr_us = max((p.get("throttle", 0) for p in pulses), default=0)
    neutral = {"steering": cfg.steering.center_us, "throttle": cfg.throttle.neutral_us}
    details = {
        "moved": True,
        "steps": len(written),
        "steering_us_range": [steer_us[0], steer_us[-1]] if steer_us else None,
        "throttle_pulse_us": thr_us,
        "final_pulses_us": end,
        "neutral_pulses_us": neutral,
    }
    if end != neutral:
        return result(FAIL, f"did not end at neutral: last pulses {end}", **details)
    return result(
        PASS,
        f"steering swept {details['steering_us_range']} us, throttle pulsed to {thr_us} us, "
        f"ended at neutral {neutral}; confirm by eye that the wheels turned and spun",
        **details,
    )


def read_pulse_us(board: Any, channel: int) -> float | None:
    """The pulse a PCA9685 channel is putting out now (None: no pulse, or unreadable)."""
    us = board.get_pulse_us(channel)
    return float(us) if us else None


def _move_real_arm(ctx: CheckContext, cfg: ArmActuatorsConfig) -> CheckResult:
    """Nudge each joint whose position is known 5 degrees and back; leave the arm as found.

    The arm's ``on_stop`` is not applied at the end: nothing stopped, and
    releasing joints this check never touched could let the arm sag.  Each
    joint ends at the pulse it had (also when a write fails half-way, best effort).
    """
    from brain.hardware.pca9685 import PCA9685Arm, PwmBoard

    ctx.say("hw-check --move: moving each arm joint a few degrees and back; keep clear of the arm")
    board = PwmBoard.open(cfg.pca9685)
    arm = PCA9685Arm(cfg, open_board=lambda _cfg: board)
    moved: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    restore: tuple[int, float] | None = None  # (channel, start pulse) of the joint in motion
    try:
        arm.start()
        n = len(cfg.joints)
        for i, joint in enumerate(cfg.joints):
            us = read_pulse_us(board, joint.channel)
            if us is None:
                skipped[joint.name] = "no pulse on its channel (position unknown)"
                continue
            here = joint.min_deg + (us - joint.min_us) * (joint.max_deg - joint.min_deg) / (
                joint.max_us - joint.min_us
            )
            lo, hi = joint.soft_limits
            if not lo <= here <= hi:
                skipped[joint.name] = f"at {here:.0f} deg, outside its soft limits [{lo:g}, {hi:g}]"
                continue
            delta = 5.0 if here + 5.0 <= hi else -5.0
            step = max(0.5, min(1.0, joint.max_speed_deg_s * ctx.move_step_s))
            path = [*np.arange(step, abs(delta) + 1e-9, step)]
            path = path + path[-2::-1] + [0.0]
            restore = (joint.channel, us)
            for offset in path:
                action = np.full(n, math.nan)
                action[i] = here + math.copysign(offset, delta)
                arm.write(action)
                ctx.sleep(ctx.move_step_s)
            restore = None
            moved[joint.name] = [here, here + delta]
    finally:
        try:
            if restore is not None:
                board.set_pulse_us(*restore)
        finally:
            board.close()
    details = {"moved": True, "joints": moved, "not_moved": skipped}
    parts = [f"moved {k} {a:.0f}->{b:.0f}->{a:.0f} deg" for k, (a, b) in moved.items()]
    if skipped:
        parts.append("not moved: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if any("no pulse" in v for v in skipped.values()):
        parts.append(
            "a joint without a pulse would jump to its first command, so it is left alone: "
            "command the arm once (e.g. from the app), then run again"
        )
    return result(WARN if skipped else PASS, "; ".join(parts), **details)


def sim_car_state(robot: Any) -> tuple[float, float]:
    """(steering angle in rad, speed in m/s) of the simulated car right now."""
    state = robot.state
    return float(state.steer_actual), float(state.speed)


def _move_sim_car(ctx: CheckContext, robot: Any) -> CheckResult:
    act = robot.actuators
    samples: dict[str, list[tuple[float, float]]] = {}

    def observe(phase: str) -> None:
        samples.setdefault(phase, []).append(sim_car_state(robot))

    ctx.actuators_touched = True
    act.start()
    written = _run_car_sequence(ctx, act, observe=observe)
    # The car coasts after the pulse: watch it slow down (drag brake + rolling resistance).
    peak = max((v for _, v in samples.get("throttle-pulse", [])), default=0.0)
    deadline = ctx.clock() + 3.0
    while True:
        steer_now, speed_now = sim_car_state(robot)
        if speed_now <= 0.5 * peak or ctx.clock() >= deadline:
            break
        ctx.sleep(0.02)
    left = min(
        (s for s, _ in samples.get("steer-left", []) + samples.get("steer-right", [])), default=0.0
    )
    right = max(
        (s for s, _ in samples.get("steer-left", []) + samples.get("steer-right", [])), default=0.0
    )
    last = getattr(act, "last_command", None)
    last_list = None if last is None else [float(x) for x in np.asarray(last).reshape(-1)]
    details = {
        "moved": True,
        "steps": len(written),
        "steer_min_deg": math.degrees(left),
        "steer_max_deg": math.degrees(right),
        "peak_speed_mps": peak,
        "speed_after_mps": speed_now,
        "final_steer_deg": math.degrees(steer_now),
        "last_command": last_list,
    }
    problems = []
    if not (left < -math.radians(2) and right > math.radians(2)):
        problems.append("the steering did not follow the sweep")
    if peak < 0.05:
        problems.append("the car did not speed up during the throttle pulse")
    elif speed_now > 0.5 * peak:
        problems.append("the car did not slow down after the pulse")
    if last_list is not None and any(abs(x) > 1e-9 for x in last_list):
        problems.append(f"did not end at neutral (last command {last_list})")
    if problems:
        return result(FAIL, "; ".join(problems), **details)
    return result(
        PASS,
        f"sim car steered {math.degrees(left):.0f}..{math.degrees(right):.0f} deg, "
        f"sped up to {peak:.2f} m/s and slowed to {speed_now:.2f} m/s; ended at neutral",
        **details,
    )


# ----------------------------------------------------------------------------- runner

CheckFn = Callable[[CheckContext], CheckResult]

CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("i2c", check_i2c),
    ("camera", check_camera),
    ("depth", check_depth),
    ("sync", check_sync),
    ("cpu-temp", check_cpu_temp),
    ("throttling", check_throttling),
    ("memory", check_memory),
    ("disk", check_disk),
    ("actuators", check_actuators),
)


def run_check(ctx: CheckContext, name: str, fn: CheckFn) -> CheckResult:
    """One check; Skip becomes SKIP and any other exception FAIL with its text."""
    t0 = time.monotonic()
    try:
        res = fn(ctx)
    except Skip as exc:
        res = result(SKIP, str(exc))
    except HardwareUnavailable as exc:
        res = result(FAIL, str(exc), error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.debug("check %s crashed", name, exc_info=True)
        res = result(
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
        )
    res = dataclasses.replace(res, name=name)
    res.details.setdefault("duration_s", time.monotonic() - t0)
    return res


def run_checks(
    ctx: CheckContext,
    checks: Iterable[tuple[str, CheckFn]] = CHECKS,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every check in order, then close what they opened."""
    results: list[CheckResult] = []
    try:
        for name, fn in checks:
            res = run_check(ctx, name, fn)
            results.append(res)
            if on_result is not None:
                on_result(res)
    finally:
        ctx.close()
    return results


def count(results: Iterable[CheckResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] += 1
    return counts
