"""``continuon pipeline`` / ``cloud_jobs pipeline``: the end-to-end run on the simulated robot."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_jobs.pipeline.run import PipelineOptions

# The pipeline itself is imported by the handler, not here: `continuon` loads
# this module to list the subcommand, and that must stay cheap.


def _add_args(p: argparse.ArgumentParser) -> None:
    from cloud_jobs.release import add_gate_args  # only when the subcommand is parsed

    p.add_argument("--budget-minutes", type=float, default=20.0, help="wall-time budget")
    p.add_argument(
        "--skip-train",
        action="store_true",
        help="reuse the last trained model: export, bundle, publish, update, drive, bench only",
    )
    p.add_argument("--runs-root", type=Path, default=Path("runs/pipeline"))
    p.add_argument("--run-dir", type=Path, default=None, help="exact run folder (default: new)")
    p.add_argument("--model", choices=("pi5", "tiny"), default="pi5")
    p.add_argument("--train-steps", type=int, default=None, help="override the config's steps")
    p.add_argument("--record-seconds", type=float, default=45.0, help="per daemon episode")
    p.add_argument("--daemon-episodes", type=int, default=2)
    p.add_argument("--demo-episodes", type=int, default=12)
    p.add_argument("--demo-steps", type=int, default=400)
    p.add_argument(
        "--demo-trim-range",
        type=float,
        default=0.1,
        help="servo trim per demo episode drawn in [-X, X] (trim-aware labels; 0: none)",
    )
    p.add_argument("--eval-tracks", default="chicane")
    p.add_argument("--laps", type=int, default=1, help="closed-loop evaluation laps per track")
    p.add_argument(
        "--memorization-trim",
        type=float,
        default=0.15,
        metavar="T",
        help="report memorize vs frozen with the steering mis-trimmed by +-T and 0 (0: off)",
    )
    p.add_argument("--drive-laps", type=int, default=1, help="autonomous laps on the daemon")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish although the release gate fails (experiments; the bundle records it)",
    )
    add_gate_args(p)


def _check_memorization_trim(trim: float) -> None:
    """Refused before anything runs, not after training (0 is "off" here)."""
    from cloud_jobs.memorization import check_trim

    if not (math.isfinite(trim) and trim >= 0):
        raise ValueError(f"--memorization-trim must be >= 0 (0: off), got {trim}")
    try:
        if trim > 0:
            check_trim(trim)
    except ValueError as exc:
        raise ValueError(f"--memorization-trim {trim}: {exc}") from None


def _options(args: argparse.Namespace) -> PipelineOptions:
    from cloud_jobs.pipeline.run import PipelineOptions
    from cloud_jobs.release import gate_from_args

    _check_memorization_trim(args.memorization_trim)
    return PipelineOptions(
        budget_minutes=args.budget_minutes,
        skip_train=args.skip_train,
        runs_root=args.runs_root,
        model=args.model,
        train_steps=args.train_steps,
        record_seconds=args.record_seconds,
        daemon_episodes=args.daemon_episodes,
        demo_episodes=args.demo_episodes,
        demo_steps=args.demo_steps,
        demo_trim_range=args.demo_trim_range,
        eval_tracks=args.eval_tracks,
        laps=args.laps,
        memorization_trim=args.memorization_trim,
        drive_laps=args.drive_laps,
        gate=gate_from_args(args),
        force=args.force,
    )


def _run(args: argparse.Namespace) -> int:
    from cloud_jobs.pipeline.run import run_pipeline
    from cloud_jobs.pipeline.stages import StageFailed

    try:
        opts = _options(args)
    except ValueError as exc:  # an option out of range (gate thresholds: named by pydantic)
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = run_pipeline(opts, args.run_dir)
    except StageFailed as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return 1
    print(f"report: {run_dir / 'report.md'}")
    return 0


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser("pipeline", help="end-to-end run on the simulated robot (make demo)")
    _add_args(p)
    p.set_defaults(func=_run)


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cloud_jobs pipeline", description=__doc__)
    _add_args(p)
    return _run(p.parse_args(argv))
