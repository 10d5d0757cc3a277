"""The policy network: encoder -> associative memory -> CMS levels -> action head.

``step`` is one control tick with explicit recurrent state ``(state, memory)``; it is the graph
exported to ONNX (see :mod:`brain.model.export` and ``docs/policy-contract.md``).
``forward_sequence`` runs T ticks for truncated BPTT and equals T calls of ``step``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, BinaryIO, cast

import torch
from torch import Tensor, nn

from .cms import ContinuumMemory, activation_module
from .config import ModelConfig, make_config
from .encoder import ConvEncoder, InputNormalizer
from .memory import AssociativeMemory

CHECKPOINT_FORMAT = "continuon-policy/1"


class ActionHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hdim = cfg.feature_dim, cfg.head_hidden
        self.norm = nn.LayerNorm(d)
        self.net = nn.Sequential(
            nn.Linear(d, hdim),
            activation_module(cfg.activation),
            nn.Linear(hdim, hdim),
            activation_module(cfg.activation),
            nn.Linear(hdim, cfg.action_dim),
        )
        last = cast(nn.Linear, self.net[-1])
        with torch.no_grad():  # start near the neutral action
            last.weight.mul_(0.1)
            last.bias.zero_()
        self.tanh = cfg.action_tanh

    def forward(self, h: Tensor) -> Tensor:
        a = self.net(self.norm(h))
        return torch.tanh(a) if self.tanh else a


class Policy(nn.Module):
    """Build with :func:`build_policy`.  All recurrence is in ``(state, memory)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.inputs = InputNormalizer(config)
        self.encoder = ConvEncoder(config)
        self.memory = AssociativeMemory(config) if config.memory else None
        self.cms = ContinuumMemory(
            config.feature_dim, config.periods, config.cms_hidden_mult, config.activation
        )
        self.action_in: nn.Linear | None = None
        if config.action_feedback and config.cms_action_feedback:
            # previous action -> CMS input; starts as a no-op
            self.action_in = nn.Linear(config.action_dim, config.feature_dim)
            with torch.no_grad():
                self.action_in.weight.zero_()
                self.action_in.bias.zero_()
        self.motion_in: nn.Linear | None = None
        if config.motion_feedback:  # the view's change -> CMS input too; starts as a no-op
            self.motion_in = nn.Linear(config.feature_dim, config.feature_dim)
            with torch.no_grad():
                self.motion_in.weight.zero_()
                self.motion_in.bias.zero_()
        self.head = ActionHead(config)
        self._tick_cycle = float(config.tick_cycle)
        self._layout = config.state_layout()

    # --- state -----------------------------------------------------------------------------------
    def initial_state(
        self, batch_size: int = 1, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Zero ``(state [B, S], memory [B, d_k*d_v])`` -- also what the ONNX runner starts from."""
        if device is None:
            device = next(self.parameters()).device
        cfg = self.config
        return (
            torch.zeros(batch_size, cfg.state_size, device=device),
            torch.zeros(batch_size, cfg.memory_size, device=device),
        )

    def set_memorize(self, lr: float | None = None, threshold: float | None = None) -> None:
        """Evaluation-time memory knobs: lr multiplier (0 = frozen) and surprise threshold.

        Takes effect immediately (and in any ONNX exported afterwards); ``config`` is updated
        so a saved checkpoint carries the setting.  No retraining needed.
        """
        changes: dict[str, Any] = {}
        if lr is not None:
            changes["mem_lr"] = float(lr)
        if threshold is not None:
            changes["mem_threshold"] = float(threshold)
        self.config = dataclasses.replace(self.config, **changes)  # validates
        if self.memory is not None:
            self.memory.lr.fill_(self.config.mem_lr)
            self.memory.threshold.fill_(self.config.mem_threshold)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- computation -----------------------------------------------------------------------------
    def encode(self, images: Tensor, depths: Tensor | None = None) -> Tensor:
        """uint8 [N, H, W, 3] (+ depth [N, H, W]) -> features [N, d]."""
        hw = tuple(images.shape[1:3])
        if hw != tuple(self.config.image_hw):
            raise ValueError(
                f"image is {hw[0]}x{hw[1]} but the model expects {self.config.image_hw}; "
                "resize with brain.model.preprocess_frame"
            )
        features: Tensor = self.encoder(self.inputs(images, depths))
        return features

    def core(
        self, feat: Tensor, state: Tensor, memory: Tensor, mem_lr_scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One recurrent tick on encoded features: (action, state', memory')."""
        lay = self._layout
        tick = state[:, 0:1]
        n_cms = 1 + self.cms.state_size
        prev_action = state[:, lay["prev_action"]] if "prev_action" in lay else None
        prev_feat = state[:, lay["prev_features"]] if "prev_features" in lay else None
        h = feat
        motion = None
        if self.memory is not None:
            if prev_feat is not None:
                motion = self.memory.motion(feat, prev_feat)
            read, memory_out = self.memory(h, memory, prev_action, motion, mem_lr_scale)
            h = h + read
        else:
            memory_out = memory * 0.0  # unused, but kept as graph I/O (contract: X -> X_out)
        if self.action_in is not None:
            h = h + self.action_in(prev_action)
        if self.motion_in is not None:
            h = h + self.motion_in(motion)
        h, cms_state = self.cms(h, tick, state[:, 1:n_cms])
        action = self.head(h)
        tick_out = torch.remainder(tick + 1.0, self._tick_cycle)
        parts = [tick_out, cms_state]
        if prev_action is not None:
            parts.append(action)
        if prev_feat is not None:
            parts.append(feat)
        return action, torch.cat(parts, dim=1), memory_out

    def step(
        self, image: Tensor, state: Tensor, memory: Tensor, depth: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """ONE tick: image uint8 [B, H, W, 3] -> (action [B, A], state' [B, S], memory' [B, M])."""
        return self.core(self.encode(image, depth), state, memory)

    def forward(
        self, image: Tensor, state: Tensor, memory: Tensor, depth: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.step(image, state, memory, depth)

    def forward_sequence(
        self,
        images: Tensor,
        state: Tensor,
        memory: Tensor,
        depths: Tensor | None = None,
        executed_actions: Tensor | None = None,
        mem_lr_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """T ticks: images uint8 [B, T, H, W, 3] -> (actions [B, T, A], state, memory).

        Frames are encoded in one batched conv call; the recurrent core then runs per tick.
        Equal to calling :meth:`step` T times.  Gradients flow through the carried state
        (truncated BPTT: detach the returned state between windows).

        ``executed_actions`` [B, T, A] (only with ``action_feedback``): the actions the robot
        actually executed at each tick (e.g. a demonstration's noisy drive), fed back to the
        next tick instead of the policy's own output (teacher forcing).

        ``mem_lr_scale`` [B]: the memory's learning rate per sample (0 = frozen), so one batch
        can train the policy both with and without its memory written (memory dropout).
        """
        if images.dim() != 5:
            raise ValueError(f"images must be [B, T, H, W, 3], got {tuple(images.shape)}")
        b, t = images.shape[:2]
        flat_depths = None if depths is None else depths.reshape(b * t, *depths.shape[2:])
        feats = self.encode(images.reshape(b * t, *images.shape[2:]), flat_depths)
        feats = feats.view(b, t, -1)
        if executed_actions is not None and not self.config.action_feedback:
            raise ValueError("executed_actions needs a model with action_feedback=True")
        actions = []
        for i in range(t):
            a, state, memory = self.core(feats[:, i], state, memory, mem_lr_scale)
            if executed_actions is not None:
                pa = self._layout["prev_action"]
                executed = executed_actions[:, i].to(state.dtype)
                state = torch.cat([state[:, : pa.start], executed, state[:, pa.stop :]], 1)
            actions.append(a)
        return torch.stack(actions, dim=1), state, memory


def build_policy(preset: str = "pi5", **overrides: Any) -> Policy:
    """A fresh policy from a preset (``pi5``, ``large``) with ModelConfig fields overridden.

    ``build_policy(config=cfg)`` builds from a full :class:`ModelConfig` instead.
    """
    config = overrides.pop("config", None)
    if config is not None:
        if overrides:
            config = dataclasses.replace(config, **overrides)
        return Policy(config)
    return Policy(make_config(preset, **overrides))


def save_policy(policy: Policy, path: str | os.PathLike[str]) -> None:
    """``torch.save({"format", "config": asdict(cfg), "state_dict"})``: plain data, no classes."""
    state_dict = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": policy.config.to_dict(), "state_dict": state_dict},
        os.fspath(path),
    )


def load_policy(
    path: str | os.PathLike[str] | BinaryIO, map_location: str | torch.device = "cpu"
) -> Policy:
    """Inverse of :func:`save_policy` (``torch.load(weights_only=True)``).

    ``path`` may be an open binary file: the local trainer loads the very bytes it hashed.
    """
    src = path if hasattr(path, "read") else os.fspath(path)
    blob = torch.load(src, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    policy = Policy(ModelConfig.from_dict(blob["config"]))
    policy.load_state_dict(blob["state_dict"])
    return policy.to(map_location)
