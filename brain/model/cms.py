"""Continuum Memory System: MLP levels refreshed at different periods, as explicit state.

Level l (period p_l) keeps two d-vectors in the flat state: an accumulator ``acc`` (running
sum of its inputs since its last update) and its held output ``out``.  Each tick::

    u      = level input (the residual stream after the levels before it)
    acc   += u
    if tick % p_l == p_l - 1:     # as an arithmetic 0/1 mask, no data-dependent control flow
        out = MLP_l(acc / p_l)    # the chunk mean
        acc = 0
    stream = u + out

So level 0 (p = 1) is an ordinary residual MLP, and slower levels summarise longer windows
and hold that summary between updates: lower frequency, longer context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def activation_module(name: str) -> nn.Module:
    """``ModelConfig.activation`` as a module (``"relu"`` or ``"silu"``)."""
    return nn.ReLU() if name == "relu" else nn.SiLU()


class CMSLevel(nn.Module):
    def __init__(self, d: int, hidden: int, activation: str = "silu"):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.act = activation_module(activation)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(self.norm(x))))
        return out


class ContinuumMemory(nn.Module):
    def __init__(
        self, d: int, periods: tuple[int, ...], hidden_mult: float, activation: str = "silu"
    ):
        super().__init__()
        self.d = d
        self.periods = tuple(int(p) for p in periods)
        hidden = max(1, round(hidden_mult * d))
        self.levels = nn.ModuleList(CMSLevel(d, hidden, activation) for _ in self.periods)

    @property
    def state_size(self) -> int:
        return 2 * self.d * len(self.periods)

    def forward(self, h: Tensor, tick: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """h [B, d], tick [B, 1] (float, integral), state [B, 2*d*L] -> (h', state')."""
        d = self.d
        new_state: list[Tensor] = []
        for i, (level, p) in enumerate(zip(self.levels, self.periods, strict=True)):
            off = 2 * d * i
            acc = state[:, off : off + d] + h
            out = state[:, off + d : off + 2 * d]
            if p == 1:  # static: updates every tick
                out = level(acc)
                acc = torch.zeros_like(acc)
            else:
                upd = (torch.remainder(tick, float(p)) == float(p - 1)).to(h.dtype)  # [B, 1]
                out = upd * level(acc * (1.0 / p)) + (1.0 - upd) * out
                acc = (1.0 - upd) * acc
            new_state += [acc, out]
            h = h + out
        if not new_state:
            return h, state
        return h, torch.cat(new_state, dim=1)
