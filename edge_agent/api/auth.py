"""Pairing codes, owner tokens and stream tickets.

A phone becomes an owner by typing a 12-digit code that only someone at the
robot can see (`continuon pair`; codes are never logged); it gets a 256-bit
bearer token in exchange.  Tokens are stored only as SHA-256 hashes, so a
copied ``tokens.json`` cannot be replayed, and may expire (``api.token_ttl_days``).
Guessing is bounded per code, not by a lock anyone could trip: a code expires,
each address backs off after a few wrong codes, and a code is void after a
guess budget that keeps any attacker's chance per code at most 1e-6.

One ``Auth`` per state directory lives in this process (``auth_for``), so the
control socket's `pair` and `tokens` commands and the Robot API share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
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
from common.backoff import BackoffPolicy
from common.durable import move, write_json

_log = logging.getLogger("continuon.api.auth")

TOKEN_BYTES = 32  # 256 bits
CODE_DIGITS = 12
# Wrong codes (from all addresses together) that void the active code: the chance of
# guessing a code before it is void is at most CODE_GUESS_BUDGET / 10**CODE_DIGITS = 1e-6.
CODE_GUESS_BUDGET = 10**CODE_DIGITS // 10**6
BACKOFF_INITIAL_S = 2.0  # an address's first wait after api.pairing_max_failures wrong codes
CLIENT_MEMORY_S = 3600.0  # an address quiet this long starts again with no failures
MAX_TRACKED_CLIENTS = 10_000
LAST_USED_PERSIST_S = 60.0  # last_used is written at most this often per token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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

    def __init__(
        self, path: Path, ttl_days: float | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.ttl_days = ttl_days
        self._wall = wall
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
                move(self.path, bad)
            _log.error("token store %s is unreadable (%s); moved to %s", self.path, exc, bad)
            return
        self._by_hash = {r.hash: r for r in records}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"version": 1, "tokens": [vars_of(r) for r in self._by_hash.values()]}
        write_json(self.path, data, mode=0o600)

    def issue(self, name: str) -> tuple[str, TokenRecord]:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        created = datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="seconds")
        rec = TokenRecord(
            token_id=secrets.token_hex(6), name=name, hash=hash_token(token), created=created
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
            if rec is None or self._expired(rec):
                return None
            rec.last_used = datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="seconds")
            now = time.monotonic()
            if now - self._persisted_use.get(rec.token_id, -1e9) > LAST_USED_PERSIST_S:
                self._persisted_use[rec.token_id] = now
                with contextlib.suppress(OSError):
                    self._save()
            return rec

    def expires_at(self, rec: TokenRecord) -> float | None:
        """When the token stops working (epoch seconds); None: never (no api.token_ttl_days).

        Computed from ``created`` and today's TTL, so shortening the TTL in the
        config applies to tokens issued before the change as well.
        """
        if self.ttl_days is None:
            return None
        try:
            created = datetime.fromisoformat(rec.created).timestamp()
        except ValueError:
            return 0.0  # an unreadable date cannot prove the token is young
        return created + self.ttl_days * 86400.0

    def _expired(self, rec: TokenRecord) -> bool:
        end = self.expires_at(rec)
        return end is not None and self._wall() >= end

    def is_live(self, token_id: str) -> bool:
        with self._lock:
            return any(
                r.token_id == token_id and not self._expired(r) for r in self._by_hash.values()
            )

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for r in self._by_hash.values():
                end = self.expires_at(r)
                expires = None if end is None else datetime.fromtimestamp(end, UTC)
                out.append(
                    {
                        **r.public(),
                        "expires": expires and expires.isoformat(timespec="seconds"),
                        "expired": self._expired(r),
                    }
                )
            return out

    def revoke_all(self) -> int:
        """`continuon tokens rotate`: every owner token stops working now; returns how many.

        Tokens are random and stored only as hashes, so there is no store secret to
        rotate: revoking all of them is the rotation, and each device pairs again.
        """
        with self._lock:
            n = len(self._by_hash)
            self._by_hash.clear()
            self._persisted_use.clear()
            self._save()
            return n

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


def client_key(address: str) -> str:
    """Whom a failure counts against: the IPv4 address, or the /64 of an IPv6 one.

    An IPv6 host picks addresses from its /64 at will, so counting per address
    would hand it 2**64 fresh back-off records.
    """
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def normalize_code(code: str) -> str:
    """The digits of a code as typed: "4821 0937-5512" is "482109375512"."""
    return "".join(ch for ch in code if ch not in " -")


def format_code(code: str) -> str:
    """Groups of four digits, easier to read aloud and type."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


@dataclass(slots=True)
class _Client:
    """One address's recent pairing attempts and failures (for its back-off)."""

    attempts: deque[float]
    failures: int = 0
    blocked_until: float = 0.0
    last_seen: float = 0.0


class Pairing:
    """The one active pairing code, its guess budget, and back-off per client address.

    Nothing here is global that a remote client can trip: wrong codes back off
    only the address (or IPv6 /64) that sent them, so the owner's phone can
    pair with a fresh code while another address floods.  What bounds guessing
    across all addresses is the code's guess budget: after ``CODE_GUESS_BUDGET``
    wrong codes (from anyone) the code is void.  With 10**12 codes and at most
    10**6 guesses per code, any attacker's chance per issued code is <= 1e-6.
    """

    def __init__(self, cfg: ApiConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._code: str | None = None
        self._expires = 0.0
        self._wrong = 0  # wrong codes against the active code, from every address
        self._clients: dict[str, _Client] = {}

    def new_code(self) -> dict[str, Any]:
        """Issued at the robot; replaces any older code.  The code is never logged."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        with self._lock:
            self._code = code
            self._expires = self._clock() + self._cfg.pairing_code_ttl_s
            self._wrong = 0
        _log.info("a pairing code was issued (valid %d s)", self._cfg.pairing_code_ttl_s)
        return {"code": format_code(code), "expires_in_s": self._cfg.pairing_code_ttl_s}

    def _client(self, key: str, now: float) -> _Client:
        c = self._clients.get(key)
        if c is not None and now - c.last_seen > CLIENT_MEMORY_S:
            c = None  # quiet for long enough: a clean slate
        if c is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            c = self._clients[key] = _Client(deque())
        c.last_seen = now
        return c

    def _forget_idle(self, now: float) -> None:
        """Bounded memory under an address-spraying client: drop the quietest records.

        Forgetting an address only resets its back-off; the code's guess budget
        still bounds what all addresses together can try.
        """
        quiet = CLIENT_MEMORY_S
        self._clients = {k: c for k, c in self._clients.items() if now - c.last_seen < quiet}
        if len(self._clients) >= MAX_TRACKED_CLIENTS:
            keep = sorted(self._clients.items(), key=lambda kv: kv[1].last_seen)
            self._clients = dict(keep[len(keep) // 2 :])

    def _admit(self, c: _Client, now: float) -> None:
        """Raises 429 while this address is backed off or over its per-minute rate."""
        if now < c.blocked_until:
            raise PairingError(
                429,
                "rate_limited",
                "too many wrong pairing codes from this address; wait before trying again",
                retry_after=c.blocked_until - now,
            )
        q = c.attempts
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

    def backoff_s(self, failures: int) -> float:
        """The wait after an address's ``failures``-th wrong code (0 while under the limit)."""
        extra = failures - self._cfg.pairing_max_failures
        if extra < 0:
            return 0.0
        return BackoffPolicy(BACKOFF_INITIAL_S, self._cfg.pairing_lockout_s).delay(extra + 1)

    def redeem(self, code: str, client: str) -> None:
        """Consumes the code if it is right; raises PairingError otherwise."""
        with self._lock:
            now = self._clock()
            c = self._client(client_key(client), now)
            self._admit(c, now)
            if self._code is not None and now >= self._expires:
                self._code = None
            digits = normalize_code(code)
            ok = self._code is not None and secrets.compare_digest(digits, self._code)
            if ok:
                self._code = None  # single use
                c.failures = 0
                return
            c.failures += 1
            wait = self.backoff_s(c.failures)
            c.blocked_until = now + wait
            if self._code is None:
                raise PairingError(
                    401,
                    "invalid_code",
                    "no pairing code is active (they expire after "
                    f"{int(self._cfg.pairing_code_ttl_s)} s); run `continuon pair` on the robot",
                    retry_after=wait or None,
                )
            self._wrong += 1
            if self._wrong >= CODE_GUESS_BUDGET:
                self._code = None  # void: a new one must be issued at the robot
                _log.warning(
                    "a pairing code was voided after %d wrong codes; run `continuon pair` again",
                    self._wrong,
                )
            if wait:
                _log.warning(
                    "pairing: %d wrong codes from %s; it waits %.0f s", c.failures, client, wait
                )
            raise PairingError(401, "invalid_code", "wrong pairing code", retry_after=wait or None)


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

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tokens = TokenStore(tokens_path(config), config.api.token_ttl_days, wall)
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


def auth_for(
    config: Config,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Auth:
    """The process-wide Auth for this robot's state directory (clocks used when it is created)."""
    key = tokens_path(config).resolve()
    with _registry_lock:
        auth = _registry.get(key)
        if auth is None:
            auth = _registry[key] = Auth(config, clock, wall)
        return auth
