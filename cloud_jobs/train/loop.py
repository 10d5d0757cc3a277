"""The behaviour-cloning training run: set up, step, log, evaluate, checkpoint, finish.

One optimiser step = one batch of ``batch_size`` windows per process, each window T
consecutive steps of one episode (``step.py`` has the step and the recurrence recipe,
``feed.py`` the data, ``checkpoint.py`` what is saved, ``logs.py`` what is told).

Everything that decides what happens next is in the checkpoint, and the augmentation of a
window depends only on the seed and the sampler's item, so ``--resume`` continues exactly
where the run stopped: on CPU, 20 steps straight and 10 + 10 resumed give the same losses
and weights (with or without stateful TBPTT).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cloud_jobs.train import feed
from cloud_jobs.train import windows as W
from cloud_jobs.train.checkpoint import (
    Checkpointer,
    RunState,
    atomic_write,
    param_checksum,
    seed_everything,
)
from cloud_jobs.train.config import TrainConfig
from cloud_jobs.train.dist import Dist, setup
from cloud_jobs.train.errors import TrainingError
from cloud_jobs.train.logs import METRICS_FILE, Metrics, Progress, trim_metrics
from cloud_jobs.train.step import Stepper, bc_loss, check_recurrence
from cloud_jobs.train.validate import evaluate

if TYPE_CHECKING:
    from brain.model import Policy

__all__ = ["TrainingError", "bc_loss", "resolved_config", "train"]

_log = logging.getLogger("cloud_jobs.train")

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
POLICY_FILE = "policy.pt"


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
            if cfg.threads is not None:
                torch.set_num_threads(cfg.threads)
            run = _Run(cfg, dist, run_dir, t_start)
            run.open(resume, config_source)
            return run.run(max_minutes, stop_at_step)
    finally:
        torch.set_num_threads(threads)
        dist.close()


class _Run:
    """One training run on this process: what it was set up with and where it stands."""

    def __init__(self, cfg: TrainConfig, dist: Dist, run_dir: Path, t_start: float) -> None:
        self.cfg, self.dist, self.run_dir, self.t_start = cfg, dist, run_dir, t_start
        self.ckpt_dir = run_dir / "checkpoints"
        self.st = RunState()
        self.last_eval: dict[str, float] = {}
        self.last_loss = math.nan

    # ------------------------------------------------------------------- set-up
    def _check_run_dir(self, resume: bool) -> None:
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise TrainingError(f"--resume: {last} does not exist (nothing to resume)")
        if not resume and last.is_file():
            raise TrainingError(
                f"{self.run_dir} already holds a run ({last}); pass --resume to continue it, "
                "or choose another --run-dir"
            )
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier("run_dir")

    def open(self, resume: bool, config_source: str | None) -> None:
        """Model, data, optimiser, checkpoint (restored with ``resume``), files, loader."""
        cfg, dist, loop = self.cfg, self.dist, self.cfg.train
        self._check_run_dir(resume)
        seed_everything(cfg.seed)
        self.policy = policy = _build_policy(cfg)
        resolved = resolved_config(cfg, policy)
        frozen_slots = check_recurrence(cfg, policy)
        image_hw = (int(policy.config.image_hw[0]), int(policy.config.image_hw[1]))
        self.train_ws, self.val_ws, data_info = feed.prepare_data(cfg, dist, self.run_dir, image_hw)
        probe = W.WindowBatchSampler(
            len(self.train_ws), loop.batch_size, seed=cfg.seed, world=dist.world
        )
        self.per_epoch = per_epoch = probe.batches_per_epoch
        self.total_steps = (
            loop.steps
            if loop.steps is not None
            else max(1, math.ceil((loop.epochs or 1.0) * per_epoch))  # exactly one is set
        )
        self.data_info = data_info

        policy.to(dist.device)
        from cloud_jobs.train.optim import build_optimizers

        self.opts = build_optimizers(policy, cfg.optim, self.total_steps, dist.device)
        self.ckpt = Checkpointer(
            self.ckpt_dir, policy, self.opts, dist, total_steps=self.total_steps,
            per_epoch=per_epoch, keep=loop.keep_checkpoints,
            config=resolved.model_dump(mode="json"),
        )  # fmt: skip
        self.stepper = Stepper(cfg, dist, policy, self.opts, frozen_slots)
        if resume:
            self.st, blob = self.ckpt.restore(cfg.recurrence.stateful)
            self._warn_resume(blob)
        if cfg.recurrence.stateful and self.st.carry is None:
            self.st.carry = self.stepper.initial_carry()

        metrics_path = self.run_dir / METRICS_FILE
        if dist.is_main:
            if resume:
                trim_metrics(metrics_path, self.st.step)
            atomic_write(self.run_dir / CONFIG_FILE, resolved.to_yaml())
        self.metrics = Metrics(metrics_path if dist.is_main else None)
        self._write_head(resume, config_source)
        self.loader = feed.build_loader(cfg, dist, self.train_ws, self.st.step, per_epoch)
        self.val_ids = self.val_ws.spread(loop.eval_windows) if self.val_ws is not None else []

    def _warn_resume(self, blob: dict[str, Any]) -> None:
        if blob.get("world") != self.dist.world:
            _log.warning(
                "resuming a run of %s process(es) with %d: the data order changes from here",
                blob.get("world"),
                self.dist.world,
            )
        if int(blob.get("total_steps", self.total_steps)) != self.total_steps:
            _log.warning(
                "the run's length changed (%s -> %d steps); the schedule follows the new length",
                blob.get("total_steps"),
                self.total_steps,
            )

    def _write_head(self, resume: bool, config_source: str | None) -> None:
        cfg, dist = self.cfg, self.dist
        self.metrics.write(
            {
                "kind": "resume" if resume else "start",
                "step": self.st.step,
                "total_steps": self.total_steps,
                "world": dist.world,
                "device": str(dist.device),
                "backend": dist.backend,
                "params": sum(p.numel() for p in self.policy.parameters()),
                "optimizers": {k: len(v) for k, v in self.opts.param_names.items()},
                "batches_per_epoch": self.per_epoch,
                "recurrence": cfg.recurrence.model_dump(mode="json"),
                "config": config_source,
                "time": time.time(),
                **self.data_info,
            }
        )
        if dist.is_main:
            _log.info(
                "training %s: %d steps (%d per epoch), %d train / %d val windows of %d, "
                "%d process(es) on %s",
                cfg.name, self.total_steps, self.per_epoch, len(self.train_ws),
                self.data_info["windows_val"], cfg.train.window, dist.world, dist.device,
            )  # fmt: skip

    # ------------------------------------------------------------------- the loop
    def run(self, max_minutes: float | None, stop_at_step: int | None) -> dict[str, Any]:
        dist, loop, st = self.dist, self.cfg.train, self.st
        budget_min = max_minutes if max_minutes is not None else loop.max_minutes
        on_tty = sys.stderr.isatty()
        progress = Progress(
            self.total_steps,
            st.step,
            dist.is_main and (loop.progress == "on" or (loop.progress == "auto" and on_tty)),
        )
        acc_dtype = torch.float32 if dist.kind == "xla" else torch.float64
        # Summed on the device: reading a loss every step would stall CUDA/XLA.
        self.window_sums = torch.zeros(2, dtype=acc_dtype, device=dist.device)
        self.window_n, self.t_window = 0, time.monotonic()
        frames_per_step = loop.batch_size * loop.window * dist.world
        batches: Iterator[W.Batch] = iter(self.loader)
        loss: torch.Tensor | None = None
        stop_reason: str | None = None
        with _StopSignal() as stop_signal:
            while st.step < self.total_steps:
                t_step = time.monotonic()
                loss, gn, st.carry = self.stepper(next(batches), st.carry)
                st.step += 1
                st.samples += frames_per_step
                self.window_sums += torch.stack([loss.detach(), gn.detach()]).to(acc_dtype)
                self.window_n += 1
                st.train_time_s += time.monotonic() - t_step

                log_now = st.step % loop.log_every == 0 or st.step == self.total_steps
                if log_now:
                    self._log_train(frames_per_step)
                every = loop.eval_every
                if every is not None and st.step % every == 0 and st.step < self.total_steps:
                    self.last_eval = self._eval() or self.last_eval
                stop_reason = self._stop_reason(stop_signal, budget_min, stop_at_step, log_now)
                best = f" val {st.best_val:.4f}" if st.best_val else ""
                progress.update(f"loss {self.last_loss:.4f}{best}")
                if st.step % loop.checkpoint_every == 0 or stop_reason is not None:
                    self.ckpt.save("step", st)
                if stop_reason is not None:
                    break
        progress.close()
        return self._finish(stop_reason, loss)

    def _log_train(self, frames_per_step: int) -> None:
        dist, loop, st = self.dist, self.cfg.train, self.st
        agg = dist.all_reduce_sum(self.window_sums).cpu().double() / (self.window_n * dist.world)
        self.last_loss = float(agg[0])
        elapsed = max(time.monotonic() - self.t_window, 1e-9)
        self.metrics.write(
            {
                "kind": "train",
                "step": st.step,
                "epoch": round(st.step / self.per_epoch, 4),
                "loss": self.last_loss,
                "lr": self.opts.lr,
                "grad_norm": float(agg[1]),
                "samples_per_s": round(frames_per_step * self.window_n / elapsed, 2),
                "windows_per_s": round(loop.batch_size * dist.world * self.window_n / elapsed, 3),
                "samples": st.samples,
                "elapsed_s": round(time.monotonic() - self.t_start, 2),
            }
        )
        if not math.isfinite(self.last_loss):
            raise TrainingError(
                f"the loss is {self.last_loss} at step {st.step}; lower optim.lr or check the "
                f"data (last good checkpoint: {self.ckpt.last})"
            )
        self.window_sums = torch.zeros_like(self.window_sums)
        self.window_n, self.t_window = 0, time.monotonic()

    def _eval(self) -> dict[str, float]:
        if self.val_ws is None or not self.val_ids:
            return {}
        res = evaluate(self.policy, self.val_ws, self.val_ids, self.cfg, self.dist)
        if not res:
            return {}
        st = self.st
        improved = st.best_val is None or res["val_loss"] < st.best_val
        if improved:
            st.best_val = res["val_loss"]
            self.ckpt.save("best", st)
        self.metrics.write({"kind": "eval", "step": st.step, **res, "best": improved})
        return res

    def _stop_reason(
        self,
        stop_signal: _StopSignal,
        budget_min: float | None,
        stop_at_step: int | None,
        log_now: bool,
    ) -> str | None:
        """Why to stop after this step, if at all.  A stop that depends on time or signals
        must agree across ranks (checked at every step, or at log steps on XLA)."""
        dist, step = self.dist, self.st.step
        want_stop, why = 0.0, None
        if stop_signal.reason is not None:
            want_stop, why = 1.0, stop_signal.reason
        elif budget_min is not None and time.monotonic() - self.t_start >= budget_min * 60.0:
            want_stop, why = 1.0, f"wall budget of {budget_min:g} min"
        if dist.world > 1 and (dist.kind != "xla" or log_now):
            flag = dist.all_reduce_max(torch.tensor([want_stop], device=dist.device))
            want_stop = float(flag.cpu()[0])
            if want_stop > 0 and why is None:
                why = "another process stopped"
        if want_stop > 0 and step < self.total_steps:
            return why
        if stop_at_step is not None and stop_at_step <= step < self.total_steps:
            return f"--stop-at-step {stop_at_step}"
        return None

    # ------------------------------------------------------------------- the end
    def _finish(self, stop_reason: str | None, loss: torch.Tensor | None) -> dict[str, Any]:
        dist, st, loop = self.dist, self.st, self.cfg.train
        complete = st.step >= self.total_steps
        if complete:
            self.last_eval = self._eval() or self.last_eval
            if st.step % loop.checkpoint_every != 0:
                self.ckpt.save("step", st)
        # Every process must hold the same weights: compare checksums across ranks.
        dist.average_buffers(self.policy)
        ranks = dist.all_gather_object(
            {
                "rank": dist.rank,
                "checksum": param_checksum(self.policy),
                "step": st.step,
                "loss": self.last_loss,
                "local_loss": float(loss.detach().float().cpu()) if loss is not None else None,
            }
        )
        in_sync = len({r["checksum"] for r in ranks}) == 1
        if not in_sync:
            _log.error("the processes' weights differ at the end: %s", ranks)
        summary = {
            "status": "complete" if complete else "stopped",
            "stop_reason": stop_reason,
            "step": st.step,
            "total_steps": self.total_steps,
            "epochs": round(st.step / self.per_epoch, 4),
            "final_train_loss": self.last_loss,
            "best_val_loss": st.best_val,
            "final_val": self.last_eval,
            "samples": st.samples,
            "train_time_s": round(st.train_time_s, 2),
            "samples_per_s": round(st.samples / st.train_time_s, 2)
            if st.train_time_s > 0
            else None,
            "wall_s": round(time.monotonic() - self.t_start, 2),
            "world": dist.world,
            "device": str(dist.device),
            "compiled": self.stepper.compiled,
            "ranks": ranks,
            "ranks_in_sync": in_sync,
            "policy": str(self.run_dir / POLICY_FILE),
            **self.data_info,
        }
        if dist.is_main:
            self._write_outputs(summary)
        self.metrics.close()
        dist.barrier("end")
        return summary

    def _write_outputs(self, summary: dict[str, Any]) -> None:
        from brain.model import save_policy

        policy = self.policy.to("cpu") if self.dist.kind == "xla" else self.policy
        save_policy(policy, self.run_dir / POLICY_FILE)
        self.metrics.write({"kind": "end", **{k: v for k, v in summary.items() if k != "ranks"}})
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        atomic_write(self.run_dir / SUMMARY_FILE, text)
        _log.info(
            "%s at step %d/%d%s; policy: %s",
            summary["status"],
            summary["step"],
            self.total_steps,
            f" ({summary['stop_reason']})" if summary["stop_reason"] else "",
            self.run_dir / POLICY_FILE,
        )
