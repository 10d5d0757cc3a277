"""Build an edge bundle from an export directory (cloud side, also used by local fine-tuning).

The archive is deterministic (same inputs and provenance -> same bytes, so the same TUF hash):
an uncompressed POSIX tar, manifest first, artifacts sorted, mtime 0, owner root, mode 0644.
Uncompressed because ONNX weights barely compress and a plain tar lets the robot verify and
stage with one streaming pass.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brain.bundle.content import SNIFF_BYTES, forbidden_content
from brain.bundle.manifest import (
    ARTIFACT_SUFFIXES,
    BACKENDS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    BundleError,
    EdgeManifest,
)
from brain.bundle.onnx_check import check_onnx_file
from common.durable import replacing

REPORT_NAME = "export_report.json"
#: Suffixes refused outright with a pointed message (the allowlist would refuse them anyway).
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib")
_CHUNK = 1 << 20

DEFAULT_SAFETY: dict[str, Any] = {
    "max_latency_ms": 40.0,
    "health_window_s": 60.0,
    "max_nan_outputs": 0,
    "max_inference_errors": 0,
    "max_safety_interventions": 3,
}


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_artifact_file(path: Path) -> None:
    """Refuse anything that is not a plain, non-executable model file."""
    name = path.name
    if name.endswith(_PICKLE_SUFFIXES):
        raise BundleError(f"{path}: pickle/checkpoint files ({name}) never go into a bundle")
    if not name.endswith(ARTIFACT_SUFFIXES):
        raise BundleError(f"{path}: only {ARTIFACT_SUFFIXES} files may go into a bundle")
    st = path.lstat()
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{path}: not a regular file")
    if st.st_mode & 0o111:
        raise BundleError(f"{path}: has execute permission bits; bundles hold nothing executable")
    with open(path, "rb") as f:
        what = forbidden_content(f.read(SNIFF_BYTES))
    if what:
        raise BundleError(f"{path}: content is {what}, not a model")
    if name.endswith(".onnx"):
        check_onnx_file(path)


def _load_report(export_dir: Path) -> dict[str, Any]:
    path = export_dir / REPORT_NAME
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (run the export first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    if not isinstance(report, dict):
        raise BundleError(f"{path}: expected a JSON object")
    for key in ("action_names", "image", "artifacts"):
        if key not in report:
            raise BundleError(f"{path}: missing field {key!r}")
    return report


def _artifacts(export_dir: Path, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's robot artifacts that passed their gates, each re-hashed and checked."""
    artifacts: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for art in report["artifacts"]:
        try:
            fname, backend = art["file"], art["backend"]
        except (KeyError, TypeError):
            raise BundleError(f"{export_dir / REPORT_NAME}: artifact entry {art!r}") from None
        if backend not in BACKENDS:
            continue  # e.g. a mobile export: not for the robot
        if art.get("gate_passed") is False:
            skipped.append(backend)
            continue  # failed its parity / closed-loop gate: never shipped
        path = export_dir / fname
        if Path(fname).name != fname:
            raise BundleError(f"{REPORT_NAME}: artifact {fname!r} is not a plain file name")
        if not path.exists():
            raise BundleError(f"{path}: listed in {REPORT_NAME} but missing")
        check_artifact_file(path)
        sha, size = _hash_file(path)
        if art.get("sha256") not in (None, sha) or art.get("size") not in (None, size):
            raise BundleError(f"{path}: does not match the sha256/size in {REPORT_NAME}")
        artifacts[fname] = {"sha256": sha, "size": size, "backend": backend}
    if not artifacts:
        why = f" (failed their gates: {skipped})" if skipped else ""
        raise BundleError(f"{export_dir}: no robot artifact to bundle{why}")
    return artifacts


def _provenance(
    report: dict[str, Any], provenance: dict[str, Any] | None, base: EdgeManifest | None
) -> dict[str, Any]:
    """The manifest's provenance: the report's, overridden by ``provenance``, tied to ``base``."""
    from brain import __version__

    source = report.get("source") or {}
    prov: dict[str, Any] = {
        "created_utc": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "software_version": str(report.get("software_version") or __version__),
        "source": "cloud",
        "checkpoint_sha256": source.get("checkpoint_sha256"),
        "base_version": None,
        "base_manifest_sha256": None,
        "train_config_hash": report.get("train_config_hash"),
    }
    prov.update(provenance or {})
    if base is not None and prov["source"] == "local":
        # The slot's manifest file is the packer's canonical bytes, so this is its hash;
        # callers holding the file's real hash should pass it explicitly.
        prov["base_version"] = prov["base_version"] or base.version
        prov["base_manifest_sha256"] = (
            prov["base_manifest_sha256"] or hashlib.sha256(base.to_json_bytes()).hexdigest()
        )
    return prov


def manifest_from_report(
    export_dir: Path,
    *,
    version: str,
    release_counter: int,
    hardware_id: str,
    safety: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    action_low: list[float] | None = None,
    action_high: list[float] | None = None,
    base_manifest: EdgeManifest | None = None,
) -> EdgeManifest:
    """The manifest for ``export_dir``'s artifacts, each re-hashed and checked.

    ``base_manifest`` (local bundles): the committed cloud bundle's manifest; its action
    ranges, depth spec and safety budget are the defaults, and its version and manifest hash
    fill ``provenance.base_*`` when not given, so a derivative matches its base by construction.
    """
    report = _load_report(export_dir)
    names = list(report["action_names"])
    artifacts = _artifacts(export_dir, report)
    shipped = {a["backend"] for a in artifacts.values()}
    wanted = dict.fromkeys(report.get("preferred_backends") or [])
    preferred = [b for b in wanted if b in shipped] or sorted(shipped)

    n = len(names)
    base = base_manifest
    if base is not None and base.action.names == names:
        action_low = base.action.low if action_low is None else action_low
        action_high = base.action.high if action_high is None else action_high
    low = list(action_low) if action_low is not None else [-1.0] * n
    high = list(action_high) if action_high is not None else [1.0] * n
    max_abs = [max(abs(a), abs(b)) for a, b in zip(low, high, strict=False)]
    safety_dict = {**DEFAULT_SAFETY, "max_abs_action": max_abs}
    if base is not None:
        safety_dict.update(base.safety.model_dump())
    safety_dict.update(safety or {})
    prov = _provenance(report, provenance, base)
    image = dict(report["image"])
    raw = {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "release_counter": release_counter,
        "hardware_id": hardware_id,
        "observation": {
            "image": image,
            "depth": report.get("depth")
            or (base.observation.depth.model_dump() if base and base.observation.depth else None),
        },
        "action": {"names": names, "low": low, "high": high},
        "preferred_backends": preferred,
        "artifacts": artifacts,
        "safety": safety_dict,
        "provenance": prov,
    }
    from pydantic import ValidationError

    from brain.bundle.manifest import _describe

    try:
        return EdgeManifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"manifest for {export_dir}: {_describe(exc)}") from None


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_archive(
    manifest: EdgeManifest,
    files_dir: Path,
    out: Path,
    *,
    compress: bool = False,
    sign: Callable[[bytes], bytes] | None = None,
) -> Path:
    """Write the tar (manifest first) atomically to ``out``; returns ``out``.

    ``sign(manifest_bytes)``, if given, returns the ``edge_manifest.sig`` content (local
    bundles: ``brain.ota.device_key.sign_local_manifest`` with the device key).
    """
    manifest_bytes = manifest.to_json_bytes()
    signature = sign(manifest_bytes) if sign is not None else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out, mode=0o644) as tmp, open(tmp, "wb") as raw:
        sink: io.BufferedIOBase = (
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") if compress else raw
        )
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
            head = _tarinfo(MANIFEST_NAME, len(manifest_bytes))
            tar.addfile(head, io.BytesIO(manifest_bytes))
            if signature is not None:
                sig_head = _tarinfo(SIGNATURE_NAME, len(signature))
                tar.addfile(sig_head, io.BytesIO(signature))
            for name in sorted(manifest.artifacts):
                entry = manifest.artifacts[name]
                with open(files_dir / name, "rb") as f:
                    tar.addfile(_tarinfo(name, entry.size), f)
        if compress:
            sink.close()
    return out


def build_bundle(
    export_dir: Path,
    out: Path,
    *,
    version: str,
    release_counter: int,
    hardware_id: str,
    safety: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    compress: bool = False,
    action_low: list[float] | None = None,
    action_high: list[float] | None = None,
    sign: Callable[[bytes], bytes] | None = None,
    base_manifest: EdgeManifest | None = None,
) -> Path:
    """Bundle ``export_dir`` (with its ``export_report.json``) into the archive ``out``."""
    export_dir = Path(export_dir)
    manifest = manifest_from_report(
        export_dir,
        version=version,
        release_counter=release_counter,
        hardware_id=hardware_id,
        safety=safety,
        provenance=provenance,
        action_low=action_low,
        action_high=action_high,
        base_manifest=base_manifest,
    )
    write_archive(manifest, export_dir, Path(out), compress=compress, sign=sign)
    # Re-hash what went in: a file changed between hashing and archiving would otherwise
    # produce a bundle that every robot refuses.
    for name, entry in manifest.artifacts.items():
        if _hash_file(export_dir / name) != (entry.sha256, entry.size):
            Path(out).unlink(missing_ok=True)
            raise BundleError(f"{export_dir / name}: changed while the bundle was being written")
    return Path(out)
