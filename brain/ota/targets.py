"""Signed targets (bundles) and the checks on their custom fields that TUF does not make.

TUF vouches for the bytes; ``version``, ``release_counter`` and ``hardware_id`` are the
release tooling's fields on top, checked here against this robot and the committed release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tuf.api.metadata import TargetFile

from brain.ota.trust_errors import IncompatibleTargetError, MetadataError, ReplayError


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """A signed target (a bundle) and the custom fields the release tooling put on it."""

    name: str
    length: int
    hashes: MappingProxyType[str, str] = field(hash=False)
    version: str
    release_counter: int
    hardware_id: str

    @classmethod
    def from_target_file(cls, tf: TargetFile) -> TargetInfo:
        custom = tf.custom if isinstance(tf.custom, dict) else {}
        version, counter, hw = (
            custom.get("version"),
            custom.get("release_counter"),
            custom.get("hardware_id"),
        )
        if not isinstance(version, str) or not version:
            raise IncompatibleTargetError(f"target {tf.path}: custom.version missing or not text")
        if type(counter) is not int or counter < 0:
            raise IncompatibleTargetError(
                f"target {tf.path}: custom.release_counter must be an integer >= 0"
            )
        if not isinstance(hw, str) or not hw:
            raise IncompatibleTargetError(f"target {tf.path}: custom.hardware_id missing")
        return cls(
            name=tf.path,
            length=tf.length,
            hashes=MappingProxyType(dict(tf.hashes)),
            version=version,
            release_counter=counter,
            hardware_id=hw,
        )


def check_release_counter(target: TargetInfo | Any, committed_counter: int | None) -> None:
    """Refuse anything not strictly newer than the committed release (a replayed old bundle).

    ``target`` may be a :class:`TargetInfo` or an ``EdgeManifest`` (both have
    ``release_counter``); ``committed_counter`` None means nothing was ever committed.
    """
    if committed_counter is not None and target.release_counter <= committed_counter:
        raise ReplayError(
            f"release counter {target.release_counter} (version {target.version}) is not above "
            f"the committed {committed_counter}: refusing an old or replayed release"
        )


def check_hardware(target: TargetInfo | Any, hardware_id: str) -> None:
    """Refuse a target or manifest made for other hardware."""
    if target.hardware_id != hardware_id:
        raise IncompatibleTargetError(
            f"{target.version} is for hardware {target.hardware_id!r}, this robot is "
            f"{hardware_id!r}"
        )


def check_manifest_matches(target: TargetInfo, manifest: Any) -> None:
    """The unpacked bundle's manifest must say what the signed target's custom fields say.

    TUF signs the archive and the custom fields separately from the manifest inside; a
    mismatch means the release tooling (or an attacker with the targets key but not ...) mixed
    things up, and the robot should not guess which one is right.
    """
    check_hardware(manifest, target.hardware_id)
    if manifest.version != target.version or manifest.release_counter != target.release_counter:
        raise MetadataError(
            f"bundle manifest says version {manifest.version} / release {manifest.release_counter}"
            f", the signed target {target.name} says {target.version} / {target.release_counter}"
        )
