"""``continuon ota status|check|install PATH|rollback``.

With the daemon running, every action goes through its control socket: the
daemon holds the updater lock and the policy runner, so only it can hot-swap
and run the health window.  Without a daemon, ``status`` reads the state file
and ``install``/``check``/``rollback`` work on the slots directly (taking the
lock): an install is then staged, and the daemon runs its trial at next start.

Exit codes: 0 done (committed, staged, up to date), 1 refused, failed or rolled
back, 2 usage or configuration problems.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from brain.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser("ota", help="over-the-air model updates: status, check, install, rollback")
    osub = p.add_subparsers(dest="ota_action", required=True, metavar="ACTION")
    for name, helptext in (
        ("status", "slots, committed and failed versions, the phase of an install"),
        ("check", "ask the update repository for a newer bundle and install it"),
        ("rollback", "abort a trial, or go back to the previously committed bundle"),
    ):
        q = osub.add_parser(name, help=helptext)
        add_config(q)
        q.add_argument("--json", action="store_true", help="print the full status as JSON")
        q.set_defaults(func=run)
    q = osub.add_parser("install", help="install a bundle archive or a repository directory")
    add_config(q)
    q.add_argument("path", type=Path, help="bundle archive (.tar) or TUF repository directory")
    q.add_argument("--json", action="store_true", help="print the full status as JSON")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from brain.control_client import DaemonUnavailable, request, socket_path

    config: Config = args.load_config()
    action = args.ota_action
    payload: dict[str, Any] = {"cmd": "ota", "action": action}
    if action == "install":
        path = Path(args.path).expanduser().resolve()
        if not path.exists():
            print(f"continuon ota install: {path}: no such file or directory", file=sys.stderr)
            return 2
        payload["path"] = str(path)
    # An install answers after its health window (the bundle's may be longer than ours).
    timeout = max(900.0, 3 * config.ota.health_window_s + 300.0)
    try:
        resp = request(socket_path(config), payload, timeout=timeout)
    except DaemonUnavailable:
        return _offline(config, args)
    if not resp.get("ok"):
        print(f"continuon ota {action}: {resp.get('error')}", file=sys.stderr)
        return 1
    return _show(resp["result"], args.json)


def _offline(config: Config, args: argparse.Namespace) -> int:
    """No daemon: read the state file, or work on the slots under the lock."""
    action = args.ota_action
    if action == "status":
        from brain.ota.state import StateError, StateStore

        try:
            st = StateStore(config.ota_dir()).load()
        except StateError as exc:
            print(f"continuon ota status: {exc}", file=sys.stderr)
            print("the daemon boots on the last-known-good slot (committed.json)", file=sys.stderr)
            return 1
        out = st.model_dump(mode="json")
        out["daemon"] = "not running"
        out["result"] = f"phase {st.phase}"
        return _show(out, args.json)
    from brain.ota.wiring import create_updater

    up = create_updater(config)
    try:
        if action == "install":
            result = asyncio.run(up.install(Path(args.path).expanduser().resolve()))
        elif action == "check":
            result = asyncio.run(up.check())
        else:
            result = asyncio.run(up.rollback())
    except Exception as exc:
        print(f"continuon ota {action}: {exc}", file=sys.stderr)
        return 1
    return _show(result, args.json)


def _show(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        committed = result.get("committed") or {}
        print(result.get("result") or f"phase {result.get('phase')}")
        print(
            f"  committed: {committed.get('version', 'none')}"
            + (f" (slot {committed['slot']})" if committed.get("slot") else "")
            + f", release counter {result.get('release_counter', 0)}"
        )
        cand = result.get("candidate")
        if cand:
            print(f"  candidate: {cand['version']} (slot {cand['slot']}), {result.get('phase')}")
        failed = result.get("failed_versions", result.get("failed")) or []
        for f in failed:
            print(f"  failed: {f['version']}: {f['reason']}")
        if result.get("last_error"):
            print(f"  last error: {result['last_error']}")
    text = str(result.get("result", ""))
    return 1 if text.startswith("rolled back") and not text.startswith("rolled back to") else 0
