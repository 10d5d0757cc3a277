"""Updates and local training: the A/B OTA updater (brain/ota), LoRA fine-tuning (localtrain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from brain.config.base import Strict


class OtaConfig(Strict):
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


class LocalTrainConfig(Strict):
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
