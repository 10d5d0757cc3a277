"""The one model a fine-tune may start from: the committed cloud bundle's own weights.

A local fine-tune is trusted (device-signed, installed through the slots) only as a
derivative of the cloud-signed bundle the robot has committed.  That promise is kept by
hashes, not by where a file lies:

* the committed record in the updater's state names its slot and the sha256 of the slot's
  ``edge_manifest.json``; the manifest on disk must still have that hash;
* that manifest (signed through TUF when it was installed) names the torch checkpoint the
  cloud exported the bundle from (``provenance.checkpoint_sha256``);
* the torch weights on the robot (``local_train.base_model``, else ``policy.pt`` beside
  ``policy.model``, else ``<work_dir>/base.pt``: config, never a request) must have exactly
  that hash.  The job records it; the worker hashes the bytes it loads; promotion checks it
  against the committed bundle again before anything is signed.

Torch-free (the daemon imports it).  Messages never name a path on the robot: they reach
the Robot API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain.interface import CommandError
from common.digest import sha256_file


class BaseRefused(CommandError):
    """There is no committed model that a fine-tune may start from; the message says why."""


@dataclass(frozen=True, slots=True)
class CommittedBase:
    slot: str
    version: str
    release_counter: int
    manifest_sha256: str  # of the committed slot's edge_manifest.json
    checkpoint_sha256: str  # of the torch weights the committed bundle was exported from

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "version": self.version,
            "release_counter": self.release_counter,
            "manifest_sha256": self.manifest_sha256,
            "checkpoint_sha256": self.checkpoint_sha256,
        }


def committed_base(config: Any) -> CommittedBase:
    """The committed cloud bundle, read from the updater's state and slot; BaseRefused if none."""
    try:
        from brain.bundle.manifest import BundleError, read_manifest
        from brain.ota.slots import Slots
        from brain.ota.state import StateError, StateStore
    except ImportError:  # pragma: no cover - the OTA extra is part of every install
        raise BaseRefused("over-the-air updates are not installed; no committed model") from None
    root = Path(config.ota_dir())
    try:
        rec = StateStore(root).load().committed
    except StateError:
        raise BaseRefused(
            "the OTA state cannot be read; no committed model to start from"
        ) from None
    if rec is None:
        raise BaseRefused(
            "no committed cloud bundle to fine-tune from (install one through an update first)"
        )
    slots = Slots(root)
    try:
        actual = slots.manifest_sha256(rec.slot)
        manifest = read_manifest(slots.path(rec.slot))
    except (OSError, BundleError):
        raise BaseRefused(f"the committed slot {rec.slot} cannot be read") from None
    if actual != rec.manifest_sha256:
        raise BaseRefused(
            f"the committed slot {rec.slot} does not hold the bundle the updater committed "
            f"(manifest sha256 {actual[:12]}, expected {rec.manifest_sha256[:12]})"
        )
    prov = manifest.provenance
    if prov.source != "cloud":
        raise BaseRefused(
            f"the committed bundle {manifest.version} is itself a local fine-tune; a fine-tune "
            "starts from a cloud-signed bundle (roll back to it, or install a cloud update)"
        )
    if not prov.checkpoint_sha256:
        raise BaseRefused(
            f"the committed bundle {manifest.version} does not name the weights it was exported "
            "from (provenance.checkpoint_sha256); it cannot be fine-tuned on the robot"
        )
    return CommittedBase(
        slot=rec.slot,
        version=str(manifest.version),
        release_counter=int(manifest.release_counter),
        manifest_sha256=rec.manifest_sha256,
        checkpoint_sha256=prov.checkpoint_sha256,
    )


def base_weights(config: Any, base: CommittedBase) -> Path:
    """The robot's torch copy of the committed model, hash-checked; BaseRefused otherwise."""
    from brain.localtrain.job import resolve_base_model

    path = resolve_base_model(config)
    try:
        sha = sha256_file(path) if path.is_file() else None
    except OSError:
        sha = None
    if sha is None:
        raise BaseRefused(
            f"the torch weights of the committed bundle {base.version} are not on the robot "
            "(local_train.base_model)"
        )
    if sha != base.checkpoint_sha256:
        raise BaseRefused(
            f"the torch weights configured as local_train.base_model (sha256 {sha[:12]}) are not "
            f"the committed bundle {base.version}'s (sha256 {base.checkpoint_sha256[:12]})"
        )
    return path
