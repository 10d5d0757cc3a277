"""``cloud_jobs bundle``: pack an export directory into an edge bundle (docs/publishing.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brain.bundle.manifest import BundleError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloud_jobs bundle",
        description="Build an edge bundle (edge_manifest.json + model files, nothing executable) "
        "from an export directory holding export_report.json.",
    )
    p.add_argument("export_dir", type=Path, help="the export's output directory")
    p.add_argument("--out", type=Path, required=True, help="the bundle archive to write (.tar)")
    p.add_argument("--version", required=True, help="release version, e.g. 2026.11.1")
    p.add_argument(
        "--release-counter",
        type=int,
        required=True,
        help="monotonic release number; robots refuse anything not above what they run",
    )
    p.add_argument("--hardware-id", required=True, help="compatibility id, e.g. donkey-pi5")
    p.add_argument(
        "--safety",
        type=json.loads,
        default=None,
        help="JSON overriding safety fields, e.g. '{\"max_latency_ms\": 30}'",
    )
    p.add_argument("--action-low", type=float, nargs="+", help="per-action lower bounds")
    p.add_argument("--action-high", type=float, nargs="+", help="per-action upper bounds")
    p.add_argument("--gzip", action="store_true", help="gzip the tar (rarely worth it)")
    return p


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from brain.bundle.pack import build_bundle
    from brain.bundle.unpack import read_archive_manifest

    try:
        out = build_bundle(
            args.export_dir,
            args.out,
            version=args.version,
            release_counter=args.release_counter,
            hardware_id=args.hardware_id,
            safety=args.safety,
            compress=args.gzip,
            action_low=args.action_low,
            action_high=args.action_high,
        )
        m = read_archive_manifest(out)
    except BundleError as exc:
        print(f"cloud_jobs bundle: {exc}", file=sys.stderr)
        return 1
    size = out.stat().st_size
    print(
        f"{out}: version {m.version}, release {m.release_counter}, {m.hardware_id}, "
        f"{len(m.artifacts)} artifact(s) {sorted(m.artifacts)}, {size} bytes"
    )
    return 0
