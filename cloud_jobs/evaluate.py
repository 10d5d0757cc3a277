"""Closed-loop evaluation of a driving policy in the simulator.

``cloud_jobs evaluate --policy RUN_DIR/policy.pt`` drives the policy around held-out
layouts, step by step at the control rate, with its recurrent state carried from
tick to tick exactly as the robot's policy runner does, and scores it with the
simulator's own metrics (cross-track error, off-track events, laps, lap times,
speed).  The sim's pure-pursuit expert drives the same layouts under the same
conditions as a baseline, side by side.

Images follow the robot's path by default: the camera renders 640x480 and
``preprocess_frame`` (INTER_AREA) brings it to the network's 120x160.
``--render-size model`` renders straight at the network's size instead, ~10x
cheaper; the two agree closely (mean absolute pixel difference of a few grey
levels, see ``compare_render_paths``) but only the default is what the robot sees.

A run ends when the laps are done, the step budget is spent, or the car has left
the track for good (off the road for ``--off-track-timeout`` seconds in a row,
or further than ``LOST_MARGIN_M`` beyond the edge).

``--onnx model.onnx`` evaluates an exported step graph through
:func:`brain.policy.load_model` and ``LoadedModel.step`` (ONNX Runtime, as on the
robot) instead of torch; the metrics are the same, which is what an export parity
gate compares.

Outputs under ``--out``: ``eval.json`` and PNG plots (per-track trajectory over
the track with off-track points marked, cross-track error over time, and the
training curves when the run directory has ``metrics.ndjson``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brain import __version__
from brain.config import CameraConfig
from brain.hardware.sim import SimWorld, make_track

# The driving core lives beside the simulator so the robot's promotion gate can use it too.
from brain.hardware.sim.closed_loop import (  # noqa: F401 - re-exported API
    BUDGET_MIN_SPEED_MPS,
    LOST_MARGIN_M,
    MODEL_HW,
    STALL_PROGRESS_M,
    Driver,
    EvalConditions,
    ExpertDriver,
    Trace,
    resize_frame,
    run_drive,
    sim_config,
    step_budget,
)
from cloud_jobs.drivers import OnnxDriver, TorchDriver, set_memorization  # noqa: F401 - re-exported
from cloud_jobs.suite import SUITES, get_suite, run_suite, summarize, table_markdown, write_suite
from common.digest import sha256_file
from common.durable import write_json

ACTION_NAMES = ("steering", "throttle")
DEFAULT_TRACKS = ("chicane", "snake", "random-101")


# ----------------------------------------------------------------------------- one run


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def track_edges(track_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centreline, left edge, right edge) as closed Nx2 polylines."""
    tr = make_track(track_name)
    normal = np.stack([-np.sin(tr.heading), np.cos(tr.heading)], axis=1)
    c = np.vstack([tr.points, tr.points[:1]])
    n = np.vstack([normal, normal[:1]])
    return c, c + n * tr.half_width, c - n * tr.half_width


def plot_track(
    track: str, traces: dict[str, Trace], results: dict[str, dict[str, Any]], path: Path
) -> None:
    """Trajectory over the track and cross-track error over time, one row per track."""
    plt = _plt()
    half = make_track(track).half_width
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.4]})
    centre, left, right = track_edges(track)
    ax0.fill(
        np.concatenate([left[:, 0], right[::-1, 0]]),
        np.concatenate([left[:, 1], right[::-1, 1]]),
        color="0.9",
        zorder=0,
    )
    ax0.plot(left[:, 0], left[:, 1], color="0.3", lw=1)
    ax0.plot(right[:, 0], right[:, 1], color="0.3", lw=1)
    ax0.plot(centre[:, 0], centre[:, 1], color="0.6", lw=0.8, ls="--")
    colors = {"expert": "tab:green", "policy": "tab:blue"}
    for name, tr in traces.items():
        col = colors.get(name)
        x, y, cte = np.array(tr.x), np.array(tr.y), np.array(tr.cte)
        r = results[name]
        label = (
            f"{name}: {r['laps']} laps, mean|cte| {r['mean_abs_cte_m']:.3f} m, "
            f"off {r['off_track_events']}"
        )
        ax0.plot(x, y, lw=1.2, color=col, label=label)
        off = np.abs(cte) > half
        if off.any():
            ax0.scatter(x[off], y[off], s=10, marker="x", color="tab:red", zorder=3)
        ax1.plot(tr.t, cte, lw=1, color=col, label=name)
    if any((np.abs(np.array(tr.cte)) > half).any() for tr in traces.values()):
        ax0.scatter([], [], s=10, marker="x", color="tab:red", label="off track")
    x0, y0, yaw0 = centre[0, 0], centre[0, 1], make_track(track).heading[0]
    ax0.annotate(
        "",
        xy=(x0 + 0.8 * math.cos(yaw0), y0 + 0.8 * math.sin(yaw0)),
        xytext=(x0, y0),
        arrowprops={"arrowstyle": "->", "color": "k"},
    )
    ax0.set_aspect("equal")
    ax0.set_title(f"{track}: trajectory")
    ax0.set_xlabel("x (m)")
    ax0.set_ylabel("y (m)")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    for sgn in (1, -1):
        ax1.axhline(sgn * half, color="tab:red", lw=0.8, ls="--")
    ax1.axhline(0, color="0.5", lw=0.5)
    ax1.set_title(f"{track}: cross-track error (road edge dashed)")
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("cte (m, + left)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_training_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line of a run still going
            if isinstance(row, dict):
                rows.append(row)
    return rows


def plot_training(metrics_path: Path, path: Path) -> bool:
    """Every numeric ``*loss*`` key of ``metrics.ndjson`` against ``step``; False if none."""
    rows = read_training_metrics(metrics_path)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(rows):
        step = row.get("step", row.get("global_step", i))
        if not isinstance(step, (int, float)):
            continue
        for k, v in row.items():
            if "loss" in k and isinstance(v, (int, float)) and math.isfinite(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(float(step))
                ys.append(float(v))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 50 else None, label=k)
    if all(min(ys) > 0 for _, ys in series.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training curves ({metrics_path.parent.name})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    policy: Driver | None,
    tracks: Sequence[str],
    conditions: EvalConditions,
    out: Path | None = None,
    *,
    expert_baseline: bool = True,
    run_dir: Path | None = None,
    info: dict[str, Any] | None = None,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drive ``policy`` (and the expert) on every track; write eval.json and plots to ``out``."""
    t0 = time.perf_counter()
    drivers: list[Driver] = []
    if policy is not None:
        drivers.append(policy)
    if expert_baseline:
        drivers.append(ExpertDriver())
    if not drivers:
        raise ValueError("nothing to evaluate: no policy and no expert baseline")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "kind": "closed_loop_eval",
        "software_version": __version__,
        **(info or {}),
        "conditions": {
            **conditions.__dict__,
            "step_budget": {t: step_budget(t, conditions) for t in tracks},
        },
        "tracks": {},
        "plots": {},
    }
    for track in tracks:
        make_track(track)  # bad names fail before any driving
    for track in tracks:
        rows: dict[str, dict[str, Any]] = {}
        traces: dict[str, Trace] = {}
        for d in drivers:
            rows[d.name], traces[d.name] = run_drive(d, track, conditions)
            if log:
                r = rows[d.name]
                log(
                    f"{track:>12} {d.name:>7}: laps {r['laps']}/{conditions.laps}"
                    f" mean|cte| {r['mean_abs_cte_m']:.3f} m max {r['max_abs_cte_m']:.3f} m"
                    f" off-track {r['off_track_events']} speed {r['mean_speed_mps']:.2f} m/s"
                    f" steps {r['steps']} ({r['termination']}, {r['wall_s']:.1f}s)"
                )
        result["tracks"][track] = rows
        if out is not None and plots:
            png = out / f"track_{track}.png"
            plot_track(track, traces, rows, png)
            result["plots"][track] = png.name
    for d in drivers:
        result.setdefault("summary", {})[d.name] = summarize(
            [result["tracks"][t][d.name] for t in tracks]
        )
    if out is not None and plots and run_dir is not None:
        mpath = run_dir / "metrics.ndjson"
        if mpath.is_file() and plot_training(mpath, out / "training_curves.png"):
            result["plots"]["training"] = "training_curves.png"
    result["wall_s"] = time.perf_counter() - t0
    if out is not None:
        write_json(out / "eval.json", result, sort_keys=False)
    return result


def compare_render_paths(
    track: str = "chicane", samples: int = 20, seed: int = 0
) -> dict[str, float]:
    """How close a direct 160x120 render is to 640x480 + INTER_AREA, over one expert lap."""
    c = EvalConditions(seed=seed)
    full = SimWorld(sim_config(track, c), CameraConfig(width=640, height=480))
    small = SimWorld(sim_config(track, c), CameraConfig(width=MODEL_HW[1], height=MODEL_HW[0]))
    diffs = []
    for k in range(samples * 10):
        a = full.expert_action()
        full.step(a, 0.05)
        small.step(a, 0.05)
        if k % 10 == 0:
            x = resize_frame(full.render_rgb()).astype(np.int16)
            y = small.render_rgb().astype(np.int16)
            diffs.append(np.abs(x - y).mean())
    return {"mean_abs_diff": float(np.mean(diffs)), "max_frame_mean_abs_diff": float(np.max(diffs))}


# ----------------------------------------------------------------------------- CLI


def build_parser(prog: str = "cloud_jobs evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Closed-loop evaluation in the simulator.")
    p.add_argument("--policy", type=Path, help="RUN_DIR/policy.pt (torch)")
    p.add_argument("--onnx", type=Path, help="evaluate this ONNX step graph (ONNX Runtime)")
    p.add_argument(
        "--tracks",
        default=None,
        help=f"comma-separated layouts (default {','.join(DEFAULT_TRACKS)})",
    )
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default=None,
        help="the generalization suite: unseen layouts x lighting x texture (cloud_jobs.suite)",
    )
    p.add_argument("--laps", type=int, default=None, help="laps per run (default 3; suite: 1)")
    p.add_argument("--rate", type=float, default=20.0, help="control rate (Hz)")
    p.add_argument("--max-steps", type=int, default=None, help="step budget per track")
    p.add_argument("--seed", type=int, default=0, help="sim seed (texture, sensor noise)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument(
        "--memorize",
        action="store_true",
        default=None,
        help="test-time memorization on (memory lr multiplier --memory-lr, default 1)",
    )
    mem.add_argument(
        "--no-memorize",
        dest="memorize",
        action="store_false",
        help="freeze the fast memory (lr 0)",
    )
    p.add_argument("--memory-lr", type=float, default=None, help="memory lr multiplier")
    p.add_argument("--surprise-threshold", type=float, default=None)
    p.add_argument("--steering-trim", type=float, default=0.0, help="servo mis-trim")
    p.add_argument(
        "--memorization-trim",
        type=float,
        default=None,
        metavar="T",
        help="instead of the evaluation: memorize vs frozen at steering trim +T, -T and 0, "
        "written to OUT/memorization.json (cloud_jobs.memorization)",
    )
    p.add_argument("--lighting", default="day", choices=("day", "dusk", "overcast", "glare"))
    p.add_argument("--texture", default="asphalt", choices=("asphalt", "concrete", "carpet"))
    p.add_argument("--width", type=int, default=640, help="camera width before preprocessing")
    p.add_argument("--height", type=int, default=480)
    p.add_argument(
        "--render-size",
        choices=("full", "model"),
        default="full",
        help="full: render the camera size and resize like the robot; model: render 160x120",
    )
    p.add_argument("--off-track-timeout", type=float, default=2.0, help="seconds off = lost")
    p.add_argument(
        "--stall-timeout", type=float, default=10.0, help="seconds without progress = stalled"
    )
    p.add_argument("--out", type=Path, default=None, help="output dir (default RUN_DIR/eval)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--expert-baseline", dest="expert", action="store_true", default=True)
    base.add_argument("--no-expert-baseline", dest="expert", action="store_false")
    p.add_argument("--threads", type=int, default=1, help="inference threads")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _memory_settings(args: argparse.Namespace) -> tuple[float | None, float | None]:
    lr = args.memory_lr
    if args.memorize is True and lr is None:
        lr = 1.0
    elif args.memorize is False:
        if lr not in (None, 0.0):
            raise ValueError("--no-memorize contradicts --memory-lr")
        lr = 0.0
    return lr, args.surprise_threshold


def _conditions(args: argparse.Namespace, tracks: list[str]) -> EvalConditions:
    """The run's conditions from the options; ValueError names what is wrong."""
    for t in tracks:
        make_track(t)
    if args.suite is not None:
        get_suite(args.suite)
        if args.tracks is not None:
            raise ValueError("--suite chooses the layouts: drop --tracks")
    laps = args.laps if args.laps is not None else (1 if args.suite else 3)
    if laps < 1:
        raise ValueError("--laps must be >= 1")
    conditions = EvalConditions(
        laps=laps,
        rate_hz=args.rate,
        max_steps=args.max_steps,
        seed=args.seed,
        lighting=args.lighting,
        texture=args.texture,
        steering_trim=args.steering_trim,
        width=args.width,
        height=args.height,
        render_size=args.render_size,
        off_track_timeout_s=args.off_track_timeout,
        stall_timeout_s=args.stall_timeout,
    )
    sim_config(tracks[0] if tracks else "oval", conditions)  # validates the trim etc.
    return conditions


def _load_driver(
    args: argparse.Namespace, lr: float | None, threshold: float | None
) -> tuple[Driver | None, Path | None, dict[str, Any]]:
    """(driver, run dir, info for eval.json); the expert alone when no model is given."""
    if args.onnx is not None:
        onnx = OnnxDriver(args.onnx, threads=args.threads)
        info: dict[str, Any] = {
            "backend": "onnx",
            "onnx": str(args.onnx),
            "model_version": onnx.model.version,
        }
        if args.policy is not None:  # the checkpoint this graph was exported from
            info["policy"] = str(args.policy)
            info["checkpoint_sha256"] = sha256_file(args.policy)
        return onnx, args.onnx.parent, info
    if args.policy is not None:
        from brain.model import load_policy

        policy = load_policy(args.policy)
        driver = TorchDriver(
            policy, memory_lr=lr, surprise_threshold=threshold, threads=args.threads
        )
        info = {
            "backend": "torch",
            "policy": str(args.policy),
            # what the release gate matches against the bundle's provenance
            "checkpoint_sha256": sha256_file(args.policy),
            "memory_lr": lr,
            "surprise_threshold": threshold,
        }
        return driver, args.policy.parent, info
    return None, None, {"backend": "expert-only"}


def _memorization_cli(
    args: argparse.Namespace,
    tracks: list[str],
    conditions: EvalConditions,
    log: Callable[[str], None] | None,
) -> int:
    """``--memorization-trim T``: the torch policy's memory on and off, with and without trim."""
    from cloud_jobs.memorization import compare

    clash = [
        flag
        for flag, given in (
            ("--onnx", args.onnx is not None),
            ("--suite", args.suite is not None),
            ("--memorize/--no-memorize", args.memorize is not None),
            ("--memory-lr", args.memory_lr is not None),
            ("--steering-trim", args.steering_trim != 0.0),
        )
        if given
    ]
    if args.policy is None or clash:
        why = f"drop {', '.join(clash)}" if clash else "give --policy"
        print(f"evaluate: --memorization-trim sets trims and memory itself: {why}", file=sys.stderr)
        return 2
    try:
        from brain.model import load_policy

        policy = load_policy(args.policy)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"evaluate: cannot load the policy: {e}", file=sys.stderr)
        return 1

    def driver(lr: float) -> Driver:
        return TorchDriver(
            policy, memory_lr=lr, surprise_threshold=args.surprise_threshold, threads=args.threads
        )

    try:
        result = compare(driver, tracks, conditions, args.memorization_trim, log=log)
    except ValueError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    result |= {
        "software_version": __version__,
        "policy": str(args.policy),
        "checkpoint_sha256": sha256_file(args.policy),
    }
    out = args.out if args.out is not None else args.policy.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "memorization.json", result, sort_keys=False)
    print(json.dumps(result["summary"], indent=2))
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``cloud_jobs evaluate``; returns a process exit code."""
    args = build_parser().parse_args(argv)
    tracks = [t.strip() for t in (args.tracks or ",".join(DEFAULT_TRACKS)).split(",") if t.strip()]
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        conditions = _conditions(args, tracks)
        lr, threshold = _memory_settings(args)
    except ValueError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if args.memorization_trim is not None:
        return _memorization_cli(args, tracks, conditions, log)
    if args.policy is None and args.onnx is None and not args.expert:
        print("evaluate: give --policy or --onnx (or keep the expert baseline)", file=sys.stderr)
        return 2
    try:
        driver, run_dir, info = _load_driver(args, lr, threshold)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"evaluate: cannot load the policy: {e}", file=sys.stderr)
        return 1
    out = args.out
    if out is None:
        out = (run_dir / "eval") if run_dir is not None else Path("eval")
    if args.suite is not None:
        result = run_suite(
            driver,
            get_suite(args.suite),
            conditions,
            expert_baseline=args.expert,
            info=info,
            log=log,
        )
        write_suite(result, out)
        if log:
            log(table_markdown(result))
    else:
        result = evaluate(
            driver,
            tracks,
            conditions,
            out,
            expert_baseline=args.expert,
            run_dir=run_dir,
            info=info,
            plots=not args.no_plots,
            log=log,
        )
    if log:
        log(f"wrote {out / 'eval.json'} ({result['wall_s']:.1f}s)")
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main())
