"""Admission: what a bundle must satisfy before it may replace the inactive slot.

The updater asks this on the staging copy, after every file matched the manifest and before
anything stored changes, so a refusal costs nothing: the bundle must be for this hardware and
these actions, must not have failed here before, must raise the release counter (a cloud
bundle; replays and downgrades are refused), and someone must vouch for it: a signed TUF
target whose custom fields match the manifest, or the device key for a bundle fine-tuned on
this robot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from brain.ota.slots import MANIFEST_NAME
from brain.ota.state import OtaState
from common.digest import sha256_file


class UpdateRefused(RuntimeError):
    """The bundle may not be installed (trust, compatibility, counter, failed before)."""


def check_candidate(
    manifest: Any,
    bundle_dir: Path,
    target: Any | None,
    *,
    state: OtaState,
    hardware_id: str,
    action_names: tuple[str, ...] | None,
    verify_local: Callable[[Path, OtaState], Any] | None,
    require_signature: bool,
    repo_problem: str | None = None,
) -> None:
    """Everything a bundle must satisfy before it may replace the inactive slot.

    ``bundle_dir`` is the staging copy, already checked file by file against
    ``manifest``; raises UpdateRefused naming the first problem.  ``target`` is the signed
    TUF target it came as (None: a side-loaded file no target matched); ``repo_problem``
    says why the repository could not be consulted, for the refusal's hint.
    """
    st = state
    if manifest.hardware_id != hardware_id:
        raise UpdateRefused(
            f"bundle {manifest.version} is for hardware {manifest.hardware_id!r}, "
            f"this robot is {hardware_id!r}"
        )
    names = getattr(getattr(manifest, "action", None), "names", None)
    if action_names is not None and names is not None and tuple(names) != tuple(action_names):
        raise UpdateRefused(
            f"bundle {manifest.version} drives actions {list(names)}, "
            f"this robot has {list(action_names)}"
        )
    sha = sha256_file(bundle_dir / MANIFEST_NAME)
    why = st.failed_reason(str(manifest.version), sha)
    if why is not None:
        raise UpdateRefused(f"bundle {manifest.version} failed before ({why}); not retried")
    local = bundle_source(manifest) == "local"
    if not local and int(manifest.release_counter) <= st.release_counter:
        raise UpdateRefused(
            f"bundle {manifest.version} has release counter {manifest.release_counter}, "
            f"not above the committed {st.release_counter} (replay or downgrade refused)"
        )
    if target is not None:
        from brain.ota.trust import check_manifest_matches

        check_manifest_matches(target, manifest)
    elif local and verify_local is not None:
        verify_local(bundle_dir, st)
    elif require_signature:
        what = "a device-signed local bundle" if local else "a signed target of the repository"
        hint = f" ({repo_problem})" if repo_problem else ""
        raise UpdateRefused(
            f"bundle {manifest.version} is not {what}{hint}; side-load the repository "
            "directory, or configure ota.repository_url"
            + ("" if not local else " and ota.device_public_key")
        )


def bundle_source(manifest: Any) -> Literal["cloud", "local"]:
    """Only a bundle whose provenance says so is local: anything else must be a signed target."""
    prov = getattr(manifest, "provenance", None)
    src = getattr(prov, "source", None) if prov is not None else None
    return "local" if src == "local" else "cloud"
