"""Client side of the daemon's control socket: where it is and one blocking request.

The server (who may connect, the commands, the caps) is ``edge_agent.control_socket``,
the part that listens on sockets.  The client lives here, with the brain, because the
brain's own commands (``continuon ota``, ``continuon train-local``) talk to a running
daemon through it and the brain never imports edge_agent.  One JSON object per line
each way; see edge_agent/control_socket.py for the commands.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brain.config import Config

SOCKET_NAME = "control.sock"


class DaemonUnavailable(RuntimeError):
    pass


def socket_path(config: Config) -> Path:
    return config.runtime_dir() / SOCKET_NAME


def encode(obj: Any) -> bytes:
    """One message on the wire: compact JSON and a newline."""
    return json.dumps(obj, default=str).encode() + b"\n"


def request(path: Path, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One blocking request to a running daemon."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(encode(payload))  # a refusal may already be waiting to be read
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonUnavailable(
            f"no daemon is listening on {path} ({exc.strerror}); is `continuon run` running "
            "with the same --config?"
        ) from None
    except PermissionError:
        raise DaemonUnavailable(
            f"permission denied on {path}; run as the daemon's user or a member of its group"
        ) from None
    answer = json.loads(buf)
    if not isinstance(answer, dict):
        raise ValueError(f"{path}: the daemon answered a {type(answer).__name__}, not an object")
    return answer


def daemon_running(config: Config) -> bool:
    """Does a daemon accept connections on this robot's control socket?"""
    path = socket_path(config)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
