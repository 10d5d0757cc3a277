"""The trust layer's errors, and how python-tuf's exceptions map onto them.

Callers (the updater, the CLI, the Robot API's update status) tell a stale repository from
a forged one from a dead link by the class; the message keeps python-tuf's own words.
"""

from __future__ import annotations

import errno

from tuf.api import exceptions as tuf_exc

#: errno values that mean the disk (or quota) is full: the download gives its space back.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class TrustError(Exception):
    """An update cannot be trusted or fetched; the subclass and message say why."""


class TrustNotInitialisedError(TrustError):
    """No trusted root in the metadata directory (provision one with ``init_trust``)."""


class ExpiredMetadataError(TrustError):
    """Signed metadata is past its expiry (a frozen or stale repository)."""


class BadSignatureError(TrustError):
    """Metadata is unsigned, signed by an unknown/revoked key, or below its role's threshold."""


class RollbackError(TrustError):
    """Metadata older than what the robot already trusts (a replayed repository state)."""


class MixAndMatchError(TrustError):
    """Metadata versions that do not belong together (e.g. targets not the one snapshot names)."""


class MetadataError(TrustError):
    """Metadata is malformed or inconsistent in some other way."""


class TargetMismatchError(TrustError):
    """A downloaded file does not have the signed length or hashes (truncated, oversize, bad)."""


class SlowDownloadError(TrustError):
    """A download was slower than the minimum rate (a slow-retrieval attack or a dead link)."""


class DownloadFailedError(TrustError):
    """The repository could not be reached or answered with an error."""


class IncompleteDownloadError(DownloadFailedError):
    """The connection ended early; the bytes so far are kept and the next download resumes."""


class TargetNotFoundError(TrustError):
    """No such target in the signed metadata."""


class IncompatibleTargetError(TrustError):
    """A target (or the bundle inside it) is for another hardware id or has bad custom fields."""


class ReplayError(TrustError):
    """A bundle whose release counter is not above the committed one (replay of an old release)."""


def map_tuf_error(exc: BaseException, *, during: str) -> TrustError:
    """Translate python-tuf's exceptions into ours, keeping its message."""
    msg = f"{during}: {exc}" if str(exc) else f"{during}: {type(exc).__name__}"
    target_phase = during.startswith("download")
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return ExpiredMetadataError(msg)
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return BadSignatureError(msg)
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        text = str(exc)
        if isinstance(exc, tuf_exc.EqualVersionNumberError) or "must be >=" in text:
            return RollbackError(msg)
        return MixAndMatchError(msg)
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return TargetMismatchError(msg) if target_phase else MixAndMatchError(msg)
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return TargetMismatchError(msg) if target_phase else MetadataError(msg)
    if isinstance(exc, tuf_exc.SlowRetrievalError):
        return SlowDownloadError(msg)
    if isinstance(exc, tuf_exc.DownloadHTTPError | tuf_exc.DownloadError):
        cause = exc.__cause__
        return DownloadFailedError(f"{msg} ({cause})" if cause else msg)
    if isinstance(exc, tuf_exc.RepositoryError):
        return MetadataError(msg)
    if isinstance(exc, OSError):
        if exc.errno in NO_SPACE:
            return TrustError(f"{during}: no space left on device ({exc.strerror})")
        return TrustError(f"{during}: {exc.strerror or exc}")
    return TrustError(msg)
