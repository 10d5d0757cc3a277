"""How the daemon runs: control loop, safety layer, policy, recording, supervisor, logs, paths."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from brain.config.base import Strict


class ControlConfig(Strict):
    rate_hz: Annotated[float, Field(ge=5, le=100)] = 20.0
    max_frame_age_ms: Annotated[float, Field(gt=0, le=2000)] = 150.0
    # Who drives in AUTONOMOUS: the ONNX policy, or the sim's expert (sim only).
    autopilot: Literal["policy", "expert"] = "policy"
    record_autonomous: bool = False
    stats_window: Annotated[int, Field(ge=100, le=1_000_000)] = 6000
    # In MANUAL, write a new joystick command at once (through the same safety layer)
    # instead of at the next tick: up to one period less teleop latency.
    teleop_immediate: bool = True
    # What starts a tick: each new camera frame (the camera running at rate_hz where it can,
    # with a fallback deadline so the watchdogs keep ticking when it stalls), or a fixed-rate
    # timer.  Without a camera the loop always runs on the timer.
    trigger: Literal["frame", "timer"] = "frame"


class SafetyConfig(Strict):
    teleop_timeout_ms: Annotated[float, Field(ge=20, le=5000)] = 250.0
    # Per-action clamp inside the actuator's own range, e.g. {throttle: [-0.3, 0.5]}.
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # Per-action slew limit in units per second when moving away from neutral.
    slew_per_s: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    # Supervised autonomy: in AUTONOMOUS the car holds neutral (not ESTOP) while no operator
    # heartbeat (app, API client, `continuon heartbeat`) is younger than this.  None/0: off.
    autonomous_heartbeat_s: Annotated[float, Field(ge=0, le=60)] | None = None

    @field_validator("limits")
    @classmethod
    def _limits_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"limits.{name}: [{lo}, {hi}] must be finite and increasing")
        return v


class PolicyConfig(Strict):
    model: Path | None = None
    threads: Annotated[int, Field(ge=1, le=4)] = 1
    # Inference slower than this is dropped for the tick (neutral); default: 60 % of the period.
    deadline_ms: Annotated[float, Field(gt=0, le=1000)] | None = None
    # Run the policy every tick even when it is not driving, to compare it with the driver.
    shadow: bool = False


class RecordingConfig(Strict):
    """Episode recording (RLDS files under ``<state_dir>/episodes`` unless ``root`` is set)."""

    root: Path | None = None
    # Start recording by itself whenever the mode records (MANUAL; AUTONOMOUS if allowed).
    auto_record: bool = False
    jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 90
    fsync_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Steps waiting for the writer hold frame references (~1.5 MB per RGB+depth frame at
    # 640x480), so the queue bounds memory too; beyond it steps are dropped and counted.
    queue_size: Annotated[int, Field(ge=8, le=10_000)] = 100
    # Disk budget: eviction removes only episodes already exported, oldest first.
    quota_gb: Annotated[float, Field(gt=0)] | None = None
    min_free_mb: Annotated[float, Field(ge=0)] = 500.0
    # Interrupted episodes shorter than this are discarded (and reported) on recovery.
    min_steps: Annotated[int, Field(ge=1, le=100_000)] = 10
    # Bounds on <episodes>/.discarded/, applied at every start (oldest first); null: no bound.
    discarded_max_mb: Annotated[float, Field(ge=0)] | None = 256.0
    discarded_max_age_days: Annotated[float, Field(gt=0)] | None = 30.0
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:=-]{1,64}$")]] = Field(
        default_factory=list
    )


class SupervisorConfig(Strict):
    backoff_initial_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    backoff_max_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    crash_loop_limit: Annotated[int, Field(ge=1, le=100)] = 5
    crash_loop_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    watchdog_max_tick_age_s: Annotated[float, Field(gt=0, le=30)] = 1.0


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class PathsConfig(Strict):
    # Defaults: systemd's $STATE_DIRECTORY / $RUNTIME_DIRECTORY, else under ~/.local/state.
    state_dir: Path | None = None
    runtime_dir: Path | None = None
