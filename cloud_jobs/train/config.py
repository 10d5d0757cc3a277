"""The training configuration: one YAML file, checked against a strict schema.

Every key is checked (unknown keys are errors, values are range-checked) and an
error names the file, the line, the key, the value and what was expected, so a
typo is found before an hour of compute is spent.  The reference for every key
is ``docs/training.md``; ``configs/train/*.yaml`` are worked examples.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from brain.yaml_config import load_model_file, parse_model

_PosInt = Annotated[int, Field(ge=1)]


class TrainConfigError(ValueError):
    """A training configuration could not be used; ``str()`` is meant for a person."""

    def __init__(self, source: str | os.PathLike[str], problems: list[str]) -> None:
        self.source = str(source)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid training configuration {self.source}:\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ----------------------------------------------------------------------------- data


class DataSource(_Strict):
    """One place episodes come from: a native episode root, or a TFDS (RLDS) export."""

    path: str
    #: ``auto``: a directory with ``dataset_info.json`` is a TFDS export, else an episode root.
    format: Literal["auto", "episodes", "tfds"] = "auto"
    #: TFDS exports only: which of its splits to read (default: all of them).
    splits: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]] | None = None
    #: ``auto``: the ``holdout`` rules decide; ``train``/``val``: every episode of this source.
    role: Literal["auto", "train", "val"] = "auto"


class HoldoutConfig(_Strict):
    """Which episodes are held out for validation (``role: auto`` sources only).

    An episode is held out if its ``sim.track`` metadata is in ``tracks`` (hold out
    whole layouts, to measure generalisation to unseen tracks), or its id is in
    ``episodes``.  ``fraction`` then holds out that share of the remaining
    episodes, chosen by a seeded hash of their ids (stable when episodes are added).
    """

    tracks: list[str] = []
    episodes: list[str] = []
    fraction: Annotated[float, Field(ge=0.0, le=0.9)] = 0.0


class DataConfig(_Strict):
    sources: Annotated[list[DataSource], Field(min_length=1)]
    holdout: HoldoutConfig = HoldoutConfig()
    #: Which action is the behaviour-cloning label: the step's ``action`` (the demo
    #: recorder stores the expert's clean action there; teleop recordings the driver's
    #: command after the safety layer), or ``extra["expert_action"]`` (the sim expert's
    #: nominal command; steps without it fall back to ``action``).
    label: Literal["action", "expert_action"] = "action"
    #: Centred moving average of the labels over this many steps (odd; 1 = off).
    label_smoothing: Annotated[int, Field(ge=1, le=31)] = 1
    #: Decoded-frame cache (default ``<run_dir>/cache``); shared between runs if set.
    cache_dir: str | None = None
    #: Threads decoding JPEGs while the cache is built.
    decode_threads: Annotated[int, Field(ge=1, le=64)] = 2
    #: DataLoader worker processes (0 = windows are assembled in the training process).
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    prefetch_factor: Annotated[int, Field(ge=1, le=64)] = 2
    #: Use at most this many episodes (after sorting; handy for smoke runs).
    max_episodes: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _odd_smoothing(self) -> DataConfig:
        if self.label_smoothing % 2 == 0:
            raise ValueError(f"label_smoothing must be odd (centred), got {self.label_smoothing}")
        return self


class AugmentConfig(_Strict):
    """Photometric and geometric jitter, drawn once per window (every frame alike)."""

    enabled: bool = True
    #: Brightness gain drawn from [1 - b, 1 + b].
    brightness: Annotated[float, Field(ge=0.0, le=0.9)] = 0.2
    #: Contrast gain around the window's mean drawn from [1 - c, 1 + c].
    contrast: Annotated[float, Field(ge=0.0, le=0.9)] = 0.2
    #: Vertical translation by up to this many pixels (edge pixels repeated): pitch, bumps.
    shift_px: Annotated[int, Field(ge=0, le=32)] = 4
    #: Sideways translation, default none: it looks like the car pointing another way but
    #: keeps the steering label, i.e. it teaches the policy to ignore exactly the lateral
    #: offset lane keeping has to see.  Dropping it (it was +-4 px) cut the closed-loop
    #: mean |cross-track error| from 2.6-3.0x the expert's to 1.3-1.5x (docs/evaluation.md).
    shift_x_px: Annotated[int, Field(ge=0, le=32)] = 0


# ----------------------------------------------------------------------------- model


class ModelSection(_Strict):
    preset: str = "pi5"
    #: ``ModelConfig`` fields that differ from the preset.
    overrides: dict[str, Any] = {}


# ----------------------------------------------------------------------------- optimisation


class MuonConfig(_Strict):
    #: Muon's learning rate; default: ``optim.lr`` (with ``adjust_lr: match_rms_adamw``
    #: Muon's updates have AdamW's RMS, so one learning rate serves both).
    lr: Annotated[float, Field(gt=0, le=10)] | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.95
    nesterov: bool = True
    ns_steps: Annotated[int, Field(ge=1, le=20)] = 5
    adjust_lr: Literal["original", "match_rms_adamw"] = "match_rms_adamw"


class OptimConfig(_Strict):
    #: ``adamw`` for every parameter, or ``muon`` for the 2-D weight matrices of hidden
    #: layers and AdamW for the rest (biases, norms, embeddings, convolutions, the head).
    name: Literal["adamw", "muon"] = "adamw"
    lr: Annotated[float, Field(gt=0, le=10)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.01
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: Annotated[float, Field(gt=0, le=1)] = 1e-8
    #: Fused AdamW kernel: null = when the device has one.
    fused: bool | None = None
    muon: MuonConfig = MuonConfig()
    #: Linear warm-up from 0, then cosine decay to ``lr * min_lr_ratio`` at the last step.
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    #: Clip the global gradient norm (null = no clipping; the norm is logged either way).
    grad_clip: Annotated[float, Field(gt=0)] | None = 1.0


class LossConfig(_Strict):
    kind: Literal["mse", "smooth_l1"] = "smooth_l1"
    #: Smooth-L1 switches from quadratic to linear at this error.
    beta: Annotated[float, Field(gt=0, le=10)] = 0.1
    steering_weight: Annotated[float, Field(ge=0)] = 2.0
    throttle_weight: Annotated[float, Field(ge=0)] = 1.0


# ----------------------------------------------------------------------------- loop


class LoopConfig(_Strict):
    #: Windows per optimiser step and process (the global batch is this x world size).
    batch_size: _PosInt = 16
    #: Window length T: steps of truncated back-propagation through time.
    window: Annotated[int, Field(ge=1, le=4096)] = 16
    #: Distance between the starts of consecutive windows of an episode.
    stride: _PosInt = 8
    #: The first ``burn_in`` steps of a window only warm the recurrent state (no loss).
    burn_in: Annotated[int, Field(ge=0)] = 0
    #: Length of the run: exactly one of ``steps`` (optimiser steps) or ``epochs``.
    steps: _PosInt | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None
    log_every: _PosInt = 10
    #: Validation every this many steps (and at the end); null = only at the end.
    eval_every: _PosInt | None = 200
    #: Validation uses at most this many non-overlapping windows (evenly spread).
    eval_windows: _PosInt = 256
    checkpoint_every: _PosInt = 500
    #: ``step-XXXXXXXX.pt`` files kept (``last.pt`` and ``best.pt`` are always kept).
    keep_checkpoints: Annotated[int, Field(ge=0)] = 3
    #: Wall-clock budget; the run stops cleanly with a checkpoint (``--max-minutes``).
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    progress: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.steps and train.epochs")
        if self.burn_in >= self.window:
            raise ValueError(
                f"burn_in ({self.burn_in}) must be smaller than window ({self.window})"
            )
        return self


class RecurrenceConfig(_Strict):
    """How the recurrent state and the memory are trained (docs/model.md, "Test-time
    memorization"): what a policy needs to adapt at run time, e.g. to a mis-trimmed servo."""

    #: Stateful truncated BPTT: each batch slot walks an episode window after window
    #: (``train.stride`` is then ``train.window``) and carries its detached state and memory
    #: into the next window, so the memory is trained at the ages it reaches on the road.
    #: Off: every window starts from the zero state.
    stateful: bool = False
    #: Feed the action the robot executed (``extra["executed_action"]``, else the step's
    #: ``action``) back as the previous action instead of the policy's own output.
    #: Needs a model with ``action_feedback``.
    teacher_forcing: bool = False
    #: This fraction of every batch's windows runs with the memory frozen (its learning
    #: rate 0), so the policy also learns to drive without it and "frozen" at evaluation is
    #: a trained condition.  Needs a model with ``memory``.
    memory_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class DistributedConfig(_Strict):
    #: ``auto``: nccl on CUDA, gloo otherwise (env ``CONTINUON_DIST_BACKEND`` overrides).
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    find_unused_parameters: bool = False
    timeout_s: Annotated[float, Field(gt=0)] = 1800.0


class TrainConfig(_Strict):
    #: Name of the run (default run directory ``runs/<name>``).
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "train"
    run_dir: str | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    device: Literal["auto", "cpu", "cuda", "xla"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    #: torch intra-op threads per process (null = torch's default).
    threads: Annotated[int, Field(ge=1, le=512)] | None = None
    data: DataConfig
    model: ModelSection = ModelSection()
    train: LoopConfig
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    recurrence: RecurrenceConfig = RecurrenceConfig()
    distributed: DistributedConfig = DistributedConfig()

    def with_updates(self, **sections: dict[str, Any]) -> TrainConfig:
        """A copy with some keys of some sections replaced (validated again)."""
        raw = self.model_dump(mode="json")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return TrainConfig.model_validate(raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- loading


def parse_train_config(raw: Any, source: str = "<config>", text: str | None = None) -> TrainConfig:
    """Validate already-loaded YAML data; ``text`` lets errors carry line numbers."""
    if raw is None:
        raise TrainConfigError(source, ["the file is empty; a training config needs sections"])
    return parse_model(TrainConfig, raw, error=TrainConfigError, source=source, text=text)


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and validate a training YAML file; ``TrainConfigError`` says what is wrong.

    Relative ``data.sources[].path``, ``data.cache_dir`` and ``run_dir`` are kept
    as written: they are resolved against the working directory when used.
    """
    return load_model_file(TrainConfig, path, error=TrainConfigError)
