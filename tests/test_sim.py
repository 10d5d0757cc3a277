"""The simulated robot: tracks, car physics, expert, metrics, determinism, real-time wrapper."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from brain.config import CameraConfig, Config, DepthConfig, SimConfig
from brain.hardware.protocols import CAR_ACTION_SPEC, Actuators, Camera, DepthCamera
from brain.hardware.sim import (
    SUBSTEP_S,
    TRACK_NAMES,
    Pose,
    SimRobot,
    SimWorld,
    build_sim_robot,
    make_track,
)

MAX_STEER_RAD = math.radians(25.0)
TURN_RADIUS_M = 0.26 / math.tan(MAX_STEER_RAD)


def _world(**kw: object) -> SimWorld:
    return SimWorld(SimConfig(**kw), camera=None)


def _offset_pose(world: SimWorld, index: int, left: float, dyaw: float = 0.0) -> Pose:
    tr = world.track
    x, y = tr.points[index]
    h = float(tr.heading[index])
    return Pose(float(x - left * math.sin(h)), float(y + left * math.cos(h)), h + dyaw)


# ----------------------------------------------------------------------------- tracks


def test_unknown_track_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as exc:
        make_track("figure-eight")
    msg = str(exc.value)
    assert "figure-eight" in msg
    for name in TRACK_NAMES:
        assert name in msg
    assert "random-<seed>" in msg


def test_at_least_the_required_layouts_exist() -> None:
    assert {"oval", "kidney", "hairpin", "chicane", "snake"} <= set(TRACK_NAMES)


@pytest.mark.parametrize("name", [*TRACK_NAMES, "random-0", "random-7", "random-123"])
def test_tracks_are_closed_smooth_drivable_loops(name: str) -> None:
    tr = make_track(name)
    pts = tr.points
    closed = np.vstack([pts, pts[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    # Uniformly resampled, including the closing segment back to the start.
    assert seg.min() >= 0.02 and seg.max() <= 0.05
    assert seg.max() - seg.min() < 1e-3
    assert 15.0 <= tr.length <= 40.0
    assert abs(seg.sum() - tr.length) < 1e-6
    assert tr.width == pytest.approx(0.9)
    # Curvature (measured here from the points, not trusted from the Track) leaves
    # the car, whose tightest circle has a radius of 0.56 m, a wide margin.
    heading = np.arctan2(*np.diff(closed, axis=0).T[::-1])
    turn = np.angle(np.exp(1j * np.diff(np.concatenate([heading, heading[:1]]))))
    kappa = np.convolve(turn, np.ones(5) / 5, mode="same") / seg.mean()
    assert np.abs(kappa).max() < 1.0 / (1.5 * TURN_RADIUS_M)
    # One counter-clockwise revolution in total: no loops, no figure eights.
    assert turn.sum() == pytest.approx(2 * math.pi, abs=1e-6)
    # The road never touches another stretch of itself.
    sub = pts[::4]
    s = np.arange(len(sub)) * 4 * seg.mean()
    d = np.hypot(sub[:, None, 0] - sub[None, :, 0], sub[:, None, 1] - sub[None, :, 1])
    ds = np.abs(s[:, None] - s[None, :])
    ds = np.minimum(ds, tr.length - ds)
    assert d[ds > 3.0].min() > tr.width + 0.3


def test_random_tracks_are_deterministic_and_differ_by_seed() -> None:
    a = make_track("random-42")
    make_track.cache_clear()
    b = make_track("random-42")
    c = make_track("random-43")
    assert a is not b
    np.testing.assert_array_equal(a.points, b.points)
    assert a.n != c.n or not np.allclose(a.points, c.points)


def test_projection_near_last_index_matches_a_global_search() -> None:
    tr = make_track("hairpin")
    rng = np.random.default_rng(5)
    pts = tr.points
    nxt = np.roll(pts, -1, axis=0)
    idx = 0
    for i in range(0, tr.n, 7):
        h = tr.heading[i]
        off = rng.uniform(-0.6, 0.6)
        x = pts[i, 0] - off * math.sin(h)
        y = pts[i, 1] + off * math.cos(h)
        idx, s, cte = tr.project(x, y, idx)
        e = nxt - pts
        t = np.clip(((x - pts[:, 0]) * e[:, 0] + (y - pts[:, 1]) * e[:, 1]) / (e**2).sum(1), 0, 1)
        dist = np.hypot(pts[:, 0] + t * e[:, 0] - x, pts[:, 1] + t * e[:, 1] - y)
        assert abs(cte) == pytest.approx(dist.min(), abs=1e-9)
        assert cte == pytest.approx(off, abs=0.01)  # positive = left of the driving direction
        ds = (s - i * tr.spacing + tr.length / 2) % tr.length - tr.length / 2
        assert abs(ds) < 0.05


# ----------------------------------------------------------------------------- car


def test_top_speed_and_coasting_to_a_stop() -> None:
    w = _world(max_speed_mps=3.0)
    for _ in range(100):
        w.step([0.0, 1.0], 0.05)
    assert w.state.speed == pytest.approx(3.0, rel=0.02)
    half = _world(max_speed_mps=3.0)
    for _ in range(100):
        half.step([0.0, 0.5], 0.05)
    assert 1.2 < half.state.speed < 1.6
    for _ in range(100):
        w.step([0.0, 0.0], 0.05)
    assert w.state.speed == 0.0  # rolling resistance stops it; it never creeps backwards


def test_steering_servo_lag_and_limits() -> None:
    w = _world()
    w.step([1.0, 0.0], 0.08)
    # First-order lag with a 0.08 s time constant: about 63 % after one time constant.
    assert w.state.steer_actual == pytest.approx(MAX_STEER_RAD * (1 - math.exp(-1)), rel=0.05)
    w.step([1.0, 0.0], 1.0)
    assert w.state.steer_actual == pytest.approx(MAX_STEER_RAD, rel=1e-3)
    w.step([5.0, 0.0], 1.0)  # clipped, never beyond the mechanical limit
    assert w.state.steer_actual <= MAX_STEER_RAD + 1e-12


def test_turning_circle_matches_the_bicycle_model() -> None:
    w = _world()
    for _ in range(20):
        w.step([1.0, 0.3], 0.05)
    w.step([1.0, 0.3], 0.0)
    yaw0, t0 = w.state.yaw, w.state.t
    pts = []
    for _ in range(100):
        w.step([1.0, 0.3], 0.05)
        pts.append((w.state.x, w.state.y))
    pts_a = np.array(pts)
    centre = pts_a.mean(axis=0)
    radius = np.hypot(*(pts_a - centre).T).mean()
    assert radius == pytest.approx(TURN_RADIUS_M, rel=0.05)
    assert w.state.yaw != yaw0 and w.state.t > t0


def test_steering_trim_is_a_mistrimmed_servo() -> None:
    straight = _world(steering_trim=0.0)
    trimmed = _world(steering_trim=0.2)
    for _ in range(20):
        straight.step([0.0, 0.5], 0.05)
        trimmed.step([0.0, 0.5], 0.05)
    assert straight.state.steer_actual == 0.0
    assert trimmed.state.steer_actual == pytest.approx(0.2 * MAX_STEER_RAD, rel=0.01)
    assert trimmed.state.yaw < straight.state.yaw - 0.05  # +trim drifts right


def _expert_lap(w: SimWorld, *, trim_aware: bool) -> dict[str, float]:
    for _ in range(4000):
        w.step(w.expert_action(trim_aware=trim_aware), 0.05)
        if w.metrics()["laps"] >= 1:
            break
    m = w.metrics()
    return {"laps": m["laps"], "off": m["off_track_events"], "cte": m["mean_abs_cte_m"]}


def test_a_trimmed_car_drifts_and_the_trim_aware_expert_still_laps() -> None:
    # Open loop, a straight command on a trimmed car leaves the road within 3 s.
    drifting = _world(track="oval", steering_trim=0.15)
    for _ in range(60):
        drifting.step([0.0, 0.4], 0.05)
    assert drifting.metrics()["off_track_events"] >= 1
    # Closed loop, the expert who knows the trim laps as if there were none; the same
    # driver unaware of it laps too (feedback) but on a line steadily off the centre.
    base = _expert_lap(_world(track="chicane"), trim_aware=True)
    for trim in (0.15, -0.25):
        aware = _expert_lap(_world(track="chicane", steering_trim=trim), trim_aware=True)
        unaware = _expert_lap(_world(track="chicane", steering_trim=trim), trim_aware=False)
        assert aware["laps"] == 1 and aware["off"] == 0
        assert aware["cte"] == pytest.approx(base["cte"], abs=1e-3)
        assert unaware["laps"] == 1 and unaware["cte"] > 5 * aware["cte"]
    # Its steering is the nominal command with the trim taken out.
    w = _world(track="chicane", steering_trim=0.2)
    w.step([0.1, 0.5], 0.5)
    nominal, aware_a = w.expert_action(trim_aware=False), w.expert_action()
    assert aware_a[0] == pytest.approx(np.clip(nominal[0] - 0.2, -1, 1))
    assert aware_a[1] == nominal[1]


def test_results_do_not_depend_on_how_time_is_chopped() -> None:
    a, b = _world(), _world()
    rng = np.random.default_rng(1)
    for _ in range(40):
        act = rng.uniform(-1, 1, 2)
        a.step(act, 0.05)
        b.step(act, 0.02)
        b.advance(0.0125)
        b.advance(0.0175)
    np.testing.assert_array_equal(a.state.as_array(), b.state.as_array())
    assert a.metrics() == b.metrics()


def test_bad_actions_are_rejected() -> None:
    w = _world()
    with pytest.raises(ValueError):
        w.step([0.0, float("nan")], 0.05)
    with pytest.raises(ValueError):
        w.step([0.0, 0.1, 0.2], 0.05)
    with pytest.raises(ValueError):
        w.step([0.0, 0.1], -0.05)


# ----------------------------------------------------------------------------- determinism


def _run(
    cfg: SimConfig, n: int = 30
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    w = SimWorld(
        cfg, camera=CameraConfig(width=160, height=120), depth=DepthConfig(width=160, height=120)
    )
    rng = np.random.default_rng(99)
    states, images, depths = [], [], []
    for i in range(n):
        act = w.expert_action() + rng.normal(0, 0.2, 2)
        w.step(np.clip(act, -1, 1), 0.05)
        states.append(w.state.as_array())
        if i % 10 == 0:
            images.append(w.render_rgb())
            depths.append(w.render_depth())
    return states, images, depths


def test_same_seed_same_everything_different_seed_different_noise() -> None:
    cfg = SimConfig(track="random-3", seed=11, image_noise_std=4.0, depth_noise_std_m=0.01)
    s1, i1, d1 = _run(cfg)
    s2, i2, d2 = _run(cfg)
    for a, b in zip(s1, s2, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(i1 + d1, i2 + d2, strict=True):
        np.testing.assert_array_equal(a, b)
    s3, i3, d3 = _run(cfg.model_copy(update={"seed": 12}))
    for a, b in zip(s1, s3, strict=True):
        np.testing.assert_array_equal(a, b)  # the seed is noise and texture, not the physics
    assert not np.array_equal(i1[0], i3[0])
    assert not np.array_equal(d1[0], d3[0])


# ----------------------------------------------------------------------------- expert


@pytest.mark.parametrize("name", [*TRACK_NAMES, "random-3", "random-11"])
def test_expert_completes_a_lap_cleanly(name: str) -> None:
    w = _world(track=name)
    length = w.track.length
    steps = 0
    while w.metrics()["laps"] < 1:
        w.step(w.expert_action(), 0.05)
        steps += 1
        assert steps * 0.05 < length / 0.8, "the expert is too slow to finish a lap"
    m = w.metrics()
    assert m["off_track_events"] == 0
    assert m["max_abs_cte_m"] < 0.25
    assert m["mean_abs_cte_m"] < 0.06
    assert m["progress_m"] >= length
    assert m["distance_m"] == pytest.approx(m["progress_m"], rel=0.05)
    assert len(m["lap_times_s"]) == 1 and 0 < m["lap_times_s"][0] <= m["sim_time_s"]


def test_expert_actions_are_in_range_and_use_the_throttle() -> None:
    w = _world(track="chicane")
    acts = []
    for _ in range(200):
        a = w.expert_action()
        acts.append(a)
        w.step(a, 0.05)
    acts_a = np.array(acts)
    assert acts_a.shape == (200, 2)
    assert np.all(np.abs(acts_a) <= 1.0)
    assert acts_a[:, 1].max() > 0.3
    assert acts_a[:, 0].min() < -0.1 and acts_a[:, 0].max() > 0.1  # the chicane needs both ways


# ----------------------------------------------------------------------------- metrics


def test_metrics_keys_and_start_values() -> None:
    m = _world().metrics()
    for key in (
        "cte_m",
        "mean_abs_cte_m",
        "max_abs_cte_m",
        "off_track_events",
        "progress_m",
        "laps",
        "speed_mps",
        "distance_m",
        "sim_time_s",
    ):
        assert key in m
    assert m["laps"] == 0 and m["off_track_events"] == 0 and m["sim_time_s"] == 0.0
    assert abs(m["cte_m"]) < 1e-9


def test_signed_cte_and_off_track_events_count_transitions() -> None:
    w = _world(track="oval")
    w.reset(_offset_pose(w, 100, 0.3))
    assert w.metrics()["cte_m"] == pytest.approx(0.3, abs=1e-3)
    w.reset(_offset_pose(w, 100, -0.2))
    assert w.metrics()["cte_m"] == pytest.approx(-0.2, abs=1e-3)

    # Full right lock from the centreline: a 0.56 m circle that leaves the
    # road on the right and comes back across the centreline every turn.
    w.reset()
    half = w.track.half_width
    was_off, transitions, seen_right = False, 0, False
    for _ in range(2000):
        w.step([1.0, 0.35], SUBSTEP_S)  # +1 = full right, as on the real car
        cte = w.metrics()["cte_m"]
        seen_right |= cte < -half
        off = abs(cte) > half
        transitions += off and not was_off
        was_off = off
    m = w.metrics()
    assert seen_right
    assert transitions >= 2
    assert m["off_track_events"] == transitions
    assert m["max_abs_cte_m"] > half


def test_progress_is_unwrapped_and_goes_down_in_reverse() -> None:
    w = _world(track="oval")
    w.reset(_offset_pose(w, 20, 0.0))
    for _ in range(40):
        w.step([0.0, -0.6], 0.05)
    m = w.metrics()
    assert m["progress_m"] < -0.5  # backwards across the start line: negative, not length - x
    assert m["laps"] == 0
    assert m["distance_m"] == pytest.approx(-m["progress_m"], rel=0.02)

    w.reset()
    for _ in range(700):
        w.step(w.expert_action(), 0.05)
    m = w.metrics()
    assert m["laps"] >= 2
    assert m["laps"] == math.floor(m["progress_m"] / w.track.length)
    assert m["progress_m"] > 2 * w.track.length


# ----------------------------------------------------------------------------- real time


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.t += max(0.0, dt)


def _robot(clock: FakeClock, depth: bool = True, **kw: object) -> SimRobot:
    return SimRobot(
        SimConfig(**kw),
        CameraConfig(width=160, height=120, fps=30),
        DepthConfig(width=160, height=120, fps=30) if depth else None,
        clock=clock,
        sleep=clock.sleep,
    )


def test_robot_implements_the_protocols() -> None:
    r = _robot(FakeClock())
    assert isinstance(r.camera, Camera)
    assert isinstance(r.depth, DepthCamera)
    assert isinstance(r.actuators, Actuators)
    assert r.actuators.action_spec == CAR_ACTION_SPEC
    assert (r.camera.width, r.camera.height, r.camera.fps) == (160, 120, 30)
    no_sensors = SimRobot(SimConfig(), None, None, clock=FakeClock())
    assert no_sensors.camera is None and no_sensors.depth is None


def test_camera_frames_come_at_the_frame_rate_on_the_given_clock() -> None:
    clock = FakeClock()
    r = _robot(clock)
    r.camera.start()
    frames = [r.camera.read() for _ in range(5)]
    t = np.array([f.t_capture for f in frames])
    np.testing.assert_allclose(np.diff(t), 1 / 30, atol=1e-9)
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert frames[-1].t_capture == clock.t
    assert frames[0].data.shape == (120, 160, 3) and frames[0].data.dtype == np.uint8
    assert frames[0].sensor == "camera"
    # A reader that falls behind gets the next frame, never one from the past.
    clock.t += 0.1
    late = r.camera.read()
    assert late.t_capture >= frames[-1].t_capture + 0.1
    assert late.seq > frames[-1].seq + 1


def test_depth_is_synced_to_colour_within_a_millisecond() -> None:
    clock = FakeClock()
    r = _robot(clock)
    r.camera.start()
    r.depth.start()
    for _ in range(3):
        c = r.camera.read()
        d = r.depth.read_depth()
        assert c.seq == d.seq
        assert 0 < d.t_capture - c.t_capture < 0.001
        assert d.data.dtype == np.uint16 and d.data.shape == (120, 160)
        assert d.depth_scale == 0.001


def test_writing_actuators_then_advancing_the_clock_moves_the_car() -> None:
    clock = FakeClock()
    r = _robot(clock, depth=False)
    r.actuators.start()
    x0 = r.state.x
    clock.t += 1.0
    assert r.state.x == x0  # neutral: it stays put
    r.actuators.write(np.array([0.0, 0.6]))
    np.testing.assert_array_equal(r.actuators.last_command, [0.0, 0.6])
    clock.t += 1.0
    s = r.state
    assert s.speed > 0.5 and s.t == pytest.approx(2.0, abs=SUBSTEP_S)
    assert math.hypot(s.x - x0, s.y - r.world.track.points[0][1]) > 0.3
    assert r.metrics()["progress_m"] > 0.3
    r.actuators.neutral()
    np.testing.assert_array_equal(r.actuators.last_command, [0.0, 0.0])
    clock.t += 3.0
    assert r.state.speed == 0.0
    e = r.expert_action()
    assert e.shape == (2,) and e[1] > 0


def test_actuators_reject_bad_commands_and_close_to_neutral() -> None:
    clock = FakeClock()
    r = _robot(clock, depth=False)
    with pytest.raises(ValueError):
        r.actuators.write(np.array([0.0, np.inf]))
    with pytest.raises(ValueError):
        r.actuators.write(np.array([0.0]))
    r.actuators.write(np.array([2.0, 0.5]))
    np.testing.assert_array_equal(r.actuators.last_command, [1.0, 0.5])  # clipped to the spec
    r.close()
    np.testing.assert_array_equal(r.actuators.last_command, [0.0, 0.0])
    r.actuators.neutral()  # safe after close
    with pytest.raises(RuntimeError):
        r.camera.read()


def test_camera_timeout() -> None:
    clock = FakeClock()
    r = SimRobot(
        SimConfig(), CameraConfig(width=64, height=48, fps=2), None, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(TimeoutError):
        r.camera.read(timeout=0.1)


def test_real_clock_threads_capture_while_the_control_loop_drives() -> None:
    r = SimRobot(SimConfig(image_noise_std=0.0), CameraConfig(width=160, height=120, fps=60), None)
    frames = []
    errors: list[BaseException] = []

    def capture() -> None:
        try:
            for _ in range(12):
                frames.append(r.camera.read(timeout=1.0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=capture)
    th.start()
    end = time.monotonic() + 0.25
    while time.monotonic() < end:
        r.actuators.write(r.expert_action())
        time.sleep(0.01)
    th.join(5)
    assert not errors and len(frames) == 12
    t = [f.t_capture for f in frames]
    assert np.all(np.diff(t) > 0)
    assert r.metrics()["distance_m"] > 0.05
    r.close()


def test_build_sim_robot_from_config() -> None:
    cfg = Config()
    r = build_sim_robot(cfg)
    assert r.camera is not None and r.depth is None
    assert (r.camera.width, r.camera.height) == (
        cfg.hardware.camera.width,
        cfg.hardware.camera.height,
    )
    assert r.world.track.name == cfg.sim.track
    r.close()
