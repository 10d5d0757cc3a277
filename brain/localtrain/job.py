"""What one fine-tune run is told to do: every setting resolved, written to ``job.json``.

The manager (torch-free, in the daemon or the CLI) builds a :class:`TrainJob` from the
robot's config and the start options and hands its path to the worker subprocess; the
run directory then holds everything the run did (``docs/local-training.md``)::

    <work_dir>/runs/<run_id>/job.json          this file
                             progress.ndjson   every event the worker emitted
                             checkpoint.pt     latest checkpoint (resume continues from it)
                             adapter/          peft adapter: adapter_config.json + safetensors
                             gate.json         the promotion gate's metrics and decision
                             export/           merged policy.onnx (+ policy_int8.onnx)
                             result.json       the run's outcome
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.durable import write_json

# Module-name suffixes peft matches (``key == t`` or ``key.endswith("." + t)``): the
# encoder's projection and everything after it -- the part a changed scene re-maps.
CORE_TARGETS: tuple[str, ...] = (
    "encoder.proj",
    "memory.qkv",
    "memory.gates",
    "memory.out",
    "fc1",
    "fc2",
    "head.net.0",
    "head.net.2",
    "head.net.4",
)

# Exit codes of the worker (besides 0 = finished).
EXIT_ERROR = 1
EXIT_BAD_JOB = 2
EXIT_STOPPED = 3

RUN_FILES = {
    "job": "job.json",
    "progress": "progress.ndjson",
    "checkpoint": "checkpoint.pt",
    "adapter": "adapter",
    "gate": "gate.json",
    "export": "export",
    "result": "result.json",
}


@dataclass
class GateSettings:
    max_action_change: float = 0.25
    min_improvement: float = 0.0
    closed_loop: bool = True
    closed_loop_steps: int = 600
    # SimConfig fields of the robot's simulated world (None: not the simulated robot).
    sim: dict[str, Any] | None = None
    rate_hz: float = 20.0


@dataclass
class TrainJob:
    run_dir: str
    base_model: str
    episodes_root: str
    cache_dir: str
    batch_size: int = 8
    steps: int = 300
    max_seconds: float = 300.0
    shuffle_buffer: int = 16
    window: int = 16
    label: str = "action"
    lr: float = 3.0e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(CORE_TARGETS))
    holdout_fraction: float = 0.2
    min_episodes: int = 16
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 1
    nice: int = 10
    gate: GateSettings = field(default_factory=GateSettings)
    export: bool = True  # merge + ONNX (+ INT8) when the gate accepts
    version: str = "local"
    robot_id: str = "continuon"
    # The committed cloud bundle this run derives from (brain.localtrain.base): the worker
    # refuses weights whose sha256 is not base_sha256, promotion refuses a run whose pins
    # are not the bundle committed when it is packed.  None: a job.json from before pinning.
    base_sha256: str | None = None
    base_version: str | None = None
    base_manifest_sha256: str | None = None

    def path(self, name: str) -> Path:
        return Path(self.run_dir) / RUN_FILES[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"job: unknown keys {unknown}")
        d = dict(data)
        d["gate"] = GateSettings(**(d.get("gate") or {}))
        return cls(**d)

    def write(self) -> Path:
        p = self.path("job")
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json(p, self.to_dict(), indent=1)
        return p

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> TrainJob:
        return cls.from_dict(json.loads(Path(path).read_text()))


def resolve_base_model(config: Any) -> Path:
    """The torch checkpoint to fine-tune: ``local_train.base_model``, else ``policy.pt`` beside
    the configured ONNX model, else ``<work_dir>/base.pt``."""
    lt = config.local_train
    if lt.base_model is not None:
        return Path(lt.base_model)
    if config.policy.model is not None:
        beside = Path(config.policy.model).parent / "policy.pt"
        if beside.is_file():
            return beside
    return Path(config.localtrain_dir()) / "base.pt"


def job_from_config(
    config: Any, run_dir: Path, options: Any, base: Any, base_path: Path
) -> TrainJob:
    """Resolve a job from the robot config, the validated ``options`` (StartOptions) and the
    committed ``base`` (CommittedBase) whose hash-checked weights are at ``base_path``."""
    lt = config.local_train
    targets = lt.target_modules
    batch = lt.batch_size
    return TrainJob(
        run_dir=str(run_dir),
        base_model=str(base_path),
        episodes_root=str(config.episodes_dir()),
        cache_dir=str(config.localtrain_dir() / "cache"),
        batch_size=batch,
        steps=options.steps if options.steps is not None else lt.steps,
        max_seconds=options.max_seconds if options.max_seconds is not None else lt.max_seconds,
        shuffle_buffer=lt.shuffle_buffer or 2 * batch,
        window=lt.window,
        label=lt.label,
        lr=lt.lr,
        lora_rank=lt.lora_rank,
        lora_alpha=lt.lora_alpha,
        lora_dropout=lt.lora_dropout,
        target_modules=list(CORE_TARGETS if targets == "core" else targets),
        holdout_fraction=lt.holdout_fraction,
        min_episodes=lt.min_episodes,
        checkpoint_every=lt.checkpoint_every,
        seed=lt.seed,
        threads=lt.threads,
        nice=lt.nice,
        gate=GateSettings(
            max_action_change=lt.gate_max_action_change,
            min_improvement=lt.gate_min_improvement,
            closed_loop=lt.gate_closed_loop and config.uses_sim,
            closed_loop_steps=lt.gate_closed_loop_steps,
            sim=config.sim.model_dump(mode="json") if config.uses_sim else None,
            rate_hz=config.control.rate_hz,
        ),
        robot_id=config.robot.id,
        base_sha256=base.checkpoint_sha256,
        base_version=base.version,
        base_manifest_sha256=base.manifest_sha256,
    )
