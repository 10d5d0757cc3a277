"""Validation: the behaviour-cloning loss and the per-action errors on held-out windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cloud_jobs.train import windows as W
from cloud_jobs.train.config import TrainConfig
from cloud_jobs.train.dist import Dist
from cloud_jobs.train.step import autocast, bc_loss

if TYPE_CHECKING:
    from brain.model import Policy


@torch.no_grad()
def evaluate(
    policy: Policy,
    windows: W.WindowSet,
    ids: list[int],
    cfg: TrainConfig,
    dist: Dist,
) -> dict[str, float]:
    """Validation over ``ids`` (sharded over ranks, summed over all of them).

    Every window starts from the zero state with the memory written (the condition the
    robot drives in); with ``recurrence.teacher_forcing`` the executed actions are fed
    back, as in training.
    """
    was_training = policy.training
    policy.eval()
    mine = ids[dist.rank :: dist.world]
    dtype = torch.float32 if dist.kind == "xla" else torch.float64
    sums = torch.zeros(5, dtype=dtype, device=dist.device)  # loss*w, w, |e_s|, |e_t|, count
    bs = cfg.train.batch_size
    for i in range(0, len(mine), bs):
        batch = W.collate([(*windows.get(w), True) for w in mine[i : i + bs]])
        frames = batch.frames.to(dist.device)
        labels = batch.labels.to(dist.device)
        executed = batch.executed.to(dist.device) if cfg.recurrence.teacher_forcing else None
        state, memory = policy.initial_state(len(frames), device=dist.device)
        with autocast(dist, cfg.precision):
            pred, _, _ = policy.forward_sequence(frames, state, memory, executed_actions=executed)
        loss, wsum = bc_loss(pred, labels, cfg.loss, cfg.train.burn_in)
        err = (pred.float() - labels).abs()
        ok = torch.isfinite(err)
        err = torch.where(ok, err, torch.zeros_like(err))
        thr = err[..., 1].sum() if err.shape[-1] > 1 else torch.zeros((), device=err.device)
        part = [loss * wsum, wsum, err[..., 0].sum(), thr, ok[..., 0].sum()]
        sums += torch.stack([x.to(dtype) for x in part])
    total = dist.all_reduce_sum(sums).cpu().double()
    if was_training:
        policy.train()
    if total[1] <= 0:
        return {}
    return {
        "val_loss": float(total[0] / total[1]),
        "val_steering_mae": float(total[2] / max(1.0, float(total[4]))),
        "val_throttle_mae": float(total[3] / max(1.0, float(total[4]))),
        "val_windows": len(ids),
    }
