"""Promotion: an accepted, exported candidate becomes a local bundle installed through the slots.

Torch-free (runs in the manager, inside the daemon).  The worker has already merged the
adapter, exported and checked ``export/policy.onnx`` (and ``policy_int8.onnx`` when INT8
passed its parity check) and written ``export/export_report.json``.  Here:

1. the base is the committed bundle in the OTA slots (the cloud-signed one the robot drives
   with): a local bundle must name it (``provenance.base_version`` and
   ``base_manifest_sha256``), so without a committed bundle nothing is packed; and the run
   must have trained on exactly that bundle's weights: ``job.json`` pins the committed
   manifest's sha256 and the weights' sha256 when the run starts, the worker records the
   sha256 of the bytes it loaded in ``export_report.json``, and all of them must equal the
   bundle committed *now* (``provenance.checkpoint_sha256``) -- or nothing is signed;
2. :func:`brain.bundle.pack.build_bundle` packs the export with provenance ``source: local``
   and the base's release counter (local bundles do not advance the cloud's counter);
3. the manifest is signed with the robot's ed25519 device key (``<state_dir>/device_key.pem``,
   created on first use; the updater checks it against ``ota.device_public_key``);
4. ``install(archive)`` (the daemon: the running ``Updater``; the CLI: a staging Updater)
   swaps it in with the health window and the automatic rollback.

Whatever fails, the adapter and the ONNX export stay in the run directory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.config import Config
from brain.localtrain.base import BaseRefused, CommittedBase
from brain.localtrain.job import RUN_FILES, TrainJob
from common.durable import read_json

_log = logging.getLogger(__name__)

BaseInfo = Callable[[], CommittedBase | None]
Installer = Callable[[Path], dict[str, Any]]


def local_version(base_version: str, run_id: str) -> str:
    """``<base>+local.<run>``, within the manifest's 64-character version pattern."""
    tail = re.sub(r"[^A-Za-z0-9._-]", "-", run_id)
    v = f"{base_version}+local.{tail}"
    if len(v) > 64:
        v = f"{base_version[: 64 - len(tail) - 7]}+local.{tail}"
    return v[:64]


class Promoter:
    """``promoter(run_dir, result) -> dict`` as :class:`~brain.localtrain.manager` expects."""

    def __init__(
        self,
        config: Config,
        *,
        base_info: BaseInfo,
        install: Installer | None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.config = config
        self.base_info = base_info
        self.install = install
        self.sign = sign

    def __call__(self, run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
        export = result.get("export") or {}
        export_dir = Path(run_dir) / "export"
        out: dict[str, Any] = {
            "installed": False,
            "adapter": result.get("adapter"),
            "onnx": export.get("onnx"),
            "onnx_int8": export.get("int8"),
        }
        if not (export_dir / "export_report.json").is_file():
            out["error"] = "the run has no export_report.json; nothing to pack"
            return out
        try:
            base = self.base_info()
        except BaseRefused as exc:
            out["error"] = f"{exc}; the merged ONNX is left in the run directory"
            return out
        if not base:
            out["error"] = (
                "no committed bundle in the OTA slots to derive from (a local bundle must name "
                "its cloud-signed base); the merged ONNX is left in the run directory"
            )
            return out
        why = pin_mismatch(Path(run_dir), export_dir, base)
        if why:
            _log.error("promotion refused: %s", why)
            out["error"] = f"promotion refused: {why}"
            return out
        try:
            from brain.bundle.pack import build_bundle
        except ImportError:
            out["error"] = "brain.bundle is not installed; the merged ONNX is left in the run dir"
            return out
        version = local_version(base.version, Path(run_dir).name)
        archive = Path(run_dir) / f"{version}.bundle.tar"
        signer = self.sign if self.sign is not None else _device_signer(self.config)
        build_bundle(
            export_dir,
            archive,
            version=version,
            release_counter=base.release_counter,
            hardware_id=self.config.ota_hardware_id(),
            provenance={
                "source": "local",
                "base_version": base.version,
                "base_manifest_sha256": base.manifest_sha256,
            },
            sign=signer,
        )
        out["bundle"] = str(archive)
        out["version"] = version
        out["signed"] = signer is not None
        if self.install is None:
            out["error"] = "no OTA updater to install through; the bundle is left in the run dir"
            return out
        res = self.install(archive)
        out["install"] = res
        out["installed"] = True
        return out


def pin_mismatch(run_dir: Path, export_dir: Path, base: CommittedBase) -> str | None:
    """Why the run's candidate is not a derivative of ``base`` (None when it is)."""
    try:
        job = TrainJob.read(run_dir / RUN_FILES["job"])
        report = read_json(export_dir / "export_report.json")
        trained_on = (report.get("source") or {}).get("base_model_sha256")
    except (OSError, ValueError, TypeError, AttributeError):
        return "the run's job.json or export_report.json cannot be read"
    if job.base_manifest_sha256 != base.manifest_sha256:
        return (
            f"the run was started on another committed bundle than {base.version} "
            "(the committed model changed while it trained)"
        )
    for what, sha in (("job.json pins", job.base_sha256), ("the worker loaded", trained_on)):
        if sha != base.checkpoint_sha256:
            return (
                f"{what} base weights sha256 {str(sha)[:12]}, not the committed bundle "
                f"{base.version}'s {base.checkpoint_sha256[:12]}"
            )
    return None


def device_key_dir(config: Config) -> Path:
    """Where the robot's device key lives (``device_key.pem`` 0600, ``device_key.pub``)."""
    return config.state_dir()


def _device_signer(config: Config) -> Callable[[bytes], bytes] | None:
    """Signs ``edge_manifest.json`` with this robot's ed25519 device key (created once)."""
    try:
        from brain.ota.device_key import load_or_create_device_key, sign_local_manifest
    except ImportError:
        return None
    key = load_or_create_device_key(device_key_dir(config))
    return lambda manifest_bytes: sign_local_manifest(manifest_bytes, key)
