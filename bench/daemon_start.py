"""Benchmark: how lean the daemon starts — start-to-READY, resident memory, modules.

The real daemon (bench/harness.py) on the default sim config (640x480 camera,
no policy model), started ``--runs`` times; with ``--baseline REV`` the same
number of times from that git revision too (exported with ``git archive``),
alternating, so both columns come from one run on the same machine load.
RSS is read with psutil two seconds after READY=1; the loaded module count and
top-level packages come from the daemon's own `stats` (``process``), where the
revision reports them.

    python bench/daemon_start.py --runs 5 --baseline main --json bench/results/daemon_start.json
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, Daemon, export_revision, print_table, sim_config

TARGETS = {"ready_s": 1.0, "rss_mb": 150.0}


def one_start(root: Path, tmp: Path, name: str, settle_s: float) -> dict[str, Any]:
    cfg = sim_config(tmp, name, root)
    d = Daemon(cfg, tmp, name, root=root)
    try:
        ready = d.wait_ready()
        time.sleep(settle_s)
        rss = d.ps.memory_info().rss / 2**20
        proc = (d.cmd("stats") or {}).get("process") or {}
        d.stop()
    finally:
        d.kill()
    return {
        "ready_s": ready,
        "rss_mb": rss,
        "modules": proc.get("modules"),
        "packages": proc.get("packages"),
    }


def summarize(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tree": label,
        "runs": len(runs),
        "ready_s_median": round(statistics.median(r["ready_s"] for r in runs), 3),
        "ready_s_max": round(max(r["ready_s"] for r in runs), 3),
        "rss_mb_median": round(statistics.median(r["rss_mb"] for r in runs), 1),
        "modules": runs[-1]["modules"],
        "packages": runs[-1]["packages"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", help="git revision to measure beside the working tree")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after READY before RSS")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    trees: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="cb-bench-start-") as d:
        tmp = Path(d)
        roots = {"this tree": ROOT}
        if args.baseline:
            roots = {args.baseline: export_revision(args.baseline, tmp), **roots}
        for root in roots.values():
            # pip compiles an installed package's bytecode; a source tree run with
            # PYTHONDONTWRITEBYTECODE=1 (as here) would compile ~300 modules at every start.
            for pkg in ("brain", "edge_agent", "rlds", "common"):
                if (root / pkg).is_dir():
                    compileall.compile_dir(root / pkg, quiet=1)
        for i in range(args.runs):
            for label, root in roots.items():
                name = f"s{i}-{len(trees.get(label, []))}-{abs(hash(label)) % 1000}"
                trees.setdefault(label, []).append(one_start(root, tmp, name, args.settle))
    rows = [summarize(label, runs) for label, runs in trees.items()]
    print_table(
        "daemon start on the sim (640x480 camera, no model)",
        rows,
        [
            ("tree", "tree"),
            ("runs", "runs"),
            ("ready_s_median", "READY s"),
            ("ready_s_max", "READY max"),
            ("rss_mb_median", "RSS MB"),
            ("modules", "modules"),
        ],
    )
    last = rows[-1]
    print(
        "targets:",
        f"READY {last['ready_s_median']} s (<= {TARGETS['ready_s']}),",
        f"RSS {last['rss_mb_median']} MB (<= {TARGETS['rss_mb']})",
    )
    if len(rows) == 2:
        print(
            f"ratio this tree / {rows[0]['tree']}: READY "
            f"{last['ready_s_median'] / rows[0]['ready_s_median']:.2f}, RSS "
            f"{last['rss_mb_median'] / rows[0]['rss_mb_median']:.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": rows, "targets": TARGETS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
