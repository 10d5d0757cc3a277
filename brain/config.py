"""The robot's configuration: one YAML file, checked against a strict schema.

A robot that starts with a typo in its config can drive off a table, so every
key is checked: unknown keys are errors, values are range-checked, and the
error names the file, the line, the key, the value and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from brain import paths
from brain.yaml_config import load_model_file, parse_model

# The default-config lookup lives in the stdlib-only brain.paths (the fast `continuon estop`
# path needs it before pydantic is imported); these names are its public face here.
CONFIG_DIR = paths.CONFIG_DIR
DEFAULT_CONFIG = paths.DEFAULT_CONFIG
SYSTEM_CONFIG = paths.SYSTEM_CONFIG
CONFIG_ENV = paths.CONFIG_ENV
default_config_path = paths.default_config_path


class ConfigError(ValueError):
    """A configuration file could not be used; ``str()`` is meant for the robot builder."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {self.path}:\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ----------------------------------------------------------------------------- robot


class RobotConfig(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "continuon-sim"
    kind: Literal["car", "arm"] = "car"


# ----------------------------------------------------------------------------- sensors


class CameraConfig(_Strict):
    driver: Literal["sim", "picamera2", "realsense"] = "sim"
    width: Annotated[int, Field(ge=32, le=4096)] = 640
    height: Annotated[int, Field(ge=32, le=4096)] = 480
    fps: Annotated[float, Field(gt=0, le=120)] = 30.0
    # picamera2: index in Picamera2.global_camera_info(); realsense: serial number or null.
    index: Annotated[int, Field(ge=0, le=7)] = 0
    serial: str | None = None


class DepthConfig(_Strict):
    driver: Literal["sim", "realsense"] = "sim"
    width: Annotated[int, Field(ge=32, le=4096)] = 640
    height: Annotated[int, Field(ge=32, le=4096)] = 480
    fps: Annotated[float, Field(gt=0, le=120)] = 30.0
    serial: str | None = None
    max_depth_m: Annotated[float, Field(gt=0, le=65)] = 6.0


# ----------------------------------------------------------------------------- actuators


class PCA9685Config(_Strict):
    i2c_bus: Annotated[int, Field(ge=0, le=22)] = 1
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x40
    frequency_hz: Annotated[float, Field(ge=24, le=1526)] = 60.0


_PULSE = Annotated[int, Field(ge=400, le=2600)]
_CHANNEL = Annotated[int, Field(ge=0, le=15)]


class SteeringConfig(_Strict):
    """Servo pulse widths in microseconds, calibrated per car (``continuon hw-check --move``)."""

    channel: _CHANNEL = 0
    left_us: _PULSE = 1000
    center_us: _PULSE = 1500
    right_us: _PULSE = 2000

    @model_validator(mode="after")
    def _ordered(self) -> SteeringConfig:
        lo, hi = sorted((self.left_us, self.right_us))
        if not lo < self.center_us < hi:
            raise ValueError(
                f"center_us {self.center_us} must lie strictly between left_us {self.left_us} "
                f"and right_us {self.right_us}"
            )
        return self


class ThrottleConfig(_Strict):
    """ESC pulse widths in microseconds; the ESC arms by seeing neutral for ``arm_seconds``."""

    channel: _CHANNEL = 1
    reverse_us: _PULSE = 1000
    neutral_us: _PULSE = 1500
    forward_us: _PULSE = 2000
    arm_seconds: Annotated[float, Field(ge=0, le=10)] = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> ThrottleConfig:
        lo, hi = sorted((self.reverse_us, self.forward_us))
        if not lo < self.neutral_us < hi:
            raise ValueError(
                f"neutral_us {self.neutral_us} must lie strictly between reverse_us "
                f"{self.reverse_us} and forward_us {self.forward_us}"
            )
        return self


class CarActuatorsConfig(_Strict):
    driver: Literal["sim", "pca9685_car"] = "sim"
    pca9685: PCA9685Config = PCA9685Config()
    steering: SteeringConfig = SteeringConfig()
    throttle: ThrottleConfig = ThrottleConfig()

    @model_validator(mode="after")
    def _distinct_channels(self) -> CarActuatorsConfig:
        if self.steering.channel == self.throttle.channel:
            raise ValueError(
                f"steering.channel and throttle.channel are both {self.steering.channel}"
            )
        return self


class JointConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    channel: _CHANNEL
    min_us: _PULSE = 500
    max_us: _PULSE = 2500
    min_deg: Annotated[float, Field(ge=-360, le=360)] = 0.0
    max_deg: Annotated[float, Field(ge=-360, le=360)] = 180.0
    # Soft limits inside the servo's travel; commands are clamped to these.
    limit_min_deg: float | None = None
    limit_max_deg: float | None = None
    max_speed_deg_s: Annotated[float, Field(gt=0, le=2000)] = 90.0

    @model_validator(mode="after")
    def _ranges(self) -> JointConfig:
        if not self.min_us < self.max_us:
            raise ValueError(f"min_us {self.min_us} must be below max_us {self.max_us}")
        if not self.min_deg < self.max_deg:
            raise ValueError(f"min_deg {self.min_deg} must be below max_deg {self.max_deg}")
        lo = self.min_deg if self.limit_min_deg is None else self.limit_min_deg
        hi = self.max_deg if self.limit_max_deg is None else self.limit_max_deg
        if not self.min_deg <= lo < hi <= self.max_deg:
            raise ValueError(
                f"soft limits [{lo}, {hi}] must be increasing and inside the servo travel "
                f"[{self.min_deg}, {self.max_deg}]"
            )
        return self

    @property
    def soft_limits(self) -> tuple[float, float]:
        lo = self.min_deg if self.limit_min_deg is None else self.limit_min_deg
        hi = self.max_deg if self.limit_max_deg is None else self.limit_max_deg
        return lo, hi


class ArmActuatorsConfig(_Strict):
    driver: Literal["pca9685_arm"] = "pca9685_arm"
    pca9685: PCA9685Config = PCA9685Config()
    joints: Annotated[list[JointConfig], Field(min_length=1, max_length=16)]
    # What a stop leaves the servos doing: hold their last position, or no pulse (limp).
    on_stop: Literal["hold", "release"] = "hold"

    @model_validator(mode="after")
    def _unique(self) -> ArmActuatorsConfig:
        names = [j.name for j in self.joints]
        chans = [j.channel for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"joint names must be unique, got {names}")
        if len(set(chans)) != len(chans):
            raise ValueError(f"joint channels must be unique, got {chans}")
        return self


def _actuator_kind(value: Any) -> str:
    """Pick the schema by driver; a missing driver means the simulated car."""
    driver = value.get("driver", "sim") if isinstance(value, dict) else value.driver
    return "arm" if driver == "pca9685_arm" else "car"


class HardwareConfig(_Strict):
    camera: CameraConfig | None = CameraConfig()
    depth: DepthConfig | None = None
    actuators: Annotated[
        Annotated[CarActuatorsConfig, Tag("car")] | Annotated[ArmActuatorsConfig, Tag("arm")],
        Discriminator(_actuator_kind),
    ] = CarActuatorsConfig()


# ----------------------------------------------------------------------------- sim


class SimConfig(_Strict):
    """The built-in simulated robot (used by every ``driver: sim`` above)."""

    track: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "oval"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    lighting: Literal["day", "dusk", "overcast", "glare"] = "day"
    texture: Literal["asphalt", "concrete", "carpet"] = "asphalt"
    image_noise_std: Annotated[float, Field(ge=0, le=50)] = 2.0
    depth_noise_std_m: Annotated[float, Field(ge=0, le=1)] = 0.005
    steering_trim: Annotated[float, Field(ge=-0.5, le=0.5)] = 0.0
    max_speed_mps: Annotated[float, Field(gt=0, le=20)] = 3.0


# ----------------------------------------------------------------------------- runtime


class ControlConfig(_Strict):
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


class SafetyConfig(_Strict):
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


class PolicyConfig(_Strict):
    model: Path | None = None
    threads: Annotated[int, Field(ge=1, le=4)] = 1
    # Inference slower than this is dropped for the tick (neutral); default: 60 % of the period.
    deadline_ms: Annotated[float, Field(gt=0, le=1000)] | None = None
    # Run the policy every tick even when it is not driving, to compare it with the driver.
    shadow: bool = False


class RecordingConfig(_Strict):
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


class SupervisorConfig(_Strict):
    backoff_initial_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    backoff_max_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    crash_loop_limit: Annotated[int, Field(ge=1, le=100)] = 5
    crash_loop_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    watchdog_max_tick_age_s: Annotated[float, Field(gt=0, le=30)] = 1.0


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class PathsConfig(_Strict):
    # Defaults: systemd's $STATE_DIRECTORY / $RUNTIME_DIRECTORY, else under ~/.local/state.
    state_dir: Path | None = None
    runtime_dir: Path | None = None


# --- network side (edge_agent) --------------------------------------------------------------


class ApiConfig(_Strict):
    """The Robot API and companion web app (edge_agent/api)."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # JSON request bodies larger than this are refused with 413 before they are parsed.
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # Side-loaded update bundles (POST /api/v1/updates/upload) are streamed to disk up to this.
    max_upload_bytes: Annotated[int, Field(ge=1024 * 1024, le=8 * 1024**3)] = 1024**3
    # An upload holds the one upload slot: it is dropped (408) when no bytes arrive for
    # upload_idle_timeout_s, or when the whole body has not arrived in upload_timeout_s.
    upload_idle_timeout_s: Annotated[float, Field(ge=1, le=600)] = 30.0
    upload_timeout_s: Annotated[float, Field(ge=5, le=86400)] = 1800.0
    # Browser origins allowed besides the robot's own (same host and port), e.g. a dev server.
    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(
        default_factory=list
    )
    # Host names (besides the robot's own names and addresses, which are always allowed)
    # that clients may put in the Host header, e.g. a name given to the robot in the LAN's DNS.
    allowed_hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")]] = (
        Field(default_factory=list)
    )
    pairing_code_ttl_s: Annotated[float, Field(ge=30, le=3600)] = 300.0
    # Wrong codes one client address (an IPv6 /64) may send before it must wait; the wait
    # starts at 2 s and doubles with every further wrong code, up to pairing_lockout_s.
    # It only ever holds back that address, never pairing as a whole.
    pairing_max_failures: Annotated[int, Field(ge=1, le=20)] = 5
    pairing_lockout_s: Annotated[float, Field(ge=10, le=86400)] = 300.0
    # Pairing attempts per client address per minute (429 beyond).
    pairing_rate_per_min: Annotated[int, Field(ge=1, le=600)] = 10
    # Owner tokens stop working this many days after pairing (null: never).
    token_ttl_days: Annotated[float, Field(gt=0, le=3650)] | None = None
    # HTTPS: a PEM certificate and its key (`continuon tls init` makes a self-signed pair).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # WebSocket messages per second per client address; a burst of one second is allowed,
    # excess messages are coalesced (latest wins) and a client that sends more than 4x this
    # within a second is disconnected for 5 s (the teleop watchdog then stops the car).
    ws_max_msgs_per_s: Annotated[float, Field(ge=10, le=1000)] = 200.0
    stream_ticket_ttl_s: Annotated[float, Field(ge=5, le=600)] = 60.0
    camera_max_fps: Annotated[float, Field(gt=0, le=60)] = 15.0
    camera_jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 75
    telemetry_hz: Annotated[float, Field(ge=1, le=50)] = 15.0
    # Connection limits (edge_agent/api/limits.py): an idle socket costs a file descriptor,
    # so the API never holds more than these, whoever asks.
    max_connections: Annotated[int, Field(ge=4, le=4096)] = 64
    max_connections_per_client: Annotated[int, Field(ge=1, le=1024)] = 16
    # A new connection's first request head must arrive within this (idle sockets, slowloris).
    header_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Idle time between requests on a kept-alive connection before it is closed.
    keepalive_timeout_s: Annotated[float, Field(gt=0, le=600)] = 15.0
    # A JSON request body must arrive within this once its head is in.
    body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0

    @model_validator(mode="after")
    def _caps_consistent(self) -> ApiConfig:
        if self.max_connections_per_client > self.max_connections:
            raise ValueError(
                f"max_connections_per_client ({self.max_connections_per_client}) cannot exceed "
                f"max_connections ({self.max_connections})"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("api.tls_cert and api.tls_key go together: set both or neither")
        return self


class DiscoveryConfig(_Strict):
    """mDNS/DNS-SD advertisement of the Robot API (edge_agent/discovery)."""

    enabled: bool = True
    # How often addresses, port and model version are checked; a change is re-announced.
    poll_s: Annotated[float, Field(ge=0.2, le=300)] = 5.0


class CloudConfig(_Strict):
    """The MQTT link to the cloud (edge_agent/cloud); off unless a broker is configured."""

    enabled: bool = False
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    # TLS is on unless switched off explicitly (a test broker on loopback, say).
    tls: bool = True
    ca_file: Path | None = None  # null: the system's CA store
    cert_file: Path | None = None  # client certificate (optional; with key_file)
    key_file: Path | None = None
    username: str | None = None
    # The password lives in its own file (mode 0600), never in this config.
    password_file: Path | None = None
    client_id: str | None = None  # default: continuon-<robot id>
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    # MQTT 5 lets the robot tell the broker the largest packet it accepts, so an oversized
    # command is never even received; false: MQTT 3.1.1 for brokers without MQTT 5 (then
    # oversized payloads are read, and dropped by size before any parsing).
    mqtt5: bool = True
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]{1,64}$")] = "continuon"
    telemetry_period_s: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    # How often the brain's status is checked for events (mode, e-stop, update, task errors).
    status_poll_s: Annotated[float, Field(ge=0.05, le=60)] = 0.5
    queue_dir: Path | None = None  # default: <state_dir>/cloud-queue
    queue_max_bytes: Annotated[int, Field(ge=4096, le=1 << 30)] = 4 << 20
    backoff_initial_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    @model_validator(mode="after")
    def _consistent(self) -> CloudConfig:
        if self.enabled and not self.host:
            raise ValueError("cloud.enabled needs cloud.host (the MQTT broker)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cloud.cert_file and cloud.key_file go together (client certificate)")
        if self.password_file is not None and not self.username:
            raise ValueError("cloud.password_file needs cloud.username")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("cloud.backoff_initial_s must not exceed cloud.backoff_max_s")
        return self


class UploaderConfig(_Strict):
    """Where exported episodes and candidate adapters are uploaded (edge_agent/uploader)."""

    destination: str | None = None
    chunk_bytes: Annotated[int, Field(ge=4096, le=1 << 30)] = 4 << 20
    retries: Annotated[int, Field(ge=0, le=100)] = 5
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Bearer token for an HTTP destination, read from this file (never inline).
    token_file: Path | None = None
    ca_file: Path | None = None  # for an https:// destination with a private CA

    @field_validator("destination")
    @classmethod
    def _destination(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("http://", "https://")):
            raise ValueError(f"destination {v!r}: use an http(s):// URL or a directory path")
        return v


# --- updates and local training (brain/ota, brain/localtrain) ------------------------------


class OtaConfig(_Strict):
    """The A/B over-the-air updater (brain/ota); see docs/ota.md."""

    enabled: bool = True
    repository_url: str | None = None
    # Slots A/B, state file, lock, TUF metadata and downloads; default <state_dir>/ota.
    slots_dir: Path | None = None
    # Bundles must name this hardware/compat id; default "continuon-<robot.kind>".
    hardware_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] | None = None
    # The TUF root.json the robot trusts first (copied into slots_dir/metadata once).
    trusted_root: Path | None = None
    # Public key (PEM) that signs bundles fine-tuned on this robot (brain/localtrain).
    device_public_key: Path | None = None
    check_interval_s: Annotated[float, Field(ge=10, le=7 * 86400)] = 3600.0
    # Health window after a swap; a bundle's safety manifest may ask for a longer one.
    health_window_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Thresholds over the window (the stricter of these and the bundle's own win).
    max_inference_errors: Annotated[int, Field(ge=0)] = 0
    max_nan_outputs: Annotated[int, Field(ge=0)] = 0
    max_deadline_misses: Annotated[int, Field(ge=0)] = 5
    max_safety_interventions: Annotated[int, Field(ge=0)] = 20
    # Inferences that must be seen before committing (0: commit even if the robot sat idle).
    min_inferences: Annotated[int, Field(ge=0)] = 0
    # Steps run on a grey image before the swap; a NaN, error or over-budget step refuses it.
    smoke_steps: Annotated[int, Field(ge=1, le=1000)] = 5


class LocalTrainConfig(_Strict):
    """On-robot LoRA fine-tuning (brain/localtrain); see docs/local-training.md."""

    enabled: bool = True
    # The torch checkpoint (brain.model.save_policy) the adapters are trained on; default:
    # policy.pt beside policy.model, else <work_dir>/base.pt.
    base_model: Path | None = None
    work_dir: Path | None = None  # runs, adapters, checkpoints; default <state_dir>/localtrain
    min_episodes: Annotated[int, Field(ge=1, le=100_000)] = 16
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    steps: Annotated[int, Field(ge=1, le=100_000)] = 300
    max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    shuffle_buffer: Annotated[int, Field(ge=1, le=100_000)] | None = None  # default 2x batch
    window: Annotated[int, Field(ge=1, le=512)] = 16  # TBPTT length in control ticks
    label: Literal["action", "expert_action"] = "action"
    lr: Annotated[float, Field(gt=0, le=1)] = 3.0e-3
    lora_rank: Annotated[int, Field(ge=1, le=256)] = 8
    lora_alpha: Annotated[float, Field(gt=0, le=4096)] = 16.0
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # LoRA targets (module names, peft suffix match); "core" = encoder.proj, memory, CMS, head.
    target_modules: tuple[str, ...] | Literal["core"] = "core"
    holdout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    checkpoint_every: Annotated[int, Field(ge=1, le=100_000)] = 50
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    threads: Annotated[int, Field(ge=1, le=16)] = 1  # torch intra-op threads in the trainer
    nice: Annotated[int, Field(ge=0, le=19)] = 10
    # Resource guard (psutil): memory %, CPU temperature, battery; see docs/local-training.md.
    guard_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    memory_warning_pct: Annotated[float, Field(gt=0, le=100)] = 75.0
    memory_critical_pct: Annotated[float, Field(gt=0, le=100)] = 85.0
    memory_emergency_pct: Annotated[float, Field(gt=0, le=100)] = 90.0
    temp_warning_c: Annotated[float, Field(gt=0, le=150)] = 70.0
    temp_critical_c: Annotated[float, Field(gt=0, le=150)] = 80.0
    temp_emergency_c: Annotated[float, Field(gt=0, le=150)] = 85.0
    min_battery_pct: Annotated[float, Field(ge=0, le=100)] = 30.0
    # Promotion gate: held-out action error, mean action change bound, closed loop (sim).
    gate_max_action_change: Annotated[float, Field(gt=0, le=2)] = 0.25
    gate_min_improvement: Annotated[float, Field(ge=-1, lt=1)] = 0.0
    gate_closed_loop: bool = True
    gate_closed_loop_steps: Annotated[int, Field(ge=20, le=100_000)] = 600
    # Accepted adapters are merged, exported, packed and installed through the OTA slots.
    promote: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> LocalTrainConfig:
        if not self.memory_warning_pct < self.memory_critical_pct < self.memory_emergency_pct:
            raise ValueError(
                "local_train memory levels must satisfy warning < critical < emergency"
            )
        if not self.temp_warning_c < self.temp_critical_c <= self.temp_emergency_c:
            raise ValueError(
                "local_train temperatures must satisfy warning < critical <= emergency"
            )
        return self


class Config(_Strict):
    robot: RobotConfig = RobotConfig()
    hardware: HardwareConfig = HardwareConfig()
    sim: SimConfig = SimConfig()
    control: ControlConfig = ControlConfig()
    safety: SafetyConfig = SafetyConfig()
    policy: PolicyConfig = PolicyConfig()
    recording: RecordingConfig = RecordingConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    logging: LoggingConfig = LoggingConfig()
    paths: PathsConfig = PathsConfig()
    api: ApiConfig = ApiConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    cloud: CloudConfig = CloudConfig()
    uploader: UploaderConfig = UploaderConfig()
    ota: OtaConfig = OtaConfig()
    local_train: LocalTrainConfig = LocalTrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        hw = self.hardware
        act = hw.actuators
        if self.robot.kind == "car" and not isinstance(act, CarActuatorsConfig):
            raise ValueError("robot.kind 'car' needs hardware.actuators.driver sim or pca9685_car")
        if self.robot.kind == "arm" and not isinstance(act, ArmActuatorsConfig):
            raise ValueError("robot.kind 'arm' needs hardware.actuators.driver pca9685_arm")
        depth_rs = hw.depth is not None and hw.depth.driver == "realsense"
        if depth_rs and (hw.camera is None or hw.camera.driver != "realsense"):
            raise ValueError(
                "hardware.depth.driver realsense aligns depth to the RealSense colour "
                "stream, so hardware.camera.driver must be realsense too"
            )
        if self.control.autopilot == "expert" and act.driver != "sim":
            raise ValueError("control.autopilot 'expert' exists only on the simulated robot")
        names = set(self.action_names)
        for section in ("limits", "slew_per_s"):
            unknown = set(getattr(self.safety, section)) - names
            if unknown:
                raise ValueError(
                    f"safety.{section} names unknown actions {sorted(unknown)}; "
                    f"this robot's actions are {sorted(names)}"
                )
        return self

    @property
    def action_names(self) -> tuple[str, ...]:
        act = self.hardware.actuators
        if isinstance(act, ArmActuatorsConfig):
            return tuple(j.name for j in act.joints)
        return ("steering", "throttle")

    @property
    def uses_sim(self) -> bool:
        hw = self.hardware
        drivers: list[str] = [hw.actuators.driver]
        drivers += [s.driver for s in (hw.camera, hw.depth) if s is not None]
        return "sim" in drivers

    def frame_sensors(self) -> tuple[CameraConfig | None, DepthConfig | None]:
        """The camera and depth sections as the drivers should open them.

        With ``control.trigger: frame`` a tick follows each frame, so the sensors are asked
        for the control rate rather than their own ``fps`` (which then applies only to the
        timer trigger); a driver that cannot run at that rate picks the nearest it can.
        """
        hw = self.hardware
        if self.control.trigger != "frame" or hw.camera is None:
            return hw.camera, hw.depth
        rate = {"fps": self.control.rate_hz}
        depth = hw.depth.model_copy(update=rate) if hw.depth is not None else None
        return hw.camera.model_copy(update=rate), depth

    def config_hash(self) -> str:
        """A stable hash of the effective configuration, recorded with every episode."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def state_dir(self) -> Path:
        return paths.state_dir(self.paths.state_dir)

    def episodes_dir(self) -> Path:
        return self.recording.root or self.state_dir() / "episodes"

    def ota_dir(self) -> Path:
        return self.ota.slots_dir or self.state_dir() / "ota"

    def localtrain_dir(self) -> Path:
        return self.local_train.work_dir or self.state_dir() / "localtrain"

    def ota_hardware_id(self) -> str:
        return self.ota.hardware_id or f"continuon-{self.robot.kind}"

    def runtime_dir(self) -> Path:
        return paths.runtime_dir(self.paths.runtime_dir, self.paths.state_dir)


# ----------------------------------------------------------------------------- loading

_UNION_TAGS = ("car", "arm")  # the actuator union's tags in pydantic error locations


def parse_config(raw: Any, source: str = "<config>", text: str | None = None) -> Config:
    """Validate already-loaded YAML data; ``text`` lets errors carry line numbers."""
    return parse_model(
        Config, raw, error=ConfigError, source=source, text=text, union_tags=_UNION_TAGS
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config file.  Raises ConfigError naming what is wrong."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    return load_model_file(Config, p, error=ConfigError, union_tags=_UNION_TAGS)
