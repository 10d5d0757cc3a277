"""Anonymisation of episode metadata for export.

Operator fields are dropped; identifiers (robot id, episode id, anything
named like an id) are replaced by a keyed hash with a per-deployment secret
salt.  The salt never goes into the output, so ids cannot be reversed by
hashing a list of candidate robot names, yet the same robot keeps the same
pseudonym across exports of one deployment (episodes stay groupable).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from common.durable import replace_file

# Keys removed wherever they appear (operator identity never leaves the robot).
DROP_KEYS = frozenset(
    {"operator", "operator_id", "operator_name", "user", "username", "email", "owner", "hostname"}
)
# Keys whose values are pseudonymised.
ID_KEYS = frozenset({"robot_id", "episode_id", "device_id", "serial", "camera_serial"})

SALT_BYTES = 32


def load_or_create_salt(path: Path) -> bytes:
    """The deployment's secret salt, created once (0600) on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = secrets.token_bytes(SALT_BYTES)
        replace_file(path, data, mode=0o600)
        return data
    if len(data) < 16:
        raise ValueError(f"export salt {path} is too short ({len(data)} bytes); delete it to renew")
    return data


def pseudonym(value: str, salt: bytes) -> str:
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:16]


class Anonymizer:
    def __init__(self, salt: bytes) -> None:
        if len(salt) < 16:
            raise ValueError("the salt must be at least 16 bytes")
        self._salt = salt

    def id(self, value: str) -> str:
        return pseudonym(value, self._salt)

    def metadata(self, meta: Any) -> Any:
        """A copy of ``meta`` with operator fields dropped and identifiers pseudonymised."""
        if isinstance(meta, dict):
            out = {}
            for k, v in meta.items():
                if k in DROP_KEYS:
                    continue
                if k in ID_KEYS and isinstance(v, str):
                    out[k] = self.id(v)
                else:
                    out[k] = self.metadata(v)
            return out
        if isinstance(meta, list):
            return [self.metadata(v) for v in meta]
        return meta

    __call__ = metadata
