"""The local control socket: the `continuon` CLI's way into a running daemon.

A Unix socket in the daemon's runtime directory, protected by file
permissions (owner and group only), speaking one JSON object per line.  It
is for the person logged into the robot (and for benchmarks and tests); the
LAN-facing Robot API with pairing and tokens is a separate service.

Who may connect is checked again on every connection with SO_PEERCRED (the
kernel's word on the peer's uid/gid, not the file mode, which a chmod or a
leaked descriptor could widen): root, the daemon's own user, and users whose
primary or supplementary group is the daemon's group (``continuon``; what
`usermod -aG continuon` grants).  Connections are capped and an idle client is
dropped, so local clients cannot pin descriptors; the e-stop does not depend on
this socket anyway (SIGUSR1, brain/control/estop_line.py).

Request:  {"cmd": "status"} | {"cmd": "stats"} | {"cmd": "reset_stats"}
          {"cmd": "mode", "mode": "manual"}
          {"cmd": "estop", "reason": "..."} | {"cmd": "reset"} | {"cmd": "teleop", "action": [s, t]}
          {"cmd": "record", "action": "start" | "stop", "tags": ["..."]}
          {"cmd": "ota", "action": "status" | "check" | "rollback" | "install", "path": "/abs"}
          {"cmd": "heartbeat"}  (an operator is watching: supervised autonomy)
          {"cmd": "pair"}  (a new Robot API pairing code)
          {"cmd": "tokens", "action": "list"}
          {"cmd": "tokens", "action": "revoke", "token_id": "..."}
          {"cmd": "tokens", "action": "rotate"}  (revoke every token; devices pair again)
Response: {"ok": true, "result": ...} or {"ok": false, "error": "what was wrong"}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from brain.config import Config

# The client (and the socket's name and place) is the brain's: its own commands use it.
from brain.control_client import DaemonUnavailable, encode, request, socket_path
from brain.interface import BrainInterface, CommandError, Service

MAX_REQUEST_BYTES = 64 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT_S = 60.0  # between requests; an OTA install may take longer to *answer*
ESTOP_TIMEOUT_S = 2.0  # `continuon estop` over the socket (after the signal path)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_allowed(uid: int, gid: int) -> bool:
    """Root, the daemon's user, or a member of the daemon's group."""
    my_uid, my_gid = os.geteuid(), os.getegid()
    if uid in (0, my_uid) or gid == my_gid:
        return True
    try:
        user = pwd.getpwuid(uid)
        return my_gid in os.getgrouplist(user.pw_name, user.pw_gid) or user.pw_name in (
            grp.getgrgid(my_gid).gr_mem
        )
    except (KeyError, OSError):
        return False  # a uid the user database does not know is nobody we trust


def make_service(brain: BrainInterface, config: Config) -> Service:
    path = socket_path(config)
    return Service(name="control-socket", run=lambda: serve(brain, path, config))


def _pair(config: Config | None) -> dict[str, Any]:
    if config is None or not config.api.enabled:
        raise CommandError("the Robot API is disabled (api.enabled: false); nothing to pair with")
    from edge_agent.api.auth import auth_for

    out = auth_for(config).pairing.new_code()
    return {**out, "port": config.api.port}


def _tokens(config: Config | None, req: dict[str, Any]) -> Any:
    if config is None:
        raise CommandError("tokens are not available on this socket")
    from edge_agent.api.auth import auth_for

    store = auth_for(config).tokens
    action = req.get("action")
    if action == "list":
        return store.list()
    if action == "revoke":
        token_id = req.get("token_id")
        if not isinstance(token_id, str) or not token_id:
            raise CommandError('"tokens" "revoke" needs a string "token_id"')
        if not store.revoke(token_id):
            raise CommandError(f"no token {token_id!r}; see `continuon tokens list`")
        return {"revoked": token_id}
    if action == "rotate":
        return {"revoked_all": store.revoke_all()}
    raise CommandError('"tokens" needs "action": "list", "revoke" or "rotate"')


def handle_request(brain: BrainInterface, req: Any, config: Config | None = None) -> dict[str, Any]:
    """Dispatch one decoded request; never raises, so a bad client cannot crash the service."""
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return {"ok": False, "error": 'a request is a JSON object with a string "cmd"'}
    cmd = req["cmd"]
    try:
        if cmd == "status":
            result: Any = brain.status().to_json()
        elif cmd == "stats":
            result = brain.stats().to_json()
        elif cmd == "reset_stats":
            brain.reset_stats()
            result = None
        elif cmd == "mode":
            mode = req.get("mode")
            if not isinstance(mode, str):
                raise CommandError('"mode" needs a string field "mode"')
            result = brain.set_mode(mode, str(req.get("reason", "cli"))).to_json()
        elif cmd == "estop":
            result = brain.estop(str(req.get("reason", "cli"))).to_json()
        elif cmd == "reset":
            result = brain.reset_estop().to_json()
        elif cmd == "record":
            action = req.get("action")
            tags = req.get("tags")
            if action not in ("start", "stop"):
                raise CommandError('"record" needs "action": "start" or "stop"')
            if tags is not None and not (
                isinstance(tags, list) and all(isinstance(t, str) for t in tags)
            ):
                raise CommandError('"tags" must be a list of strings')
            if action == "start":
                result = brain.start_recording(tags).to_json()
            else:
                result = brain.stop_recording().to_json()
        elif cmd == "teleop":
            action = req.get("action")
            if not isinstance(action, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in action
            ):
                raise CommandError('"teleop" needs "action": a list of numbers')
            brain.teleop([float(v) for v in action])
            result = None
        elif cmd == "heartbeat":
            result = brain.heartbeat().to_json()
        elif cmd == "pair":
            result = _pair(config)
        elif cmd == "tokens":
            result = _tokens(config, req)
        else:
            known = (
                "status, stats, reset_stats, mode, estop, reset, record, teleop, heartbeat, "
                "pair, tokens"
            )
            raise CommandError(f"unknown command {cmd!r}; known: {known}")
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "result": result}


async def handle_ota(brain: BrainInterface, req: dict[str, Any]) -> dict[str, Any]:
    """``{"cmd": "ota", "action": "status"|"check"|"rollback"|"install", "path": ...}``.

    Async because an install runs through its health window before it answers.
    """
    action = req.get("action")
    try:
        if action == "status":
            result: Any = brain.update_status().to_json()
        elif action == "check":
            result = (await brain.check_update()).to_json()
        elif action == "rollback":
            result = (await brain.rollback_update()).to_json()
        elif action == "install":
            path = req.get("path")
            if not isinstance(path, str) or not path:
                raise CommandError('"ota" "install" needs a string "path" (absolute)')
            result = (await brain.install_update(Path(path))).to_json()
        else:
            raise CommandError('"ota" needs "action": status, check, install or rollback')
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # refused bundle, trust failure, busy updater: say why
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "result": result}


async def serve(brain: BrainInterface, path: Path, config: Config | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a killed daemon

    clients = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal clients
        clients += 1
        try:
            refusal = _refusal(writer, clients)
            if refusal is not None:
                # Take (and ignore) the request first, so the client reads why, not EPIPE.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readuntil(b"\n"), 1.0)
                writer.write(encode({"ok": False, "error": refusal}))
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(encode({"ok": False, "error": "request too large"}))
                    await writer.drain()
                    return
                try:
                    req = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    resp = {"ok": False, "error": f"not valid JSON: {exc}"}
                else:
                    resp = (
                        await handle_ota(brain, req)
                        if isinstance(req, dict) and req.get("cmd") == "ota"
                        else handle_request(brain, req, config)
                    )
                writer.write(encode(resp))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            clients -= 1
            writer.close()

    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_REQUEST_BYTES)
    os.chmod(path, 0o660)
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _refusal(writer: asyncio.StreamWriter, clients: int) -> str | None:
    if clients > MAX_CLIENTS:
        return f"too many control-socket clients (limit {MAX_CLIENTS}); try again"
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, gid = peer_credentials(sock)
    except (OSError, AttributeError):
        return "peer credentials unavailable"
    if not peer_allowed(uid, gid):
        return (
            f"uid {uid} may not use the control socket: only root, the daemon's user and "
            "members of its group"
        )
    return None


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    """Adds `status`, `stats`, `mode`, `estop`, `reset` to the continuon command."""
    for name, helptext in (
        ("status", "show the running daemon's mode and tasks"),
        ("stats", "show control-loop timing, sensors, safety and policy counters"),
        ("reset", "reset a latched e-stop (back to idle)"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_config(p)
        p.set_defaults(func=_cli_simple, cmd=name)
    p = sub.add_parser("mode", help="change mode: idle, manual, autonomous, training")
    add_config(p)
    p.add_argument("mode")
    p.set_defaults(func=_cli_mode)
    p = sub.add_parser("record", help="start or stop recording episodes")
    add_config(p)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--tag", action="append", dest="tags", help="tag for the episodes (repeatable)")
    p.set_defaults(func=_cli_record)
    p = sub.add_parser("estop", help="latch the e-stop now")
    add_config(p)
    p.add_argument("--reason", default="cli")
    p.set_defaults(func=_cli_estop)
    p = sub.add_parser("heartbeat", help="operator heartbeat for supervised autonomy")
    add_config(p)
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep sending (4 per safety.autonomous_heartbeat_s) until Ctrl-C: a deadman button",
    )
    p.set_defaults(func=_cli_heartbeat)
    p = sub.add_parser("pair", help="show a pairing code for the companion app (valid 5 min)")
    add_config(p)
    p.set_defaults(func=_cli_pair)
    p = sub.add_parser("tokens", help="list or revoke the Robot API's owner tokens")
    tsub = p.add_subparsers(dest="tokens_action", required=True)
    add_config(tsub.add_parser("list", help="paired clients: id, name, created, last used"))
    r = tsub.add_parser("revoke", help="revoke a token now (open streams are closed)")
    r.add_argument("token_id")
    add_config(r)
    add_config(tsub.add_parser("rotate", help="revoke every token now; each device pairs again"))
    p.set_defaults(func=_cli_tokens)
    from edge_agent.api.tls import register_cli as register_tls

    register_tls(sub, add_config)


def _run_cli(args: argparse.Namespace, payload: dict[str, Any], timeout: float = 5.0) -> int:
    config = args.load_config()
    try:
        resp = request(socket_path(config), payload, timeout=timeout)
    except DaemonUnavailable as exc:
        print(f"continuon: {exc}", file=sys.stderr)
        return 2
    if not resp.get("ok"):
        print(f"continuon: {resp.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(resp.get("result"), indent=2, default=str))
    return 0


def _cli_simple(args: argparse.Namespace) -> int:
    return _run_cli(args, {"cmd": args.cmd})


def _cli_mode(args: argparse.Namespace) -> int:
    return _run_cli(args, {"cmd": "mode", "mode": args.mode})


def _cli_record(args: argparse.Namespace) -> int:
    return _run_cli(args, {"cmd": "record", "action": args.action, "tags": args.tags})


def _cli_estop(args: argparse.Namespace) -> int:
    """The socket path; brain/estop_client.py has already tried the signal (brain/cli.py)."""
    try:
        return _run_cli(args, {"cmd": "estop", "reason": args.reason}, timeout=ESTOP_TIMEOUT_S)
    except TimeoutError:
        print(
            "continuon: the daemon did not answer the e-stop within "
            f"{ESTOP_TIMEOUT_S} s; as root or the service user run "
            "`systemctl kill --kill-whom=main -s SIGUSR1 continuon-brain`",
            file=sys.stderr,
        )
        return 1


def _cli_heartbeat(args: argparse.Namespace) -> int:
    if not args.hold:
        return _run_cli(args, {"cmd": "heartbeat"})
    import time

    config = args.load_config()
    period = (config.safety.autonomous_heartbeat_s or 1.0) / 4
    print("sending operator heartbeats; Ctrl-C stops them (and the car, in autonomous)")
    while True:
        try:
            request(socket_path(config), {"cmd": "heartbeat"}, timeout=period * 2)
        except (DaemonUnavailable, OSError) as exc:
            print(f"continuon: heartbeat not delivered: {exc}", file=sys.stderr)
        time.sleep(period)


def _cli_pair(args: argparse.Namespace) -> int:
    config = args.load_config()
    try:
        resp = request(socket_path(config), {"cmd": "pair"})
    except DaemonUnavailable as exc:
        print(f"continuon: {exc}", file=sys.stderr)
        return 2
    if not resp.get("ok"):
        print(f"continuon: {resp.get('error')}", file=sys.stderr)
        return 1
    r = resp["result"]
    print(f"pairing code: {r['code']}")
    print(
        f"valid {int(r['expires_in_s'])} s, once; enter it in the companion app "
        f"({'https' if config.api.tls_cert else 'http'}://<robot>:{r['port']}/)"
    )
    return 0


def _cli_tokens(args: argparse.Namespace) -> int:
    """Through the daemon when it runs (it holds the store); else on the file directly."""
    config = args.load_config()
    payload: dict[str, Any] = {"cmd": "tokens", "action": args.tokens_action}
    if args.tokens_action == "revoke":
        payload["token_id"] = args.token_id
    try:
        resp = request(socket_path(config), payload)
    except DaemonUnavailable:
        from edge_agent.api.auth import TokenStore, tokens_path

        store = TokenStore(tokens_path(config), config.api.token_ttl_days)
        if args.tokens_action == "list":
            resp = {"ok": True, "result": store.list()}
        elif args.tokens_action == "rotate":
            resp = {"ok": True, "result": {"revoked_all": store.revoke_all()}}
        elif store.revoke(args.token_id):
            resp = {"ok": True, "result": {"revoked": args.token_id}}
        else:
            resp = {"ok": False, "error": f"no token {args.token_id!r}"}
    if not resp.get("ok"):
        print(f"continuon: {resp.get('error')}", file=sys.stderr)
        return 1
    result = resp["result"]
    if args.tokens_action == "rotate":
        print(
            f"revoked all {result['revoked_all']} owner tokens; every device must pair again: "
            "run `continuon pair` and enter the code in the companion app"
        )
        return 0
    if args.tokens_action == "revoke":
        print(f"revoked {result['revoked']}")
        return 0
    if not result:
        print("no paired clients (run `continuon pair`)")
    for t in result:
        print(f"{t['token_id']}  {t['name']!r:24}  created {t['created']}", end="")
        print(f"  last used {t['last_used']}", end="")
        print(
            "  EXPIRED"
            if t.get("expired")
            else f"  expires {t['expires']}"
            if t.get("expires")
            else ""
        )
    return 0
