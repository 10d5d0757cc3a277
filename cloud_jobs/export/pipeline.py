"""The whole export: checkpoint + episodes -> gated artifacts and ``export_report.json``."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain import __version__
from common.digest import sha256_file

from . import parity as P
from .episodes import calibration_frames, load_export_data
from .report import ARTIFACT_FILES, PREFERENCE, artifact_entry, write_report


class ExportError(RuntimeError):
    """The export cannot run (bad checkpoint, no episodes, a conversion that failed)."""


@dataclass
class ExportOptions:
    checkpoint: Path
    episodes: Path
    out: Path
    litert: bool = True
    int8: bool = True
    mobile: bool = False
    version: str | None = None
    per_channel: bool = True
    max_calibration_frames: int = 256
    max_heldout_steps: int = 200
    fp32_atol: float = P.FP32_ATOL
    max_drop_pct: float = P.MAX_DROP_PCT
    closed_loop: bool = True
    eval_tracks: tuple[str, ...] = ("chicane", "snake", "random-101")
    eval_laps: int = 1
    eval_max_steps: int | None = None
    eval_render_size: str = "full"
    threads: int = 1
    log: Callable[[str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None (the report is strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


@dataclass
class _Run:
    """What the export's steps share: the policy, the held-out data and the report they fill."""

    opts: ExportOptions
    policy: Any
    out: Path
    version: str
    names: list[str] | None
    data: Any
    reference: list[Any]
    report: dict[str, Any]
    say: Callable[[str], None]
    models: dict[str, Any] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)

    def open_loop(self, backend: str) -> Any:
        """``backend``'s held-out rollouts against the torch reference and the labels."""
        heldout = self.data.heldout
        rollouts = [P.model_rollout(self.models[backend], s) for s in heldout]
        return P.open_loop(self.reference, rollouts, heldout)


def run_export(opts: ExportOptions) -> tuple[dict[str, Any], bool]:
    """Run every step; returns (report, all requested backends passed their gates)."""
    import torch

    say = opts.log or (lambda s: None)
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, opts.threads))
    run = _prepare(opts, say)
    fp32_mae = _onnx_fp32(run)
    if opts.int8:
        _int8(run, fp32_mae)
    if opts.litert:
        _litert(run)
    if opts.closed_loop and run.models:
        run.report["closed_loop"] = _closed_loop(run)
    elif not opts.closed_loop:
        run.report["closed_loop"] = {"skipped": True}
    if opts.mobile:
        _mobile(run)
    return _finish(run, t_start)


def _prepare(opts: ExportOptions, say: Callable[[str], None]) -> _Run:
    """Load the checkpoint and the episodes, roll out the torch reference, start the report."""
    from brain.model import load_policy

    ckpt = Path(opts.checkpoint)
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no such checkpoint")
    try:
        policy = load_policy(ckpt).eval()
    except Exception as exc:
        raise ExportError(f"{ckpt}: cannot load the policy checkpoint: {exc}") from exc
    cfg = policy.config
    if cfg.depth:
        raise ExportError("depth models have no step-graph contract yet; export needs an RGB model")
    ckpt_sha = sha256_file(ckpt)
    version = opts.version or f"{cfg.preset}-{ckpt_sha[:12]}"
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(cfg.action_names) if cfg.action_names else None

    data = load_export_data(
        opts.episodes,
        (int(cfg.image_hw[0]), int(cfg.image_hw[1])),
        action_dim=cfg.action_dim,
        max_calibration_frames=opts.max_calibration_frames,
        max_heldout_steps=opts.max_heldout_steps,
    )
    say(
        f"episodes: {data.summary()['calibration_frames']} calibration frames, "
        f"{data.summary()['heldout_steps']} held-out steps"
    )
    reference = [P.torch_rollout(policy, s) for s in data.heldout]

    report: dict[str, Any] = {
        "model_version": version,
        "preset": cfg.preset,
        "action_names": names or [],
        "image": {
            "height": cfg.image_hw[0],
            "width": cfg.image_hw[1],
            "channels": 3,
            "dtype": "uint8",
            "layout": "NHWC",
        },
        "recurrent": {"state": [1, cfg.state_size], "memory": [1, cfg.memory_size]},
        "artifacts": [],
        "preferred_backends": [],
        "parity": {},
        "closed_loop": {},
        "source": {"checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha},
        "data": data.summary(),
        "software_version": __version__,
        "model_config": cfg.to_dict(),
        "errors": {},
    }
    return _Run(opts, policy, out, version, names, data, reference, report, say)


def _onnx_fp32(run: _Run) -> float:
    """1. ONNX FP32, gated on parity with torch; returns its held-out MAE (INT8's baseline)."""
    from brain.policy.backends import load_backend

    from .onnx_step import export_fp32

    opts, report, models, passed, say = run.opts, run.report, run.models, run.passed, run.say
    fp32_path = run.out / ARTIFACT_FILES["onnx_fp32"]
    report["onnx"] = export_fp32(run.policy, fp32_path, version=run.version)
    models["onnx_fp32"] = load_backend(fp32_path, "onnx_fp32", opts.threads, action_names=run.names)
    r = P.fp32_gate(run.open_loop("onnx_fp32"), opts.fp32_atol)
    report["parity"]["onnx_fp32"] = r
    passed["onnx_fp32"] = r["passed"]
    fp32_mae: float = r["action_mae_vs_labels"]
    say(
        f"onnx_fp32: max |a - torch| {r['max_abs_action_diff']:.2e} "
        f"({'ok' if r['passed'] else 'FAILED'}, limit {opts.fp32_atol:g})"
    )
    return fp32_mae


def _int8(run: _Run, fp32_mae: float) -> None:
    """2. INT8, gated on its held-out MAE relative to FP32's; a failure is recorded, not raised."""
    from brain.model.quantize import quantize_int8
    from brain.policy.backends import load_backend

    opts, report, models, passed, say = run.opts, run.report, run.models, run.passed, run.say
    fp32_path = run.out / ARTIFACT_FILES["onnx_fp32"]
    int8_path = run.out / ARTIFACT_FILES["onnx_int8"]
    try:
        q = quantize_int8(
            fp32_path,
            int8_path,
            calibration_frames(run.data),
            per_channel=opts.per_channel,
            max_frames=opts.max_calibration_frames,
        )
        report["quantization"] = q.to_dict()
        models["onnx_int8"] = load_backend(
            int8_path, "onnx_int8", opts.threads, action_names=run.names
        )
        r = P.quantized_gate(run.open_loop("onnx_int8"), fp32_mae, opts.max_drop_pct)
        r["quantized_compute_nodes"] = q.quantized_compute_nodes
        r["passed"] = bool(r["passed"] and q.quantized_compute_nodes > 0)
        report["parity"]["onnx_int8"] = r
        passed["onnx_int8"] = r["passed"]
        say(
            f"onnx_int8: {q.quantized_compute_nodes} quantized compute nodes, held-out MAE "
            f"{r['action_mae_vs_labels']:.4f} vs fp32 {fp32_mae:.4f} "
            f"({r['mae_increase_pct']:+.2f} %, {'ok' if r['passed'] else 'FAILED'})"
        )
    except Exception as exc:
        report["errors"]["onnx_int8"] = f"{type(exc).__name__}: {exc}"
        passed["onnx_int8"] = False
        say(f"onnx_int8: FAILED: {exc}")


def _litert(run: _Run) -> None:
    """3. LiteRT, gated on parity with torch; a failure is recorded, not raised."""
    from brain.policy.backends import load_backend

    from .litert import export_litert

    opts, report, models, passed, say = run.opts, run.report, run.models, run.passed, run.say
    names, preset = run.names, run.policy.config.preset
    tfl = run.out / ARTIFACT_FILES["litert_fp32"]
    try:
        report["litert"] = export_litert(
            run.policy, tfl, {"version": run.version, "action_names": names or [], "preset": preset}
        )
        models["litert_fp32"] = load_backend(tfl, "litert_fp32", opts.threads, action_names=names)
        r = P.fp32_gate(run.open_loop("litert_fp32"), opts.fp32_atol)
        report["parity"]["litert_fp32"] = r
        passed["litert_fp32"] = r["passed"]
        say(
            f"litert_fp32: max |a - torch| {r['max_abs_action_diff']:.2e} "
            f"({'ok' if r['passed'] else 'FAILED'})"
        )
    except Exception as exc:
        report["errors"]["litert_fp32"] = f"{type(exc).__name__}: {exc}"
        passed["litert_fp32"] = False
        say(f"litert_fp32: FAILED: {exc}")


def _closed_loop(run: _Run) -> dict[str, Any]:
    """4. Closed loop in the sim: each other backend's drop against ONNX FP32 gates it too."""
    from brain.hardware.sim.closed_loop import EvalConditions

    opts, models, passed, say = run.opts, run.models, run.passed, run.say
    cond = EvalConditions(
        laps=opts.eval_laps, max_steps=opts.eval_max_steps, render_size=opts.eval_render_size
    )
    cl: dict[str, Any] = {
        "tracks": list(opts.eval_tracks),
        "conditions": dict(cond.__dict__),
        "baseline": "onnx_fp32",
        "max_drop_pct": opts.max_drop_pct,
        "backends": {},
        "drop": {},
        "passed": {},
    }
    base = P.closed_loop_metrics(models["onnx_fp32"], "onnx_fp32", opts.eval_tracks, cond)
    cl["backends"]["onnx_fp32"] = base
    say(
        f"closed loop onnx_fp32: laps {base['laps']} progress {base['progress_m']:.1f} m "
        f"mean|cte| {base['mean_abs_cte_m']:.3f} m"
    )
    worst = 0.0
    for b in ("onnx_int8", "litert_fp32"):
        if b not in models:
            continue
        m = P.closed_loop_metrics(models[b], b, opts.eval_tracks, cond)
        d = P.closed_loop_drop(base, m)
        ok = d["drop_pct"] <= opts.max_drop_pct and d["extra_off_track_events"] <= 0
        cl["backends"][b], cl["drop"][b], cl["passed"][b] = m, d, bool(ok)
        passed[b] = passed.get(b, False) and ok
        worst = max(worst, d["drop_pct"])
        say(
            f"closed loop {b}: laps {m['laps']} progress {m['progress_m']:.1f} m mean|cte| "
            f"{m['mean_abs_cte_m']:.3f} m -> drop {d['drop_pct']:+.2f} % "
            f"({'ok' if ok else 'FAILED'})"
        )
    cl["closed_loop_drop_pct"] = cl["drop"].get("onnx_int8", {}).get("drop_pct", worst)
    return cl


def _mobile(run: _Run) -> None:
    """5. Mobile files (Android LiteRT, iOS Core ML); a failure is recorded, not raised."""
    from .mobile import export_mobile

    out, report = run.out, run.report
    tfl = out / ARTIFACT_FILES["litert_fp32"]
    try:
        report["mobile"] = export_mobile(
            out / "mobile", run.policy, run.version, tfl if "litert_fp32" in run.models else None
        )
        run.say("mobile: android + ios written under mobile/")
    except Exception as exc:
        report["errors"]["mobile"] = f"{type(exc).__name__}: {exc}"
        run.say(f"mobile: FAILED: {exc}")


def _finish(run: _Run, t_start: float) -> tuple[dict[str, Any], bool]:
    """6. The report: artifacts that exist and were gated, preferences, verdict; stale files go."""
    opts, out, report, passed = run.opts, run.out, run.report, run.passed
    if "onnx_int8" in passed and not passed["onnx_fp32"]:
        # INT8 is gated *relative to* the FP32 graph: meaningless if that graph is not faithful.
        passed["onnx_int8"] = False
        report["errors"]["onnx_int8"] = (
            "not usable: the FP32 ONNX graph it comes from failed parity"
        )
    for b in ("onnx_fp32", "onnx_int8", "litert_fp32"):
        if (out / ARTIFACT_FILES[b]).is_file() and b in passed:
            report["artifacts"].append(artifact_entry(out, b, passed[b]))
        elif b not in passed:
            stale = out / ARTIFACT_FILES[b]
            if stale.is_file():  # left from an earlier run into the same directory
                stale.unlink()
    report["preferred_backends"] = [b for b in PREFERENCE if passed.get(b)]
    report["gates"] = {b: bool(v) for b, v in passed.items()}
    report["wall_s"] = round(time.perf_counter() - t_start, 2)
    ok = all(passed.values()) and not report["errors"].get("mobile")
    report["status"] = "passed" if ok else "failed"
    write_report(out, _clean(report))
    if opts.mobile is False and (out / "mobile").is_dir():
        shutil.rmtree(out / "mobile")
    return report, ok
