"""What the loop eats: the cached episodes cut into windows, and the loader that batches them.

Processes of a node share the decoding (each builds every ``LOCAL_WORLD_SIZE``-th cache
entry, then all wait and open them all); the loader deals shuffled windows, or with
``recurrence.stateful`` the slot-by-slot walks of stateful truncated BPTT.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cloud_jobs.train import data as D
from cloud_jobs.train import windows as W
from cloud_jobs.train.config import TrainConfig
from cloud_jobs.train.dist import Dist
from cloud_jobs.train.errors import TrainingError

_log = logging.getLogger("cloud_jobs.train")


def prepare_data(
    cfg: TrainConfig, dist: Dist, run_dir: Path, image_hw: tuple[int, int]
) -> tuple[W.WindowSet, W.WindowSet | None, dict[str, Any]]:
    """(train windows, val windows or None, what the run's head record says about them)."""
    from brain.model import preprocess_frame

    refs = D.list_data(cfg.data, cfg.seed)
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    def pre(rgb: np.ndarray) -> np.ndarray:
        return preprocess_frame(rgb, image_hw)

    # Every entry is written atomically, so a missing one is built by whoever needs it next.
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", max(1, dist.world))))
    t0 = time.monotonic()
    for i, ref in enumerate(refs):
        if i % local_world == dist.local_rank % local_world:
            D.build_cache_entry(ref, cache_dir, image_hw, pre, cfg.data.decode_threads)
    dist.barrier("cache")
    paths = [D.build_cache_entry(r, cache_dir, image_hw, pre, 1) for r in refs]
    decode_s = time.monotonic() - t0
    train_eps: list[D.CachedEpisode] = []
    val_eps: list[D.CachedEpisode] = []
    for ref, path in zip(refs, paths, strict=True):
        ep = D.load_cache_entry(path, cfg.data.label, cfg.data.label_smoothing)
        (val_eps if ref.role == "val" else train_eps).append(ep)
    loop = cfg.train
    # Stateful TBPTT walks an episode window after window: the windows tile it.
    stride = loop.window if cfg.recurrence.stateful else loop.stride
    train = W.WindowSet(train_eps, loop.window, stride)
    val = W.WindowSet(val_eps, loop.window, loop.window) if val_eps else None
    short = train.too_short + (val.too_short if val else [])
    if short:
        _log.warning(
            "%d episode(s) shorter than the window (%d steps) are not used: %s",
            len(short),
            loop.window,
            ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""),
        )
    if len(train) == 0:
        raise TrainingError(
            f"no training windows: {len(train_eps)} training episode(s) with "
            f"{train.num_steps} steps for windows of {loop.window} (check data.sources, "
            "holdout and train.window)"
        )
    info = {
        "episodes_train": len(train_eps),
        "episodes_val": len(val_eps),
        "steps_train": train.num_steps,
        "steps_val": val.num_steps if val else 0,
        "windows_train": len(train),
        "windows_val": len(val) if val else 0,
        "val_tracks": sorted({e.track for e in val_eps if e.track}),
        "cache_dir": str(cache_dir),
        "cache_s": round(decode_s, 2),
    }
    return train, val, info


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; derive numpy/python from it.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_loader(
    cfg: TrainConfig, dist: Dist, train_ws: W.WindowSet, step: int, per_epoch: int
) -> torch.utils.data.DataLoader[Any]:
    """This rank's batches from optimiser step ``step`` on (the sampler's position is a
    function of the step alone, so a resumed run sees the batches it would have seen)."""
    loop = cfg.train
    stateful = cfg.recurrence.stateful
    dataset = W.WindowDataset(train_ws, cfg.augment, cfg.seed, per_visit=stateful)
    sampler: W.WindowBatchSampler | W.StatefulBatchSampler
    if stateful:
        sampler = W.StatefulBatchSampler(
            train_ws, loop.batch_size, seed=cfg.seed, rank=dist.rank, world=dist.world,
            start_step=step,
        )  # fmt: skip
    else:
        start_epoch, start_batch = divmod(step, per_epoch)
        sampler = W.WindowBatchSampler(
            len(train_ws), loop.batch_size, seed=cfg.seed, rank=dist.rank, world=dist.world,
            start_epoch=start_epoch, start_batch=start_batch,
        )  # fmt: skip
    gen = torch.Generator()
    gen.manual_seed(cfg.seed * 1000 + dist.rank + step)
    kwargs: dict[str, Any] = {}
    if cfg.data.workers > 0:
        kwargs = {
            "prefetch_factor": cfg.data.prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    return torch.utils.data.DataLoader(
        cast("torch.utils.data.Dataset[Any]", dataset),  # map-style: __len__ and __getitem__
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=W.collate,
        generator=gen,
        pin_memory=dist.kind == "cuda",
        **kwargs,
    )
