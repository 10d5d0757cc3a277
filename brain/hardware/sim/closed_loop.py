"""Closed-loop driving in the simulator: one policy, one track, step by step at the control rate.

The core of closed-loop evaluation, shared by ``cloud_jobs.evaluate`` (the cloud's report)
and the robot's local-training promotion gate (``brain.localtrain.gate``), which must not
import ``cloud_jobs``.  A driver is anything with ``reset()`` and ``act(image, world)``;
``run_drive`` carries it around a track until the laps are done, the step budget is spent,
or the car has left the track for good, and scores it with the simulator's own metrics.
Torch-free: a torch policy is wrapped by its caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from brain.config import CameraConfig, SimConfig
from brain.hardware.sim.track import make_track
from brain.hardware.sim.world import SimWorld

#: Beyond this distance past the road edge the car is lost at once.
LOST_MARGIN_M = 1.0
#: Budget when --max-steps is not given: enough for the laps at this average speed.
BUDGET_MIN_SPEED_MPS = 0.6
STALL_PROGRESS_M = 0.25
MODEL_HW = (120, 160)


class Driver(Protocol):
    """Something that drives: reset between runs, then one action per control tick."""

    name: str
    needs_image: bool

    def reset(self) -> None: ...

    def act(self, image: np.ndarray | None, world: SimWorld) -> np.ndarray: ...


def resize_frame(rgb: np.ndarray, hw: tuple[int, int] = MODEL_HW) -> np.ndarray:
    """The robot's preprocessing: HxWx3 uint8 RGB -> (H, W) of the network, INTER_AREA."""
    h, w = hw
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


class ExpertDriver:
    """The sim's pure-pursuit demonstrator (knows the true pose; no camera)."""

    name = "expert"
    needs_image = False

    def reset(self) -> None:
        pass

    def act(self, image: np.ndarray | None, world: SimWorld) -> np.ndarray:
        return world.expert_action()


@dataclass
class Trace:
    """Per-tick samples of one drive (for the plots)."""

    t: list[float] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    cte: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    steering: list[float] = field(default_factory=list)
    throttle: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EvalConditions:
    laps: int = 3
    rate_hz: float = 20.0
    max_steps: int | None = None
    seed: int = 0
    lighting: str = "day"  # checked against SimConfig's choices by sim_config()
    texture: str = "asphalt"
    steering_trim: float = 0.0
    width: int = 640
    height: int = 480
    render_size: str = "full"  # full: camera size then resize (robot path) | model: 160x120
    off_track_timeout_s: float = 2.0
    #: A car that has not made ``STALL_PROGRESS_M`` of progress for this long has stalled.
    stall_timeout_s: float = 10.0


def sim_config(track: str, c: EvalConditions) -> SimConfig:
    # Validated: the conditions come from command lines and configs as plain strings.
    return SimConfig.model_validate(
        {
            "track": track,
            "seed": c.seed,
            "lighting": c.lighting,
            "texture": c.texture,
            "steering_trim": c.steering_trim,
        }
    )


def step_budget(track: str, c: EvalConditions) -> int:
    if c.max_steps is not None:
        return int(c.max_steps)
    length = make_track(track).length
    return math.ceil(c.laps * length / BUDGET_MIN_SPEED_MPS * c.rate_hz)


def run_drive(driver: Driver, track: str, c: EvalConditions) -> tuple[dict[str, Any], Trace]:
    """Drive ``track`` under conditions ``c`` until done; returns (metrics, trace)."""
    if c.render_size == "full":
        cam = CameraConfig(width=c.width, height=c.height)
    else:
        h, w = getattr(driver, "image_hw", MODEL_HW)
        cam = CameraConfig(width=w, height=h)
    world = SimWorld(sim_config(track, c), cam if driver.needs_image else None)
    world.reset()
    driver.reset()
    dt = 1.0 / c.rate_hz
    half = world.track.half_width
    budget = step_budget(track, c)
    trace = Trace()
    act_ms: list[float] = []
    off_since: float | None = None
    stall_mark = (0.0, 0.0)  # (time, progress) of the last real progress
    reason = "step_budget"
    steps = 0
    t_wall = time.perf_counter()
    for _ in range(budget):
        st = world.state
        image = world.render_rgb() if driver.needs_image else None
        t0 = time.perf_counter()
        action = np.asarray(driver.act(image, world), dtype=np.float64).reshape(-1)
        act_ms.append((time.perf_counter() - t0) * 1000.0)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            reason = "bad_action"
            break
        world.step(action, dt)
        steps += 1
        tm = world.tracker.m
        cte = float(tm.cte_m)
        trace.t.append(st.t + dt)
        trace.x.append(world.car.x)
        trace.y.append(world.car.y)
        trace.cte.append(cte)
        trace.speed.append(world.car.speed)
        trace.steering.append(float(np.clip(action[0], -1, 1)))
        trace.throttle.append(float(np.clip(action[1], -1, 1)))
        if world.tracker.laps >= c.laps:
            reason = "laps_done"
            break
        if abs(cte) > half:
            off_since = world.state.t if off_since is None else off_since
            if abs(cte) > half + LOST_MARGIN_M:
                reason = "left_track"
                break
            if world.state.t - off_since >= c.off_track_timeout_s:
                reason = "left_track"
                break
        else:
            off_since = None
        now = world.state.t
        if tm.progress_m > stall_mark[1] + STALL_PROGRESS_M:
            stall_mark = (now, tm.progress_m)
        elif now - stall_mark[0] >= c.stall_timeout_s:
            reason = "stalled"
            break
    m: dict[str, Any] = world.metrics()
    sim_t = float(m["sim_time_s"])
    out = {
        "laps": int(m["laps"]),
        "completed": int(m["laps"]) >= c.laps,
        "termination": reason,
        "steps": steps,
        "sim_time_s": sim_t,
        "mean_abs_cte_m": float(m["mean_abs_cte_m"]),
        "max_abs_cte_m": float(m["max_abs_cte_m"]),
        "off_track_events": int(m["off_track_events"]),
        "off_track_time_s": float(m["off_track_time_s"]),
        "mean_speed_mps": float(m["distance_m"]) / sim_t if sim_t > 0 else 0.0,
        "progress_m": float(m["progress_m"]),
        "distance_m": float(m["distance_m"]),
        "lap_times_s": [float(v) for v in m["lap_times_s"]],
        "track_length_m": float(m["track_length_m"]),
        "act_ms_p50": float(np.percentile(act_ms, 50)) if act_ms else None,
        "act_ms_p99": float(np.percentile(act_ms, 99)) if act_ms else None,
        "wall_s": time.perf_counter() - t_wall,
    }
    return out, trace


# ----------------------------------------------------------------------------- plots
