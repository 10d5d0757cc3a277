"""Checkpoints: everything that decides what a run does next, saved and restored exactly.

A checkpoint holds the weights, the optimiser and scheduler states, every global RNG
state, the step (the data sampler's position is a function of it) and, for stateful
truncated BPTT, every rank's carried ``(state, memory)`` per batch slot; so ``--resume``
continues exactly where the run stopped.  Loaded with ``weights_only=True``: plain data.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cloud_jobs.train.errors import TrainingError
from common.durable import replace_file, replacing

if TYPE_CHECKING:
    from brain.model import Policy
    from cloud_jobs.train.dist import Dist
    from cloud_jobs.train.optim import Optimizers

CHECKPOINT_FORMAT = "continuon-train-checkpoint/1"


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors/lists (loadable with ``weights_only=True``)."""
    np_state: Any = np.random.get_state()  # ("MT19937", keys, pos, has_gauss, gauss)
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )  # fmt: skip
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count: keep the fresh state
            torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- files


def atomic_torch_save(obj: Any, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def atomic_write(path: Path, text: str) -> None:
    replace_file(path, text.encode("utf-8"))


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def param_checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path}: cannot load the checkpoint: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return blob


# --------------------------------------------------------------------------- the run's state


@dataclass
class RunState:
    """What changes as a run goes (and is saved with it)."""

    step: int = 0
    best_val: float | None = None
    samples: int = 0
    train_time_s: float = 0.0
    #: Stateful TBPTT: this rank's ``{"state": [B, S], "memory": [B, M]}`` carried into
    #: the next batch, one row per slot (None otherwise).
    carry: dict[str, torch.Tensor] | None = None


class Checkpointer:
    """``checkpoints/step-N.pt`` + ``last.pt`` (and ``best.pt``), written by rank 0."""

    def __init__(
        self,
        ckpt_dir: Path,
        policy: Policy,
        opts: Optimizers,
        dist: Dist,
        *,
        total_steps: int,
        per_epoch: int,
        keep: int,
        config: dict[str, Any],
    ) -> None:
        self.dir = ckpt_dir
        self.last = ckpt_dir / "last.pt"
        self.policy, self.opts, self.dist = policy, opts, dist
        self.total_steps, self.per_epoch, self.keep = total_steps, per_epoch, keep
        self.config = config

    def save(self, kind: str, st: RunState) -> None:
        """``kind`` "step" or "best".  Collective: every rank calls it at the same step."""
        dist = self.dist
        dist.average_buffers(self.policy)
        carries = None
        if st.carry is not None:  # every rank's slots carry their own state: gather them
            got = dist.all_gather_object({k: v.cpu().tolist() for k, v in st.carry.items()})
            carries = None if any(c is None for c in got) else got
        if not dist.is_main:
            return
        blob = {
            "format": CHECKPOINT_FORMAT,
            "step": st.step,
            "total_steps": self.total_steps,
            "sampler": {"epoch": st.step // self.per_epoch, "batch": st.step % self.per_epoch},
            "model_config": self.policy.config.to_dict(),
            "model": to_cpu(self.policy.state_dict()),
            "optim": to_cpu(self.opts.state_dict()),
            "rng": rng_state(),
            "best_val": st.best_val,
            "samples": st.samples,
            "train_time_s": st.train_time_s,
            "world": dist.world,
            "carry": carries,
            "config": self.config,
        }
        if kind == "best":
            atomic_torch_save(blob, self.dir / "best.pt")
            return
        atomic_torch_save(blob, self.dir / f"step-{st.step:08d}.pt")
        atomic_torch_save(blob, self.last)
        if self.keep >= 0:
            old = sorted(self.dir.glob("step-*.pt"))
            for p in old[: max(0, len(old) - self.keep)]:
                p.unlink(missing_ok=True)

    def restore(self, stateful: bool) -> tuple[RunState, dict[str, Any]]:
        """Load ``last.pt`` into the policy, optimisers and RNGs; (state, the raw blob)."""
        blob = load_checkpoint(self.last)
        if blob["model_config"] != self.policy.config.to_dict():
            raise TrainingError(
                f"{self.last}: the checkpoint's model differs from the config's "
                "(model section changed?); start a new run instead"
            )
        self.policy.load_state_dict(blob["model"])
        self.opts.load_state_dict(blob["optim"])
        set_rng_state(blob["rng"])
        st = RunState(
            step=int(blob["step"]),
            best_val=blob.get("best_val"),
            samples=int(blob.get("samples", 0)),
            train_time_s=float(blob.get("train_time_s", 0.0)),
        )
        carries = blob.get("carry")
        if stateful and carries is not None and len(carries) == self.dist.world:
            mine = carries[self.dist.rank]
            st.carry = {k: torch.tensor(v, dtype=torch.float32) for k, v in mine.items()}
        return st, blob
