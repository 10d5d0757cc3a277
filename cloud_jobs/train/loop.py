"""The behaviour-cloning training loop: TBPTT over windows, checkpoints, exact resume.

One optimiser step = one batch of ``batch_size`` windows per process, each window
T consecutive steps of one episode.  The policy's recurrent ``(state, memory)``
starts at ``policy.initial_state`` (zeros, as on the robot when it starts
driving) at every window start -- or, with ``recurrence.stateful``, where the
slot's previous window of the same episode left it (detached); gradients flow
through all T ticks (``forward_sequence``); the first ``burn_in`` ticks only warm
the state up and carry no loss.  ``recurrence.teacher_forcing`` feeds the executed
actions back, ``recurrence.memory_dropout`` runs some slots with the memory frozen.

Everything that decides what happens next is in the checkpoint -- weights,
optimiser and scheduler states, the torch/numpy/python RNG states, the data
sampler's position and (stateful) every rank's carried state -- and the
augmentation of a window depends only on the seed and the sampler's item, so
``--resume`` continues exactly where the run stopped: on CPU, 20 steps straight
and 10 + 10 resumed give the same losses and weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloud_jobs.train import data as D
from cloud_jobs.train.config import LossConfig, TrainConfig
from cloud_jobs.train.dist import Dist, setup

if TYPE_CHECKING:
    from brain.model import Policy

_log = logging.getLogger("cloud_jobs.train")

CHECKPOINT_FORMAT = "continuon-train-checkpoint/1"
METRICS_FILE = "metrics.ndjson"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
POLICY_FILE = "policy.pt"


class TrainingError(RuntimeError):
    """Training cannot go on; ``str()`` says why and what to do."""


# --------------------------------------------------------------------------- loss


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


def check_recurrence(cfg: TrainConfig, policy: nn.Module) -> int:
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
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count: keep the fresh state
            torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; derive numpy/python from it.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


# --------------------------------------------------------------------------- files


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def param_checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Metrics:
    """``metrics.ndjson``: one JSON object a line, flushed as written (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _trim_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed from (a crash's tail)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if int(rec.get("step", 0)) <= step:
            kept.append(line)
    _atomic_write(path, "".join(f"{x}\n" for x in kept))


class Progress:
    """A progress bar on a TTY: tqdm when installed, else a one-line fallback."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.total, self.n = total, initial
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def update(self, postfix: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last < 0.2 and self.n < self.total:
            return
        self._last = now
        frac = self.n / max(1, self.total)
        filled = int(30 * frac)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total} {postfix}   "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------- the run


class _StopSignal:
    """SIGTERM/SIGINT -> stop after the current step, with a checkpoint (preemption)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _build_policy(cfg: TrainConfig) -> Policy:
    from brain.model import build_policy

    try:
        return build_policy(cfg.model.preset, **dict(cfg.model.overrides))
    except (TypeError, ValueError) as e:
        raise TrainingError(f"model: cannot build preset {cfg.model.preset!r}: {e}") from None


def resolved_config(cfg: TrainConfig, policy: Policy) -> TrainConfig:
    """The config with every model field written out (the run's ``config.yaml``)."""
    model = {k: v for k, v in policy.config.to_dict().items() if k != "preset"}
    return cfg.with_updates(model={"preset": cfg.model.preset, "overrides": model})


def _prepare_data(
    cfg: TrainConfig, dist: Dist, run_dir: Path, image_hw: tuple[int, int]
) -> tuple[D.WindowSet, D.WindowSet | None, dict[str, Any]]:
    from brain.model import preprocess_frame

    refs = D.list_data(cfg.data, cfg.seed)
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    def pre(rgb: np.ndarray) -> np.ndarray:
        return preprocess_frame(rgb, image_hw)

    # Processes of a node share the decoding work; every entry is written atomically,
    # so a missing one is simply built by whoever needs it next.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world if dist.world > 1 else 1))
    t0 = time.monotonic()
    for i, ref in enumerate(refs):
        if i % max(1, local_world) == dist.local_rank % max(1, local_world):
            D.build_cache_entry(ref, cache_dir, image_hw, pre, cfg.data.decode_threads)
    dist.barrier("cache")
    paths = [D.build_cache_entry(r, cache_dir, image_hw, pre, 1) for r in refs]
    decode_s = time.monotonic() - t0
    train_eps: list[Any] = []
    val_eps: list[Any] = []
    for ref, path in zip(refs, paths, strict=True):
        ep = D.load_cache_entry(path, cfg.data.label, cfg.data.label_smoothing)
        (val_eps if ref.role == "val" else train_eps).append(ep)
    loop = cfg.train
    # Stateful TBPTT walks an episode window after window: the windows tile it.
    stride = loop.window if cfg.recurrence.stateful else loop.stride
    train = D.WindowSet(train_eps, loop.window, stride)
    val = D.WindowSet(val_eps, loop.window, loop.window) if val_eps else None
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


def _autocast(dist: Dist, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dist.kind, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    policy: Policy,
    windows: D.WindowSet,
    ids: list[int],
    cfg: TrainConfig,
    dist: Dist,
) -> dict[str, float]:
    """Validation over ``ids`` (sharded over ranks, summed over all of them)."""
    was_training = policy.training
    policy.eval()
    mine = ids[dist.rank :: dist.world]
    dtype = torch.float32 if dist.kind == "xla" else torch.float64
    sums = torch.zeros(5, dtype=dtype, device=dist.device)  # loss*w, w, |e_s|, |e_t|, count
    bs = cfg.train.batch_size
    for i in range(0, len(mine), bs):
        batch = D.collate([(*windows.get(w), True) for w in mine[i : i + bs]])
        frames = batch.frames.to(dist.device)
        labels = batch.labels.to(dist.device)
        executed = batch.executed.to(dist.device) if cfg.recurrence.teacher_forcing else None
        state, memory = policy.initial_state(len(frames), device=dist.device)
        with _autocast(dist, cfg.precision):
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


def _checkpoint_files(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("step-*.pt"))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path}: cannot load the checkpoint: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return blob


def train(
    cfg: TrainConfig,
    *,
    run_dir: Path,
    resume: bool = False,
    max_minutes: float | None = None,
    stop_at_step: int | None = None,
    config_source: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a training run in ``run_dir``; returns the summary (rank 0 writes it)."""
    t_start = time.monotonic()
    run_dir = Path(run_dir)
    dist = setup(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # DDP's note that a 1x1 conv's gradient strides differ from its bucket's: harmless.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            return _train(
                cfg, dist, run_dir, resume, max_minutes, stop_at_step, config_source, t_start
            )
    finally:
        torch.set_num_threads(threads)
        dist.close()


def _train(
    cfg: TrainConfig,
    dist: Dist,
    run_dir: Path,
    resume: bool,
    max_minutes: float | None,
    stop_at_step: int | None,
    config_source: str | None,
    t_start: float,
) -> dict[str, Any]:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    loop = cfg.train
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if resume and not last_path.is_file():
        raise TrainingError(f"--resume: {last_path} does not exist (nothing to resume)")
    if not resume and last_path.is_file():
        raise TrainingError(
            f"{run_dir} already holds a run ({last_path}); pass --resume to continue it, "
            "or choose another --run-dir"
        )
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier("run_dir")

    seed_everything(cfg.seed)
    policy = _build_policy(cfg)
    resolved = resolved_config(cfg, policy)
    frozen_slots = check_recurrence(cfg, policy)
    image_hw = (int(policy.config.image_hw[0]), int(policy.config.image_hw[1]))
    train_ws, val_ws, data_info = _prepare_data(cfg, dist, run_dir, image_hw)
    sampler_probe = D.WindowBatchSampler(
        len(train_ws), loop.batch_size, seed=cfg.seed, world=dist.world
    )
    per_epoch = sampler_probe.batches_per_epoch
    total_steps = (
        loop.steps
        if loop.steps is not None
        else max(1, math.ceil((loop.epochs or 1.0) * per_epoch))  # exactly one is set
    )

    policy.to(dist.device)
    from cloud_jobs.train.optim import build_optimizers

    opts = build_optimizers(policy, cfg.optim, total_steps, dist.device)

    step = 0
    best_val: float | None = None
    samples_seen = 0
    train_time_s = 0.0
    carry: dict[str, Any] | None = None  # stateful: this rank's (state, memory) per slot
    if resume:
        blob = _load_checkpoint(last_path)
        if blob["model_config"] != policy.config.to_dict():
            raise TrainingError(
                f"{last_path}: the checkpoint's model differs from the config's "
                "(model section changed?); start a new run instead"
            )
        policy.load_state_dict(blob["model"])
        opts.load_state_dict(blob["optim"])
        set_rng_state(blob["rng"])
        step = int(blob["step"])
        best_val = blob.get("best_val")
        samples_seen = int(blob.get("samples", 0))
        train_time_s = float(blob.get("train_time_s", 0.0))
        carries = blob.get("carry")
        if cfg.recurrence.stateful and carries is not None and len(carries) == dist.world:
            carry = {k: torch.tensor(v, dtype=torch.float32) for k, v in carries[dist.rank].items()}
        if blob.get("world") != dist.world:
            _log.warning(
                "resuming a run of %s process(es) with %d: the data order changes from here",
                blob.get("world"),
                dist.world,
            )
        if int(blob.get("total_steps", total_steps)) != total_steps:
            _log.warning(
                "the run's length changed (%s -> %d steps); the schedule follows the new length",
                blob.get("total_steps"),
                total_steps,
            )
    start_epoch, start_batch = divmod(step, per_epoch)

    # ---- files (rank 0)
    metrics_path = run_dir / METRICS_FILE
    if dist.is_main:
        if resume:
            _trim_metrics(metrics_path, step)
        _atomic_write(run_dir / CONFIG_FILE, resolved.to_yaml())
    metrics = Metrics(metrics_path if dist.is_main else None)
    head = {
        "kind": "resume" if resume else "start",
        "step": step,
        "total_steps": total_steps,
        "world": dist.world,
        "device": str(dist.device),
        "backend": dist.backend,
        "params": sum(p.numel() for p in policy.parameters()),
        "optimizers": {k: len(v) for k, v in opts.param_names.items()},
        "batches_per_epoch": per_epoch,
        "config": config_source,
        "time": time.time(),
        **data_info,
    }
    metrics.write(head)
    if dist.is_main:
        _log.info(
            "training %s: %d steps (%d per epoch), %d train / %d val windows of %d, "
            "%d process(es) on %s",
            cfg.name,
            total_steps,
            per_epoch,
            len(train_ws),
            data_info["windows_val"],
            loop.window,
            dist.world,
            dist.device,
        )

    # ---- model wrappers
    seq: nn.Module = SequenceModule(policy)
    if dist.uses_pg:
        from torch.nn.parallel import DistributedDataParallel as DDP

        seq = DDP(
            seq,
            device_ids=[dist.device.index] if dist.kind == "cuda" else None,
            find_unused_parameters=cfg.distributed.find_unused_parameters,
        )
    eager_seq = seq
    compiled = False
    if cfg.compile:
        try:
            seq = cast(nn.Module, torch.compile(seq))
            compiled = True
        except Exception as e:  # pragma: no cover - depends on the toolchain
            warnings.warn(f"torch.compile failed ({e}); training eagerly", stacklevel=1)

    # ---- data loader
    stateful = cfg.recurrence.stateful
    dataset = D.WindowDataset(train_ws, cfg.augment, cfg.seed, per_visit=stateful)
    sampler: D.WindowBatchSampler | D.StatefulBatchSampler
    if stateful:
        sampler = D.StatefulBatchSampler(
            train_ws, loop.batch_size, seed=cfg.seed, rank=dist.rank, world=dist.world,
            start_step=step,
        )  # fmt: skip
    else:
        sampler = D.WindowBatchSampler(
            len(train_ws),
            loop.batch_size,
            seed=cfg.seed,
            rank=dist.rank,
            world=dist.world,
            start_epoch=start_epoch,
            start_batch=start_batch,
        )
    # Memory dropout: the first `frozen_slots` windows of every batch run frozen.
    mem_lr_scale = None
    if frozen_slots:
        mem_lr_scale = torch.ones(loop.batch_size, device=dist.device)
        mem_lr_scale[:frozen_slots] = 0.0
    gen = torch.Generator()
    gen.manual_seed(cfg.seed * 1000 + dist.rank + step)
    loader_kwargs: dict[str, Any] = {}
    if cfg.data.workers > 0:
        loader_kwargs = {
            "prefetch_factor": cfg.data.prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        cast("torch.utils.data.Dataset[Any]", dataset),  # map-style: __len__ and __getitem__
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=D.collate,
        generator=gen,
        pin_memory=dist.kind == "cuda",
        **loader_kwargs,
    )
    val_ids = val_ws.spread(loop.eval_windows) if val_ws is not None else []

    budget_min = max_minutes if max_minutes is not None else loop.max_minutes
    budget_s = budget_min * 60.0 if budget_min is not None else None
    on_tty = sys.stderr.isatty()
    progress = Progress(
        total_steps,
        step,
        dist.is_main and (loop.progress == "on" or (loop.progress == "auto" and on_tty)),
    )

    def save(kind: str) -> None:
        """Checkpoint (rank 0): step-N.pt and last.pt, or best.pt.  Collective (buffers)."""
        dist.average_buffers(policy)
        carries = None
        if stateful:  # every rank's slots carry their own state: gather them
            mine = None if carry is None else {k: v.tolist() for k, v in carry.items()}
            got = dist.all_gather_object(mine)
            carries = None if any(c is None for c in got) else got
        if not dist.is_main:
            return
        blob = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "total_steps": total_steps,
            "sampler": {"epoch": step // per_epoch, "batch": step % per_epoch},
            "model_config": policy.config.to_dict(),
            "model": _to_cpu(policy.state_dict()),
            "optim": _to_cpu(opts.state_dict()),
            "rng": rng_state(),
            "best_val": best_val,
            "samples": samples_seen,
            "train_time_s": train_time_s,
            "world": dist.world,
            "carry": carries,
            "config": resolved.model_dump(mode="json"),
        }
        if kind == "best":
            _atomic_torch_save(blob, ckpt_dir / "best.pt")
            return
        path = ckpt_dir / f"step-{step:08d}.pt"
        _atomic_torch_save(blob, path)
        _atomic_torch_save(blob, last_path)
        if loop.keep_checkpoints >= 0:
            old = _checkpoint_files(ckpt_dir)
            for p in old[: max(0, len(old) - loop.keep_checkpoints)]:
                p.unlink(missing_ok=True)

    def run_eval() -> dict[str, float]:
        nonlocal best_val
        if val_ws is None or not val_ids:
            return {}
        res = evaluate(policy, val_ws, val_ids, cfg, dist)
        if not res:
            return {}
        improved = best_val is None or res["val_loss"] < best_val
        if improved:
            best_val = res["val_loss"]
            save("best")
        metrics.write({"kind": "eval", "step": step, **res, "best": improved})
        return res

    # ---- the loop
    stop_reason: str | None = None
    acc_dtype = torch.float32 if dist.kind == "xla" else torch.float64
    # Summed on the device: reading a loss every step would stall CUDA/XLA.
    window_sums = torch.zeros(2, dtype=acc_dtype, device=dist.device)
    window_n = 0
    t_window = time.monotonic()
    last_eval: dict[str, float] = {}
    last_loss = math.nan
    frames_per_step = loop.batch_size * loop.window * dist.world
    params = [p for p in policy.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    batches: Iterator[Any] = iter(loader)
    loss: torch.Tensor | None = None
    with _StopSignal() as stop_signal:
        while step < total_steps:
            t_step = time.monotonic()
            batch = next(batches)
            frames = batch.frames.to(dist.device, non_blocking=True)
            labels = batch.labels.to(dist.device, non_blocking=True)
            executed = None
            if cfg.recurrence.teacher_forcing:
                executed = batch.executed.to(dist.device, non_blocking=True)
            state, memory = policy.initial_state(frames.shape[0], device=dist.device)
            if carry is not None:  # stateful: continue each slot unless its visit starts
                keep = ~batch.fresh.to(dist.device).unsqueeze(1)
                state = torch.where(keep, carry["state"].to(dist.device), state)
                memory = torch.where(keep, carry["memory"].to(dist.device), memory)
            inputs = (frames, state, memory, executed, mem_lr_scale)
            try:
                with _autocast(dist, cfg.precision):
                    pred, state, memory = seq(*inputs)
            except Exception as e:
                if not compiled:
                    raise
                warnings.warn(
                    f"torch.compile failed ({type(e).__name__}: {e}); training eagerly",
                    stacklevel=1,
                )
                seq, compiled = eager_seq, False
                with _autocast(dist, cfg.precision):
                    pred, state, memory = seq(*inputs)
            if stateful:
                carry = {"state": state.detach().float(), "memory": memory.detach().float()}
            loss, _ = bc_loss(pred, labels, cfg.loss, loop.burn_in)
            opts.zero_grad()
            loss.backward()
            if dist.kind == "xla":
                if dist.world > 1:
                    for o in opts.optimizers:
                        dist.xm.reduce_gradients(o)
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                opts.step()
                import torch_xla

                torch_xla.sync() if hasattr(torch_xla, "sync") else dist.xm.mark_step()
            else:
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                opts.step()
            opts.schedule_step()
            step += 1
            samples_seen += frames_per_step
            window_sums += torch.stack([loss.detach(), gn.detach()]).to(acc_dtype)
            window_n += 1
            train_time_s += time.monotonic() - t_step

            log_now = step % loop.log_every == 0 or step == total_steps
            if log_now:
                agg = dist.all_reduce_sum(window_sums).cpu().double() / (window_n * dist.world)
                last_loss = float(agg[0])
                elapsed = time.monotonic() - t_window
                rec = {
                    "kind": "train",
                    "step": step,
                    "epoch": round(step / per_epoch, 4),
                    "loss": last_loss,
                    "lr": opts.lr,
                    "grad_norm": float(agg[1]),
                    "samples_per_s": round(frames_per_step * window_n / max(elapsed, 1e-9), 2),
                    "windows_per_s": round(
                        loop.batch_size * dist.world * window_n / max(elapsed, 1e-9), 3
                    ),
                    "samples": samples_seen,
                    "elapsed_s": round(time.monotonic() - t_start, 2),
                }
                metrics.write(rec)
                if not math.isfinite(last_loss):
                    save_reason = f"the loss is {last_loss} at step {step}"
                    raise TrainingError(
                        f"{save_reason}; lower optim.lr or check the data (last good "
                        f"checkpoint: {last_path})"
                    )
                window_sums = torch.zeros(2, dtype=acc_dtype, device=dist.device)
                window_n = 0
                t_window = time.monotonic()
            if loop.eval_every is not None and step % loop.eval_every == 0 and step < total_steps:
                last_eval = run_eval() or last_eval

            # Stop decisions that depend on time or signals must agree across ranks.
            want_stop = 0.0
            why = None
            if stop_signal.reason is not None:
                want_stop, why = 1.0, stop_signal.reason
            elif budget_s is not None and time.monotonic() - t_start >= budget_s:
                want_stop, why = 1.0, f"wall budget of {budget_min:g} min"
            if dist.world > 1 and (dist.kind != "xla" or log_now):
                flag = dist.all_reduce_max(torch.tensor([want_stop], device=dist.device))
                if float(flag.cpu()[0]) > 0 and why is None:
                    why = "another process stopped"
                want_stop = float(flag.cpu()[0])
            if want_stop > 0 and step < total_steps:
                stop_reason = why
            elif stop_at_step is not None and step >= stop_at_step and step < total_steps:
                stop_reason = f"--stop-at-step {stop_at_step}"

            progress.update(f"loss {last_loss:.4f}" + (f" val {best_val:.4f}" if best_val else ""))
            if step % loop.checkpoint_every == 0 or stop_reason is not None:
                save("step")
            if stop_reason is not None:
                break
    progress.close()

    complete = step >= total_steps
    if complete:
        last_eval = run_eval() or last_eval
        if step % loop.checkpoint_every != 0:
            save("step")
    # Every process must hold the same weights: compare checksums across ranks.
    dist.average_buffers(policy)
    checksum = param_checksum(policy)
    ranks = dist.all_gather_object(
        {
            "rank": dist.rank,
            "checksum": checksum,
            "step": step,
            "loss": last_loss,
            "local_loss": float(loss.detach().float().cpu()) if loss is not None else None,
        }
    )
    in_sync = len({r["checksum"] for r in ranks}) == 1
    if not in_sync:
        _log.error("the processes' weights differ at the end: %s", ranks)
    summary = {
        "status": "complete" if complete else "stopped",
        "stop_reason": stop_reason,
        "step": step,
        "total_steps": total_steps,
        "epochs": round(step / per_epoch, 4),
        "final_train_loss": last_loss,
        "best_val_loss": best_val,
        "final_val": last_eval,
        "samples": samples_seen,
        "train_time_s": round(train_time_s, 2),
        "samples_per_s": round(samples_seen / train_time_s, 2) if train_time_s > 0 else None,
        "wall_s": round(time.monotonic() - t_start, 2),
        "world": dist.world,
        "device": str(dist.device),
        "compiled": compiled,
        "ranks": ranks,
        "ranks_in_sync": in_sync,
        "policy": str(run_dir / POLICY_FILE),
        **data_info,
    }
    if dist.is_main:
        from brain.model import save_policy

        cpu_policy = policy.to("cpu") if dist.kind == "xla" else policy
        save_policy(cpu_policy, run_dir / POLICY_FILE)
        metrics.write({"kind": "end", **{k: v for k, v in summary.items() if k != "ranks"}})
        _atomic_write(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _log.info(
            "%s at step %d/%d%s; policy: %s",
            summary["status"],
            step,
            total_steps,
            f" ({stop_reason})" if stop_reason else "",
            run_dir / POLICY_FILE,
        )
    metrics.close()
    dist.barrier("end")
    return summary
