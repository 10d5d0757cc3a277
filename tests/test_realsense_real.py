"""The RealSense driver on the real pyrealsense2: pipeline, align and timestamps.

Frames come from ``rs.software_device`` (synthetic colour + depth, recorded
with ``rs.recorder``; see tests/realsense_helpers.py) and are played through
the driver's own ``rs.pipeline`` / ``rs.config`` / ``rs.align``.  Needs the
x86-64 cp311 wheel (the ``dev`` extra) and libusb-1.0-0.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brain.config import CameraConfig, DepthConfig, load_config, parse_config
from brain.hardware import factory, realsense_camera
from brain.hardware.protocols import HardwareUnavailable
from brain.hardware.realsense_camera import RealSenseCamera, list_devices
from brain.hwcheck.checks import (
    CHECKS,
    FAIL,
    PASS,
    CheckContext,
    check_camera,
    check_depth,
    run_check,
    run_checks,
)
from tests.realsense_helpers import SERIAL, color_with_index, depth_near_and_far, record

pytest.importorskip("pyrealsense2", exc_type=ImportError)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent
FRAMES = 30


def camera(path: Path, *, depth: bool = True, serial: str | None = SERIAL) -> RealSenseCamera:
    color = CameraConfig(driver="realsense", width=96, height=64, fps=30, serial=serial)
    dcfg = DepthConfig(driver="realsense", width=48, height=32, fps=30, max_depth_m=4.0)
    return RealSenseCamera(color, dcfg if depth else None, playback_file=path)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("rs") / "synthetic"
    return record(path, frames=FRAMES, color_image=color_with_index, depth_image=depth_near_and_far)


def test_colour_and_aligned_depth_come_from_one_frameset(recording) -> None:
    cam = camera(recording.path)
    cam.start()
    try:
        pairs = []
        for _ in range(8):
            c = cam.read(timeout=3.0)
            d = cam.read_depth(timeout=3.0)
            pairs.append((c, d))
    finally:
        cam.close()
    assert cam.depth_scale == pytest.approx(0.001)  # the device's depth units option
    for c, d in pairs:
        assert c.seq == d.seq
        assert c.data.shape == (64, 96, 3) and c.data.dtype == np.uint8
        k = int(c.data[0, 0, 0])
        assert (c.data[..., 1] == 100).all() and (c.data[..., 2] == 200).all()  # RGB order
        assert 1 <= k <= FRAMES
        # aligned to colour: colour resolution, not the depth stream's 48x32
        assert d.data.shape == (64, 96) and d.data.dtype == np.uint16
        near = d.data[6:-6, 6:42]
        assert np.median(near) == 1000 + k  # the depth of the same recorded frame
        assert (d.data[:, 54:] == 0).all()  # 6 m is beyond max_depth_m 4: marked no depth
    ks = [int(c.data[0, 0, 0]) for c, _ in pairs]
    assert ks == sorted(ks) and len(set(ks)) == len(ks)


def test_two_reader_threads_get_matching_framesets(recording) -> None:
    cam = camera(recording.path)
    got: dict[str, dict[int, int]] = {"color": {}, "depth": {}}

    def reader(kind: str) -> None:
        for _ in range(10):
            if kind == "color":
                f = cam.read(timeout=3.0)
                got[kind][f.seq] = int(f.data[0, 0, 0])
            else:
                f = cam.read_depth(timeout=3.0)
                got[kind][f.seq] = int(np.median(f.data[6:-6, 6:42])) - 1000

    cam.start()
    try:
        threads = [threading.Thread(target=reader, args=(k,)) for k in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        cam.close()
    common = set(got["color"]) & set(got["depth"])
    assert len(common) >= 5, got
    for seq in common:
        assert got["color"][seq] == got["depth"][seq]  # one instant, not two


def test_colour_only_does_not_align_and_has_no_depth(recording) -> None:
    cam = camera(recording.path, depth=False)
    cam.start()
    try:
        frame = cam.read(timeout=3.0)
        assert frame.data.shape == (64, 96, 3)
        with pytest.raises(RuntimeError, match="without a depth stream"):
            cam.read_depth()
    finally:
        cam.close()


@pytest.mark.slow
def test_wall_clock_timestamps_become_monotonic(tmp_path: Path) -> None:
    # Stamped so that they are a few hundred ms old when played back: well inside the
    # driver's 1 s plausibility window, and always before the frame's arrival.
    lead_ms = FRAMES * 1000 / 30 - 150
    t_rec = time.time() * 1000
    rec = record(
        tmp_path / "wall",
        frames=FRAMES,
        timestamp_ms=lambda k: t_rec + lead_ms + k * 1000 / 30,
        color_image=color_with_index,
        depth_image=depth_near_and_far,
    )
    cam = camera(rec.path)
    cam.start()
    matched = 0
    reads = 0
    try:
        for _ in range(10):
            f = cam.read(timeout=3.0)
            after = time.monotonic()
            wall_offset = time.time() - time.monotonic()
            k = int(f.data[0, 0, 0])
            expected = rec.timestamps_ms[k - 1] / 1000 - wall_offset
            assert f.t_capture <= after
            reads += 1
            matched += abs(f.t_capture - expected) < 0.002
    finally:
        cam.close()
    assert matched >= reads - 1, (matched, reads)  # at most one outlier on a loaded runner


@pytest.mark.slow
def test_hardware_clock_uses_the_arrival_time(tmp_path: Path) -> None:
    rec = record(
        tmp_path / "hw",
        frames=15,
        domain="hardware_clock",
        timestamp_ms=lambda k: 12345.0 + k * 33.3,  # the camera's own counter
        color_image=color_with_index,
        depth_image=depth_near_and_far,
    )
    cam = camera(rec.path, depth=False)
    cam.start()
    try:
        for _ in range(5):
            before = time.monotonic()
            f = cam.read(timeout=3.0)
            assert before <= f.t_capture <= time.monotonic()
    finally:
        cam.close()


def test_wrong_serial_is_hardware_unavailable(recording) -> None:
    cam = camera(recording.path, serial="000000000")
    with pytest.raises(HardwareUnavailable, match="serial 000000000"):
        cam.start()


@pytest.mark.slow
def test_no_device_is_hardware_unavailable_after_the_pipeline_waited() -> None:
    """librealsense waits (15 s) for a device to appear, then the driver names the fix."""
    if list_devices():
        pytest.skip("a real RealSense is connected to this machine")
    live = RealSenseCamera(CameraConfig(driver="realsense", width=96, height=64, fps=30))
    with pytest.raises(HardwareUnavailable, match=r"Check the USB 3 cable"):
        live.start()


def test_hw_check_with_the_real_library_and_no_device_fails(monkeypatch) -> None:
    if list_devices():
        pytest.skip("a real RealSense is connected to this machine")
    ctx = CheckContext(load_config(REPO / "configs" / "pi5-realsense-arm.yaml"))
    for name, fn in (("camera", check_camera), ("depth", check_depth)):
        res = run_check(ctx, name, fn)
        assert res.status == FAIL and "no RealSense device found" in res.summary


def test_factory_serves_colour_and_depth_from_one_object(recording) -> None:
    cam = factory.open_camera(CameraConfig(driver="realsense"))
    assert isinstance(cam, RealSenseCamera) and not cam.has_depth
    depth = factory.open_depth(DepthConfig(driver="realsense"), cam)
    assert depth is cam and cam.has_depth
    played = camera(recording.path)
    played.start()
    try:
        with pytest.raises(RuntimeError, match="before start"):
            played.enable_depth(DepthConfig(driver="realsense"))
    finally:
        played.close()
        played.close()  # idempotent: camera and depth owners both close it


@pytest.mark.slow
def test_hw_check_cameras_depth_and_sync_through_the_real_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RealSense arm's camera, depth and sync checks on played-back synthetic frames.

    Only the device source is swapped (USB -> recording) and the USB enumeration
    answered for it; the checks open the driver through the factory as usual.
    """
    rec = record(
        tmp_path / "arm",
        frames=60,
        color_image=color_with_index,
        depth_image=depth_near_and_far,
    )
    raw = load_config(REPO / "configs" / "pi5-realsense-arm.yaml").model_dump(mode="json")
    raw["hardware"]["camera"].update(width=96, height=64, fps=30, serial=SERIAL)
    raw["hardware"]["depth"].update(width=48, height=32, fps=30, serial=None, max_depth_m=4.0)
    cfg = parse_config(raw)
    real_open = factory.open_camera
    monkeypatch.setattr(
        factory,
        "open_camera",
        lambda c: (
            RealSenseCamera(c, None, playback_file=rec.path)
            if c.driver == "realsense"
            else real_open(c)
        ),
    )
    monkeypatch.setattr(
        realsense_camera, "list_devices", lambda: [{"name": "Synthetic D435", "serial": SERIAL}]
    )
    ctx = CheckContext(cfg, grab_frames=12, depth_frames=4, skew_seconds=0.4)
    wanted = [(n, f) for n, f in CHECKS if n in ("camera", "depth", "sync")]
    results = {r.name: r for r in run_checks(ctx, wanted)}
    cam = results["camera"]
    assert cam.status == PASS, cam
    assert cam.details["measured_fps"] == pytest.approx(30, rel=0.15)
    assert cam.details["delivered_shapes"] == [(64, 96, 3)]
    depth = results["depth"]
    assert depth.status == PASS, depth
    # left half at ~1 m, right half beyond max_depth_m: about half the pixels are valid
    assert 0.35 < depth.details["valid_ratio"] < 0.65
    assert depth.details["median_depth_m"] == pytest.approx(1.03, abs=0.04)  # 1000 + k mm
    assert results["sync"].status == PASS, results["sync"]  # one frameset feeds both
    assert results["sync"].details["skew"]["p99_ms"] == pytest.approx(0.0, abs=0.5)
