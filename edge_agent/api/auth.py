"""Pairing codes, owner tokens and stream tickets.

A phone becomes an owner by typing a 6-digit code that only someone at the
robot can see (`continuon pair`, or the log); it gets a 256-bit bearer token
in exchange.  Tokens are stored only as SHA-256 hashes, so a copied
``tokens.json`` cannot be replayed.  Codes are short, so guessing is bounded
three ways: they expire, every address is rate limited, and a few wrong codes
burn the code and lock pairing until the person at the robot issues a new one.

One ``Auth`` per state directory lives in this process (``auth_for``), so the
control socket's `pair` and `tokens` commands and the Robot API share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brain.config import ApiConfig, Config
from rlds.fsutil import replace_file

_log = logging.getLogger("continuon.api.auth")

TOKEN_BYTES = 32  # 256 bits
CODE_DIGITS = 6
LAST_USED_PERSIST_S = 60.0  # last_used is written at most this often per token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PairingError(Exception):
    """A pairing attempt was refused; ``status`` and ``code`` go into the HTTP error."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass(slots=True)
class TokenRecord:
    token_id: str
    name: str
    hash: str
    created: str
    last_used: str | None = None

    def public(self) -> dict[str, Any]:
        """What `continuon tokens list` shows: never the hash."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "created": self.created,
            "last_used": self.last_used,
        }


class TokenStore:
    """Owner tokens in ``<state_dir>/edge/tokens.json`` (0600, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_hash: dict[str, TokenRecord] = {}
        self._persisted_use: dict[str, float] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text())
            records = [TokenRecord(**r) for r in raw["tokens"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never start with an empty store over a damaged one: owners would silently lose
            # access and the next write would destroy the evidence.  Keep it aside.
            bad = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            _log.error("token store %s is unreadable (%s); moved to %s", self.path, exc, bad)
            return
        self._by_hash = {r.hash: r for r in records}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"version": 1, "tokens": [vars_of(r) for r in self._by_hash.values()]}
        replace_file(self.path, json.dumps(data, indent=2).encode(), mode=0o600)

    def issue(self, name: str) -> tuple[str, TokenRecord]:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        rec = TokenRecord(
            token_id=secrets.token_hex(6), name=name, hash=hash_token(token), created=_now_utc()
        )
        with self._lock:
            self._by_hash[rec.hash] = rec
            self._save()
        return token, rec

    def verify(self, token: str) -> TokenRecord | None:
        """The token's record if it is a live owner token; notes when it was last used."""
        if not token or len(token) > 128:
            return None
        with self._lock:
            rec = self._by_hash.get(hash_token(token))
            if rec is None:
                return None
            rec.last_used = _now_utc()
            now = time.monotonic()
            if now - self._persisted_use.get(rec.token_id, -1e9) > LAST_USED_PERSIST_S:
                self._persisted_use[rec.token_id] = now
                with contextlib.suppress(OSError):
                    self._save()
            return rec

    def is_live(self, token_id: str) -> bool:
        with self._lock:
            return any(r.token_id == token_id for r in self._by_hash.values())

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.public() for r in self._by_hash.values()]

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            hit = [h for h, r in self._by_hash.items() if r.token_id == token_id]
            for h in hit:
                del self._by_hash[h]
            if hit:
                self._save()
            return bool(hit)


def vars_of(rec: TokenRecord) -> dict[str, Any]:
    return {
        "token_id": rec.token_id,
        "name": rec.name,
        "hash": rec.hash,
        "created": rec.created,
        "last_used": rec.last_used,
    }


class Pairing:
    """The one active pairing code, its expiry, the failure count and the lockout."""

    def __init__(self, cfg: ApiConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._code: str | None = None
        self._expires = 0.0
        self._failures = 0
        self._locked_until = 0.0
        self._attempts: dict[str, deque[float]] = {}

    def new_code(self) -> dict[str, Any]:
        """Issued at the robot; replaces any older code and lifts a lockout."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        with self._lock:
            self._code = code
            self._expires = self._clock() + self._cfg.pairing_code_ttl_s
            self._failures = 0
            self._locked_until = 0.0
        _log.info(
            "pairing code %s (valid %d s): enter it in the companion app",
            code,
            self._cfg.pairing_code_ttl_s,
        )
        return {"code": code, "expires_in_s": self._cfg.pairing_code_ttl_s}

    def _rate_limit(self, client: str, now: float) -> None:
        q = self._attempts.setdefault(client, deque())
        while q and now - q[0] > 60.0:
            q.popleft()
        if len(q) >= self._cfg.pairing_rate_per_min:
            raise PairingError(
                429,
                "rate_limited",
                "too many pairing attempts from this address; wait a minute",
                retry_after=max(1.0, 60.0 - (now - q[0])),
            )
        q.append(now)
        if len(self._attempts) > 10_000:  # bounded memory under an address-spraying client
            self._attempts = {k: v for k, v in self._attempts.items() if v and now - v[-1] < 60}

    def redeem(self, code: str, client: str) -> None:
        """Consumes the code if it is right; raises PairingError otherwise."""
        with self._lock:
            now = self._clock()
            self._rate_limit(client, now)
            if now < self._locked_until:
                raise PairingError(
                    403,
                    "pairing_locked",
                    "pairing is locked after too many wrong codes; run `continuon pair` "
                    "on the robot for a new code",
                    retry_after=self._locked_until - now,
                )
            if self._code is not None and now >= self._expires:
                self._code = None
            ok = self._code is not None and secrets.compare_digest(code, self._code)
            if ok:
                self._code = None  # single use
                self._failures = 0
                return
            if self._code is None:
                raise PairingError(
                    401,
                    "invalid_code",
                    "no pairing code is active (they expire after "
                    f"{int(self._cfg.pairing_code_ttl_s)} s); run `continuon pair` on the robot",
                )
            self._failures += 1
            if self._failures >= self._cfg.pairing_max_failures:
                self._code = None  # burnt: a new one must be issued at the robot
                self._locked_until = now + self._cfg.pairing_lockout_s
                _log.warning(
                    "pairing locked for %d s after %d wrong codes (last from %s)",
                    self._cfg.pairing_lockout_s,
                    self._failures,
                    client,
                )
                raise PairingError(
                    403,
                    "pairing_locked",
                    "wrong pairing code; too many wrong codes, pairing is now locked",
                    retry_after=self._cfg.pairing_lockout_s,
                )
            raise PairingError(401, "invalid_code", "wrong pairing code")


@dataclass(slots=True)
class _Ticket:
    token_id: str
    expires: float


class Tickets:
    """Short-lived stream tickets, because an <img src> cannot carry an Authorization header.

    A ticket may be used any number of times until it expires (a browser may
    re-request an image), is bound to the token that asked for it, and dies
    with that token.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}

    def issue(self, token_id: str) -> str:
        ticket = secrets.token_urlsafe(24)
        now = self._clock()
        with self._lock:
            self._tickets = {k: t for k, t in self._tickets.items() if t.expires > now}
            self._tickets[ticket] = _Ticket(token_id, now + self.ttl_s)
        return ticket

    def check(self, ticket: str) -> str | None:
        """The token id behind a live ticket, else None."""
        with self._lock:
            t = self._tickets.get(ticket)
            if t is None or t.expires <= self._clock():
                return None
            return t.token_id


class Auth:
    """Everything the API needs to decide who may do what."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.tokens = TokenStore(tokens_path(config))
        self.pairing = Pairing(config.api, clock)
        self.tickets = Tickets(config.api.stream_ticket_ttl_s, clock)

    def pair(self, code: str, name: str, client: str) -> tuple[str, TokenRecord]:
        self.pairing.redeem(code, client)
        token, rec = self.tokens.issue(name)
        _log.info("paired %r as token %s from %s", name, rec.token_id, client)
        return token, rec


def tokens_path(config: Config) -> Path:
    return config.state_dir() / "edge" / "tokens.json"


_registry: dict[Path, Auth] = {}
_registry_lock = threading.Lock()


def auth_for(config: Config, clock: Callable[[], float] = time.monotonic) -> Auth:
    """The process-wide Auth for this robot's state directory (``clock`` when it is created)."""
    key = tokens_path(config).resolve()
    with _registry_lock:
        auth = _registry.get(key)
        if auth is None:
            auth = _registry[key] = Auth(config, clock)
        return auth
