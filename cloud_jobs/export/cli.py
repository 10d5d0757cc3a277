"""``cloud_jobs export``: argument parsing and exit codes (0 all gates passed, 1 a gate or
conversion failed -- the report is still written, listing only what passed as preferred --,
2 bad arguments or unusable input)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import parity as P


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloud_jobs export",
        description="Export a policy to ONNX FP32/INT8 and LiteRT with parity gates.",
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="policy.pt (brain.model checkpoint)"
    )
    p.add_argument(
        "--episodes", type=Path, required=True, help="RLDS episode root (calibration + held-out)"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--version", default=None, help="model version (default PRESET-SHA12 of the checkpoint)"
    )
    p.add_argument("--no-litert", dest="litert", action="store_false", help="skip the LiteRT model")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip INT8 quantization")
    p.add_argument("--mobile", action="store_true", help="also write Android + iOS (Core ML) files")
    p.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_false",
        help="per-tensor INT8 weights (default per output channel)",
    )
    p.add_argument("--calibration-frames", type=int, default=256)
    p.add_argument("--heldout-steps", type=int, default=200, help="max steps per held-out episode")
    p.add_argument("--fp32-atol", type=float, default=P.FP32_ATOL)
    p.add_argument(
        "--max-drop-pct",
        type=float,
        default=P.MAX_DROP_PCT,
        help="INT8/LiteRT may be at most this much worse than FP32 (percent)",
    )
    p.add_argument(
        "--eval-tracks",
        default="chicane,snake,random-101",
        help="closed-loop layouts (comma-separated)",
    )
    p.add_argument("--eval-laps", type=int, default=1)
    p.add_argument("--eval-max-steps", type=int, default=None)
    p.add_argument("--eval-render-size", choices=("full", "model"), default="full")
    p.add_argument("--no-closed-loop", dest="closed_loop", action="store_false")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda s: print(f"export: {s}", file=sys.stderr, flush=True))
    tracks = tuple(t.strip() for t in args.eval_tracks.split(",") if t.strip())
    from brain.hardware.sim import make_track

    try:
        for t in tracks:
            make_track(t)
        if not tracks and args.closed_loop:
            raise ValueError("--eval-tracks is empty (or pass --no-closed-loop)")
        if args.eval_laps < 1 or args.threads < 1 or args.calibration_frames < 1:
            raise ValueError("--eval-laps, --threads and --calibration-frames must be >= 1")
    except ValueError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2

    from .episodes import EpisodeDataError
    from .pipeline import ExportError, ExportOptions, run_export

    opts = ExportOptions(
        checkpoint=args.checkpoint,
        episodes=args.episodes,
        out=args.out,
        litert=args.litert,
        int8=args.int8,
        mobile=args.mobile,
        version=args.version,
        per_channel=args.per_channel,
        max_calibration_frames=args.calibration_frames,
        max_heldout_steps=args.heldout_steps,
        fp32_atol=args.fp32_atol,
        max_drop_pct=args.max_drop_pct,
        closed_loop=args.closed_loop,
        eval_tracks=tracks,
        eval_laps=args.eval_laps,
        eval_max_steps=args.eval_max_steps,
        eval_render_size=args.eval_render_size,
        threads=args.threads,
        log=log,
    )
    try:
        report, ok = run_export(opts)
    except (ExportError, EpisodeDataError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    summary = {
        "status": report["status"],
        "model_version": report["model_version"],
        "preferred_backends": report["preferred_backends"],
        "gates": report["gates"],
        "errors": report["errors"],
        "report": str(args.out / "export_report.json"),
    }
    print(json.dumps(summary, indent=2))
    if not ok:
        failed = [b for b, v in report["gates"].items() if not v] + list(report["errors"])
        print(
            f"export: FAILED gate(s) or step(s): {sorted(set(failed))} -- see the report; "
            "only passing backends are listed as preferred",
            file=sys.stderr,
        )
        return 1
    return 0
