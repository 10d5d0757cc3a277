"""Optimisers and the learning-rate schedule.

``adamw``: one AdamW over every parameter (the fused kernel where the device has
one).  Weight decay applies to matrices and convolution kernels only, never to
biases, norm scales or embeddings.

``muon``: ``torch.optim.Muon`` (momentum + Newton-Schulz orthogonalisation) for the
2-D weight matrices of *hidden* layers, AdamW for the rest.  "The rest" is:
biases and norm parameters (1-D), embeddings, every convolution kernel (Muon in
torch takes 2-D parameters only; that includes the first conv, which sees raw
pixels), the action head (``head.*``: its output layer must not be orthogonalised)
and matrices with a side smaller than ``MUON_MIN_DIM`` (e.g. a d->2 gate, which
is an output layer in all but name).

The schedule is linear warm-up from 0 to the peak learning rate over
``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at the last step; one
``LambdaLR`` per optimiser, stepped once per optimiser step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cloud_jobs.train.config import OptimConfig

MUON_MIN_DIM = 16
#: Top-level submodules whose parameters always go to AdamW under ``muon``.
ADAMW_ONLY_PREFIXES = ("head.",)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimiser step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _no_decay(name: str, p: nn.Parameter, module: nn.Module) -> bool:
    return p.ndim < 2 or isinstance(module, nn.Embedding | nn.EmbeddingBag)


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters by group: ``muon`` candidates, ``decay`` and ``no_decay`` (AdamW)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "decay": [], "no_decay": []}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mname}.{pname}" if mname else pname
            if _no_decay(name, p, module):
                groups["no_decay"].append((name, p))
            elif (
                p.ndim == 2
                and isinstance(module, nn.Linear)
                and min(p.shape) >= MUON_MIN_DIM
                and not name.startswith(ADAMW_ONLY_PREFIXES)
            ):
                groups["muon"].append((name, p))
            else:
                groups["decay"].append((name, p))
    return groups


@dataclass
class Optimizers:
    """One or two optimisers stepped together, each with its own schedule."""

    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    names: list[str]
    param_names: dict[str, list[str]]

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def schedule_step(self) -> None:
        for s in self.schedulers:
            s.step()

    @property
    def lr(self) -> float:
        """Current learning rate of the first (AdamW) optimiser's first group."""
        return float(self.optimizers[0].param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("names") != self.names:
            raise ValueError(
                f"checkpoint has optimisers {sd.get('names')}, this run uses {self.names}"
            )
        for o, s in zip(self.optimizers, sd["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, sd["schedulers"], strict=True):
            sch.load_state_dict(s)


def build_optimizers(
    model: nn.Module, cfg: OptimConfig, total_steps: int, device: torch.device
) -> Optimizers:
    groups = split_params(model)
    fused = cfg.fused
    if fused is None:
        fused = device.type in ("cpu", "cuda")
    adam_kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps}
    if fused:
        adam_kwargs["fused"] = True
    decay = groups["decay"]
    if cfg.name == "adamw":
        decay = decay + groups["muon"]
    adam_groups = [
        {"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in groups["no_decay"]], "weight_decay": 0.0},
    ]
    adam_groups = [g for g in adam_groups if g["params"]]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(adam_groups, **adam_kwargs)]
    names = ["adamw"]
    param_names = {
        "adamw": [n for n, _ in decay] + [n for n, _ in groups["no_decay"]],
    }
    if cfg.name == "muon" and groups["muon"]:
        m = cfg.muon
        opts.append(
            torch.optim.Muon(
                [p for _, p in groups["muon"]],
                lr=m.lr if m.lr is not None else cfg.lr,
                weight_decay=cfg.weight_decay,
                momentum=m.momentum,
                nesterov=m.nesterov,
                ns_steps=m.ns_steps,
                adjust_lr_fn=m.adjust_lr,
            )
        )
        names.append("muon")
        param_names["muon"] = [n for n, _ in groups["muon"]]

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in opts]
    return Optimizers(opts, scheds, names, param_names)
