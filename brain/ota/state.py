"""The updater's persisted state: one JSON file, schema-checked, replaced atomically.

Why a single file replaced by rename: after a power cut or SIGKILL the file is
either the old version or the new one, never a mix, so the slot the robot boots
on is always a fully written, verified bundle.  Every write is: write a
temporary file, fsync it, rename it over the old one, fsync the directory (the
rename itself is only durable once the directory is synced).

A second, smaller file, ``committed.json``, is written only when a bundle is
committed.  It is the fallback when ``state.json`` cannot be parsed (disk
corruption, a hand edit): the robot then boots on the last-known-good slot it
names instead of on nothing, and the error is reported.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.durable import replace_file

SCHEMA: Final = 1
STATE_FILE = "state.json"
COMMITTED_FILE = "committed.json"

SlotName = Literal["A", "B"]

Phase = Literal[
    "idle",
    "downloading",
    "verifying",
    "unpacking",
    "staged",
    "switching",
    "trial",
    "committed",
    "rolled_back",
    "failed",
]
# Phases in which an install is under way; a restart in one of them is recovered at boot.
IN_PROGRESS: frozenset[str] = frozenset(
    {"downloading", "verifying", "unpacking", "staged", "switching", "trial"}
)
# A restart in these counts as a failed trial: the new model had (or was about to get) the wheel.
TRIAL_PHASES: frozenset[str] = frozenset({"switching", "trial"})


class StateError(RuntimeError):
    """The state file cannot be used; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlotRecord(_Strict):
    """A bundle sitting in a slot, as far as the updater vouches for it."""

    slot: SlotName
    version: Annotated[str, Field(min_length=1, max_length=128)]
    release_counter: Annotated[int, Field(ge=0)]
    manifest_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    source: Literal["cloud", "local"] = "cloud"
    at: float = Field(default_factory=time.time)


class FailedVersion(_Strict):
    version: str
    release_counter: int
    manifest_sha256: str | None = None
    reason: str
    at: float = Field(default_factory=time.time)


class OtaState(_Strict):
    """Everything the updater must remember across restarts."""

    schema_version: Literal[1] = SCHEMA
    phase: Phase = "idle"
    committed: SlotRecord | None = None  # last-known-good: what the robot boots on
    previous: SlotRecord | None = None  # the committed bundle before it (manual rollback)
    candidate: SlotRecord | None = None  # the bundle being installed (staged..trial)
    # The highest release counter ever committed; never decreases.
    release_counter: Annotated[int, Field(ge=0)] = 0
    failed: list[FailedVersion] = Field(default_factory=list)
    trial_started_at: float | None = None
    trial_window_s: float | None = None
    last_error: str | None = None
    last_result: str | None = None
    updated_at: float = Field(default_factory=time.time)

    def with_(self, **changes: object) -> OtaState:
        """A validated copy with ``changes`` and a fresh ``updated_at``."""
        data = self.model_dump()
        data.update(changes)
        data["updated_at"] = time.time()
        return OtaState.model_validate(data)

    def failed_reason(self, version: str, manifest_sha256: str | None = None) -> str | None:
        """Why ``version`` failed before (None if it never did); failures are never retried."""
        for f in self.failed:
            if f.version == version or (
                manifest_sha256 is not None and f.manifest_sha256 == manifest_sha256
            ):
                return f.reason
        return None

    def inactive_slot(self) -> SlotName:
        """The slot an install may overwrite: never the committed one."""
        if self.committed is None:
            return "A"
        return "B" if self.committed.slot == "A" else "A"


class StateStore:
    """Reads and writes ``state.json`` (and ``committed.json``) in the updater's directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / STATE_FILE
        self.committed_path = self.root / COMMITTED_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> OtaState:
        """The state; a missing file is a fresh robot.  Raises StateError when unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return OtaState()
        except OSError as exc:
            raise StateError(f"OTA state file {self.path}: cannot be read: {exc}") from exc
        return _parse(self.path, raw, OtaState)

    def load_committed(self) -> SlotRecord | None:
        """The last-known-good record from ``committed.json`` (None if absent or unreadable)."""
        try:
            raw = self.committed_path.read_bytes()
        except OSError:
            return None
        try:
            return _parse(self.committed_path, raw, SlotRecord)
        except StateError:
            return None

    def save(self, state: OtaState) -> None:
        self._write(self.path, _dump(state))

    def save_committed(self, record: SlotRecord) -> None:
        self._write(self.committed_path, _dump(record))

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data, mode=0o600)

    def cleanup_temp(self) -> None:
        """Remove temporary files a killed write left behind."""
        for p in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


_M = TypeVar("_M", bound=BaseModel)


def _dump(model: BaseModel) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _parse(path: Path, raw: bytes, model: type[_M]) -> _M:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StateError(f"OTA state file {path}: not valid JSON ({exc})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise StateError(f"OTA state file {path}: does not match the schema: {problems}") from None
