"""Slots A and B: where bundles live on the robot, and how one is written without risk.

Layout of the updater directory (``ota.slots_dir``)::

    state.json  committed.json  updater.lock
    slots/A/  slots/B/          one unpacked, verified bundle each (or absent)
    slots/.X*/                  an unpack in progress (brain.bundle.unpack; deleted at boot)
    slots/.trash-*/             a slot being deleted (deleted at boot)
    downloads/                  resumable downloads (the trust layer's)
    metadata/                   TUF metadata (the trust layer's)

Why unpack beside the slot and rename: a bundle appears under ``slots/X``
only once every file in it is written, hash-checked and fsync'd; a crash
while unpacking leaves a staging directory that boot recovery removes.
Only the inactive slot is ever written or deleted; the committed one is
read-only for the updater.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from brain.ota.state import SlotName
from rlds.fsutil import fsync_dir, sha256_file

if TYPE_CHECKING:
    from brain.bundle.manifest import EdgeManifest

MANIFEST_NAME = "edge_manifest.json"
SLOT_NAMES: tuple[SlotName, SlotName] = ("A", "B")


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
        os.replace(p, trash)
        fsync_dir(self.dir)
        shutil.rmtree(trash, ignore_errors=True)

    def stage(self, archive: Path, slot: SlotName) -> EdgeManifest:
        """Unpack ``archive`` into ``slot`` (verified, fsync'd); the old slot content is gone.

        On any failure (bad bundle, full disk) nothing is left under ``slot``
        and the error propagates; the other slot is never touched.
        """
        from brain.bundle.unpack import unpack_bundle

        self.ensure()
        self.clear(slot)
        # unpack_bundle stages beside the slot and renames the finished, fsync'd directory
        # into place, so a crash leaves either no slot or a complete one.
        return unpack_bundle(Path(archive), self.path(slot))

    def cleanup(self) -> list[str]:
        """Remove what a crash left behind (staging and trash dirs); returns their names."""
        if not self.dir.exists():
            return []
        from brain.bundle.unpack import clean_staging

        removed = [p.name for p in clean_staging(self.dir)]
        for p in self.dir.iterdir():
            if p.name.startswith((".staging-", ".trash-")):
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
