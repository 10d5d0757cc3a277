"""The tuf-conformance client protocol, spoken by the robot's own trust layer.

Run as ``python -m brain.ota.conformance`` (the executable the suite is pointed at)::

    python -m brain.ota.conformance --metadata-dir DIR init TRUSTED_ROOT
    python -m brain.ota.conformance --metadata-dir DIR --metadata-url URL refresh
    python -m brain.ota.conformance --metadata-dir DIR --metadata-url URL \\
        --target-name NAME [--target-name NAME ...] --target-base-url URL \\
        --target-dir DIR download

``--target-name`` may repeat: the targets are downloaded in the order given, on
one repository refreshed once; the first failure ends the run with exit 1.

Exit status 0 on success, 1 on any failure (the protocol's contract), 2 on usage errors.
Everything goes through :class:`brain.ota.trust.TrustedRepository`, the same code the
updater uses, so the suite tests what the robot runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from brain.ota.trust import TrustedRepository, TrustError, init_trust


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m brain.ota.conformance",
        description="tuf-conformance client-under-test CLI for the Continuon Brain trust layer",
    )
    p.add_argument("--metadata-dir", type=Path, required=True)
    p.add_argument("--metadata-url")
    p.add_argument("--target-name", action="append", default=[])
    p.add_argument("--target-base-url")
    p.add_argument("--target-dir", type=Path)
    p.add_argument("command", choices=["init", "refresh", "download"])
    p.add_argument("trusted_root", nargs="?", type=Path, help="for init: the initial root.json")
    return p


def _repo(args: argparse.Namespace, download_dir: Path) -> TrustedRepository:
    return TrustedRepository(
        args.metadata_dir,
        args.metadata_url,
        download_dir,
        metadata_url=args.metadata_url,
        targets_url=args.target_base_url,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            if args.trusted_root is None:
                parser.error("init needs TRUSTED_ROOT")
            init_trust(args.metadata_dir, args.trusted_root.read_bytes(), overwrite=True)
            print(f"initialised trust in {args.metadata_dir}")
            return 0
        if not args.metadata_url:
            parser.error(f"{args.command} needs --metadata-url")
        if args.command == "refresh":
            with tempfile.TemporaryDirectory() as scratch:
                _repo(args, Path(scratch)).refresh()
            print("refreshed")
            return 0
        if not (args.target_name and args.target_base_url and args.target_dir):
            parser.error("download needs --target-name, --target-base-url and --target-dir")
        repo = _repo(args, args.target_dir)
        repo.refresh()
        for name in args.target_name:
            path = repo.download_by_name(name, args.target_dir, resume=False)
            print(f"downloaded {name} to {path}")
        return 0
    except (TrustError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # any failure is exit 1 in the protocol, never a traceback-only 1
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
