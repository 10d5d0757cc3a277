"""`continuon episodes ...`: list, show, validate, delete, recover, export, purge-discarded.

These work on the episode files directly (no daemon needed), so they also
run on a laptop against a copied episodes directory (`--root`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from brain import __version__


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser("episodes", help="recorded episodes: list, show, validate, export, ...")
    esub = p.add_subparsers(dest="episodes_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        add_config(q)
        q.add_argument("--root", type=Path, help="episodes directory (default: from the config)")

    q = esub.add_parser("list", help="committed and interrupted episodes")
    common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    q = esub.add_parser("show", help="one episode's metadata and a step summary")
    common(q)
    q.add_argument("episode")
    q.set_defaults(func=cmd_show)

    q = esub.add_parser("validate", help="check episodes record by record (all by default)")
    common(q)
    q.add_argument("episodes", nargs="*")
    q.set_defaults(func=cmd_validate)

    q = esub.add_parser("delete", help="delete an episode")
    common(q)
    q.add_argument("episode")
    q.add_argument("--yes", action="store_true", help="do not ask")
    q.set_defaults(func=cmd_delete)

    q = esub.add_parser("recover", help="recover episodes interrupted by a crash or power cut")
    common(q)
    q.set_defaults(func=cmd_recover)

    q = esub.add_parser(
        "purge-discarded",
        help="remove episodes discarded by recovery (.discarded/): by default down to the "
        "configured size and age, --all for everything",
    )
    common(q)
    q.add_argument("--all", action="store_true", help="empty .discarded/ completely")
    q.add_argument("--max-mb", type=float, help="keep at most this much (default: config)")
    q.add_argument("--older-than-days", type=float, help="remove older entries (default: config)")
    q.set_defaults(func=cmd_purge_discarded)

    q = esub.add_parser("export", help="export as a TFDS RLDS dataset or a LeRobot v3 dataset")
    common(q)
    q.add_argument("--format", required=True, choices=["rlds", "lerobot"])
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--salt-file", type=Path, help="secret salt (default: <state_dir>/export.salt)")
    q.set_defaults(func=cmd_export)


def _root(args: argparse.Namespace) -> Path:
    if args.root is not None:
        return Path(args.root)
    return Path(args.load_config().episodes_dir())


def _find(root: Path, name: str) -> Path:
    p = Path(name)
    if p.is_dir():
        return p
    cand = root / name
    if cand.is_dir():
        return cand
    matches = (
        [d for d in root.iterdir() if d.is_dir() and d.name.startswith(name)]
        if root.is_dir()
        else []
    )
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SystemExit(
            f"continuon: {name!r} matches {len(matches)} episodes; give more of the id"
        )
    raise SystemExit(f"continuon: no episode {name!r} under {root}")


def cmd_list(args: argparse.Namespace) -> int:
    from rlds.reader import list_episodes, list_interrupted

    root = _root(args)
    eps = list_episodes(root) if root.exists() else []
    interrupted = list_interrupted(root) if root.exists() else []
    if args.json:
        rows = [
            {
                "episode_id": e.episode_id,
                "num_steps": e.num_steps,
                "status": e.status,
                "truncated": e.truncated,
                "mode": e.metadata.get("mode"),
            }
            for e in eps
        ]
        print(
            json.dumps({"episodes": rows, "interrupted": [p.name for p in interrupted]}, indent=2)
        )
        return 0
    print(f"{len(eps)} episode(s) in {root}")
    for e in eps:
        dur = e.metadata.get("duration_s")
        dur_s = f"{dur:7.1f} s" if isinstance(dur, int | float) else "      ?"
        flag = " truncated" if e.truncated else ""
        mode = e.metadata.get("mode", "?")
        print(f"  {e.episode_id}  {e.num_steps:6d} steps  {dur_s}  {mode}{flag}")
    for p in interrupted:
        print(f"  {p.name}  interrupted (run `continuon episodes recover`)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from rlds.reader import open_episode

    ep = open_episode(_find(_root(args), args.episode))
    print(json.dumps(ep.metadata, indent=2, default=str))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rlds.reader import list_episodes
    from rlds.validate import validate_episode

    root = _root(args)
    paths = [_find(root, e) for e in args.episodes] or [e.path for e in list_episodes(root)]
    bad = 0
    for p in paths:
        report = validate_episode(p)
        print(report.render())
        bad += not report.ok
    print(f"validate: {len(paths) - bad} ok, {bad} with problems")
    return 1 if bad else 0


def cmd_delete(args: argparse.Namespace) -> int:
    from rlds.storage import delete_episode

    path = _find(_root(args), args.episode)
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "continuon: refusing to delete without --yes (no terminal to ask)", file=sys.stderr
            )
            return 2
        if input(f"delete {path.name}? [y/N] ").strip().lower() != "y":
            return 1
    delete_episode(path)
    print(f"deleted {path.name}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from rlds.recovery import recover

    config = args.load_config()
    reports = recover(_root(args), min_steps=config.recording.min_steps)
    for r in reports:
        print(r)
    print(f"recover: {len(reports)} interrupted episode(s) handled")
    return 0


def cmd_purge_discarded(args: argparse.Namespace) -> int:
    from rlds.storage import purge_discarded

    rc = args.load_config().recording
    max_mb = 0.0 if args.all else (args.max_mb if args.max_mb is not None else rc.discarded_max_mb)
    days = args.older_than_days if args.older_than_days is not None else rc.discarded_max_age_days
    for name, value in (("--max-mb", max_mb), ("--older-than-days", days)):
        if value is not None and not value >= 0:
            print(f"continuon: {name} must be a number >= 0, got {value}", file=sys.stderr)
            return 2
    root = _root(args)
    purged = purge_discarded(
        root,
        max_bytes=None if max_mb is None else int(max_mb * 1e6),
        max_age_s=None if args.all or days is None else days * 86400.0,
    )
    for p in purged:
        print(f"  removed {p.name} ({p.bytes} bytes, {p.age_s / 86400:.1f} days old)")
    print(
        f"purge-discarded: {len(purged)} removed ({sum(p.bytes for p in purged)} bytes) "
        f"from {root / '.discarded'}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rlds.datasets.anonymize import load_or_create_salt
    from rlds.datasets.run import ExportError, export_dataset
    from rlds.datasets.splits import parse_fractions
    from rlds.reader import list_episodes

    config = args.load_config()
    try:
        fractions = parse_fractions(args.split)
    except ValueError as exc:
        print(f"continuon: {exc}", file=sys.stderr)
        return 2
    salt = load_or_create_salt(args.salt_file or config.state_dir() / "export.salt")
    root = _root(args)
    episodes = list_episodes(root) if root.exists() else []
    try:
        res = export_dataset(
            episodes,
            args.out,
            fmt=args.format,
            salt=salt,
            fractions=fractions,
            seed=args.seed,
            software_version=__version__,
        )
    except ExportError as exc:
        print(f"continuon: export failed: {exc}", file=sys.stderr)
        return 1
    state = "already up to date" if res.up_to_date else f"written ({res.files} files)"
    print(
        f"export {res.format}: {res.episodes} episode(s) -> {res.out_dir} {state}; "
        f"splits {res.splits}"
    )
    for s in res.skipped:
        print(f"  skipped {s}")
    return 0
