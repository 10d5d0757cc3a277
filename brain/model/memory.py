"""Fast associative memory written by a gated delta rule inside the forward pass.

Per sample, a matrix ``M`` (d_v x d_k) maps keys to values.  Each tick::

    e_t   = v_t - M k_t                       (prediction error, "surprise" = ||e_t||)
    g_t   = [ ||e_t|| > threshold ]           (surprise gate, 0/1)
    a_t   = 1 - lr * g_t * (1 - alpha_t)      (retention; alpha_t = sigmoid(.) from the input)
    b_t   = min(lr * beta_t, 1) * g_t         (write strength; beta_t = sigmoid(.) from the input)
    M    <- a_t * M + b_t * e_t k_t^T
    o_t   = M q_t                              (read after the write)

with k_t, q_t L2-normalised, so with alpha = beta = 1 one write makes ``M k = v`` exactly.
``lr`` and ``threshold`` are buffers, settable at evaluation time without retraining:
``lr = 0`` freezes the memory (no write, no decay); a threshold only lets surprising
inputs change it.  This running update *is* the test-time memorization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


def delta_rule_update(
    mem: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    lr: Tensor | float = 1.0,
    threshold: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor]:
    """One gated delta-rule write.

    mem [B, d_v, d_k]; k [B, d_k] (unit norm); v [B, d_v]; alpha, beta [B, 1] in (0, 1).
    Returns (new mem, surprise ||v - M k|| [B, 1]).
    """
    pred = torch.matmul(mem, k.unsqueeze(-1)).squeeze(-1)  # [B, d_v]
    err = v - pred
    surprise = torch.sqrt((err * err).sum(dim=-1, keepdim=True))
    gate = (surprise > threshold).to(mem.dtype)
    retain = 1.0 - torch.clamp(lr * (1.0 - alpha), 0.0, 1.0) * gate  # [B, 1]
    write = torch.clamp(lr * beta, 0.0, 1.0) * gate  # [B, 1]
    new = retain.unsqueeze(-1) * mem + (write * err).unsqueeze(-1) * k.unsqueeze(1)
    return new, surprise


def memory_read(mem: Tensor, q: Tensor) -> Tensor:
    """o = M q: mem [B, d_v, d_k], q [B, d_k] -> [B, d_v]."""
    return torch.matmul(mem, q.unsqueeze(-1)).squeeze(-1)


class AssociativeMemory(nn.Module):
    """Projections for q, k, v, alpha, beta and the read-out; state is the flat ``memory``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, dk, dv = cfg.feature_dim, cfg.mem_key_dim, cfg.mem_value_dim
        self.dk, self.dv = dk, dv
        self.norm = nn.LayerNorm(d)
        # Appended to LN(h): the previous action, and the view's change since the last tick.
        extra = cfg.action_dim if cfg.action_feedback else 0
        extra += d if cfg.motion_feedback else 0
        self.qkv = nn.Linear(d + extra, 2 * dk + dv)
        self.gates = nn.Linear(d + extra, 2)  # alpha (retention), beta (write strength) logits
        with torch.no_grad():
            self.gates.weight.mul_(0.1)
            self.gates.bias.copy_(torch.tensor([cfg.mem_decay_bias, 0.0]))
        self.out = nn.Linear(dv, d)
        # Evaluation-time knobs (not learned, not saved: they come from the config).
        self.lr: Tensor
        self.threshold: Tensor
        self.register_buffer("lr", torch.tensor(float(cfg.mem_lr)), persistent=False)
        self.register_buffer("threshold", torch.tensor(float(cfg.mem_threshold)), persistent=False)

    def forward(
        self,
        h: Tensor,
        memory: Tensor,
        prev_action: Tensor | None = None,
        motion: Tensor | None = None,
        lr_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """h [B, d], memory [B, d_k*d_v] (+ prev_action [B, A] with ``action_feedback``,
        + ``motion(h, previous h)`` [B, d] with ``motion_feedback``)
        -> (read-out [B, d], new memory [B, d_k*d_v]).

        ``lr_scale`` [B] multiplies ``lr`` per sample: training with some samples frozen
        (memory dropout) in the same batch as memorizing ones."""
        b = h.shape[0]
        x = self.norm(h)
        parts = [x]
        if prev_action is not None:
            parts.append(prev_action)
        if motion is not None:
            parts.append(motion)
        if len(parts) > 1:
            x = torch.cat(parts, dim=-1)
        q, k, v = torch.split(self.qkv(x), [self.dk, self.dk, self.dv], dim=-1)
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        g = torch.sigmoid(self.gates(x))
        alpha, beta = g[:, 0:1], g[:, 1:2]
        mem = memory.view(b, self.dv, self.dk)
        lr = self.lr if lr_scale is None else self.lr * lr_scale.to(h.dtype).unsqueeze(-1)
        mem, _ = delta_rule_update(mem, k, v, alpha, beta, lr, self.threshold)
        read = memory_read(mem, q)
        return self.out(read), mem.reshape(b, self.dv * self.dk)

    def motion(self, h: Tensor, prev_h: Tensor) -> Tensor:
        """LN(h_t) - LN(h_t-1): how the view moved since the previous tick."""
        moved: Tensor = self.norm(h) - self.norm(prev_h)
        return moved
