"""``cloud_jobs bench``: step latency of an exported policy per backend, execution provider
and thread count, with regression thresholds.

Measures what the robot runs: one step graph call with batch 1, the recurrent state fed
back each step, on a fixed camera frame.  For each thread count, every configuration
(backend x provider) is measured in interleaved rounds -- a few dozen steps of each in
turn, many times -- so that load from other processes on a shared machine hits all of them
alike instead of whichever ran last; p50/p99 are over all rounds.  With one thread the CPU
time of the calling thread is reported too (``cpu_p50_ms``): the step's compute without the
time the scheduler gave to other processes.

Input is an export directory (``cloud_jobs export --out DIR``: files and the closed-loop
drop come from its ``export_report.json``) or ``--preset NAME``: an untrained policy of that
preset exported on the spot (latency does not depend on the weights; the closed-loop drop
is then unknown, ``null``).  Thresholds come from ``configs/provider_thresholds.yaml``
(profile = the preset); a regression past any of them makes the command exit 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THRESHOLDS = ROOT / "configs" / "provider_thresholds.yaml"
FILES = {
    "onnx_fp32": "model_fp32.onnx",
    "onnx_int8": "model_int8.onnx",
    "litert_fp32": "model_fp32.tflite",
}
#: Execution providers that do not compute locally (never benchmarked).
SKIP_PROVIDERS = ("AzureExecutionProvider",)


@dataclass(frozen=True)
class Config:
    backend: str
    provider: str  # ORT execution provider, or "xnnpack" for LiteRT's default CPU path
    threads: int

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.provider}/t{self.threads}"


# ----------------------------------------------------------------------------- runners


def _ort_runner(path: Path, provider: str, threads: int) -> Callable[[], None]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"provider {provider} not used (session has {sess.get_providers()})")
    inputs = sess.get_inputs()
    feeds: dict[str, np.ndarray] = {}
    for i in inputs:
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if i.name == "image":
            feeds[i.name] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[i.name] = np.zeros(shape, np.float32)
    rec = [i.name for i in inputs if i.name != "image"]
    outs = ["action", *(n + "_out" for n in rec)]

    def step() -> None:
        res = sess.run(outs, feeds)
        for n, v in zip(rec, res[1:], strict=True):
            feeds[n] = v

    return step


def _litert_runner(path: Path, threads: int) -> Callable[[], None]:
    from brain.policy.litert_model import load_litert

    model = load_litert(path, threads)
    h, w = model.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    state = {"rec": model.initial_recurrent()}

    def step() -> None:
        _, state["rec"] = model.step(image, state["rec"])

    return step


def make_runner(files: dict[str, Path], cfg: Config) -> Callable[[], None]:
    if cfg.backend.startswith("onnx_"):
        return _ort_runner(files[cfg.backend], cfg.provider, cfg.threads)
    return _litert_runner(files[cfg.backend], cfg.threads)


def measure(
    runners: dict[str, Callable[[], None]], *, rounds: int, per_round: int, warmup: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Interleaved timing: ``rounds`` x (``per_round`` steps of each runner in turn).

    Returns (wall-clock ms, calling-thread CPU ms) per step.  With one intra-op thread the
    whole step runs on the calling thread, so its CPU time is the step's compute without
    the time the scheduler gave to other processes -- the figure to compare backends by
    on a shared machine (wall time is what the control loop sees, and is reported too).
    """
    for run in runners.values():
        for _ in range(warmup):
            run()
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    clock, tclock = time.perf_counter, time.thread_time
    for _ in range(rounds):
        for key, run in runners.items():
            w, c = wall[key], cpu[key]
            for _ in range(per_round):
                c0, t0 = tclock(), clock()
                run()
                t1, c1 = clock(), tclock()
                w.append(t1 - t0)
                c.append(c1 - c0)
    return (
        {k: np.asarray(v) * 1e3 for k, v in wall.items()},
        {k: np.asarray(v) * 1e3 for k, v in cpu.items()},
    )


# ----------------------------------------------------------------------------- inputs


def export_preset(preset: str, out: Path, backends: Sequence[str]) -> dict[str, Any]:
    """An untrained ``preset`` policy exported to ``out`` (latency needs no trained weights).

    INT8 is calibrated on simulator camera frames (a short expert drive), so its ranges
    are those of real-looking images, not noise.
    """
    from brain.config import CameraConfig, SimConfig
    from brain.hardware.sim import SimWorld
    from brain.model import build_policy
    from brain.model.quantize import quantize_int8
    from cloud_jobs.export.onnx_step import export_fp32

    policy = build_policy(preset).eval()
    version = f"{preset}-untrained"
    export_fp32(policy, out / FILES["onnx_fp32"], version=version)
    info: dict[str, Any] = {"model_version": version, "preset": preset, "trained": False}
    if "onnx_int8" in backends:
        world = SimWorld(SimConfig(track="oval"), CameraConfig(width=640, height=480))
        world.reset()
        frames = []
        for k in range(64):
            world.step(world.expert_action(), 0.05)
            if k % 2 == 0:
                frames.append(world.render_rgb())
        q = quantize_int8(out / FILES["onnx_fp32"], out / FILES["onnx_int8"], frames)
        info["quantization"] = q.to_dict()
    if "litert_fp32" in backends:
        from cloud_jobs.export.litert import export_litert

        export_litert(policy, out / FILES["litert_fp32"], {"version": version})
    return info


def load_thresholds(path: Path, profile: str) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    profiles = doc.get("profiles") or {}
    if profile not in profiles:
        raise ValueError(f"{path}: no thresholds for profile {profile!r} (have {sorted(profiles)})")
    merged = dict(doc.get("defaults") or {})
    merged.update(profiles[profile] or {})
    return merged


def check_thresholds(summary: dict[str, Any], th: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per threshold: name, value, limit, ok (None when the value is unknown)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: Any, kind: str) -> None:
        if limit is None:
            return
        ok = None if value is None else (value <= limit if kind == "max" else value >= limit)
        rows.append({"check": name, "value": value, kind: limit, "ok": ok})

    for key in ("onnx_fp32_p50_ms", "onnx_int8_p50_ms", "litert_p50_ms"):
        add(key, summary.get(key), th.get(f"{key}_max"), "max")
    for key in ("onnx_fp32_p99_ms", "onnx_int8_p99_ms", "litert_p99_ms"):
        add(key, summary.get(key), th.get(f"{key}_max"), "max")
    add("int8_speedup", summary.get("int8_speedup"), th.get("int8_speedup_min"), "min")
    add(
        "closed_loop_drop_pct",
        summary.get("closed_loop_drop_pct"),
        th.get("closed_loop_drop_pct_max"),
        "max",
    )
    for backend, limit in (th.get("size_bytes_max") or {}).items():
        add(f"{backend}_size_bytes", summary["sizes"].get(backend), limit, "max")
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['backend']}\n{r['provider'].replace('ExecutionProvider', '')} t{r['threads']}"
        for r in rows
    ]
    p50 = [r["p50_ms"] for r in rows]
    p99 = [r["p99_ms"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
    ax.bar(x - 0.2, p50, 0.4, label="p50")
    ax.bar(x + 0.2, p99, 0.4, label="p99")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("step latency (ms)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- run


def run_bench(
    files: dict[str, Path],
    *,
    threads: Sequence[int],
    providers: Sequence[str],
    rounds: int,
    per_round: int,
    warmup: int,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    configs: list[Config] = []
    for backend in files:
        for t in threads:
            if backend.startswith("onnx_"):
                configs.extend(Config(backend, p, t) for p in providers)
            else:
                configs.append(Config(backend, "xnnpack", t))
    # One thread count at a time: a multi-threaded session's pool threads spin-wait after
    # each run, and on a small machine they would steal the CPU from the single-threaded
    # configurations measured in between.  Within a thread count, configs are interleaved.
    skipped: list[dict[str, Any]] = []
    times: dict[str, np.ndarray] = {}
    cpu_times: dict[str, np.ndarray] = {}
    for t in threads:
        runners: dict[str, Callable[[], None]] = {}
        for cfg in (c for c in configs if c.threads == t):
            try:
                runners[cfg.key] = make_runner(files, cfg)
            except Exception as exc:
                skipped.append({**cfg.__dict__, "error": f"{type(exc).__name__}: {exc}"})
                if log:
                    log(f"skipped {cfg.key}: {exc}")
        wall, cpu = measure(runners, rounds=rounds, per_round=per_round, warmup=warmup)
        times.update(wall)
        cpu_times.update(cpu)
        runners.clear()  # release the sessions (and their thread pools) before the next count
        gc.collect()
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        if cfg.key not in times:
            continue
        samples = times[cfg.key]
        rows.append(
            {
                **cfg.__dict__,
                "p10_ms": round(float(np.percentile(samples, 10)), 4),
                "p50_ms": round(float(np.percentile(samples, 50)), 4),
                "p90_ms": round(float(np.percentile(samples, 90)), 4),
                "p99_ms": round(float(np.percentile(samples, 99)), 4),
                "min_ms": round(float(samples.min()), 4),
                # CPU time of the calling thread: the whole step only with one thread.
                "cpu_p50_ms": (
                    round(float(np.percentile(cpu_times[cfg.key], 50)), 4)
                    if cfg.threads == 1
                    else None
                ),
                "steps": int(samples.size),
                "size_bytes": files[cfg.backend].stat().st_size,
            }
        )
    return rows + [dict(s, skipped=True) for s in skipped]


def summarise(
    rows: list[dict[str, Any]], files: dict[str, Path], report: dict[str, Any]
) -> dict[str, Any]:
    def pick(backend: str, key: str) -> float | None:
        for r in rows:
            if (
                r.get("backend") == backend
                and r.get("threads") == 1
                and r.get("provider") in ("CPUExecutionProvider", "xnnpack")
                and key in r
            ):
                return r[key]
        return None

    fp32, int8 = pick("onnx_fp32", "p50_ms"), pick("onnx_int8", "p50_ms")

    def speedup(key: str) -> float | None:
        """FP32 time / INT8 time for one statistic; None unless both backends were timed."""
        a, b = pick("onnx_fp32", key), pick("onnx_int8", key)
        return round(a / b, 3) if a and b else None

    cl = report.get("closed_loop") or {}
    drop = cl.get("closed_loop_drop_pct")
    return {
        "onnx_fp32_p50_ms": fp32,
        "onnx_int8_p50_ms": int8,
        "litert_p50_ms": pick("litert_fp32", "p50_ms"),
        "onnx_fp32_p99_ms": pick("onnx_fp32", "p99_ms"),
        "onnx_int8_p99_ms": pick("onnx_int8", "p99_ms"),
        "litert_p99_ms": pick("litert_fp32", "p99_ms"),
        "int8_speedup": speedup("p50_ms"),
        "int8_speedup_p10": speedup("p10_ms"),
        "int8_speedup_min_latency": speedup("min_ms"),
        "onnx_fp32_cpu_p50_ms": pick("onnx_fp32", "cpu_p50_ms"),
        "onnx_int8_cpu_p50_ms": pick("onnx_int8", "cpu_p50_ms"),
        "litert_cpu_p50_ms": pick("litert_fp32", "cpu_p50_ms"),
        "int8_speedup_cpu": speedup("cpu_p50_ms"),
        "closed_loop_drop_pct": drop,
        "sizes": {b: p.stat().st_size for b, p in files.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud_jobs bench", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export-dir", type=Path, help="output directory of `cloud_jobs export`")
    src.add_argument("--preset", help="bench an untrained policy of this preset (pi5, large)")
    p.add_argument("--backends", default="onnx_fp32,onnx_int8,litert_fp32")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--providers", default=None, help="ORT execution providers (default: all local)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--per-round", type=int, default=25)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--thresholds", type=Path, default=DEFAULT_THRESHOLDS)
    p.add_argument("--profile", default=None, help="threshold profile (default: the preset)")
    p.add_argument("--no-thresholds", action="store_true", help="report only, never fail")
    p.add_argument("--plot", type=Path, default=None, help="write the latency plot (PNG) here")
    p.add_argument("--json", type=Path, default=None, help="write the results (JSON) here")
    p.add_argument("--quiet", action="store_true")
    return p


def _parse_lists(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """(thread counts, backends) from the command line; ValueError naming the bad option."""
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        raise ValueError("--threads needs positive integers")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in FILES]
    if bad:
        raise ValueError(f"unknown backends {bad} (known: {list(FILES)})")
    if args.rounds < 1 or args.per_round < 1:
        raise ValueError("--rounds and --per-round must be >= 1")
    return threads, backends


def _print_results(
    rows: list[dict[str, Any]], summary: dict[str, Any], checks: list[dict[str, Any]]
) -> None:
    """The human-readable table and verdicts on stdout."""
    cols = ("backend", "provider", "threads", "p50_ms", "p99_ms", "cpu_p50_ms", "size_bytes")
    print("  ".join(f"{c:>20}" for c in cols))
    for r in rows:
        if not r.get("skipped"):
            print("  ".join(f"{r[c]!s:>20}" for c in cols))
    print(
        f"int8 speed-up (p50, 1 thread): {summary['int8_speedup']} wall, "
        f"{summary['int8_speedup_cpu']} CPU time  "
        f"closed-loop drop: {summary['closed_loop_drop_pct']}"
    )
    for c in checks:
        lim = c.get("max", c.get("min"))
        mark = "ok  " if c["ok"] else ("FAIL" if c["ok"] is False else "n/a ")
        print(f"  {mark} {c['check']} = {c['value']} (limit {lim})")


def _result_doc(
    args: argparse.Namespace,
    summary: dict[str, Any],
    report: dict[str, Any],
    profile: str,
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``--json`` document: the summary, every row and check, and the machine it ran on."""
    failed = [c for c in checks if c["ok"] is False]
    doc = {
        "kind": "provider_bench",
        **{k: v for k, v in summary.items()},
        "model_version": report.get("model_version"),
        "preset": report.get("preset"),
        "profile": profile,
        "rows": rows,
        "checks": checks,
        "passed": not failed,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "note": "shared machine: other processes add noise; configs are interleaved",
        },
        "settings": {"rounds": args.rounds, "per_round": args.per_round, "warmup": args.warmup},
    }
    return doc


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda s: print(f"bench: {s}", file=sys.stderr, flush=True))
    try:
        threads, backends = _parse_lists(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    import onnxruntime as ort

    providers = (
        [p.strip() for p in args.providers.split(",") if p.strip()]
        if args.providers
        else [p for p in ort.get_available_providers() if p not in SKIP_PROVIDERS]
    )
    tmp: tempfile.TemporaryDirectory[str] | None = None
    report: dict[str, Any] = {}
    try:
        if args.export_dir is not None:
            rp = args.export_dir / "export_report.json"
            if not rp.is_file():
                print(
                    f"bench: {rp}: no export report (run cloud_jobs export first)", file=sys.stderr
                )
                return 2
            report = json.loads(rp.read_text(encoding="utf-8"))
            root = args.export_dir
            profile = args.profile or report.get("preset", "pi5")
        else:
            tmp = tempfile.TemporaryDirectory(prefix="cb-bench-")
            root = Path(tmp.name)
            if log:
                log(f"exporting an untrained {args.preset} policy to {root}")
            report = export_preset(args.preset, root, backends)
            profile = args.profile or args.preset
        files = {b: root / FILES[b] for b in backends if (root / FILES[b]).is_file()}
        missing = [b for b in backends if b not in files]
        if missing and log:
            log(f"not benchmarked (no file): {missing}")
        if not files:
            print("bench: nothing to benchmark", file=sys.stderr)
            return 2
        rows = run_bench(
            files,
            threads=threads,
            providers=providers,
            rounds=args.rounds,
            per_round=args.per_round,
            warmup=args.warmup,
            log=log,
        )
        summary = summarise(rows, files, report)
    finally:
        if tmp is not None:
            tmp.cleanup()
    checks: list[dict[str, Any]] = []
    if not args.no_thresholds:
        try:
            checks = check_thresholds(summary, load_thresholds(args.thresholds, profile))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"bench: thresholds: {exc}", file=sys.stderr)
            return 2
    failed = [c for c in checks if c["ok"] is False]
    doc = _result_doc(args, summary, report, profile, rows, checks)
    _print_results(rows, summary, checks)
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(
            [r for r in rows if not r.get("skipped")], args.plot, f"policy step latency ({profile})"
        )
        doc["plot"] = str(args.plot)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if failed:
        print(
            f"bench: REGRESSION: {[c['check'] for c in failed]} "
            f"past thresholds in {args.thresholds}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main())
