"""What BrainInterface returns: typed, immutable models instead of loose dicts.

The network side (edge_agent) sees the brain only through these, so a renamed
key or a changed type is a mypy error on both sides instead of a silent change
in the JSON the phone app, the MQTT telemetry and the control socket emit.
They serialise with :meth:`Reply.to_json`, which yields exactly the JSON the
dicts used to give: the same keys (``from`` included, via an alias), in the same
order, with the same value types.

A few sections exist only on some robots (``stats.sim`` without the simulator,
``update_status.health`` before a trial): those fields default to None and are
left unset when absent, and ``to_json`` leaves unset fields out, so the JSON
has no key rather than a null.  Every other field is required.

Deep sub-documents that another component owns and documents (control-loop
timing, sensor and process figures, policy counters, slot records) stay JSON
objects (``JsonObject``): their shape is that component's, and these models
carry them through unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

JsonObject = dict[str, Any]
# Strict validation with a smart union keeps an int an int and a float a float, so the JSON
# types do not change (a plain ``float`` field would turn a configured 5 into 5.0).
Number = int | float


class Reply(BaseModel):
    """Base of every model here: immutable, no unknown keys, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the network sends (unset optional sections left out)."""
        # fallback=str: as the API's json.dumps(default=str) did for a stray non-JSON value.
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, fallback=str)


# ----------------------------------------------------------------------------- modes


class ModeChange(Reply):
    """A mode transition (set_mode, estop, reset_estop)."""

    from_: str = Field(alias="from")
    to: str


class ModeFlags(Reply):
    motion: bool
    record: bool
    inference: bool


class DeadmanStatus(Reply):
    """Supervised autonomy: heartbeat period (None: off), holding the car, heartbeat age."""

    heartbeat_s: Number | None
    holding: bool
    heartbeat_age_s: Number | None


class TaskSummary(Reply):
    """One supervised task, as status() shows it."""

    state: str
    restarts: int
    last_error: str | None


# ----------------------------------------------------------------------------- recording


class RecordingStatus(Reply):
    armed: bool
    fault: JsonObject | None
    recording: bool
    episode_id: str | None
    steps_written: int
    steps_dropped: int
    episodes_committed: int
    episodes_failed: int
    episodes_truncated: int
    last_episode: str | None
    last_error: str | None
    queue_depth: int
    writer: JsonObject
    writer_process: JsonObject


class RecordingCounters(Reply):
    """The recorder's share of stats()."""

    steps_written: int
    steps_dropped: int
    queue_depth: int
    writer_process: JsonObject


# ----------------------------------------------------------------------------- state


class BrainStatus(Reply):
    """Mode, flags, e-stop reason, model, supervisor tasks: cheap."""

    robot_id: str
    robot_kind: str
    software_version: str
    mode: str
    flags: ModeFlags
    estop_reason: str | None
    autopilot: str
    model_version: str | None
    uptime_s: Number
    control_running: bool
    tasks: dict[str, TaskSummary]
    recording: RecordingStatus | None
    deadman: DeadmanStatus


class BrainStats(Reply):
    """Control-loop timing, sensors, safety and policy counters, process figures."""

    control: JsonObject
    sensors: JsonObject
    policy: JsonObject | None
    process: JsonObject
    recording: RecordingCounters | None = None  # absent without a recorder
    sim: JsonObject | None = None  # absent without the simulator


class SimPose(Reply):
    """Where the simulated car is, for the telemetry stream."""

    cte_m: Number | None
    speed_mps: Number | None
    laps: int | None
    on_track: bool | None


class Telemetry(Reply):
    """Small, frequent state for streaming (WebSocket, MQTT)."""

    t: Number
    mode: str
    estop_reason: str | None
    action: list[Number] | None
    neutral: bool | None
    ticks: int
    model_version: str | None
    recording: bool
    deadman_holding: bool
    sim: SimPose | None = None  # absent without the simulator


# ----------------------------------------------------------------------------- episodes


class EpisodeSummary(Reply):
    """One row of list_episodes(); an interrupted episode has only its id and status."""

    episode_id: str
    status: str
    num_steps: int | None = None
    truncated: bool | None = None
    mode: str | None = None
    start_utc: str | None = None
    duration_s: Number | None = None
    model_version: str | None = None
    tags: list[str] | None = None
    exports: list[str | None] | None = None


class EpisodeDeleted(Reply):
    deleted: str


class ExportSummary(Reply):
    """What an export wrote (the dataset directory stays on the robot's side)."""

    format: str
    out_dir: str
    episodes: int
    skipped: list[str]
    splits: dict[str, int]
    up_to_date: bool
    files: int


# ----------------------------------------------------------------------------- training


class TrainingStatus(Reply):
    """The local fine-tune; ``{"available": false}`` alone on a robot without one."""

    available: bool
    enabled: bool | None = None
    state: str | None = None
    run_id: str | None = None
    run_dir: str | None = None
    base: str | None = None
    pid: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: Number | None = None
    elapsed_s: Number | None = None
    eta_s: Number | None = None
    paused: bool | None = None
    pauses: int | None = None
    resource: JsonObject | None = None
    message: str | None = None
    last_result: JsonObject | None = None


# ----------------------------------------------------------------------------- updates


class UpdateStatus(Reply):
    """The OTA updater; ``{"available": false}`` alone on a robot without one."""

    available: bool
    phase: str | None = None
    busy: bool | None = None
    hardware_id: str | None = None
    committed: JsonObject | None = None
    previous: JsonObject | None = None
    candidate: JsonObject | None = None
    release_counter: int | None = None
    failed_versions: list[JsonObject] | None = None
    last_error: str | None = None
    last_result: str | None = None
    repository_url: str | None = None
    boot_notes: list[str] | None = None
    trial_remaining_s: Number | None = None  # only during a trial
    health: JsonObject | None = None  # only once a trial has been judged


class UpdateResult(UpdateStatus):
    """An update operation (check, install, rollback): what happened, then the status."""

    result: str

    @model_serializer(mode="wrap")
    def _result_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The updater has always put "result" before the status keys; keep that order.
        out: dict[str, Any] = handler(self)
        return {"result": out.pop("result"), **out} if "result" in out else out
