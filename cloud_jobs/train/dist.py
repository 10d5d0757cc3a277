"""Where a training process runs: the device, and its place in a distributed job.

* **Single process** (``python -m cloud_jobs train``): rank 0 of 1.
* **torchrun / DDP** (``torchrun --nproc_per_node=N -m cloud_jobs train``): the
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment that torchrun sets is read,
  and ``torch.distributed.init_process_group`` is called with ``nccl`` on CUDA and
  ``gloo`` otherwise (``distributed.backend`` in the config or the
  ``CONTINUON_DIST_BACKEND`` environment variable override that).  Each CUDA
  process takes the GPU of its local rank.
* **PyTorch/XLA** (``device: xla``, e.g. a TPU VM with ``PJRT_DEVICE=TPU``):
  ``torch_xla`` is imported only here and only then; rank and world size come from
  ``torch_xla.runtime`` (PJRT), collectives from ``torch_xla.core.xla_model``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

_log = logging.getLogger(__name__)

BACKEND_ENV = "CONTINUON_DIST_BACKEND"

XLA_MISSING = (
    "torch_xla is not importable: PyTorch/XLA wheels are built against one exact torch "
    "release (torch_xla 2.9 needs torch==2.9.0); install the matching pair, e.g. "
    "`pip install torch==2.9.0 'torch_xla[tpu]==2.9.0'` on a TPU VM"
)


class DistError(RuntimeError):
    pass


@dataclass
class Dist:
    device: torch.device
    kind: str  # "cpu" | "cuda" | "xla"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # torch.distributed backend when world > 1 (not XLA)
    xm: Any = field(default=None, repr=False)  # torch_xla.core.xla_model when kind == "xla"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def uses_pg(self) -> bool:
        """A torch.distributed process group carries the collectives (DDP)."""
        return self.world > 1 and self.kind != "xla"

    # --- collectives (no-ops on one process) ---------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        if self.kind == "xla":
            return self.xm.all_reduce(self.xm.REDUCE_SUM, t)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        if self.kind == "xla":
            return self.xm.all_reduce(self.xm.REDUCE_MAX, t)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        if self.kind == "xla":  # JSON-able objects only
            got = self.xm.rendezvous("all_gather_object", json.dumps(obj).encode(), replicas=[])
            return [json.loads(bytes(b)) for b in got] if got else [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the processes.

        Gradients keep parameters identical on every process, but each process updates its
        BatchNorm statistics from its own batches (SyncBatchNorm needs a GPU); averaging them
        before a checkpoint gives one model, estimated from every process's data.  Collective:
        every process must call it at the same point.
        """
        if self.world == 1:
            return
        with torch.no_grad():
            for buf in module.buffers():
                if buf.is_floating_point():
                    buf.copy_(self.all_reduce_sum(buf.detach().clone()) / self.world)

    def barrier(self, tag: str = "barrier") -> None:
        if self.world == 1:
            return
        if self.kind == "xla":
            self.xm.rendezvous(tag)
        else:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.uses_pg and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise DistError(
            f"environment variable {name}={os.environ[name]!r} is not an integer"
        ) from None


def import_xla() -> tuple[Any, Any, Any]:
    """(torch_xla, torch_xla.core.xla_model, torch_xla.runtime); DistError if missing."""
    try:
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.runtime as xr
    except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError/RuntimeError
        raise DistError(f"{XLA_MISSING} ({type(e).__name__}: {e})") from None
    return torch_xla, xm, xr


def setup(device: str, backend: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """The device and process group for this process (``device``: auto|cpu|cuda|xla)."""
    if device == "xla":
        torch_xla, xm, xr = import_xla()
        dev = torch_xla.device() if hasattr(torch_xla, "device") else xm.xla_device()
        return Dist(
            device=torch.device(dev),
            kind="xla",
            rank=int(xr.global_ordinal()),
            world=int(xr.world_size()),
            local_rank=int(xr.local_ordinal()),
            xm=xm,
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DistError("device: cuda was asked for but torch.cuda.is_available() is False")
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "cuda":
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    chosen = None
    if world > 1:
        chosen = os.environ.get(BACKEND_ENV) or backend
        if chosen == "auto":
            chosen = "nccl" if device == "cuda" else "gloo"
        if chosen == "nccl" and device != "cuda":
            raise DistError("the nccl backend needs CUDA; use gloo on CPU")
        if not torch.distributed.is_initialized():
            kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
            if chosen == "nccl":
                kwargs["device_id"] = dev
            torch.distributed.init_process_group(backend=chosen, **kwargs)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return Dist(
        device=dev, kind=dev.type, rank=rank, world=world, local_rank=local_rank, backend=chosen
    )
