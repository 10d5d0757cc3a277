"""`continuon hw-check`: FAIL for missing hardware, the sim robot, decoders, I2C, the runner."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from brain.cli import main as cli_main
from brain.config import Config, load_config, parse_config
from brain.hardware.protocols import DepthFrame, Frame
from brain.hardware.sim import SimRobot
from brain.hwcheck import checks, report, system
from brain.hwcheck.checks import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckContext,
    check_actuators,
    check_camera,
    check_cpu_temp,
    check_disk,
    check_i2c,
    check_memory,
    check_sync,
    check_throttling,
    pair_skews,
    run_check,
    run_checks,
)
from common.health import DiskReading, HostReading
from tests.pca9685_bus import BlinkaStandIn, EmulatedI2C, counts_for

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
HARDWARE_CHECKS = {"i2c", "camera", "depth", "sync", "actuators"}
HOST_CHECKS = {"cpu-temp", "throttling"}
HW_LIBS = ("picamera2", "pyrealsense2", "adafruit_pca9685", "board", "busio", "smbus2")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """State dir in tmp; the hardware libraries absent even if a developer has them."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("CONTINUON_CONFIG", raising=False)
    for name in HW_LIBS:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def config_with(base: Path | None, **overrides: Any) -> Config:
    """A config file's data with nested ``section__key`` overrides, validated."""
    raw = yaml.safe_load(base.read_text()) if base else {}
    for path, value in overrides.items():
        node = raw
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_config(raw)


def small_sim_config(**overrides: Any) -> Config:
    """The sim donkey at 160x120 so that rendering stays cheap on a CI runner."""
    return config_with(
        CONFIGS / "sim-donkey.yaml",
        hardware__camera__width=160,
        hardware__camera__height=120,
        **overrides,
    )


def by_name(results: list[checks.CheckResult]) -> dict[str, checks.CheckResult]:
    return {r.name: r for r in results}


# ----------------------------------------------------------------------------- no hardware


def test_sim_config_every_hardware_check_skips_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_name = "sim-donkey.yaml"
    log = tmp_path / "out" / "hw.json"
    rc = cli_main(["hw-check", "--config", str(CONFIGS / cfg_name), "--log-json", str(log)])
    out = capsys.readouterr().out
    data = json.loads(log.read_text())
    results = {r["name"]: r for r in data["results"]}

    assert set(results) == {name for name, _ in checks.CHECKS}
    for name in HARDWARE_CHECKS:
        assert results[name]["status"] == SKIP, results[name]
        assert len(results[name]["summary"]) > 20  # a sentence, not a code
    assert results["memory"]["status"] in (PASS, WARN)
    assert results["disk"]["status"] in (PASS, WARN)
    for name in HOST_CHECKS:  # real readings on a Pi, SKIP with a reason elsewhere
        assert results[name]["status"] in (PASS, WARN, SKIP), results[name]
    fails = sum(r["status"] == FAIL for r in data["results"])
    assert rc == (1 if fails else 0) == 0
    counts = {s: sum(r["status"] == s for r in data["results"]) for s in (PASS, WARN, FAIL, SKIP)}
    assert data["summary"] == counts
    assert data["robot_id"] == load_config(CONFIGS / cfg_name).robot.id
    assert data["sim"] is False
    assert data["config"]["hash"] == load_config(CONFIGS / cfg_name).config_hash()
    assert not list(log.parent.glob(".*.tmp"))  # the temporary file was renamed away
    last = out.strip().splitlines()[-1]
    assert last == (
        f"hw-check: {counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL, "
        f"{counts[SKIP]} SKIP"
    )
    for name, r in results.items():  # the table has one row per check
        assert any(line.startswith(name) and r["status"] in line for line in out.splitlines())


@pytest.mark.parametrize("cfg_name", ["pi5-donkey.yaml", "pi5-realsense-arm.yaml"])
def test_a_configured_robot_without_its_hardware_fails(
    cfg_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No camera library, no I2C bus, no PCA9685 library: this robot cannot drive → exit 1."""
    log = tmp_path / "hw.json"
    rc = cli_main(["hw-check", "--config", str(CONFIGS / cfg_name), "--log-json", str(log)])
    out = capsys.readouterr().out
    res = {r["name"]: r for r in json.loads(log.read_text())["results"]}
    assert rc == 1
    assert res["camera"]["status"] == FAIL, res["camera"]
    if cfg_name == "pi5-donkey.yaml":
        assert "'picamera2'" in res["camera"]["summary"]
        assert "apt install python3-picamera2" in res["camera"]["summary"]
        assert "depth" not in res or res["depth"]["status"] == SKIP
    else:
        for name in ("camera", "depth"):
            summary = res[name]["summary"]
            assert res[name]["status"] == FAIL, res[name]
            assert "'pyrealsense2'" in summary and "continuon-brain[realsense]" in summary
            assert "docs/install-pi.md" in summary
        assert res["sync"]["status"] == SKIP and "see camera" in res["sync"]["summary"]
    assert res["actuators"]["status"] == FAIL
    assert "'adafruit_pca9685'" in res["actuators"]["summary"]
    assert "continuon-brain[pi]" in res["actuators"]["summary"]
    assert res["i2c"]["status"] == FAIL
    if not Path("/dev/i2c-1").exists():
        assert "/dev/i2c-1 does not exist" in res["i2c"]["summary"]
    assert not any("the check itself failed" in r["summary"] for r in res.values())
    assert "FAIL" in out.splitlines()[-1] and " 0 FAIL" not in out.splitlines()[-1]


def test_missing_picamera2_names_the_module_and_the_fix() -> None:
    ctx = CheckContext(load_config(CONFIGS / "pi5-donkey.yaml"))
    res = run_check(ctx, "camera", check_camera)
    assert res.status == FAIL
    assert "picamera2" in res.summary and "apt install" in res.summary


@pytest.mark.parametrize(
    ("error", "numpy_fix"),
    [
        (
            "ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
            "Expected 96 from C header, got 88 from PyObject')",
            True,
        ),
        ("ImportError('numpy.core.multiarray failed to import')", True),
        ("AttributeError('_ARRAY_API not found')", True),
        ("KeyError('sensor_modes')", False),
    ],
)
def test_camera_library_failing_at_import_fails_with_the_fix(
    error: str, numpy_fix: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever picamera2's import raises, the camera check FAILs naming package and fix."""
    pkg = tmp_path / "site" / "picamera2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "picamera2")
    res = run_check(CheckContext(load_config(CONFIGS / "pi5-donkey.yaml")), "camera", check_camera)
    assert res.status == FAIL, res
    assert "'picamera2' cannot be imported" in res.summary
    assert not res.summary.startswith("the check itself failed")
    if numpy_fix:
        assert "numpy ABI mismatch" in res.summary
        if np.__version__.startswith("1."):  # the robot's venv: the other side is the stray
            assert "built against numpy 2.x" in res.summary
        else:
            assert "pip install 'numpy<2'" in res.summary
    else:
        assert "KeyError" in res.summary and "apt install python3-picamera2" in res.summary


@pytest.mark.slow
def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "continuon"
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e .)")
    log = tmp_path / "hw.json"
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    env.pop("CONTINUON_CONFIG", None)
    proc = subprocess.run(
        [
            str(exe),
            "hw-check",
            "--config",
            str(CONFIGS / "pi5-donkey.yaml"),
            "--log-json",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    data = json.loads(log.read_text())
    fails = data["summary"][FAIL]
    assert proc.returncode == (1 if fails else 0), proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("hw-check: ")
    if not Path("/dev/i2c-1").exists():  # no Pi here: the car cannot drive, the run fails
        assert proc.returncode == 1 and fails >= 1


# ----------------------------------------------------------------------------- --sim


@pytest.mark.slow
def test_sim_camera_depth_and_actuators_via_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = tmp_path / "robot.yaml"
    raw = yaml.safe_load((CONFIGS / "sim-donkey.yaml").read_text())
    raw["hardware"]["camera"].update(width=160, height=120, fps=30)
    cfg_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "hw.json"
    rc = cli_main(["hw-check", "--sim", "--config", str(cfg_path), "--log-json", str(log)])
    data = json.loads(log.read_text())
    res = {r["name"]: r for r in data["results"]}
    assert data["sim"] is True

    cam = res["camera"]
    assert cam["status"] == PASS, cam
    assert cam["details"]["frames"] == 30
    assert cam["details"]["measured_fps"] == pytest.approx(30.0, rel=0.05)
    assert cam["details"]["delivered_shapes"] == [[120, 160, 3]]
    assert res["depth"]["status"] == PASS, res["depth"]
    assert 0 < res["depth"]["details"]["valid_ratio"] <= 1
    # The depth camera exists although the config has none, so the skew check ran.
    assert res["sync"]["status"] == PASS, res["sync"]
    assert res["sync"]["details"]["pairs"] >= 20
    assert res["sync"]["details"]["skew"]["p99_ms"] <= 5.0
    assert res["i2c"]["status"] == SKIP and "--sim" in res["i2c"]["summary"]
    assert res["actuators"]["status"] == PASS
    assert res["actuators"]["details"]["moved"] is False
    assert rc == (1 if data["summary"][FAIL] else 0)


@pytest.mark.slow
def test_sim_colour_depth_skew_within_5ms() -> None:
    ctx = CheckContext(small_sim_config(), sim=True, skew_seconds=0.7)
    res = run_check(ctx, "sync", check_sync)
    assert res.status == PASS, res
    assert res.details["skew"]["p99_ms"] <= 5.0


@pytest.mark.slow
def test_sim_skew_pairs_frames_taken_together() -> None:
    """Whatever the scheduling jitter, most pairs are the frames triggered together."""
    ctx = CheckContext(small_sim_config(), sim=True, skew_seconds=0.7)
    res = run_check(ctx, "sync", check_sync)
    assert res.status in (PASS, FAIL)
    assert res.details["pairs"] >= 15
    assert res.details["skew"]["p50_ms"] < 5.0
    assert res.details["color"]["frames"] >= 15 and res.details["depth"]["frames"] >= 15


class Spy:
    """Wraps the sim's actuators, counting every call that could move the car."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.written: list[np.ndarray] = []
        self.action_spec = inner.action_spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self) -> None:
        self.calls.append("start")
        self.inner.start()

    def write(self, action: np.ndarray) -> None:
        self.calls.append("write")
        self.written.append(np.asarray(action, dtype=float).copy())
        self.inner.write(action)

    def neutral(self) -> None:
        self.calls.append("neutral")
        self.inner.neutral()

    def close(self) -> None:
        self.calls.append("close")
        self.inner.close()


def make_sim(cfg: Config) -> SimRobot:
    ctx = CheckContext(cfg, sim=True)
    return SimRobot(cfg.sim, ctx.sim_camera_config(), ctx.sim_depth_config())


def test_sim_without_move_never_writes_the_actuators() -> None:
    cfg = small_sim_config()
    robot = make_sim(cfg)
    spy = Spy(robot.actuators)
    robot.actuators = spy
    before = robot.state
    out = io.StringIO()
    rc = report.run(
        cfg, sim=True, out=out, err=io.StringIO(), sim_robot=robot, grab_frames=5, skew_seconds=0.2
    )
    assert spy.calls == []
    assert np.array_equal(robot.actuators.last_command, np.zeros(2))
    assert robot.state.speed == 0.0 and before.speed == 0.0
    assert "nothing written" in out.getvalue()
    assert rc in (0, 1)


@pytest.mark.slow
def test_sim_move_car_reacts_and_ends_neutral() -> None:
    cfg = small_sim_config()
    robot = make_sim(cfg)
    spy = Spy(robot.actuators)
    robot.actuators = spy
    ctx = CheckContext(cfg, sim=True, move=True, sim_robot=robot, move_step_s=0.02)
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == PASS, res
    d = res.details
    assert d["steer_min_deg"] < -5 and d["steer_max_deg"] > 5
    assert d["peak_speed_mps"] > 0.1
    assert d["speed_after_mps"] <= 0.5 * d["peak_speed_mps"]
    assert spy.calls[0] == "start" and spy.calls[-1] == "neutral"
    assert spy.calls.count("write") > 20
    assert np.array_equal(robot.actuators.last_command, np.zeros(2))
    steer = [a[0] for a in spy.written]
    throttle = [a[1] for a in spy.written]
    assert min(steer) == -1.0 and max(steer) == 1.0
    assert max(throttle) == pytest.approx(0.2) and min(throttle) == 0.0  # small, forward only
    assert all(a[1] == 0.0 for a in spy.written if a[0] != 0.0)  # no throttle while steering
    ctx.close()
    assert spy.calls[-1] == "neutral"


def test_sim_move_ends_neutral_even_when_a_write_fails() -> None:
    cfg = small_sim_config()
    robot = make_sim(cfg)
    spy = Spy(robot.actuators)
    robot.actuators = spy
    writes = 0
    real_write = spy.write

    def failing_write(action: np.ndarray) -> None:
        nonlocal writes
        writes += 1
        if writes == 5:
            raise OSError("I2C remote I/O error")
        real_write(action)

    spy.write = failing_write  # type: ignore[method-assign]
    ctx = CheckContext(cfg, sim=True, move=True, sim_robot=robot, move_step_s=0.01)
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == FAIL and "I2C remote I/O error" in res.summary
    assert spy.calls[-1] == "neutral"
    assert np.array_equal(robot.actuators.last_command, np.zeros(2))


# ----------------------------------------------------------------------------- sync logic


class FakeSyncedCamera:
    """Frames due every 1/fps on a shared epoch; stamped with the due time plus ``offset``."""

    def __init__(self, epoch: float, fps: float, offset: float, drop_every: int = 0):
        self.epoch, self.fps, self.offset = epoch, fps, offset
        self.width, self.height = 16, 12
        self.k = 0
        self.drop_every = drop_every  # a slow reader missing every n-th frame

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _next(self) -> float:
        now = time.monotonic()
        self.k = max(self.k + 1, math.ceil((now - self.epoch) * self.fps))
        if self.drop_every and self.k % self.drop_every == 0:
            self.k += 1
        due = self.epoch + self.k / self.fps
        time.sleep(max(0.0, due - time.monotonic()))
        return due + self.offset

    def read(self, timeout: float = 1.0) -> Frame:
        return Frame(np.zeros((12, 16, 3), np.uint8), self._next(), self.k)

    def read_depth(self, timeout: float = 1.0) -> DepthFrame:
        return DepthFrame(np.ones((12, 16), np.uint16), self._next(), self.k)


# timing: the fake cameras run on the wall clock, and `unpaired == 0` needs both reader threads
# to keep up with 50 fps (a reader late by a frame period skips one, as a real camera would).
@pytest.mark.timing
@pytest.mark.parametrize(("offset_ms", "status"), [(1.0, PASS), (8.0, FAIL), (-6.0, FAIL)])
def test_sync_gate_on_p99_skew(offset_ms: float, status: str) -> None:
    epoch = time.monotonic()
    robot = types.SimpleNamespace(
        camera=FakeSyncedCamera(epoch, 50, 0.0),
        depth=FakeSyncedCamera(epoch, 50, offset_ms / 1e3),
        actuators=None,
    )
    ctx = CheckContext(small_sim_config(), sim=True, sim_robot=robot, skew_seconds=0.3)
    res = run_check(ctx, "sync", check_sync)
    assert res.status == status, res
    assert res.details["skew"]["p50_ms"] == pytest.approx(abs(offset_ms), abs=0.01)
    assert res.details["unpaired"] == 0


@pytest.mark.slow
def test_sync_frames_dropped_by_a_reader_are_not_skew() -> None:
    epoch = time.monotonic()
    robot = types.SimpleNamespace(
        camera=FakeSyncedCamera(epoch, 50, 0.0, drop_every=4),
        depth=FakeSyncedCamera(epoch, 50, 0.001),
        actuators=None,
    )
    ctx = CheckContext(small_sim_config(), sim=True, sim_robot=robot, skew_seconds=0.4)
    res = run_check(ctx, "sync", check_sync)
    assert res.status == PASS, res
    assert res.details["unpaired"] >= 3
    assert res.details["skew"]["max_ms"] == pytest.approx(1.0, abs=0.01)
    assert "without a colour twin" in res.summary


def test_pair_skews_takes_the_nearest_colour_frame() -> None:
    color = [0.0, 0.033, 0.066, 0.100]
    depth = [0.001, 0.032, 0.070, 0.110]
    assert pair_skews(color, depth) == pytest.approx([0.001, 0.001, 0.004, 0.010])
    assert pair_skews([], depth) == []
    # A depth frame after the last colour frame read has no twin to pair with.
    assert pair_skews(color, [-0.040, 0.050, 0.140]) == pytest.approx([0.016])


# ----------------------------------------------------------------------------- host checks


@pytest.mark.parametrize(
    ("raw", "status", "now", "occurred"),
    [
        ("throttled=0x0", PASS, [], []),
        ("throttled=0x50005", FAIL, ["under-voltage", "throttled"], ["under-voltage", "throttled"]),
        ("throttled=0x50000", WARN, [], ["under-voltage", "throttled"]),
        ("throttled=0x80000", WARN, [], ["soft temperature limit"]),
        ("throttled=0x2", FAIL, ["arm frequency capped"], []),
        ("0xf000f", FAIL, list(system.THROTTLE_BITS.values()), list(system.THROTTLE_BITS.values())),
        (0x10000, WARN, [], ["under-voltage"]),
    ],
)
def test_decode_throttled(raw: str | int, status: str, now: list, occurred: list) -> None:
    state = system.decode_throttled(raw)
    assert state.status == status
    assert list(state.now) == now and list(state.occurred) == occurred
    if "under-voltage" in now + occurred:
        assert "supply" in state.summary()


def test_decode_throttled_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        system.decode_throttled("throttled=banana")


def test_throttling_check_uses_vcgencmd_or_skips() -> None:
    cfg = Config()
    ctx = CheckContext(
        cfg, vcgencmd=lambda *a: "throttled=0x50000" if a == ("get_throttled",) else ""
    )
    res = run_check(ctx, "throttling", check_throttling)
    assert res.status == WARN and "since boot" in res.summary and res.details["raw"] == "0x50000"
    ctx = CheckContext(cfg, vcgencmd=lambda *a: None)
    res = run_check(ctx, "throttling", check_throttling)
    assert res.status == SKIP and "vcgencmd" in res.summary


def fake_host(memory: float = 40.0, celsius: float | None = None, disk: float = 30.0) -> Any:
    """A CheckContext.read_host giving one reading (the host's health is common.health's)."""

    def read(path: Path) -> HostReading:
        usage = DiskReading(path, path, disk, 10 * 2**30, 100 * 2**30)
        return HostReading(memory, celsius, disk=usage, memory_total_bytes=8 * 2**30,
                           memory_available_bytes=2**30)  # fmt: skip

    return read


def host_check(fn: Any, **reading: Any) -> Any:
    return run_check(CheckContext(Config(), read_host=fake_host(**reading)), "host", fn)


@pytest.mark.parametrize(
    ("celsius", "status"),
    [(45.0, PASS), (70.0, PASS), (70.1, WARN), (80.0, WARN), (80.5, FAIL), (95.0, FAIL)],
)
def test_temperature_thresholds(celsius: float, status: str) -> None:
    res = host_check(check_cpu_temp, celsius=celsius)
    assert res.status == status and res.details["celsius"] == celsius


def test_cpu_temp_skips_without_a_sensor() -> None:
    res = host_check(check_cpu_temp, celsius=None)
    assert res.status == SKIP and "no CPU temperature sensor" in res.summary


def test_memory_and_disk_levels() -> None:
    # DESIGN's memory levels: 85 % is CRITICAL, which hw-check reports as FAIL (as the API
    # calls it critical and the guard pauses the trainer there).
    assert [host_check(check_memory, memory=p).status for p in (10, 74.9, 75, 84.9, 85, 90)] == [
        PASS, PASS, WARN, WARN, FAIL, FAIL,
    ]  # fmt: skip
    assert [host_check(check_disk, disk=p).status for p in (50, 80, 85, 90, 90.5)] == [
        PASS, PASS, WARN, WARN, FAIL,
    ]  # fmt: skip
    res = host_check(check_disk, disk=95.0)
    assert "above 90 %" in res.summary and res.details["level"] == "CRITICAL"


def test_memory_check_reads_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    vm = types.SimpleNamespace(percent=91.0, total=8 * 2**30, available=int(0.7 * 2**30))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
    res = run_check(CheckContext(Config()), "memory", check_memory)
    assert res.status == FAIL and "91 % used" in res.summary and "EMERGENCY" in res.summary


# ----------------------------------------------------------------------------- I2C


class FakeBusio:
    """busio/board at the library boundary: an I2C whose scan returns ``addresses``."""

    def __init__(self, addresses: list[int]) -> None:
        self.addresses = addresses
        self.events: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeBusio:
        fake = self

        class I2C:
            def __init__(self, scl: Any, sda: Any) -> None:
                fake.events.append(f"open {scl} {sda}")
                self.locked = False

            def try_lock(self) -> bool:
                self.locked = True
                return True

            def unlock(self) -> None:
                fake.events.append("unlock")

            def scan(self) -> list[int]:
                assert self.locked, "scan without the bus lock"
                fake.events.append("scan")
                return list(fake.addresses)

            def deinit(self) -> None:
                fake.events.append("deinit")

        board = types.ModuleType("board")
        board.SCL, board.SDA = "SCL", "SDA"
        busio = types.ModuleType("busio")
        busio.I2C = I2C
        monkeypatch.setitem(sys.modules, "board", board)
        monkeypatch.setitem(sys.modules, "busio", busio)
        return self


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dev"
    d.mkdir()
    (d / "i2c-1").touch()
    return d


@pytest.mark.parametrize(
    ("addresses", "status"), [([0x40, 0x70], PASS), ([], FAIL), ([0x41], FAIL)]
)
def test_i2c_scan(
    addresses: list[int], status: str, dev_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBusio(addresses).install(monkeypatch)
    ctx = CheckContext(load_config(CONFIGS / "pi5-donkey.yaml"), dev_dir=dev_dir)
    res = run_check(ctx, "i2c", check_i2c)
    assert res.status == status, res
    assert "0x40" in res.summary
    assert fake.events == ["open SCL SDA", "scan", "unlock", "deinit"]
    if status == FAIL:
        assert "i2cdetect -y 1" in res.summary


def test_i2c_fails_without_bus_or_library(dev_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "pi5-donkey.yaml")
    res = run_check(CheckContext(cfg, dev_dir=tmp_path / "empty"), "i2c", check_i2c)
    assert res.status == FAIL and "does not exist" in res.summary and "raspi-config" in res.summary
    res = run_check(CheckContext(cfg, dev_dir=dev_dir), "i2c", check_i2c)  # libs are None
    assert res.status == FAIL and "no I2C library" in res.summary
    assert "pip install smbus2" in res.summary


def test_i2c_bus_error_fails_plainly(dev_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_bus(scl: Any, sda: Any) -> None:
        raise ValueError("No Hardware I2C on (scl,sda)=(3, 2)")

    FakeBusio([]).install(monkeypatch)
    monkeypatch.setattr(sys.modules["busio"], "I2C", no_bus)
    monkeypatch.setitem(sys.modules, "adafruit_pca9685", types.ModuleType("adafruit_pca9685"))
    ctx = CheckContext(load_config(CONFIGS / "pi5-donkey.yaml"), dev_dir=dev_dir)
    results = by_name(run_checks(ctx, [("i2c", check_i2c), ("actuators", check_actuators)]))
    assert results["i2c"].status == FAIL
    assert results["i2c"].summary.startswith("cannot scan I2C bus 1: ValueError")
    assert results["actuators"].status == SKIP


def test_i2c_falls_back_to_smbus2(dev_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[int] = []

    class SMBus:
        def __init__(self, bus: int) -> None:
            assert bus == 1

        def __enter__(self) -> SMBus:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def read_byte(self, addr: int) -> int:
            probed.append(addr)
            raise OSError(121, "Remote I/O error")

    monkeypatch.setitem(sys.modules, "smbus2", types.SimpleNamespace(SMBus=SMBus))
    ctx = CheckContext(load_config(CONFIGS / "pi5-donkey.yaml"), dev_dir=dev_dir)
    res = run_check(ctx, "i2c", check_i2c)
    assert res.status == FAIL and res.details["method"] == "smbus2" and probed == [0x40]


# ------------------------------------------------------------- real drivers, emulated bus


def fast_car_config() -> Config:
    return config_with(CONFIGS / "pi5-donkey.yaml", hardware__actuators__throttle__arm_seconds=0.05)


def install_pca(monkeypatch: pytest.MonkeyPatch) -> BlinkaStandIn:
    """The real adafruit_pca9685 on emulated buses (which also answer the I2C probe's scan)."""
    return BlinkaStandIn((0x40,)).install(monkeypatch)


def test_real_car_without_move_writes_nothing(dev_dir: Path, monkeypatch) -> None:
    rig = install_pca(monkeypatch)
    ctx = CheckContext(fast_car_config(), dev_dir=dev_dir)
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == PASS and "nothing written" in res.summary
    assert rig.chip().writes == []  # the PCA9685 was never even opened (opening sets its frequency)
    assert len(rig.buses) == 1 and rig.buses[0][1].deinited  # just the probe's scan


class SteppedClock:
    """Time that passes only when the check sleeps: the sequence runs at once, holds included."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def test_real_car_move_sweeps_pulses_and_ends_neutral(dev_dir: Path, monkeypatch) -> None:
    from brain.hwcheck.actuators import car_sequence

    rig = install_pca(monkeypatch)
    cfg = fast_car_config()
    clock = SteppedClock()
    ctx = CheckContext(
        cfg, move=True, dev_dir=dev_dir, move_step_s=0.002, clock=clock, sleep=clock.sleep
    )
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == PASS, res
    # every phase was held for its time (on the check's clock, not the test's wall clock)
    assert clock.t >= sum(hold for *_, hold in car_sequence(ctx)) > 0
    chip = rig.chip()
    freq = cfg.hardware.actuators.pca9685.frequency_hz
    steer = [c for ch, c in chip.channel_writes() if ch == 0]
    throttle = [c for ch, c in chip.channel_writes() if ch == 1]
    assert (min(steer), max(steer)) == (counts_for(1000, freq), counts_for(2000, freq))
    # A small forward pulse only: at most 0.2 of the forward range.
    assert max(throttle) == counts_for(1600, freq)
    assert min(throttle) == counts_for(1500, freq)
    assert chip.counts(0) == chip.counts(1) == counts_for(1500, freq)
    assert rig.buses[-1][1].deinited and not chip.sleeping


def test_real_car_move_neutral_after_an_i2c_error(dev_dir: Path, monkeypatch) -> None:
    rig = install_pca(monkeypatch)
    cfg = fast_car_config()
    sleeps = 0

    def sleep(dt: float) -> None:  # the steering channel starts failing mid-sweep
        nonlocal sleeps
        sleeps += 1
        if sleeps == 5:
            rig.chip().fail_channels.add(0)
        time.sleep(dt)

    ctx = CheckContext(cfg, move=True, dev_dir=dev_dir, move_step_s=0.002, sleep=sleep)
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == FAIL and "Remote I/O error" in res.summary
    freq = cfg.hardware.actuators.pca9685.frequency_hz
    assert rig.chip().counts(1) == counts_for(1500, freq)  # the throttle still went neutral
    assert rig.buses[-1][1].deinited


def test_real_arm_move_nudges_known_joints_only(dev_dir: Path, monkeypatch) -> None:
    from brain.hardware.pca9685 import PwmBoard

    rig = install_pca(monkeypatch)
    cfg = load_config(CONFIGS / "pi5-realsense-arm.yaml")
    pcfg = cfg.hardware.actuators.pca9685
    # The daemon left the base servo at 90 deg (1500 us); the other channels carry no pulse.
    PwmBoard.open(pcfg, i2c=EmulatedI2C(rig.chips)).set_pulse_us(0, 1500)
    before = len(rig.chip().channel_writes())
    ctx = CheckContext(cfg, move=True, dev_dir=dev_dir, move_step_s=0.002)
    res = run_check(ctx, "actuators", check_actuators)
    assert res.status == WARN, res  # four joints had no known position
    assert list(res.details["joints"]) == ["base"]
    assert res.details["joints"]["base"] == pytest.approx([90.0, 95.0], abs=0.1)
    assert set(res.details["not_moved"]) == {"shoulder", "elbow", "wrist", "gripper"}
    writes = rig.chip().channel_writes()[before:]
    assert {ch for ch, _ in writes} == {0}  # nothing written to the joints of unknown position
    freq = pcfg.frequency_hz
    assert max(c for _, c in writes) == counts_for(1500 + 5 / 180 * 2000, freq)
    assert writes[-1][1] == counts_for(1500, freq)  # back where it started
    assert rig.buses[-1][1].deinited


# ----------------------------------------------------------------------------- runner


def test_a_crashing_check_fails_and_the_others_still_run() -> None:
    def broken(ctx: CheckContext) -> checks.CheckResult:
        raise KeyError("calibration table")

    ran: list[str] = []

    def fine(ctx: CheckContext) -> checks.CheckResult:
        ran.append("fine")
        return checks.result(PASS, "ok")

    out = io.StringIO()
    rc = report.run(Config(), checks=[("broken", broken), ("fine", fine)], out=out, err=out)
    text = out.getvalue()
    assert rc == 1
    assert ran == ["fine"]
    assert "broken      FAIL" in text and "KeyError" in text and "calibration table" in text
    assert text.strip().splitlines()[-1] == "hw-check: 1 PASS, 0 WARN, 1 FAIL, 0 SKIP"


def test_exit_code_ignores_skip_and_warn(tmp_path: Path) -> None:
    results = [
        checks.result(WARN, "slow"),
        checks.result(SKIP, "no bus"),
    ]
    fns = [(f"c{i}", lambda ctx, r=r: r) for i, r in enumerate(results)]
    log = tmp_path / "x.json"
    assert report.run(Config(), checks=fns, log_json=log, out=io.StringIO()) == 0
    data = json.loads(log.read_text())
    assert data["summary"] == {PASS: 0, WARN: 1, FAIL: 0, SKIP: 1}
    assert [r["name"] for r in data["results"]] == ["c0", "c1"]


def test_json_log_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hw.json"
    log.write_text('{"old": true}')

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("disk full")

    from common import durable  # the report goes through common.durable.replace_file

    monkeypatch.setattr(durable.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_json_atomic(log, {"new": True})
    assert json.loads(log.read_text()) == {"old": True}
    assert list(tmp_path.iterdir()) == [log]


def test_runner_closes_opened_devices_when_a_check_crashes() -> None:
    closed = threading.Event()

    class Cam:
        width, height, fps = 16, 12, 30.0

        def start(self) -> None:
            pass

        def read(self, timeout: float = 1.0) -> Frame:
            raise RuntimeError("sensor fell off")

        def close(self) -> None:
            closed.set()

    robot = types.SimpleNamespace(camera=Cam(), depth=None, actuators=None)
    ctx = CheckContext(small_sim_config(), sim=True, sim_robot=robot, warmup_frames=0)
    results = run_checks(ctx, [("camera", check_camera)])
    assert results[0].status == FAIL and "sensor fell off" in results[0].summary
    assert closed.is_set()
