"""``ModelConfig``: every size and switch of the policy network, plus the presets.

Torch-free on purpose: training/evaluation code can read and write configs (JSON via
``dataclasses.asdict`` / :meth:`ModelConfig.from_dict`) without building a network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

IMAGE_HW: tuple[int, int] = (120, 160)
"""(H, W) of the image the network sees; camera frames are resized to it (INTER_AREA)."""

ENC_NORMS = ("batch", "group", "none")
ACTIVATIONS = ("relu", "silu")
INPUT_NORMS = ("folded", "meanstd")

#: Values of fields added after the first checkpoints were written: a saved config without
#: them is read with these (the architecture it was trained with), not today's defaults.
LEGACY_FIELDS: dict[str, Any] = {"enc_norm": "group", "activation": "silu", "input_norm": "meanstd"}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`brain.model.Policy`.  See ``docs/model.md``."""

    preset: str = "pi5"

    # --- input -------------------------------------------------------------------------------
    image_hw: tuple[int, int] = IMAGE_HW
    depth: bool = False  # 4th input channel from a uint16 depth image in millimetres
    depth_max_m: float = 4.0  # depth is clipped to [0, depth_max_m] metres

    # --- encoder ------------------------------------------------------------------------------
    enc_channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    enc_kernels: tuple[int, ...] = (3, 3, 3, 3, 3)
    enc_strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    # Normalisation after each conv: "batch" (folded into the conv at export: free at run
    # time, and the int8 conv then fuses with its ReLU), "group" (enc_groups groups; stays a
    # separate float op), or "none".
    enc_norm: str = "batch"
    enc_groups: int = 8  # GroupNorm groups (enc_norm="group"); 0 = no normalisation
    # Nonlinearity everywhere (encoder, CMS, head): "relu" quantizes for free (ONNX Runtime
    # folds it into the int8 conv/GEMM output range), "silu" stays float (Sigmoid + Mul).
    activation: str = "relu"
    # "folded": pixels are only scaled by 1/(255*std), and that scale is folded into the
    # first conv's weights (exact, zero padding included) -- no normalisation ops run at all;
    # "meanstd": (pixel/255 - mean)/std as separate ops before the conv (models before 0.2).
    input_norm: str = "folded"
    keypoints: int = 32  # spatial-softmax keypoints (2 coordinates each)
    feature_dim: int = 256  # d: width of the recurrent core

    # --- fast associative memory (gated delta rule) ---------------------------------------------
    memory: bool = True
    mem_key_dim: int = 32  # d_k
    mem_value_dim: int = 64  # d_v
    mem_decay_bias: float = 4.0  # initial bias of the retention gate alpha (sigmoid(4) ~ 0.982)
    mem_lr: float = 1.0  # test-time memorization rate multiplier (0 = memory frozen)
    mem_threshold: float = 0.0  # only write when ||v - M k|| > threshold
    # Feed the previous tick's action (kept at the end of ``state``) into the core: into the
    # memory's q/k/v/gate projections and, through a linear map, the CMS input.  Off by default.
    action_feedback: bool = False
    # With ``action_feedback``: also add the previous action to the CMS input.  Off, only the
    # memory sees the command, so only the memory can set it against how the view moved (a
    # servo-trim estimate).  On, the CMS learns whatever the command tells about the trim and
    # freezing the memory changes nothing (docs/evaluation.md, "What the trained policy infers").
    cms_action_feedback: bool = True
    # Keep the previous tick's encoder features in ``state`` and feed LN(f_t) - LN(f_t-1),
    # how the view moved since the last command (what shows a disturbance in the actuators),
    # into the memory's projections and the CMS input (see docs/model.md).  Off by default.
    motion_feedback: bool = False

    # --- continuum memory system ----------------------------------------------------------------
    cms_levels: int = 3
    cms_periods: tuple[int, ...] = (1, 4, 16)  # level l updates every cms_periods[l] ticks
    cms_hidden_mult: float = 3.0  # hidden width of each level's MLP = mult * d

    # --- action head -----------------------------------------------------------------------------
    head_hidden: int = 256
    action_dim: int = 2
    action_tanh: bool = True
    action_names: tuple[str, ...] | None = ("steering", "throttle")

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"ModelConfig: {msg}")

        if len(self.image_hw) != 2 or min(self.image_hw) < 8:
            raise bad(f"image_hw must be (H, W) >= 8, got {self.image_hw}")
        n = len(self.enc_channels)
        if n == 0 or len(self.enc_kernels) != n or len(self.enc_strides) != n:
            raise bad("enc_channels, enc_kernels and enc_strides must have the same length >= 1")
        for name, value, allowed in (
            ("enc_norm", self.enc_norm, ENC_NORMS),
            ("activation", self.activation, ACTIVATIONS),
            ("input_norm", self.input_norm, INPUT_NORMS),
        ):
            if value not in allowed:
                raise bad(f"{name}={value!r} must be one of {list(allowed)}")
        if self.enc_groups < 0 or (
            self.enc_norm == "group"
            and self.enc_groups
            and any(c % min(self.enc_groups, c) for c in self.enc_channels)
        ):
            raise bad(f"enc_groups={self.enc_groups} must divide every entry of enc_channels")
        if self.feature_dim < 1 or self.keypoints < 0 or self.head_hidden < 1:
            raise bad("feature_dim, head_hidden must be >= 1 and keypoints >= 0")
        if self.mem_key_dim < 1 or self.mem_value_dim < 1:
            raise bad("mem_key_dim and mem_value_dim must be >= 1")
        if self.motion_feedback and not self.memory:
            raise bad("motion_feedback feeds the memory: it needs memory=True")
        if self.mem_lr < 0 or self.mem_threshold < 0:
            raise bad("mem_lr and mem_threshold must be >= 0")
        if self.cms_levels < 0 or len(self.cms_periods) < self.cms_levels:
            raise bad(
                f"cms_levels={self.cms_levels} needs at least that many cms_periods "
                f"(got {self.cms_periods})"
            )
        if any(int(p) != p or p < 1 for p in self.cms_periods):
            raise bad(f"cms_periods must be positive integers, got {self.cms_periods}")
        if self.action_dim < 1:
            raise bad("action_dim must be >= 1")
        if self.action_names is not None and len(self.action_names) != self.action_dim:
            raise bad(
                f"action_names {self.action_names} must have action_dim={self.action_dim} entries "
                "(or be None)"
            )
        if self.depth_max_m <= 0:
            raise bad("depth_max_m must be > 0")

    # --- derived sizes ---------------------------------------------------------------------------
    @property
    def periods(self) -> tuple[int, ...]:
        """Update periods of the active CMS levels."""
        return tuple(int(p) for p in self.cms_periods[: self.cms_levels])

    @property
    def tick_cycle(self) -> int:
        """The tick counter in the state runs modulo this (lcm of the periods): stays exact."""
        return math.lcm(*self.periods) if self.periods else 1

    @property
    def state_size(self) -> int:
        """S: length of the flat ``state`` tensor (tick + per level: accumulator, output
        [+ previous action when ``action_feedback``] [+ previous features when
        ``motion_feedback``])."""
        s = 1 + 2 * self.feature_dim * self.cms_levels
        s += self.action_dim if self.action_feedback else 0
        return s + self.feature_dim if self.motion_feedback else s

    @property
    def memory_size(self) -> int:
        """d_k * d_v: length of the flat ``memory`` tensor (kept even when ``memory`` is off)."""
        return self.mem_key_dim * self.mem_value_dim

    def state_layout(self) -> dict[str, slice]:
        """Named slices of the ``state`` tensor's last dim (see ``docs/model.md``)."""
        d = self.feature_dim
        layout = {"tick": slice(0, 1)}
        off = 1
        for lvl in range(self.cms_levels):
            layout[f"cms{lvl}.acc"] = slice(off, off + d)
            layout[f"cms{lvl}.out"] = slice(off + d, off + 2 * d)
            off += 2 * d
        if self.action_feedback:
            layout["prev_action"] = slice(off, off + self.action_dim)
            off += self.action_dim
        if self.motion_feedback:
            layout["prev_features"] = slice(off, off + d)
        return layout

    # --- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``dataclasses.asdict`` (JSON lists become tuples); unknown keys are errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}")
        kwargs: dict[str, Any] = {k: v for k, v in LEGACY_FIELDS.items() if k not in data}
        for key, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


PRESETS: dict[str, ModelConfig] = {
    # ~1.6 M parameters, ~35 M multiply-adds per step: the on-robot policy (Pi 5 CPU).  Its
    # memory sees the command it gave and how the view moved in answer: the two halves of a
    # servo-trim estimate, what lets it adapt at run time (docs/model.md, "Motion feedback").
    "pi5": ModelConfig(preset="pi5", action_feedback=True, motion_feedback=True),
    # ~10 M parameters: a bigger model for cloud training / distillation experiments.
    "large": ModelConfig(
        preset="large",
        enc_channels=(32, 64, 128, 128, 128),
        keypoints=64,
        feature_dim=512,
        mem_key_dim=64,
        mem_value_dim=128,
        cms_hidden_mult=4.0,
        head_hidden=512,
    ),
    # ~14 k parameters at 48x64: for tests and quick experiments in the sim (it learns to
    # drive the oval in a few minutes on one core), not for the robot.
    "tiny": ModelConfig(
        preset="tiny",
        image_hw=(48, 64),
        enc_channels=(8, 16, 16),
        enc_kernels=(5, 3, 3),
        enc_strides=(2, 2, 2),
        enc_groups=0,
        keypoints=8,
        feature_dim=32,
        mem_key_dim=8,
        mem_value_dim=16,
        cms_levels=1,
        cms_periods=(1,),
        cms_hidden_mult=2.0,
        head_hidden=32,
    ),
}


def make_config(preset: str = "pi5", **overrides: Any) -> ModelConfig:
    """A preset with fields overridden.  Changing ``action_dim`` alone drops the car's names."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r} (known: {sorted(PRESETS)})") from None
    if (
        "action_dim" in overrides
        and "action_names" not in overrides
        and base.action_names is not None
        and len(base.action_names) != overrides["action_dim"]
    ):
        overrides["action_names"] = None
    for key, value in overrides.items():
        if isinstance(value, list):
            overrides[key] = tuple(value)
    return dataclasses.replace(base, **overrides)
