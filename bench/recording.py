"""Benchmark: recording episodes inside the daemon, and what it costs the control loop.

The real daemon (bench/harness.py) runs the sim at 50 Hz with a 640x480 RGB
camera and a 640x480 depth camera at 30 fps; the expert drives in AUTONOMOUS.
In one run: a window without recording, then a window recording, so the two
jitter figures are comparable.  After the run the recorded episode is read
back to count frames that never made it into a step.  ``--load`` starts a
process spinning one core beside the daemon for the whole run; ``--baseline
REV`` runs the same windows on that git revision too (exported with ``git
archive``), so both trees are measured in one run on the same machine load.
Recording CPU counts the daemon and its children (the episode writer).

    python bench/recording.py --seconds 60 --json bench/results/recording.json
    python bench/recording.py --seconds 300 --idle-seconds 30 --load --baseline main
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, Daemon, busy_load, export_revision, measure, print_table, sim_config

from rlds.reader import list_episodes


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def frame_gaps(seqs: list[int]) -> int:
    """Frames captured but in no recorded step: gaps in the sequence numbers."""
    uniq = sorted(set(seqs))
    return sum(max(0, b - a - 1) for a, b in itertools.pairwise(uniq))


def run(
    seconds: float,
    hz: float,
    tmp: Path,
    idle_seconds: float | None = None,
    root: Path = ROOT,
    name: str = "rec",
) -> dict:
    cfg = sim_config(
        tmp,
        name,
        root,
        control={"rate_hz": hz, "autopilot": "expert", "stats_window": 200_000},
        hardware={
            "camera": {"driver": "sim", "width": 640, "height": 480, "fps": 30},
            "depth": {"driver": "sim", "width": 640, "height": 480, "fps": 30},
            "actuators": {"driver": "sim"},
        },
    )
    d = Daemon(cfg, tmp, name, root=root)
    episodes = Path(d.state) / "episodes"
    try:
        d.wait_ready()
        d.cmd("mode", mode="autonomous")
        time.sleep(1.5)
        d.cmd("reset_stats")
        idle_usage = measure(d, seconds if idle_seconds is None else idle_seconds)
        idle = d.cmd("stats")["control"]

        d.cmd("record", action="start")
        time.sleep(0.5)
        d.cmd("reset_stats")
        before = d.cmd("status")["recording"]
        b0 = dir_bytes(episodes)
        t0 = time.monotonic()
        # daemon / writer niceness: the unit's Nice= where this user may set it, writer +5
        nice = f"{d.ps.nice()}/{max((c.nice() for c in d.ps.children()), default='-')}"
        rec_usage = measure(d, seconds)
        elapsed = time.monotonic() - t0
        b1 = dir_bytes(episodes)
        stats = d.cmd("stats")
        after = d.cmd("status")["recording"]
        d.cmd("record", action="stop")
        for _ in range(600):  # the writer drains its queue and commits
            final = d.cmd("status")["recording"]
            if not final["recording"] and final["queue_depth"] == 0:
                break
            time.sleep(0.05)
        rc, _ = d.stop()
    finally:
        d.kill()
    rec = stats["control"]
    eps = list_episodes(episodes)
    seqs: list[int] = []
    dseqs: list[int] = []
    steps_in_files = 0
    for ep in eps:
        for s in ep.steps(decode_images=False):
            steps_in_files += 1
            seqs.append(s.extra["frame_seq"])
            dseqs.append(s.extra["depth_seq"])
    writer = final.get("writer") or {}
    return {
        "hz": hz,
        "seconds": seconds,
        "ticks_recording": rec["ticks"],
        "steps_written": after["steps_written"] - before["steps_written"],
        "steps_in_files": steps_in_files,
        "steps_dropped": final["steps_dropped"],
        "frames_dropped": frame_gaps(seqs),
        "depth_frames_dropped": frame_gaps(dseqs),
        "episodes": len(eps),
        "mb_per_s": round((b1 - b0) / elapsed / 1e6, 2),
        "cpu_percent": rec_usage["cpu_percent_tree"],
        "cpu_percent_idle": idle_usage["cpu_percent_tree"],
        "recording_cpu_cores": round(
            (rec_usage["cpu_percent_tree"] - idle_usage["cpu_percent_tree"]) / 100, 2
        ),
        "rss_mb": rec_usage["rss_mb"],
        "writer_rss_mb": rec_usage["children_rss_mb"],
        "writer_restarts": (after.get("writer_process") or {}).get("restarts"),
        "fsync_p99_ms": writer.get("fsync_ms_p99"),
        "jitter_p99_ms_idle": idle["jitter_ms"]["p99"],
        "jitter_p99_ms_recording": rec["jitter_ms"]["p99"],
        "overruns_idle": idle["overruns"],
        "overruns_recording": rec["overruns"],
        "exit_code": rc,
        "nice": nice,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    ap.add_argument("--idle-seconds", type=float, help="window without recording (default: same)")
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--load", action="store_true", help="a busy process beside the daemon")
    ap.add_argument("--baseline", help="git revision to measure beside the working tree")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    load = busy_load() if args.load else None
    try:
        with tempfile.TemporaryDirectory(prefix="cb-bench-rec-") as d:
            tmp = Path(d)
            trees = {"this tree": ROOT}
            if args.baseline:
                trees = {args.baseline: export_revision(args.baseline, tmp), **trees}
            for i, (label, root) in enumerate(trees.items()):
                r = run(args.seconds, args.hz, tmp, args.idle_seconds, root, f"rec{i}")
                rows.append({"tree": label, "load": args.load, **r})
    finally:
        if load is not None:
            load.kill()
            load.wait()
    for r in rows:
        r["jitter_p99_increase_ms"] = round(
            r["jitter_p99_ms_recording"] - r["jitter_p99_ms_idle"], 3
        )
    print_table(
        f"recording in the daemon: sim at {args.hz:g} Hz, RGB + depth 640x480 at 30 fps"
        + (", one busy core beside it" if args.load else ""),
        rows,
        [
            ("tree", "tree"),
            ("nice", "nice d/w"),
            ("steps_written", "steps"),
            ("steps_dropped", "dropped"),
            ("frames_dropped", "frames lost"),
            ("mb_per_s", "MB/s"),
            ("recording_cpu_cores", "rec cores"),
            ("fsync_p99_ms", "fsync p99"),
            ("jitter_p99_ms_idle", "jit idle"),
            ("jitter_p99_ms_recording", "jit rec"),
            ("jitter_p99_increase_ms", "jit +"),
            ("rss_mb", "rss MB"),
            ("writer_rss_mb", "writer MB"),
        ],
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
