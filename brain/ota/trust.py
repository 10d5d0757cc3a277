"""The robot's trust layer: a TUF client (python-tuf ``ngclient``) over HTTP or a local directory.

TUF answers "are these the bytes the release keys signed, fresh, and not an old or mixed
state?".  On top of it the targets' custom fields (``version``, ``release_counter``,
``hardware_id``, :mod:`brain.ota.targets`) let the updater pick the newest bundle *for this
robot*; the never-decreasing release counter itself is persisted by the slots layer, which
calls :func:`check_release_counter`.

Split as python-tuf's ngclient is: the errors (:mod:`brain.ota.trust_errors`), the fetcher
(:mod:`brain.ota.fetcher`), the targets, and here the trusted repository client that drives
ngclient.  This module re-exports the others' public names: callers import the trust layer
from one place.

Repository layout (what ``cloud_jobs publish`` writes, any static web server can serve it)::

    REPO/metadata/1.root.json, 2.root.json, ..., timestamp.json, N.snapshot.json, N.targets.json
    REPO/targets/<sha256>.<bundle name>

Sources: ``http(s)://host/path/REPO`` or a local directory (a USB stick, an upload from the
companion app); both go through the same ngclient workflow, only the fetcher differs.

Downloads of bundles resume: bytes land in ``<name>.part`` and a later :meth:`download` asks
for the rest with an HTTP ``Range`` request (or seeks, for a directory).  The final file is
verified against the signed length and hashes before it is renamed into place; a part that
fails verification is deleted, so a poisoned prefix cannot be resumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from urllib import parse

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from brain.ota.fetcher import RangeNotHonoured, ResumableFetcher
from brain.ota.targets import (
    TargetInfo,
    check_hardware,
    check_manifest_matches,
    check_release_counter,
)
from brain.ota.trust_errors import (
    NO_SPACE,
    BadSignatureError,
    DownloadFailedError,
    ExpiredMetadataError,
    IncompatibleTargetError,
    IncompleteDownloadError,
    MetadataError,
    MixAndMatchError,
    ReplayError,
    RollbackError,
    SlowDownloadError,
    TargetMismatchError,
    TargetNotFoundError,
    TrustError,
    TrustNotInitialisedError,
    map_tuf_error,
)
from common.durable import fsync_dir, move, replace_file

# The trust layer's public face: callers import these from here, wherever they live.
__all__ = [
    "METADATA_SUBDIR",
    "PART_SUFFIX",
    "ROOT_NAME",
    "TARGETS_SUBDIR",
    "BadSignatureError",
    "DownloadFailedError",
    "ExpiredMetadataError",
    "IncompatibleTargetError",
    "IncompleteDownloadError",
    "MetadataError",
    "MixAndMatchError",
    "ReplayError",
    "ResumableFetcher",
    "RollbackError",
    "SlowDownloadError",
    "TargetInfo",
    "TargetMismatchError",
    "TargetNotFoundError",
    "TrustError",
    "TrustNotInitialisedError",
    "TrustedRepository",
    "check_hardware",
    "check_manifest_matches",
    "check_release_counter",
    "init_trust",
    "is_local_source",
]

log = logging.getLogger(__name__)

ROOT_NAME = "root.json"
METADATA_SUBDIR = "metadata"
TARGETS_SUBDIR = "targets"
PART_SUFFIX = ".part"


# ----------------------------------------------------------------------------- trust store


def _sync_metadata(d: Path) -> None:
    """fsync what ngclient wrote (it renames without fsync): trust state survives power loss."""
    with contextlib.suppress(OSError):
        for p in [*d.glob("*.json"), *d.glob("root_history/*.json")]:
            if p.is_symlink():
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if (d / "root_history").is_dir():
            fsync_dir(d / "root_history")
        fsync_dir(d)


def init_trust(
    metadata_dir: str | os.PathLike[str], root_json_bytes: bytes, *, overwrite: bool = False
) -> None:
    """Provision the robot's trust anchor: the repository's (first) ``root.json``.

    It must parse as root metadata; signatures are checked by ngclient at first use.  An
    existing, different trust anchor is only replaced with ``overwrite=True`` (re-provisioning
    the robot), because silently replacing it would let anyone who can reach this call swap
    the release keys.
    """
    d = Path(metadata_dir)
    try:
        md = Metadata.from_bytes(root_json_bytes)
    except Exception as exc:  # DeserializationError and friends
        raise MetadataError(f"trusted root is not valid TUF metadata ({exc})") from None
    if not isinstance(md.signed, Root):
        raise MetadataError(f"trusted root is {md.signed.type!r} metadata, not root")
    d.mkdir(parents=True, exist_ok=True)
    target = d / ROOT_NAME
    if target.exists() and not overwrite:
        if target.read_bytes() == root_json_bytes:
            return
        raise TrustError(f"{target}: a different trusted root is already installed")
    if target.is_symlink() or target.exists():
        # ngclient keeps root.json as a symlink into root_history/: start clean.
        target.unlink()
        for p in (d / "root_history").glob("*.root.json"):
            p.unlink()
        for role in ("timestamp", "snapshot", "targets"):
            (d / f"{role}.json").unlink(missing_ok=True)
    replace_file(target, root_json_bytes)


def is_local_source(source: str | os.PathLike[str]) -> bool:
    return not str(source).startswith(("http://", "https://"))


class TrustedRepository:
    """The robot's view of one TUF repository (remote URL or local directory).

    ``metadata_dir`` holds the trusted metadata (root first, from :func:`init_trust`; ngclient
    keeps it current, including root rotations).  ``download_dir`` holds partial and finished
    downloads.  Each :meth:`refresh` runs the whole TUF client workflow again.
    """

    def __init__(
        self,
        metadata_dir: str | os.PathLike[str],
        source: str | os.PathLike[str],
        download_dir: str | os.PathLike[str],
        *,
        metadata_url: str | None = None,
        targets_url: str | None = None,
        fetcher: ResumableFetcher | None = None,
        config: UpdaterConfig | None = None,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.download_dir = Path(download_dir)
        if str(source).startswith("file://"):
            source = Path(parse.unquote(parse.urlsplit(str(source)).path))
        if is_local_source(source):
            root = Path(source).resolve()
            if not root.is_dir():
                raise DownloadFailedError(f"side-load source {root} is not a directory")
            base = root.as_uri()
            self._fetcher = fetcher or ResumableFetcher(local_root=root)
        else:
            base = str(source).rstrip("/")
            self._fetcher = fetcher or ResumableFetcher()
        self.source = str(source)
        self.metadata_url = (metadata_url or f"{base}/{METADATA_SUBDIR}").rstrip("/") + "/"
        self.targets_url = (targets_url or f"{base}/{TARGETS_SUBDIR}").rstrip("/") + "/"
        self._config = config or UpdaterConfig()
        self._updater: Updater | None = None

    # -- metadata
    def _new_updater(self) -> Updater:
        if not (self.metadata_dir / ROOT_NAME).exists():
            raise TrustNotInitialisedError(
                f"{self.metadata_dir}: no trusted {ROOT_NAME} (provision the robot first)"
            )
        try:
            return Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.metadata_url,
                target_dir=str(self.download_dir),
                target_base_url=self.targets_url,
                fetcher=self._fetcher,
                config=self._config,
                bootstrap=None,
            )
        except Exception as exc:
            raise map_tuf_error(
                exc, during=f"loading trusted root from {self.metadata_dir}"
            ) from exc

    def refresh(self) -> None:
        """Run the TUF workflow (root -> timestamp -> snapshot -> targets) against the source."""
        updater = self._new_updater()
        try:
            updater.refresh()
        except Exception as exc:
            self._updater = None
            raise map_tuf_error(exc, during=f"refreshing metadata from {self.source}") from exc
        finally:
            _sync_metadata(self.metadata_dir)
        self._updater = updater

    def _require_refreshed(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def targets(self) -> list[TargetInfo]:
        """Every top-level target with valid custom fields (others are logged and skipped)."""
        self._require_refreshed()
        # ngclient persisted targets.json only after verifying it in this refresh.
        md = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json"))
        out = []
        for tf in md.signed.targets.values():
            try:
                out.append(TargetInfo.from_target_file(tf))
            except IncompatibleTargetError as exc:
                log.warning("ignoring target: %s", exc)
        return out

    def latest(self, hardware_id: str) -> TargetInfo | None:
        """The target for ``hardware_id`` with the highest release counter, or None."""
        mine = [t for t in self.targets() if t.hardware_id == hardware_id]
        skipped = {t.hardware_id for t in self.targets()} - {hardware_id}
        if skipped:
            log.debug("targets for other hardware ignored: %s", sorted(skipped))
        if not mine:
            return None
        best = max(mine, key=lambda t: (t.release_counter, t.name))
        ties = [t for t in mine if t.release_counter == best.release_counter]
        if len(ties) > 1:
            raise MetadataError(
                f"release counter {best.release_counter} is used by several targets "
                f"{sorted(t.name for t in ties)} for {hardware_id}"
            )
        return best

    def get(self, name: str) -> TargetInfo:
        """A target by name (delegations followed), verified; raises if absent."""
        tf = self._target_file(name)
        return TargetInfo.from_target_file(tf)

    def _target_file(self, name: str) -> TargetFile:
        updater = self._require_refreshed()
        try:
            tf = updater.get_targetinfo(name)
        except Exception as exc:
            raise map_tuf_error(exc, during=f"looking up target {name}") from exc
        if tf is None:
            raise TargetNotFoundError(f"{name}: no such target in {self.source}")
        return tf

    # -- targets
    def _target_url(self, tf: TargetFile) -> str:
        updater = self._require_refreshed()
        path = tf.path
        consistent = self._root_consistent_snapshot()
        if consistent and updater.config.prefix_targets_with_hash:
            digest = next(iter(tf.hashes.values()))
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{digest}.{basename}"
        return f"{self.targets_url}{parse.quote(path)}"

    def _root_consistent_snapshot(self) -> bool:
        md = Metadata[Root].from_file(str(self.metadata_dir / ROOT_NAME))
        return bool(md.signed.consistent_snapshot)

    def download(
        self,
        target: TargetInfo,
        dest_dir: str | os.PathLike[str] | None = None,
        *,
        resume: bool = True,
    ) -> Path:
        """Fetch ``target`` into ``dest_dir`` (default: the download dir), verified; resumes.

        Returns the final path.  An already complete, matching file is not fetched again.
        With ``resume`` False, a failed download leaves no partial file behind.
        """
        tf = self._target_file(target.name)
        if dict(tf.hashes) != dict(target.hashes) or tf.length != target.length:
            raise MixAndMatchError(
                f"{target.name}: the signed target changed since it was chosen; check again"
            )
        return self._download(tf, dest_dir, resume=resume)

    def download_by_name(
        self, name: str, dest_dir: str | os.PathLike[str] | None = None, *, resume: bool = True
    ) -> Path:
        """Like :meth:`download` for any target path, custom fields or not (conformance)."""
        return self._download(self._target_file(name), dest_dir, resume=resume)

    def _download(
        self, tf: TargetFile, dest_dir: str | os.PathLike[str] | None, *, resume: bool
    ) -> Path:
        dest = Path(dest_dir) if dest_dir is not None else self.download_dir
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / parse.quote(tf.path, "")
        if final.exists() and self._verifies(tf, final):
            return final
        part = final.with_name(final.name + PART_SUFFIX)
        url = self._target_url(tf)
        during = f"download {tf.path}"
        try:
            self._fetch_to_part(url, part, tf.length)
            with open(part, "rb") as f:
                tf.verify_length_and_hashes(f)
        except _PartIsBad as exc:
            part.unlink(missing_ok=True)
            raise TargetMismatchError(f"{during}: {exc}") from None
        except tuf_exc.LengthOrHashMismatchError as exc:
            part.unlink(missing_ok=True)
            raise map_tuf_error(exc, during=during) from exc
        except _Incomplete as exc:
            if not resume:
                part.unlink(missing_ok=True)
            raise IncompleteDownloadError(f"{during}: {exc}") from None
        except OSError as exc:
            if not resume or exc.errno in NO_SPACE:
                # A full disk: give the space back (episodes and logs need it more).
                part.unlink(missing_ok=True)
            raise map_tuf_error(exc, during=during) from exc
        except tuf_exc.DownloadError as exc:
            # The part file stays (unless told otherwise): the next download resumes from it.
            if not resume:
                part.unlink(missing_ok=True)
            raise map_tuf_error(exc, during=during) from exc
        except BaseException:
            if not resume:
                part.unlink(missing_ok=True)
            raise
        move(part, final)
        return final

    @staticmethod
    def _verifies(tf: TargetFile, path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                tf.verify_length_and_hashes(f)
            return True
        except (OSError, tuf_exc.LengthOrHashMismatchError):
            return False

    def _fetch_to_part(self, url: str, part: Path, length: int) -> None:
        offset = part.stat().st_size if part.exists() else 0
        if offset > length:
            part.unlink()
            offset = 0
        if offset == length:
            return
        try:
            chunks, honoured = self._fetcher.fetch_from(url, offset)
        except RangeNotHonoured:
            part.unlink(missing_ok=True)
            chunks, honoured = self._fetcher.fetch_from(url, 0)
        except tuf_exc.DownloadError:
            raise
        except Exception as exc:
            raise tuf_exc.DownloadError(f"{url}: {exc}") from exc
        if honoured != offset:
            log.info("server ignored the Range request; downloading %s from the start", url)
        received = honoured
        with open(part, "r+b" if honoured and part.exists() else "wb") as f:
            f.seek(honoured)
            f.truncate()
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > length:
                        raise _PartIsBad(f"more than the signed {length} bytes (oversize)")
                    f.write(chunk)
            finally:
                f.flush()
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
        if received < length:
            raise _Incomplete(
                f"{url}: connection ended after {received} of {length} bytes (truncated; "
                "the next attempt resumes)"
            )


class _PartIsBad(Exception):
    pass


class _Incomplete(tuf_exc.DownloadError):
    pass
