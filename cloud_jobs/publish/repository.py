"""A TUF repository of static files, written with python-tuf's Metadata API.

Layout (consistent snapshots, so a CDN or any static web server can serve it while it is
being updated: files are only ever added, and ``timestamp.json`` is replaced last)::

    REPO/metadata/N.root.json   every root version (clients walk the chain on rotation)
    REPO/metadata/root.json     the newest root (what a robot is provisioned with)
    REPO/metadata/N.targets.json, N.snapshot.json, timestamp.json
    REPO/targets/<sha256>.<name>

Targets carry ``custom: {version, release_counter, hardware_id}``; the robot picks the newest
bundle for its hardware id by release counter, so publishing refuses a counter that is not
above every earlier one for the same hardware id.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from cloud_jobs.publish.keys import ROLES, KeysError, KeyStore, generate_key
from common.durable import replace_file, replacing

METADATA = "metadata"
TARGETS = "targets"
_ROOT_FILE = re.compile(r"^(\d+)\.root\.json$")


class PublishError(Exception):
    """Publishing cannot proceed; the message says why (nothing was half-written)."""


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after signing."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        return getattr(self, role)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Repository:
    """Load, sign and write a repository.  ``now`` is overridable so tests can age metadata."""

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore,
        *,
        expiry: Expiry | None = None,
        now: datetime | None = None,
    ) -> None:
        self.dir = Path(repo_dir)
        self.meta_dir = self.dir / METADATA
        self.targets_dir = self.dir / TARGETS
        self.keys = keys
        self.expiry = expiry or Expiry()
        self.now = now or _now()
        if not (self.meta_dir / "timestamp.json").exists():
            raise PublishError(
                f"{self.dir}: no repository here (run `cloud_jobs publish init --repo {self.dir}`)"
            )
        self.root = Metadata[Root].from_file(
            str(self.meta_dir / f"{self._root_version()}.root.json")
        )
        self.timestamp = Metadata[Timestamp].from_file(str(self.meta_dir / "timestamp.json"))
        sv = self.timestamp.signed.snapshot_meta.version
        self.snapshot = Metadata[Snapshot].from_file(str(self.meta_dir / f"{sv}.snapshot.json"))
        tv = self.snapshot.signed.meta["targets.json"].version
        self.targets = Metadata[Targets].from_file(str(self.meta_dir / f"{tv}.targets.json"))

    def _root_version(self) -> int:
        versions = [
            int(m.group(1)) for p in self.meta_dir.iterdir() if (m := _ROOT_FILE.match(p.name))
        ]
        if not versions:
            raise PublishError(f"{self.meta_dir}: no N.root.json")
        return max(versions)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore,
        *,
        expiry: Expiry | None = None,
        now: datetime | None = None,
    ) -> Repository:
        """Root v1 from the key store's role assignment, empty targets, snapshot, timestamp."""
        d = Path(repo_dir)
        if (d / METADATA / "1.root.json").exists():
            raise PublishError(f"{d}: a repository already exists here")
        expiry = expiry or Expiry()
        now = now or _now()
        (d / METADATA).mkdir(parents=True, exist_ok=True)
        (d / TARGETS).mkdir(parents=True, exist_ok=True)
        root = Root(expires=now + expiry.root, consistent_snapshot=True)
        for role in ROLES:
            rk = keys.roles[role]
            for keyid in rk.keyids:
                root.add_key(keys.public_key(keyid), role)
            root.roles[role].threshold = rk.threshold
        targets = Targets(expires=now + expiry.targets)
        snapshot = Snapshot(expires=now + expiry.snapshot)
        timestamp = Timestamp(expires=now + expiry.timestamp)
        tmp = _Writer(d, keys)
        root_md = Metadata(root)
        tmp.sign(root_md, root, "root")
        tmp.write_root(root_md)
        targets_md = Metadata(targets)
        tmp.sign(targets_md, root, "targets")
        tmp.write_versioned(targets_md, "targets")
        snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        snapshot_md = Metadata(snapshot)
        tmp.sign(snapshot_md, root, "snapshot")
        tmp.write_versioned(snapshot_md, "snapshot")
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        ts_md = Metadata(timestamp)
        tmp.sign(ts_md, root, "timestamp")
        tmp.write_timestamp(ts_md)
        return cls(d, keys, expiry=expiry, now=now)

    # ------------------------------------------------------------------ publishing
    @property
    def _w(self) -> _Writer:
        return _Writer(self.dir, self.keys)

    def add_target(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        custom: dict[str, Any] | None = None,
    ) -> TargetFile:
        """Add (or replace) a target file and publish new targets, snapshot and timestamp."""
        src = Path(path)
        name = name or src.name
        if "/" in name or name.startswith(".") or not name:
            raise PublishError(f"target name {name!r}: use a plain file name")
        tf = TargetFile.from_file(name, str(src), ["sha256"])
        if custom:
            tf.unrecognized_fields["custom"] = dict(custom)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        dest = self.targets_dir / f"{tf.hashes['sha256']}.{name}"
        if not dest.exists():
            with replacing(dest, mode=0o644) as tmp:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != tf.hashes["sha256"]:
                        raise PublishError(f"{src}: changed while being published")
        self.targets.signed.targets[name] = tf
        self._publish_targets()
        return tf

    def remove_target(self, name: str) -> None:
        if self.targets.signed.targets.pop(name, None) is None:
            raise PublishError(f"no target {name!r}")
        self._publish_targets()

    def target_files(self) -> dict[str, TargetFile]:
        return dict(self.targets.signed.targets)

    def _bump(self, md: Metadata[Any], role: str) -> None:
        signed: Signed = md.signed
        signed.version += 1
        signed.expires = self.now + self.expiry.of(role)
        md.signatures.clear()
        self._w.sign(md, self.root.signed, role)

    def _publish_targets(self) -> None:
        self._bump(self.targets, "targets")
        self._w.write_versioned(self.targets, "targets")
        self._publish_snapshot()

    def _publish_snapshot(self) -> None:
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self._bump(self.snapshot, "snapshot")
        self._w.write_versioned(self.snapshot, "snapshot")
        self._publish_timestamp()

    def _publish_timestamp(self) -> None:
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self._bump(self.timestamp, "timestamp")
        self._w.write_timestamp(self.timestamp)

    # ------------------------------------------------------------------ maintenance
    def expiring(self, margin: dict[str, timedelta] | None = None) -> list[str]:
        """Roles whose metadata expires within ``margin`` (default: half its lifetime)."""
        out = []
        for role, md in self._roles().items():
            m = (margin or {}).get(role, self.expiry.of(role) / 2)
            if md.signed.expires <= self.now + m:
                out.append(role)
        return out

    def _roles(self) -> dict[str, Metadata[Any]]:
        return {
            "root": self.root,
            "targets": self.targets,
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }

    def refresh(
        self, *, force: bool = False, margin: dict[str, timedelta] | None = None
    ) -> list[str]:
        """Re-sign metadata close to expiry (and what depends on it); returns the roles re-signed.

        Cron this every hour or so: timestamp needs the online key daily; root and targets
        only rarely, and only where their (offline) keys are present.
        """
        roles = list(ROLES) if force else self.expiring(margin)
        done: list[str] = []
        if "root" in roles:
            self.rotate(role="root", add=0, revoke=[])
            done.append("root")
        if "targets" in roles:
            self._publish_targets()
            done += ["targets", "snapshot", "timestamp"]
        elif "snapshot" in roles:
            self._publish_snapshot()
            done += ["snapshot", "timestamp"]
        elif "timestamp" in roles:
            self._publish_timestamp()
            done.append("timestamp")
        return done

    def rotate(
        self,
        *,
        role: str = "root",
        add: int = 1,
        revoke: list[str] | None = None,
        threshold: int | None = None,
    ) -> Metadata[Root]:
        """Publish a new root version that changes ``role``'s keys (or just renews root).

        The new root is signed by a threshold of the *old* root keys and of the *new* ones, so
        robots holding the old root accept it; robots then trust only the new key set.  When a
        non-root role's keys change, that role (and what depends on it) is re-signed.
        """
        if role not in ROLES:
            raise PublishError(f"unknown role {role!r} (one of {ROLES})")
        revoke = list(revoke or [])
        old_root = self.root.signed
        old_keyids = list(old_root.roles["root"].keyids)
        old_threshold = old_root.roles["root"].threshold
        new_md = Metadata[Root].from_bytes(self.root.to_bytes())
        new = new_md.signed
        current = new.roles[role].keyids
        for keyid in revoke:
            if keyid not in current:
                raise PublishError(f"key {keyid} is not a {role} key")
        new_keys = [generate_key(self.keys.dir) for _ in range(add)]
        for keyid in revoke:
            new.revoke_key(keyid, role)
        for key in new_keys:
            new.add_key(key, role)
        if threshold is not None:
            new.roles[role].threshold = threshold
        t, n = new.roles[role].threshold, len(new.roles[role].keyids)
        if t < 1 or n < t:
            raise PublishError(f"{role}: threshold {t} with {n} keys is impossible")
        new.version += 1
        new.expires = self.now + self.expiry.root
        new_md.signatures.clear()
        # Old threshold (so the old root vouches for the new) ...
        old_signers = self.keys.signers(old_keyids)
        if len(old_signers) < old_threshold:
            raise PublishError(
                f"root rotation needs {old_threshold} of the current root keys, "
                f"{len(old_signers)} private keys present in {self.keys.dir}"
            )
        for s in old_signers:
            new_md.sign(s, append=True)
        # ... and the new threshold (so the new root is valid on its own).
        new_root_ids = new.roles["root"].keyids
        new_signers = [
            s
            for s in self.keys.signers(new_root_ids)
            if s.public_key.keyid not in new_md.signatures
        ]
        for s in new_signers:
            new_md.sign(s, append=True)
        have = sum(1 for k in new_root_ids if k in new_md.signatures)
        if have < new.roles["root"].threshold:
            raise PublishError(
                f"the new root needs {new.roles['root'].threshold} signatures "
                f"of its own keys, got {have}"
            )
        try:
            new_md.verify_delegate("root", new_md)
            self.root.verify_delegate("root", new_md)
        except Exception as exc:  # UnsignedMetadataError: a bug here, never publish it
            raise PublishError(f"the new root does not verify: {exc}") from None
        self._w.write_root(new_md)
        self.root = new_md
        # Record the assignment and retire revoked private keys.
        rk = self.keys.roles[role]
        rk.keyids = list(new.roles[role].keyids)
        rk.threshold = new.roles[role].threshold
        self.keys.save()
        for keyid in revoke:
            self.keys.retire(keyid)
        if role == "targets":
            self._publish_targets()
        elif role == "snapshot":
            self._publish_snapshot()
        elif role == "timestamp":
            self._publish_timestamp()
        return new_md


class _Writer:
    """Signs with a role's present keys and writes files in the static layout."""

    def __init__(self, repo_dir: Path, keys: KeyStore) -> None:
        self.meta_dir = repo_dir / METADATA
        self.keys = keys
        self._ser = JSONSerializer(compact=False)

    def sign(self, md: Metadata[Any], root: Root, role: str) -> None:
        r = root.roles[role]
        signers = self.keys.signers(list(r.keyids))
        if len(signers) < r.threshold:
            raise KeysError(
                f"signing {role} needs {r.threshold} of its keys; only {len(signers)} private "
                f"keys present in {self.keys.dir}"
            )
        for s in signers:
            md.sign(s, append=True)

    def write_root(self, md: Metadata[Root]) -> None:
        data = md.to_bytes(self._ser)
        replace_file(self.meta_dir / f"{md.signed.version}.root.json", data)
        replace_file(self.meta_dir / "root.json", data)

    def write_versioned(self, md: Metadata[Any], role: str) -> None:
        replace_file(self.meta_dir / f"{md.signed.version}.{role}.json", md.to_bytes(self._ser))

    def write_timestamp(self, md: Metadata[Timestamp]) -> None:
        replace_file(self.meta_dir / "timestamp.json", md.to_bytes(self._ser))


def bundle_target_name(hardware_id: str, version: str) -> str:
    return f"{hardware_id}-{version}.tar"


def publish_bundle(
    repo: Repository,
    bundle: str | os.PathLike[str],
    *,
    release_counter: int | None = None,
    hardware_id: str | None = None,
    version: str | None = None,
) -> TargetFile:
    """Publish an edge bundle: its manifest must agree with the given counter/hardware/version.

    Refuses a release counter that is not above every published one for the same hardware id
    (robots would ignore it, or, worse, it would shadow a newer release).
    """
    from brain.bundle.manifest import BundleError
    from brain.bundle.unpack import read_archive_manifest

    try:
        manifest = read_archive_manifest(Path(bundle))
    except BundleError as exc:
        raise PublishError(str(exc)) from None
    for what, given, actual in (
        ("release counter", release_counter, manifest.release_counter),
        ("hardware id", hardware_id, manifest.hardware_id),
        ("version", version, manifest.version),
    ):
        if given is not None and given != actual:
            raise PublishError(
                f"{bundle}: {what} {given!r} given, the bundle manifest says {actual!r}"
            )
    for name, tf in repo.target_files().items():
        custom = tf.custom if isinstance(tf.custom, dict) else {}
        if custom.get("hardware_id") != manifest.hardware_id:
            continue
        counter = custom.get("release_counter", -1)
        if isinstance(counter, int) and counter >= manifest.release_counter:
            raise PublishError(
                f"release counter {manifest.release_counter} is not above {counter} "
                f"(already published as {name}) for {manifest.hardware_id}"
            )
    return repo.add_target(
        bundle,
        name=bundle_target_name(manifest.hardware_id, manifest.version),
        custom={
            "version": manifest.version,
            "release_counter": manifest.release_counter,
            "hardware_id": manifest.hardware_id,
        },
    )
