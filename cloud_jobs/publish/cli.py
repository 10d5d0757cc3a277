"""``cloud_jobs keys ...`` and ``cloud_jobs publish ...`` (docs/publishing.md)."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from brain.bundle.manifest import BundleError
from cloud_jobs.publish.gated import publish_released
from cloud_jobs.publish.keys import ROLES, KeysError, KeyStore
from cloud_jobs.publish.repository import Expiry, PublishError, Repository
from cloud_jobs.release import ReleaseRefused, add_gate_args, gate_from_args


def _expiry_args(p: argparse.ArgumentParser) -> None:
    d = Expiry()
    for role in ROLES:
        p.add_argument(
            f"--{role}-expiry-days",
            type=float,
            default=d.of(role).total_seconds() / 86400,
            help=f"{role} metadata lifetime in days (default {d.of(role).days})",
        )


def _expiry(args: argparse.Namespace) -> Expiry:
    return Expiry(**{r: timedelta(days=getattr(args, f"{r}_expiry_days")) for r in ROLES})


# ----------------------------------------------------------------------------- keys


def keys_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cloud_jobs keys", description="TUF signing keys")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="generate ed25519 keys for root/targets/snapshot/timestamp")
    init.add_argument("--dir", type=Path, required=True, help="keys directory to create")
    init.add_argument("--threshold", type=int, default=1, help="root signatures needed")
    init.add_argument("--root-keys", type=int, help="root keys to generate (default: threshold)")
    init.add_argument("--targets-threshold", type=int, default=1)
    init.add_argument("--targets-keys", type=int)
    rot = sub.add_parser(
        "rotate-root",
        help="publish a new root that adds/revokes keys of a role (signed by old and new keys)",
    )
    rot.add_argument("--keys", type=Path, required=True)
    rot.add_argument("--repo", type=Path, required=True)
    rot.add_argument("--role", choices=ROLES, default="root", help="whose keys change")
    rot.add_argument("--add", type=int, default=1, help="new keys to generate")
    rot.add_argument("--revoke", nargs="*", default=[], metavar="KEYID", help="keys to revoke")
    rot.add_argument("--threshold", type=int, help="the role's new threshold")
    _expiry_args(rot)
    ls = sub.add_parser("list", help="show the role assignment and which private keys are here")
    ls.add_argument("--dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "init":
            t, tt = args.threshold, args.targets_threshold
            ks = KeyStore.init(
                args.dir,
                thresholds={"root": t, "targets": tt},
                counts={"root": args.root_keys or t, "targets": args.targets_keys or tt},
            )
            _print_keys(ks)
            print(f"\nprivate keys are in {ks.dir} (mode 0600): move the root keys offline")
            return 0
        if args.cmd == "list":
            _print_keys(KeyStore(args.dir))
            return 0
        ks = KeyStore(args.keys)
        repo = Repository(args.repo, ks, expiry=_expiry(args))
        new = repo.rotate(
            role=args.role, add=args.add, revoke=args.revoke, threshold=args.threshold
        )
        print(f"published root v{new.signed.version}: {args.role} keys now")
        _print_keys(ks)
        return 0
    except (KeysError, PublishError, ValueError, OSError) as exc:
        print(f"cloud_jobs keys: {exc}", file=sys.stderr)
        return 1


def _print_keys(ks: KeyStore) -> None:
    for role in ROLES:
        rk = ks.roles[role]
        print(f"{role}: threshold {rk.threshold} of {len(rk.keyids)}")
        for k in rk.keyids:
            here = "private key here" if (ks.dir / f"{k}.key").exists() else "public only"
            print(f"  {k}  ({here})")


# ----------------------------------------------------------------------------- publish


def publish_main(argv: list[str]) -> int:
    if argv and argv[0] in ("init", "refresh", "list"):
        return _publish_sub(argv[0], argv[1:])
    p = argparse.ArgumentParser(
        prog="cloud_jobs publish",
        description="Publish an edge bundle to a TUF repository of static files, once its "
        "closed-loop evaluation passes the release gate (docs/evaluation.md).  "
        "Also: `cloud_jobs publish init|refresh|list --repo REPO --keys KEYS`.",
    )
    p.add_argument("bundle", type=Path, help="the bundle archive (cloud_jobs bundle)")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--keys", type=Path, required=True)
    p.add_argument("--release-counter", type=int, help="must match the bundle manifest")
    p.add_argument("--hardware-id", help="must match the bundle manifest")
    p.add_argument("--version", help="must match the bundle manifest")
    p.add_argument(
        "--evaluation",
        type=Path,
        help="the model's closed-loop eval.json (cloud_jobs evaluate --policy ...)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="publish although the release gate fails (experiments; the manifest says so)",
    )
    add_gate_args(p)
    _expiry_args(p)
    args = p.parse_args(argv)
    try:
        gate = gate_from_args(args)
        repo = Repository(args.repo, KeyStore(args.keys), expiry=_expiry(args))
        tf, record = publish_released(
            repo,
            args.bundle,
            evaluation=args.evaluation,
            gate=gate,
            force=args.force,
            release_counter=args.release_counter,
            hardware_id=args.hardware_id,
            version=args.version,
        )
    except (KeysError, PublishError, BundleError, ReleaseRefused, OSError, ValueError) as exc:
        print(f"cloud_jobs publish: {exc}", file=sys.stderr)
        if isinstance(exc, ReleaseRefused):
            print("cloud_jobs publish: --force publishes it anyway (recorded)", file=sys.stderr)
        return 1
    verdict = "release gate passed" if record.passed else "FORCED past the release gate"
    print(
        f"published {tf.path} ({tf.length} bytes, sha256 {tf.hashes['sha256'][:12]}...) "
        f"as targets v{repo.targets.signed.version}, timestamp v{repo.timestamp.signed.version}"
        f"; {verdict}"
    )
    return 0


def _publish_sub(cmd: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"cloud_jobs publish {cmd}")
    p.add_argument("--repo", type=Path, required=True)
    if cmd != "list":
        p.add_argument("--keys", type=Path, required=True)
    if cmd == "refresh":
        p.add_argument("--force", action="store_true", help="re-sign every role now")
    if cmd != "list":
        _expiry_args(p)
    args = p.parse_args(argv)
    try:
        if cmd == "init":
            repo = Repository.create(args.repo, KeyStore(args.keys), expiry=_expiry(args))
            print(
                f"created {args.repo}; provision robots with "
                f"{repo.meta_dir / '1.root.json'} (ota.trusted_root)"
            )
            return 0
        if cmd == "list":
            return _list(args.repo)
        repo = Repository(args.repo, KeyStore(args.keys), expiry=_expiry(args))
        done = repo.refresh(force=args.force)
        print(f"re-signed: {', '.join(done) if done else 'nothing (no expiry is near)'}")
        return 0
    except (KeysError, PublishError, OSError) as exc:
        print(f"cloud_jobs publish {cmd}: {exc}", file=sys.stderr)
        return 1


def _list(repo_dir: Path) -> int:
    """Targets and expiry of the published state (needs no keys)."""
    from tuf.api.metadata import Metadata, Snapshot, Targets, Timestamp

    meta = repo_dir / "metadata"
    ts = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
    sv = ts.signed.snapshot_meta.version
    snap = Metadata[Snapshot].from_file(str(meta / f"{sv}.snapshot.json"))
    tv = snap.signed.meta["targets.json"].version
    targets = Metadata[Targets].from_file(str(meta / f"{tv}.targets.json"))
    for name, tf in sorted(targets.signed.targets.items()):
        print(f"{name}  {tf.length} bytes  {tf.custom}")
    for role, md in (("timestamp", ts), ("snapshot", snap), ("targets", targets)):
        print(f"{role} v{md.signed.version} expires {md.signed.expires.isoformat()}")
    return 0
