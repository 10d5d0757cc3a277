"""Slots A and B: where bundles live on the robot, and how one is written without risk.

Layout of the updater directory (``ota.slots_dir``)::

    state.json  committed.json  updater.lock
    slots/A/  slots/B/          one unpacked, verified bundle each (or absent)
    slots/.staging-*/           a bundle being verified (deleted on failure and at boot)
    slots/.X*/                  an unpack in progress (brain.bundle.unpack; deleted at boot)
    slots/.trash-*/             a slot being deleted (deleted at boot)
    downloads/                  resumable downloads (the trust layer's)
    metadata/                   TUF metadata (the trust layer's)

Why a staging directory beside the slots: an incoming bundle is unpacked and
verified in full (every file's size and hash, the manifest, its trust) in
``slots/.staging-*`` before the inactive slot is touched, so a rejected upload,
a truncated download or a full disk never costs the bundle that slot holds (the
previous one, kept for rollback).  Staging lives on the slots' own filesystem,
so placing a verified bundle is a rename, not a copy.  A crash leaves a staging
directory that boot recovery removes.  Only the inactive slot is ever written
or deleted; the committed one is read-only for the updater.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from brain.ota.state import SlotName
from common.digest import sha256_file
from common.durable import move, recover_dir, replace_dir

if TYPE_CHECKING:
    from brain.bundle.manifest import EdgeManifest

MANIFEST_NAME = "edge_manifest.json"
SLOT_NAMES: tuple[SlotName, SlotName] = ("A", "B")
STAGING_PREFIX = ".staging-"


class SlotError(RuntimeError):
    """A slot cannot be written or used; the message says which and why."""


class Slots:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "slots"

    def path(self, slot: SlotName) -> Path:
        if slot not in SLOT_NAMES:
            raise ValueError(f"unknown slot {slot!r}")
        return self.dir / slot

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing

    def clear(self, slot: SlotName) -> None:
        """Delete a slot: rename it away first so that it vanishes atomically."""
        p = self.path(slot)
        if not p.exists():
            return
        trash = self.dir / f".trash-{slot}-{uuid.uuid4().hex[:8]}"
        move(p, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def new_staging(self) -> Path:
        """A fresh (not yet existing) staging path beside the slots, same filesystem."""
        self.ensure()
        return self.dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"

    def unpack_staging(self, archive: Path, staging: Path) -> EdgeManifest:
        """Unpack and verify ``archive`` into ``staging`` (fsync'd); no slot is touched.

        On failure nothing is left at ``staging`` (brain.bundle.unpack cleans up)."""
        from brain.bundle.unpack import unpack_bundle

        return unpack_bundle(Path(archive), staging)

    def place(self, staging: Path, slot: SlotName) -> None:
        """Make a verified staging directory ``slot``, swapped in whole (common.durable).

        A crash leaves the slot as it was or as the staging directory was, and may leave
        the staging directory (holding the old slot) behind, which boot recovery removes
        like any interrupted install.
        """
        replace_dir(staging, self.path(slot))

    def discard(self, staging: Path) -> None:
        """Remove a staging directory (a rejected or failed install)."""
        if staging.parent == self.dir and staging.name.startswith(STAGING_PREFIX):
            shutil.rmtree(staging, ignore_errors=True)

    def stage(self, archive: Path, slot: SlotName) -> EdgeManifest:
        """Unpack ``archive`` in staging, then into ``slot``; on failure ``slot`` is unchanged."""
        staging = self.new_staging()
        try:
            manifest = self.unpack_staging(archive, staging)
            self.place(staging, slot)
        finally:
            self.discard(staging)
        return manifest

    def cleanup(self) -> list[str]:
        """Remove what a crash left behind (staging and trash dirs); returns their names."""
        if not self.dir.exists():
            return []
        from brain.bundle.unpack import clean_staging

        removed = [p.name for p in clean_staging(self.dir)]
        for slot in SLOT_NAMES:  # a two-rename swap cut short (no RENAME_EXCHANGE)
            recover_dir(self.path(slot))
        for p in self.dir.iterdir():
            if p.name.startswith((STAGING_PREFIX, ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    # ------------------------------------------------------------------ reading

    def manifest_sha256(self, slot: SlotName) -> str:
        return sha256_file(self.path(slot) / MANIFEST_NAME)

    def verify(self, slot: SlotName, expected_manifest_sha256: str | None = None) -> EdgeManifest:
        """Check every file of the slot against its manifest; raise SlotError if anything is off."""
        from brain.bundle.manifest import BundleError
        from brain.bundle.unpack import verify_bundle_dir

        p = self.path(slot)
        if not p.is_dir():
            raise SlotError(f"slot {slot} ({p}) is empty")
        try:
            manifest = verify_bundle_dir(p)
        except BundleError as exc:
            raise SlotError(f"slot {slot} ({p}) failed verification: {exc}") from exc
        if expected_manifest_sha256 is not None:
            actual = self.manifest_sha256(slot)
            if actual != expected_manifest_sha256:
                raise SlotError(
                    f"slot {slot} ({p}) holds a different bundle than the state file records "
                    f"(manifest sha256 {actual[:12]}, expected {expected_manifest_sha256[:12]})"
                )
        return manifest
