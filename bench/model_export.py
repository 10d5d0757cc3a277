"""Benchmark: the pi5 policy exported to ONNX FP32 / INT8 and LiteRT -- latency per backend
and thread count, INT8 speed-up, artifact sizes and the closed-loop drop of INT8.

With ``--checkpoint`` and ``--episodes`` the real export runs first (``cloud_jobs export``:
parity gates, closed loop in the sim), so ``closed_loop_drop_pct`` is measured on a trained
policy; without them an untrained pi5 policy is exported (latency does not depend on the
weights; the closed-loop drop is then null).  Latency comes from ``cloud_jobs bench``
(interleaved rounds; the machine is shared, so read p50 rather than p99).

    python bench/model_export.py --checkpoint runs/pi5/policy.pt --episodes data/episodes \
        --json bench/results/model_export.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness import print_table

from cloud_jobs import bench
from cloud_jobs.export.pipeline import ExportOptions, run_export


def _export_summary(report: dict) -> dict:
    return {
        "status": report["status"],
        "model_version": report["model_version"],
        "gates": report["gates"],
        "preferred_backends": report["preferred_backends"],
        "parity": {
            b: {k: r.get(k) for k in ("max_abs_action_diff", "action_mae_vs_labels", "steps")}
            for b, r in report["parity"].items()
        },
        "closed_loop": {
            b: {k: m.get(k) for k in ("laps", "progress_m", "mean_abs_cte_m", "off_track_events")}
            for b, m in report["closed_loop"].get("backends", {}).items()
        },
        "closed_loop_tracks": report["closed_loop"].get("tracks"),
        "quantization": {
            k: report.get("quantization", {}).get(k)
            for k in (
                "quant_format",
                "per_channel",
                "calibration_frames",
                "excluded_nodes",
                "quantized_compute_nodes",
            )
        },
        "wall_s": report.get("wall_s"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="trained policy.pt (else an untrained pi5)")
    ap.add_argument("--episodes", type=Path, help="RLDS episodes for calibration and parity")
    ap.add_argument("--out", type=Path, help="keep the export here (default: a temp dir)")
    ap.add_argument("--export-dir", type=Path, help="bench this existing export (no re-export)")
    ap.add_argument("--eval-tracks", default="chicane,snake,random-101")
    ap.add_argument("--eval-laps", type=int, default=1)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="latency bar chart (PNG)")
    args = ap.parse_args()
    if (args.checkpoint is None) != (args.episodes is None):
        ap.error("--checkpoint and --episodes go together")
    tmp = tempfile.TemporaryDirectory(prefix="cb-bench-model-")
    root = Path(tmp.name)
    out = args.out or root / "export"
    export_summary = None
    if args.export_dir is not None:
        report = json.loads((args.export_dir / "export_report.json").read_text())
        export_summary = {**_export_summary(report), "reused": str(args.export_dir)}
        src = ["--export-dir", str(args.export_dir)]
    elif args.checkpoint is not None:
        report, _ok = run_export(
            ExportOptions(
                checkpoint=args.checkpoint,
                episodes=args.episodes,
                out=out,
                eval_tracks=tuple(t for t in args.eval_tracks.split(",") if t),
                eval_laps=args.eval_laps,
                log=lambda s: print(f"export: {s}", file=sys.stderr, flush=True),
            )
        )
        export_summary = _export_summary(report)
        src = ["--export-dir", str(out)]
    else:
        src = ["--preset", "pi5"]
    bjson = root / "bench.json"
    rc = bench.cli_main(
        [*src, "--threads", args.threads, "--rounds", str(args.rounds), "--no-thresholds",
         "--json", str(bjson), "--plot", str(args.plot or root / "latency.png"),
         "--quiet"]
    )  # fmt: skip
    if rc != 0:
        return rc
    doc = json.loads(bjson.read_text())
    rows = [r for r in doc["rows"] if not r.get("skipped")]
    print_table(
        "policy step latency (pi5 preset, ms; shared 2-core machine, noisy)",
        rows,
        [
            (k, k)
            for k in (
                "backend",
                "provider",
                "threads",
                "p50_ms",
                "p99_ms",
                "cpu_p50_ms",
                "size_bytes",
            )
        ],
    )
    keys = ("onnx_fp32_p50_ms", "onnx_int8_p50_ms", "litert_p50_ms", "int8_speedup",
            "int8_speedup_p10", "int8_speedup_min_latency", "onnx_fp32_cpu_p50_ms",
            "onnx_int8_cpu_p50_ms", "litert_cpu_p50_ms", "int8_speedup_cpu",
            "closed_loop_drop_pct")  # fmt: skip
    for k in keys:
        print(f"{k:>26}: {doc.get(k)}")
    print(f"{'sizes':>26}: {doc['sizes']}")
    result = {k: doc.get(k) for k in keys}
    result.update(
        sizes=doc["sizes"], rows=rows, machine=doc["machine"], export=export_summary,
        targets={"int8_speedup": 1.5, "p50_ms_one_thread": 3.0},
        trained=args.checkpoint is not None or args.export_dir is not None,
    )  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
