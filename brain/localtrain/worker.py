"""The fine-tune itself, run as a subprocess: ``python -m brain.localtrain.worker JOB.json``.

The only part of ``brain.localtrain`` that imports torch and peft.  It lowers its own CPU
priority (``nice``) and caps torch's threads before anything heavy happens, then:

1. loads the base policy (``brain.model.load_policy``) and wraps its core layers with LoRA
   adapters (peft); the conv trunk is frozen, so its pooled features are computed once per
   frame (and cached on disk per base model) and only the layers after it run per step;
2. trains on windows of T ticks from the recorded episodes (TBPTT, state from zeros at each
   window start, as the cloud trainer does), drawn through a shuffle buffer of 2x batch,
   until ``steps`` optimiser steps or ``max_seconds`` of training (summed over resumes);
3. checkpoints every ``checkpoint_every`` steps and on SIGTERM (adapter weights, optimiser,
   sampler position, step, elapsed time): ``--resume`` continues exactly there;
4. saves the adapter in peft's format, runs the promotion gate (:mod:`.gate`), and when it
   accepts, merges the adapter, exports the ONNX step graph, checks it against torch with
   ONNX Runtime, and quantizes it to INT8 when ``brain.model.quantize`` is installed.

Every event is one JSON line on stdout (read by the manager) and in ``progress.ndjson``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from brain.localtrain.job import EXIT_BAD_JOB, EXIT_ERROR, EXIT_STOPPED, TrainJob
from rlds.fsutil import sha256_file

if TYPE_CHECKING:
    from brain.model import Policy

CKPT_FORMAT = "continuon-localtrain-checkpoint/1"
#: torch.load(weights_only=True) can run code from a crafted file before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)
#: INT8 is shipped only if its actions stay this close to FP32 on real frames (mean |diff|).
INT8_MEAN_TOL = 0.05


class _Events:
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


class _StopFlag:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.parent = os.getppid()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reason = signal.Signals(signum).name

    def check(self) -> str | None:
        if self.reason is None and os.getppid() != self.parent:
            self.reason = "parent exited"
        return self.reason


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


def lower_priority(nice: int, threads: int) -> None:
    """Before torch is imported: nice, and every thread pool capped."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _lr_at(step: int, job: TrainJob) -> float:
    """Short warm-up, then cosine to 10 %: a function of the step alone (resume-exact)."""
    warm = max(1, min(20, job.steps // 10))
    if step < warm:
        return job.lr * (step + 1) / warm
    p = (step - warm) / max(1, job.steps - warm)
    return job.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class Trainer:
    """Holds the model, data and optimiser of one run (the worker's body; tests use it too)."""

    def __init__(self, job: TrainJob, events: _Events) -> None:
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
        hw = _hw(self.cfg.image_hw)
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
        tmp = pooled_path.with_name(f".{pooled_path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, pooled)
        os.replace(tmp, pooled_path)
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
        tmp = path.with_name(".checkpoint.pt.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
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

    def gate(self) -> Any:
        from brain.localtrain import gate as G

        np = self.np
        base, cand, lab = self.held_out_actions()
        ok = np.isfinite(lab)
        metrics = G.GateMetrics(
            held_out_episodes=len(self.held_data),
            held_out_steps=len(lab),
            base_mae=float(np.abs(base - lab)[ok].mean()) if ok.any() else None,
            candidate_mae=float(np.abs(cand - lab)[ok].mean()) if ok.any() else None,
            mean_action_change=float(np.abs(cand - base).mean()) if len(lab) else None,
        )
        gs = self.job.gate
        if gs.closed_loop and gs.sim is not None:
            drv_base = _TorchDriver(self, "base", adapter=False)
            drv_cand = _TorchDriver(self, "candidate", adapter=True)
            metrics.closed_loop = G.closed_loop_compare(
                drv_base, drv_cand, gs.sim, steps=gs.closed_loop_steps, rate_hz=gs.rate_hz
            )
        decision = G.decide(
            metrics, max_action_change=gs.max_action_change, min_improvement=gs.min_improvement
        )
        self.D.dump_json(self.job.path("gate"), decision.to_dict())
        return decision

    # ---------------------------------------------------------------- export

    def export(self) -> dict[str, Any]:
        """Merge the adapter, export ONNX, check it against torch, quantize to INT8."""
        np, torch = self.np, self.torch
        from brain.model import export_onnx

        out = self.job.path("export")
        out.mkdir(parents=True, exist_ok=True)
        frames = self._parity_frames()
        self.model.eval()
        with torch.no_grad():  # the candidate's actions through torch, before merging
            ref = _step_actions(self.policy, frames)
        merged = cast("Policy", self.model.merge_and_unload())  # peft returns its base model
        fp32 = out / "policy.onnx"
        export_onnx(
            merged,
            fp32,
            version=self.job.version,
            metadata={"provenance": "local", "base_model_sha256": self.base_sha},
        )
        got = _onnx_actions(fp32, frames)
        parity = float(np.abs(got - ref).max())
        if not parity < 1e-3:
            raise RuntimeError(f"merged ONNX disagrees with the torch candidate by {parity:.2e}")
        res: dict[str, Any] = {"onnx": str(fp32), "onnx_parity_max_abs": parity, "int8": None}
        artifacts = [{"file": fp32.name, "backend": "onnx_fp32"}]
        try:
            from brain.model.quantize import quantize_int8
        except ImportError:
            res["int8_skipped"] = "brain.model.quantize is not installed"
        else:
            int8 = out / "policy_int8.onnx"
            rep = quantize_int8(fp32, int8, list(frames))
            res["int8_report"] = _plain(rep)
            diff = np.abs(_onnx_actions(int8, frames) - got)
            res["int8_parity"] = {"mean_abs": float(diff.mean()), "max_abs": float(diff.max())}
            if float(diff.mean()) <= INT8_MEAN_TOL:
                res["int8"] = str(int8)
                artifacts.insert(0, {"file": int8.name, "backend": "onnx_int8"})
            else:  # keep FP32 only: an INT8 graph that drives differently is not shipped
                res["int8_skipped"] = (
                    f"INT8 differs from FP32 by {float(diff.mean()):.3f} on average"
                )
                int8.unlink(missing_ok=True)
        h, w = self.cfg.image_hw
        report = {
            "model_version": self.job.version,
            "action_names": list(self.cfg.action_names or []),
            "image": {"height": h, "width": w, "channels": 3, "dtype": "uint8", "layout": "NHWC"},
            "artifacts": artifacts,
            "preferred_backends": [a["backend"] for a in artifacts],
            "source": {"checkpoint_sha256": None, "base_model_sha256": self.base_sha},
            "parity": {"onnx_fp32_vs_torch_max_abs": parity, "int8": res.get("int8_parity")},
            "local_train": {"run_dir": self.job.run_dir, "steps": self.step},
        }
        self.D.dump_json(out / "export_report.json", report)
        res["report"] = str(out / "export_report.json")
        return res

    def _parity_frames(self, n: int = 32) -> Any:
        """Real frames in order (held-out first): for the ONNX check and INT8 calibration."""
        np = self.np
        hw = _hw(self.cfg.image_hw)
        for ep in list(self.held_eps) + list(self.train_eps):
            arr = self.D.load_episode(ep, hw, self.job.label, Path(self.job.cache_dir))
            if len(arr.frames):
                return np.ascontiguousarray(arr.frames[:n])
        raise RuntimeError("no frames to calibrate with")


def _plain(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def _hw(image_hw: Any) -> tuple[int, int]:
    """(H, W) from a model config (a list once it has been through JSON)."""
    h, w = image_hw
    return int(h), int(w)


def _step_actions(policy: Any, frames: Any) -> Any:
    import numpy as np
    import torch

    state, memory = policy.initial_state(1)
    acts = []
    for f in frames:
        a, state, memory = policy.step(torch.from_numpy(np.array(f))[None], state, memory)
        acts.append(a[0].numpy())
    return np.stack(acts)


def _onnx_actions(path: Path, frames: Any) -> Any:
    import numpy as np

    from brain.policy import load_model

    model = load_model(path, threads=1)
    rec = model.initial_recurrent()
    acts = []
    for f in frames:
        a, rec = model.step(f, rec)
        acts.append(np.asarray(a, dtype=np.float64))
    return np.stack(acts)


class _TorchDriver:
    """The base (adapter off) or candidate policy driving the sim, state carried per tick."""

    needs_image = True

    def __init__(self, trainer: Trainer, name: str, *, adapter: bool) -> None:
        self.t = trainer
        self.name = name
        self.adapter = adapter
        self.image_hw = _hw(trainer.cfg.image_hw)
        self.state: Any = None
        self.memory: Any = None

    def reset(self) -> None:
        self.state, self.memory = self.t.policy.initial_state(1)

    def act(self, image: Any, world: Any) -> Any:
        import contextlib

        import numpy as np
        import torch

        from brain.imaging import resize_rgb

        x = torch.from_numpy(resize_rgb(image, self.image_hw))[None]
        ctx = contextlib.nullcontext() if self.adapter else self.t.model.disable_adapter()
        with torch.no_grad(), ctx:
            a, self.state, self.memory = self.t.policy.step(x, self.state, self.memory)
        return a[0].numpy().astype(np.float64)


def run(job: TrainJob, *, resume: bool = False) -> int:
    """The worker's whole life; returns its exit code."""
    events = _Events(job.path("progress"))
    stop = _StopFlag()
    lower_priority(job.nice, job.threads)
    events.emit("starting", pid=os.getpid(), run_dir=job.run_dir, resume=resume)
    try:
        tr = Trainer(job, events)
        resumed = tr.load_checkpoint() if resume else False
    except Exception as exc:
        events.emit("error", phase="prepare", message=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    events.emit(
        "started",
        resumed=resumed,
        step=tr.step,
        steps=job.steps,
        train_episodes=len(tr.train_eps),
        held_out_episodes=len(tr.held_eps),
        windows=len(tr.windows),
        trainable_params=sum(p.numel() for p in tr.params),
        cached_trunk=tr.cached_trunk,
        prepare_s=round(tr.prepare_s, 2),
    )
    reason = "steps"
    t_last = time.perf_counter()
    try:
        while tr.step < job.steps:
            if stop.check():
                reason = "stopped"
                break
            if tr.elapsed >= job.max_seconds:
                reason = "time_budget"
                break
            loss = tr.train_step()
            now = time.perf_counter()
            tr.elapsed += now - t_last
            t_last = now
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {tr.step}")
            rate = tr.elapsed / tr.step if tr.step else 0.0
            eta = min((job.steps - tr.step) * rate, max(0.0, job.max_seconds - tr.elapsed))
            events.emit(
                "progress",
                step=tr.step,
                steps=job.steps,
                loss=round(loss, 6),
                elapsed_s=round(tr.elapsed, 2),
                eta_s=round(eta, 1),
            )
            if tr.step % job.checkpoint_every == 0:
                events.emit("checkpoint", step=tr.step, path=str(tr.save_checkpoint()))
    except Exception as exc:
        events.emit("error", phase="train", step=tr.step, message=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    tr.save_checkpoint()
    events.emit("checkpoint", step=tr.step, path=str(job.path("checkpoint")))
    if reason == "stopped":
        events.emit("stopped", step=tr.step, why=stop.reason, elapsed_s=round(tr.elapsed, 2))
        return EXIT_STOPPED
    result: dict[str, Any] = {
        "run_dir": job.run_dir,
        "base_sha256": tr.base_sha,
        "base_version": job.base_version,
        "steps": tr.step,
        "ended_by": reason,
        "train_s": round(tr.elapsed, 2),
        "final_loss": tr.last_loss,
    }
    try:
        result["adapter"] = str(tr.save_adapter())
        events.emit("adapter", path=result["adapter"])
        decision = tr.gate()
        result["gate"] = decision.to_dict()
        events.emit("gate", accepted=decision.accepted, reasons=decision.reasons)
        if decision.accepted and job.export:
            result["export"] = tr.export()
            events.emit("exported", **result["export"])
    except Exception as exc:
        events.emit("error", phase="gate/export", message=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    tr.D.dump_json(job.path("result"), result)
    events.emit("done", result=result)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m brain.localtrain.worker")
    p.add_argument("job", help="job.json written by the manager")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    args = p.parse_args(argv)
    try:
        job = TrainJob.read(args.job)
    except (OSError, ValueError, TypeError) as exc:
        print(json.dumps({"event": "error", "phase": "job", "message": str(exc)}), flush=True)
        return EXIT_BAD_JOB
    return run(job, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
