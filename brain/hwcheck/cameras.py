"""Camera, depth and colour-depth sync checks: frame rate, size, age, valid depth, skew."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brain.config import CameraConfig
from brain.hardware.protocols import HardwareUnavailable
from brain.hwcheck.context import CheckContext
from brain.hwcheck.results import CheckResult, Skip, result, simulated_skip, worst
from brain.hwcheck.system import FAIL, PASS, WARN

#: Timestamp skew between synchronised sensors (DESIGN.md): p99 must not exceed this.
SKEW_LIMIT_S = 0.005
#: Measured frame rate may differ this much (relative) from the configured one.
FPS_TOLERANCE = 0.10
#: Fewer valid depth pixels than this (fraction) is suspicious; none at all fails.
DEPTH_VALID_WARN = 0.2


def _percentiles(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {}
    return {
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "max_ms": float(arr.max() * 1e3),
    }


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
    after_warmup: Callable[[], object] | None = None,
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


def _check_realsense_present(
    devices: list[dict[str, Any]], serial: str | None
) -> list[dict[str, Any]]:
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
    cfg: CameraConfig | None
    if ctx.sim:
        cfg = ctx.sim_camera_config()
        details["driver"] = "sim"
    else:
        cfg = ctx.config.hardware.camera
        if cfg is None:
            raise Skip("no camera configured (hardware.camera is null)")
        if cfg.driver == "sim":
            raise simulated_skip("the camera is", "hardware.camera.driver")
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
            raise simulated_skip("the depth camera is", "hardware.depth.driver")
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
    gaps: list[float] = np.minimum(np.abs(d - lo), np.abs(d - hi)).tolist()
    return gaps


def check_sync(ctx: CheckContext) -> CheckResult:
    if not ctx.sim:
        hw = ctx.config.hardware
        if hw.camera is None or hw.depth is None:
            raise Skip(
                "only one camera configured: there is no second sensor to measure "
                "timestamp skew against"
            )
        if "sim" in (hw.camera.driver, hw.depth.driver):
            raise simulated_skip("a camera is", "hardware.camera/depth.driver")
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
            error = grabs[key].error
            if error and error.startswith("warm-up"):
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
