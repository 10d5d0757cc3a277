"""The robot's device key: how a bundle fine-tuned *on this robot* earns trust.

A locally trained model is never trusted on its own.  It is trusted only as a derivative of
the cloud-signed bundle that is committed on the robot: its manifest must say
``provenance.source == "local"`` and name that bundle's version and manifest SHA-256 as its
base, keep the same hardware id, observation and action spec, and be signed by this robot's
ed25519 device key.  Someone who can write files on the robot but not read the key (0600,
root) cannot make a bundle the updater accepts; someone who can read the key can only make
derivatives of the model the cloud already signed.

Signature file ``edge_manifest.sig`` (JSON, next to the manifest)::

    {"alg": "ed25519", "keyid": "<sha256 of the raw public key>", "sig": "<hex>"}

over the exact bytes of ``edge_manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from brain.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, BundleError, EdgeManifest
from brain.ota.trust import BadSignatureError, TrustError
from common.durable import replace_file

KEY_NAME = "device_key.pem"
PUBLIC_NAME = "device_key.pub"
MAX_SIG_BYTES = 4096


class DeviceSignatureError(BadSignatureError):
    """A local bundle's device signature is missing, malformed, or not by this robot's key."""


class NotADerivativeError(TrustError):
    """A local bundle does not derive from the committed cloud-signed bundle."""


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(_raw_public(pub)).hexdigest()


def load_or_create_device_key(state_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The device key under ``state_dir`` (created once, 0600); also writes the public key.

    Refuses a key file others can read: a leaked device key lets anyone sign derivatives.
    """
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / KEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_device_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Its directory fsync also makes the private key's new directory entry durable.
    replace_file(d / PUBLIC_NAME, pub_pem)
    return key


def load_device_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    st = p.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise TrustError(f"{p}: device key is readable by others (chmod 600 it)")
    key = serialization.load_pem_private_key(p.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{p}: not an ed25519 private key")
    return key


def load_public_key(data: bytes | str | os.PathLike[str] | Ed25519PublicKey) -> Ed25519PublicKey:
    """A public key from PEM bytes, 32 raw bytes, a PEM file path, or a key object."""
    if isinstance(data, Ed25519PublicKey):
        return data
    if isinstance(data, Ed25519PrivateKey):
        return data.public_key()
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    try:
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise DeviceSignatureError(f"device public key is unreadable ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DeviceSignatureError("device public key is not ed25519")
    return key


def sign_local_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of ``edge_manifest.sig`` for ``manifest_bytes``."""
    sig = key.sign(manifest_bytes)
    doc = {"alg": "ed25519", "keyid": keyid(key), "sig": sig.hex()}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def verify_manifest_signature(
    manifest_bytes: bytes, sig_bytes: bytes, public_key: Ed25519PublicKey
) -> None:
    if len(sig_bytes) > MAX_SIG_BYTES:
        raise DeviceSignatureError(f"{SIGNATURE_NAME} is oversize")
    try:
        doc = json.loads(sig_bytes)
        if doc.get("alg") != "ed25519":
            raise DeviceSignatureError(f"{SIGNATURE_NAME}: unsupported alg {doc.get('alg')!r}")
        sig = bytes.fromhex(doc["sig"])
        kid = doc["keyid"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DeviceSignatureError(f"{SIGNATURE_NAME} is malformed ({exc})") from None
    if kid != keyid(public_key):
        raise DeviceSignatureError(
            f"{SIGNATURE_NAME} is by key {kid[:12]}..., not this robot's device key "
            f"{keyid(public_key)[:12]}..."
        )
    try:
        public_key.verify(sig, manifest_bytes)
    except InvalidSignature:
        raise DeviceSignatureError(
            f"{SIGNATURE_NAME}: bad signature (the manifest was changed after signing)"
        ) from None


def _base_fields(base: Any) -> tuple[str, Any]:
    """(version, manifest or None) from an EdgeManifest or a plain version string."""
    if isinstance(base, EdgeManifest):
        return base.version, base
    if isinstance(base, str):
        return base, None
    version = getattr(base, "version", None)
    if isinstance(version, str):
        return version, None
    raise TypeError(f"committed_base must be an EdgeManifest or a version string, got {base!r}")


def verify_local_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    device_public_key: bytes | str | os.PathLike[str] | Ed25519PublicKey,
    committed_base: EdgeManifest | str,
    committed_base_manifest_sha256: str,
) -> EdgeManifest:
    """Check an unpacked local bundle; returns its manifest or raises a TrustError/BundleError.

    ``committed_base`` is the committed cloud bundle's manifest (then hardware id,
    observation and action spec are compared too) or just its version string (then the
    caller must check hardware id and actions against the robot itself).
    """
    from brain.bundle.unpack import verify_bundle_dir

    d = Path(bundle_dir)
    manifest = verify_bundle_dir(d)  # file set, sizes, hashes
    sig_path = d / SIGNATURE_NAME
    try:
        sig_bytes = sig_path.read_bytes()
    except FileNotFoundError:
        raise DeviceSignatureError(
            f"{d}: no {SIGNATURE_NAME}; a local bundle must be signed"
        ) from None
    manifest_bytes = (d / MANIFEST_NAME).read_bytes()
    verify_manifest_signature(manifest_bytes, sig_bytes, load_public_key(device_public_key))

    prov = manifest.provenance
    if prov.source != "local":
        raise NotADerivativeError(
            f"{manifest.version}: provenance.source is {prov.source!r}; only 'local' bundles are "
            "trusted through the device key (cloud bundles come through TUF)"
        )
    base_version, base = _base_fields(committed_base)
    if prov.base_version != base_version:
        raise NotADerivativeError(
            f"{manifest.version} derives from {prov.base_version!r}, but the committed cloud "
            f"bundle is {base_version!r}"
        )
    if prov.base_manifest_sha256 != committed_base_manifest_sha256:
        raise NotADerivativeError(
            f"{manifest.version}: base manifest sha256 {prov.base_manifest_sha256} is not the "
            f"committed bundle's {committed_base_manifest_sha256}"
        )
    if base is not None:
        if base.provenance.source != "cloud":
            raise NotADerivativeError("the committed base is not a cloud-signed bundle")
        if manifest.hardware_id != base.hardware_id:
            raise NotADerivativeError(
                f"{manifest.version} is for hardware {manifest.hardware_id!r}, the base for "
                f"{base.hardware_id!r}"
            )
        if manifest.action != base.action:
            raise NotADerivativeError(f"{manifest.version} changes the action spec of its base")
        if manifest.observation != base.observation:
            raise NotADerivativeError(f"{manifest.version} changes the observation spec")
    return manifest


__all__ = [
    "BundleError",
    "DeviceSignatureError",
    "NotADerivativeError",
    "load_device_key",
    "load_or_create_device_key",
    "load_public_key",
    "sign_local_manifest",
    "verify_local_bundle",
    "verify_manifest_signature",
]
