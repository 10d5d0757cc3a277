"""The fine-tune's model, data and optimiser: one run's training, checkpoints and adapter.

Runs inside the worker subprocess (:mod:`brain.localtrain.worker`) and imports torch and peft
only when a :class:`Trainer` is made, so the worker can lower its priority and cap thread
pools first.  The conv trunk is frozen, so its pooled features are computed once per frame
(and cached on disk per base model) and only the layers after it run per step; training
windows carry the recurrent state from zeros over T ticks (TBPTT), as the cloud trainer does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from brain.localtrain.job import TrainJob
from common.digest import sha256_file
from common.durable import replacing

CKPT_FORMAT = "continuon-localtrain-checkpoint/1"
#: torch.load(weights_only=True) can run code from a crafted file before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)


class Events:
    """NDJSON to stdout (the manager) and to progress.ndjson (the record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stdout_ok = True

    def emit(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "t": round(time.time(), 3), **fields}
        line = json.dumps(rec, allow_nan=False, default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.stdout_ok:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError):  # the manager went away; keep the file
                self.stdout_ok = False


def check_torch(version: str) -> None:
    """Refuse a torch whose ``weights_only`` loading is not safe."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:2]]
    if tuple(parts) < MIN_TORCH:
        raise RuntimeError(
            f"torch {version} is older than {'.'.join(map(str, MIN_TORCH))}: its weights_only "
            "loading is not safe (CVE-2025-32434); upgrade torch"
        )


def read_pinned_base(job: TrainJob) -> tuple[str, bytes]:
    """The base weights' bytes, read once, and their sha256, which must be the job's pin.

    Hashing the very bytes that are then loaded (not the file, then the file again) leaves
    no window in which the file could be swapped between the check and the load.
    """
    if not job.base_sha256:
        raise ValueError("job.json pins no base model sha256; start a new fine-tune")
    with open(job.base_model, "rb") as f:
        blob = f.read()
    sha = hashlib.sha256(blob).hexdigest()
    if sha != job.base_sha256:
        raise ValueError(
            f"the base weights (sha256 {sha[:12]}) are not the committed model the run was "
            f"started on (sha256 {job.base_sha256[:12]})"
        )
    return sha, blob


def _lr_at(step: int, job: TrainJob) -> float:
    """Short warm-up, then cosine to 10 %: a function of the step alone (resume-exact)."""
    warm = max(1, min(20, job.steps // 10))
    if step < warm:
        return job.lr * (step + 1) / warm
    p = (step - warm) / max(1, job.steps - warm)
    return job.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class Trainer:
    """Holds the model, data and optimiser of one run (the worker's body; tests use it too)."""

    def __init__(self, job: TrainJob, events: Events) -> None:
        import numpy as np
        import torch
        from peft import LoraConfig, get_peft_model

        from brain.localtrain import data as D
        from brain.model import load_policy

        self.np, self.torch, self.D = np, torch, D
        self.job = job
        self.events = events
        torch.set_num_threads(job.threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        torch.manual_seed(job.seed)
        check_torch(torch.__version__)
        self.base_sha, blob = read_pinned_base(job)
        self.policy = load_policy(io.BytesIO(blob)).eval()
        del blob
        self.cfg = self.policy.config
        eps = D.usable_episodes(Path(job.episodes_root))
        if len(eps) < job.min_episodes:
            raise D.DataError(
                f"{len(eps)} usable episodes under {job.episodes_root}; at least "
                f"{job.min_episodes} are needed"
            )
        self.train_eps, self.held_eps = D.split_episodes(eps, job.holdout_fraction, job.seed)
        if not self.train_eps:
            raise D.DataError("every episode is held out; lower holdout_fraction")
        hw = image_size(self.cfg.image_hw)
        lora = LoraConfig(
            r=job.lora_rank,
            # peft annotates an int but computes the scale lora_alpha / r in floats; the
            # config allows a fractional alpha.
            lora_alpha=job.lora_alpha,  # type: ignore[arg-type]
            lora_dropout=job.lora_dropout,
            target_modules=list(job.target_modules),
            bias="none",
        )
        self.model = get_peft_model(self.policy, lora)
        trunk_targets = [
            n
            for n, m in self.policy.named_modules()
            if n.startswith(("encoder.convs", "encoder.kp_logits")) and hasattr(m, "lora_A")
        ]
        self.cached_trunk = not trunk_targets
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"no module matched target_modules {job.target_modules}")
        self.optim = torch.optim.AdamW(self.params, lr=job.lr, weight_decay=0.0)
        t0 = time.perf_counter()
        todo = list(self.train_eps) + list(self.held_eps)
        loaded = []
        for i, ep in enumerate(todo):  # decode + trunk features: minutes on a Pi, so say so
            loaded.append(self._load(ep, hw))
            events.emit("preparing", episode=i + 1, episodes=len(todo))
        self.train_data = loaded[: len(self.train_eps)]
        self.held_data = loaded[len(self.train_eps) :]
        self.prepare_s = time.perf_counter() - t0
        self.windows = D.window_index([len(x[1]) for x in self.train_data], job.window)
        self.sampler = D.ShuffleBuffer(
            len(self.windows), job.batch_size, job.shuffle_buffer, job.seed
        )
        self.step = 0
        self.elapsed = 0.0
        self.last_loss = float("nan")

    # ---------------------------------------------------------------- data

    def _load(self, ep: Any, hw: tuple[int, int]) -> tuple[Any, Any]:
        """(input, labels): pooled trunk features [N, F] when the trunk is frozen, else frames."""
        D, np, torch = self.D, self.np, self.torch
        cache = Path(self.job.cache_dir)
        arr = D.load_episode(ep, hw, self.job.label, cache)
        if not self.cached_trunk:
            return arr.frames, arr.labels
        pooled_path = D.cache_entry(ep, hw, cache) / f"pooled-{self.base_sha[:16]}.npy"
        if pooled_path.is_file():
            return np.load(pooled_path), arr.labels
        out = []
        with torch.no_grad():
            for i in range(0, len(arr.frames), 64):
                x = torch.from_numpy(np.array(arr.frames[i : i + 64]))
                out.append(self.policy.encoder.pooled(self.policy.inputs(x)).numpy())
        pooled = np.concatenate(out).astype(np.float32)
        with replacing(pooled_path) as tmp, open(tmp, "wb") as f:
            np.save(f, pooled)
        return pooled, arr.labels

    def _features(self, x: Any) -> Any:
        """[B, T, ...] inputs -> [B, T, d] core input features (LoRA on encoder.proj applies)."""
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:])
        if self.cached_trunk:
            pooled = flat
        else:
            pooled = self.policy.encoder.pooled(self.policy.inputs(flat))
        enc = self.policy.encoder
        return enc.norm(enc.proj(pooled)).view(b, t, -1)

    def _run(self, feats: Any) -> Any:
        """Carry the recurrent state over T ticks from zeros: [B, T, d] -> actions [B, T, A]."""
        torch = self.torch
        state, memory = self.policy.initial_state(feats.shape[0])
        acts = []
        for i in range(feats.shape[1]):
            a, state, memory = self.policy.core(feats[:, i], state, memory)
            acts.append(a)
        return torch.stack(acts, dim=1)

    def _batch(self, ids: list[int]) -> tuple[Any, Any]:
        np, torch = self.np, self.torch
        T = self.job.window
        xs, ys = [], []
        for wid in ids:
            e, s = self.windows[wid]
            x, y = self.train_data[e]
            xw, yw = np.asarray(x[s : s + T]), np.asarray(y[s : s + T])
            if len(xw) < T:  # a short episode: pad by repeating its last tick, unlabelled
                pad = T - len(xw)
                xw = np.concatenate([xw, np.repeat(xw[-1:], pad, axis=0)])
                yw = np.concatenate([yw, np.full((pad, yw.shape[1]), np.nan, np.float32)])
            xs.append(xw)
            ys.append(yw)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.float32))

    # ---------------------------------------------------------------- training

    def loss(self, pred: Any, target: Any) -> Any:
        torch = self.torch
        mask = torch.isfinite(target)
        w = mask.to(pred.dtype)
        w[..., 0] *= 2.0  # steering matters most (as in the cloud trainer's loss)
        err = torch.nn.functional.smooth_l1_loss(
            pred, torch.where(mask, target, torch.zeros_like(target)), reduction="none", beta=0.1
        )
        return (err * w).sum() / w.sum().clamp_min(1e-6)

    def train_step(self) -> float:
        torch = self.torch
        for g in self.optim.param_groups:
            g["lr"] = _lr_at(self.step, self.job)
        x, y = self._batch(self.sampler.next_batch())
        self.model.train()
        # BatchNorm statistics stay those of the base model: a fine-tune's few, correlated
        # frames would drift them, and they are not part of what the adapter may change.
        for m in self.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        pred = self._run(self._features(x))
        loss = self.loss(pred, y)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optim.step()
        self.step += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    def save_checkpoint(self) -> Path:
        from peft import get_peft_model_state_dict

        torch = self.torch
        path = self.job.path("checkpoint")
        blob = {
            "format": CKPT_FORMAT,
            "base_sha256": self.base_sha,
            "step": self.step,
            "elapsed_s": self.elapsed,
            "last_loss": self.last_loss,
            "lora": {
                k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()
            },
            "optim": self.optim.state_dict(),
            "sampler": json.dumps(self.sampler.state()),
            "torch_rng": torch.get_rng_state(),
        }
        with replacing(path) as tmp:
            torch.save(blob, tmp)
        return path

    def load_checkpoint(self) -> bool:
        from peft import set_peft_model_state_dict

        torch = self.torch
        path = self.job.path("checkpoint")
        if not path.is_file():
            return False
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != CKPT_FORMAT:
            raise ValueError(f"{path}: not a {CKPT_FORMAT} checkpoint")
        if blob["base_sha256"] != self.base_sha:
            raise ValueError(f"{path} was trained on another base model; start a new run")
        set_peft_model_state_dict(self.model, blob["lora"])
        self.optim.load_state_dict(blob["optim"])
        self.sampler = self.D.ShuffleBuffer.from_state(json.loads(blob["sampler"]))
        torch.set_rng_state(blob["torch_rng"])
        self.step = int(blob["step"])
        self.elapsed = float(blob["elapsed_s"])
        self.last_loss = float(blob["last_loss"])
        return True

    def save_adapter(self) -> Path:
        out = self.job.path("adapter")
        self.model.save_pretrained(str(out))
        meta: dict[str, Any] = {
            "base_model_sha256": self.base_sha,
            "model_config": self.cfg.to_dict(),
            "steps": self.step,
            "trained_on": self.D.episode_summary(self.train_eps),
            "held_out": self.D.episode_summary(self.held_eps),
        }
        self.D.dump_json(out / "continuon_adapter.json", meta)
        # The uploader's manifest (edge_agent/uploader.py): checksums of every file, so the
        # adapter goes to the cloud resumably, beside the episodes it was trained on.
        files = {}
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name != "manifest.json":
                files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {
            "kind": "lora_adapter",
            "adapter_id": f"adapter-{self.job.robot_id}-{Path(self.job.run_dir).name}"[:128],
            "base_model_sha256": self.base_sha,
            "episodes": [e["episode_id"] for e in meta["trained_on"] + meta["held_out"]],
            "files": files,
        }
        self.D.dump_json(out / "manifest.json", manifest)
        return out

    # ---------------------------------------------------------------- gate

    def held_out_actions(self) -> tuple[Any, Any, Any]:
        """(base actions, candidate actions, labels) over every held-out tick, state carried
        through each whole episode as on the robot."""
        np, torch = self.np, self.torch
        base, cand, labels = [], [], []
        self.model.eval()
        with torch.no_grad():
            for x, y in self.held_data:
                xt = torch.from_numpy(np.ascontiguousarray(x))[None]
                cand.append(self._run(self._features(xt))[0].numpy())
                with self.model.disable_adapter():
                    base.append(self._run(self._features(xt))[0].numpy())
                labels.append(np.asarray(y))
        if not labels:
            return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2))
        return np.concatenate(base), np.concatenate(cand), np.concatenate(labels)


def image_size(image_hw: Any) -> tuple[int, int]:
    """(H, W) from a model config (a list once it has been through JSON)."""
    h, w = image_hw
    return int(h), int(w)
