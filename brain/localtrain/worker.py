"""The fine-tune itself, run as a subprocess: ``python -m brain.localtrain.worker JOB.json``.

With the two modules it runs, :mod:`.trainer` (steps 1-3) and :mod:`.candidate` (step 4),
the only part of ``brain.localtrain`` that imports torch and peft.  It lowers its own CPU
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
import json
import math
import os
import signal
import sys
import time
from typing import Any

from brain.localtrain.candidate import export_candidate, run_gate
from brain.localtrain.job import EXIT_BAD_JOB, EXIT_ERROR, EXIT_STOPPED, TrainJob
from brain.localtrain.trainer import Events, Trainer


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


def lower_priority(nice: int, threads: int) -> None:
    """Before torch is imported: nice, and every thread pool capped."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def run(job: TrainJob, *, resume: bool = False) -> int:
    """The worker's whole life; returns its exit code."""
    events = Events(job.path("progress"))
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
        decision = run_gate(tr)
        result["gate"] = decision.to_dict()
        events.emit("gate", accepted=decision.accepted, reasons=decision.reasons)
        if decision.accepted and job.export:
            result["export"] = export_candidate(tr)
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
