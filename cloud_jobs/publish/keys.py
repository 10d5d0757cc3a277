"""TUF signing keys on disk: ed25519, one PEM file per private key (0600), JSON per public key.

Layout of a keys directory::

    KEYS/keys.json           roles -> {threshold, keyids}: the intended role assignment
    KEYS/<keyid>.pub         the public key (securesystemslib key dict, JSON)
    KEYS/<keyid>.key         the private key (PKCS#8 PEM, unencrypted, mode 0600)
    KEYS/retired/<keyid>.*   keys revoked by a rotation (kept for the record, never used)

The root keys belong offline: a keys directory may hold only some private keys (e.g. the
online timestamp/snapshot keys on the publishing server); signing uses the private keys that
are present and fails clearly when a role's threshold cannot be met.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from common.durable import move, replace_file

ROLES = ("root", "targets", "snapshot", "timestamp")
KEYS_FILE = "keys.json"


class KeysError(Exception):
    """A keys directory is missing, malformed, or lacks the private keys a step needs."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def _write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    replace_file(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=mode)


@dataclass
class RoleKeys:
    threshold: int
    keyids: list[str] = field(default_factory=list)


class KeyStore:
    """A keys directory: load public keys, signers for present private keys, generate, retire."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        path = self.dir / KEYS_FILE
        try:
            raw = json.loads(path.read_text())
            self.roles = {
                r: RoleKeys(int(v["threshold"]), list(v["keyids"])) for r, v in raw["roles"].items()
            }
        except FileNotFoundError:
            raise KeysError(
                f"{path}: missing (run `cloud_jobs keys init --dir {self.dir}`)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeysError(f"{path}: malformed ({exc})") from None
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise KeysError(f"{path}: no keys for roles {missing}")

    # -- creation
    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        thresholds: dict[str, int] | None = None,
        counts: dict[str, int] | None = None,
    ) -> KeyStore:
        """Generate keys for every role; ``counts[role]`` keys, ``thresholds[role]`` needed."""
        d = Path(directory)
        if (d / KEYS_FILE).exists():
            raise KeysError(f"{d}: already holds keys ({KEYS_FILE}); refusing to overwrite")
        thresholds = {r: 1 for r in ROLES} | (thresholds or {})
        counts = counts or {}
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        roles: dict[str, Any] = {}
        for role in ROLES:
            t = thresholds[role]
            n = counts.get(role, t)
            if t < 1 or n < t:
                raise KeysError(f"{role}: threshold {t} with {n} keys is impossible")
            roles[role] = {"threshold": t, "keyids": [generate_key(d).keyid for _ in range(n)]}
        _write_json(d / KEYS_FILE, {"roles": roles})
        return cls(d)

    def save(self) -> None:
        roles = {r: {"threshold": k.threshold, "keyids": k.keyids} for r, k in self.roles.items()}
        _write_json(self.dir / KEYS_FILE, {"roles": roles})

    # -- access
    def public_key(self, keyid: str) -> Key:
        path = self.dir / f"{keyid}.pub"
        try:
            return SSlibKey.from_dict(keyid, json.loads(path.read_text()))
        except FileNotFoundError:
            raise KeysError(f"{path}: public key missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeysError(f"{path}: malformed public key ({exc})") from None

    def signer(self, keyid: str) -> CryptoSigner | None:
        """The signer for ``keyid`` if its private key is here, else None."""
        path = self.dir / f"{keyid}.key"
        if not path.exists():
            return None
        if path.stat().st_mode & 0o077:
            raise KeysError(f"{path}: private key is readable by others (chmod 600 it)")
        private = load_pem_private_key(path.read_bytes(), None)
        return CryptoSigner(private, self.public_key(keyid))  # type: ignore[arg-type]

    def signers(self, keyids: list[str]) -> list[CryptoSigner]:
        return [s for k in keyids if (s := self.signer(k)) is not None]

    def retire(self, keyid: str) -> None:
        """Move a revoked key's files to ``retired/`` so it is never used to sign again."""
        retired = self.dir / "retired"
        retired.mkdir(exist_ok=True, mode=0o700)
        for suffix in (".key", ".pub"):
            p = self.dir / f"{keyid}{suffix}"
            if p.exists():
                move(p, retired / p.name)


def generate_key(directory: Path) -> SSlibKey:
    """A new ed25519 key pair written to ``directory``; returns the public key."""
    signer = CryptoSigner.generate_ed25519()
    pub = signer.public_key
    assert isinstance(pub, SSlibKey)
    _write_private(directory / f"{pub.keyid}.key", signer.private_bytes)
    _write_json(directory / f"{pub.keyid}.pub", pub.to_dict())
    return pub
