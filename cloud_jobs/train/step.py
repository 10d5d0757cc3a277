"""One optimiser step: the loss, the recurrence recipe, DDP/compile wrapping, the update.

The policy's recurrent ``(state, memory)`` starts each window at ``policy.initial_state``
(zeros, as on the robot when it starts driving), or with ``recurrence.stateful`` where
the slot's previous window of the same episode left it (detached: truncated BPTT);
gradients flow through all T ticks (``forward_sequence``) and the first ``burn_in`` ticks
carry no loss.  ``recurrence.teacher_forcing`` feeds the executed actions back as the
previous action; ``recurrence.memory_dropout`` runs the first slots of every batch with
the memory's learning rate 0.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from cloud_jobs.train.config import LossConfig, TrainConfig
from cloud_jobs.train.dist import Dist
from cloud_jobs.train.errors import TrainingError
from cloud_jobs.train.windows import Batch

if TYPE_CHECKING:
    from brain.model import Policy
    from cloud_jobs.train.optim import Optimizers


def bc_loss(
    pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig, burn_in: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted behaviour-cloning loss over [B, T, A]; returns (loss, weight sum).

    Label entries that are not finite (a step without a usable label) are masked
    out, as are the first ``burn_in`` ticks of every window.  Steering (action 0)
    and throttle (action 1) are weighted by ``cfg.steering_weight`` and
    ``cfg.throttle_weight``; other action dimensions by 1.
    """
    pred = pred.float()
    a = pred.shape[-1]
    w_dims = torch.ones(a, device=pred.device)
    w_dims[0] = cfg.steering_weight
    if a > 1:
        w_dims[1] = cfg.throttle_weight
    mask = torch.isfinite(target)
    tgt = torch.where(mask, target, torch.zeros_like(target))
    if cfg.kind == "mse":
        err = (pred - tgt) ** 2
    else:
        err = F.smooth_l1_loss(pred, tgt, reduction="none", beta=cfg.beta)
    w = mask.to(pred.dtype) * w_dims
    if burn_in:
        w = torch.cat([torch.zeros_like(w[:, :burn_in]), w[:, burn_in:]], dim=1)
    wsum = w.sum()
    return (err * w).sum() / wsum.clamp_min(1e-12), wsum


class SequenceModule(nn.Module):
    """``forward`` = ``policy.forward_sequence``: what DDP and torch.compile wrap."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        executed: torch.Tensor | None = None,
        mem_lr_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.policy.forward_sequence(
            images, state, memory, executed_actions=executed, mem_lr_scale=mem_lr_scale
        )


def check_recurrence(cfg: TrainConfig, policy: Policy) -> int:
    """Refuse recurrence settings the model cannot honour; returns the frozen slots per batch."""
    rec, mc = cfg.recurrence, policy.config
    if rec.teacher_forcing and not mc.action_feedback:
        raise TrainingError(
            "recurrence.teacher_forcing feeds executed actions back, but the model has "
            "action_feedback off (set model.overrides.action_feedback: true)"
        )
    if rec.memory_dropout <= 0:
        return 0
    if not mc.memory:
        raise TrainingError(
            "recurrence.memory_dropout freezes the memory, but the model has none "
            "(model.overrides.memory is false)"
        )
    frozen = round(rec.memory_dropout * cfg.train.batch_size)
    if not 0 < frozen < cfg.train.batch_size:
        raise TrainingError(
            f"recurrence.memory_dropout {rec.memory_dropout} of train.batch_size "
            f"{cfg.train.batch_size} freezes {frozen} window(s) per batch; it must be at "
            "least one and leave at least one memorizing"
        )
    return frozen


def autocast(dist: Dist, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dist.kind, dtype=torch.bfloat16)


def wrap(policy: Policy, cfg: TrainConfig, dist: Dist) -> tuple[nn.Module, nn.Module, bool]:
    """(the module to train through, its eager fallback, whether it is compiled):
    DDP over a process group, then torch.compile if asked."""
    seq: nn.Module = SequenceModule(policy)
    if dist.uses_pg:
        from torch.nn.parallel import DistributedDataParallel as DDP

        seq = DDP(
            seq,
            device_ids=[dist.device.index] if dist.kind == "cuda" else None,
            find_unused_parameters=cfg.distributed.find_unused_parameters,
        )
    eager = seq
    if cfg.compile:
        try:
            return cast(nn.Module, torch.compile(seq)), eager, True
        except Exception as e:  # pragma: no cover - depends on the toolchain
            warnings.warn(f"torch.compile failed ({e}); training eagerly", stacklevel=1)
    return seq, eager, False


class Stepper:
    """Runs optimiser steps on batches; owns the carried state of stateful TBPTT."""

    def __init__(
        self, cfg: TrainConfig, dist: Dist, policy: Policy, opts: Optimizers, frozen_slots: int
    ) -> None:
        self.cfg, self.dist, self.policy, self.opts = cfg, dist, policy, opts
        self.seq, self.eager, self.compiled = wrap(policy, cfg, dist)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        # Memory dropout: the first `frozen_slots` windows of every batch run frozen (with
        # `stateful` always the same slots, so a slot's memory is frozen its whole life).
        self.mem_lr_scale: torch.Tensor | None = None
        if frozen_slots:
            scale = torch.ones(cfg.train.batch_size)
            scale[:frozen_slots] = 0.0
            self.mem_lr_scale = scale.to(dist.device)

    def initial_carry(self) -> dict[str, torch.Tensor]:
        state, memory = self.policy.initial_state(self.cfg.train.batch_size, device="cpu")
        return {"state": state.float(), "memory": memory.float()}

    def inputs(
        self, batch: Batch, carry: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, ...] | tuple[Any, ...]:
        dev = self.dist.device
        frames = batch.frames.to(dev, non_blocking=True)
        executed = None
        if self.cfg.recurrence.teacher_forcing:
            executed = batch.executed.to(dev, non_blocking=True)
        state, memory = self.policy.initial_state(frames.shape[0], device=dev)
        if carry is not None:  # stateful: continue each slot unless its episode visit starts
            keep = ~batch.fresh.to(dev).unsqueeze(1)
            state = torch.where(keep, carry["state"].to(dev, state.dtype), state)
            memory = torch.where(keep, carry["memory"].to(dev, memory.dtype), memory)
        return frames, state, memory, executed, self.mem_lr_scale

    def forward(self, inputs: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
        try:
            with autocast(self.dist, self.cfg.precision):
                return cast(tuple[torch.Tensor, ...], self.seq(*inputs))
        except Exception as e:
            if not self.compiled:
                raise
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {e}); training eagerly", stacklevel=1
            )
            self.seq, self.compiled = self.eager, False
            with autocast(self.dist, self.cfg.precision):
                return cast(tuple[torch.Tensor, ...], self.seq(*inputs))

    def __call__(
        self, batch: Batch, carry: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """(loss, grad norm, the carry for the next batch).  Nothing is read back to the host."""
        pred, state, memory = self.forward(self.inputs(batch, carry))
        if carry is not None:
            carry = {"state": state.detach().float(), "memory": memory.detach().float()}
        labels = batch.labels.to(self.dist.device, non_blocking=True)
        loss, _ = bc_loss(pred, labels, self.cfg.loss, self.cfg.train.burn_in)
        opts, dist = self.opts, self.dist
        opts.zero_grad()
        loss.backward()
        if dist.kind == "xla":
            if dist.world > 1:
                for o in opts.optimizers:
                    dist.xm.reduce_gradients(o)
            gn = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            opts.step()
            import torch_xla

            torch_xla.sync() if hasattr(torch_xla, "sync") else dist.xm.mark_step()
        else:
            gn = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            opts.step()
        opts.schedule_step()
        return loss, gn, carry
