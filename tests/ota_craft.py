"""Hostile bundles for the OTA tests: each one wrong in exactly one way.

Built from a real bundle archive (tests.ota_helpers.make_bundle) by rewriting its tar
members, so everything but the one defect is what a real bundle has.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "model_fp32.onnx"
MANIFEST = "edge_manifest.json"


def read_members(archive: Path) -> tuple[dict[str, Any], bytes]:
    """(manifest as a dict, model bytes) of a one-model bundle."""
    with tarfile.open(archive) as t:
        manifest = json.loads(t.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        model = t.extractfile(MODEL).read()  # type: ignore[union-attr]
    return manifest, model


def info(name: str, size: int = 0, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def write_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _raw_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """Headers and data as given, no end marker: a header may declare more than follows."""
    out = b""
    for ti, data in members:
        out += ti.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)
    return out


def manifest_for(manifest: dict[str, Any], model: bytes, name: str = MODEL) -> bytes:
    """``manifest`` listing ``model`` (its real size and hash) under ``name``."""
    m = json.loads(json.dumps(manifest))
    entry = m["artifacts"].pop(MODEL)
    entry.update(sha256=hashlib.sha256(model).hexdigest(), size=len(model))
    m["artifacts"][name] = entry
    return json.dumps(m, indent=2).encode()


def bundle_bytes(manifest: bytes, model: bytes, name: str = MODEL, **model_kw: Any) -> bytes:
    return write_tar(
        [(info(MANIFEST, len(manifest)), manifest), (info(name, len(model), **model_kw), model)]
    )


def external_data_model(model: bytes, location: str = "../../../etc/hostname") -> bytes:
    """``model`` with its first initializer's bytes moved "outside" (data_location EXTERNAL)."""
    import onnx

    m = onnx.load_model_from_string(model)
    t = m.graph.initializer[0]
    n = len(t.raw_data) or 4 * max(1, len(t.float_data))
    make_external(t, location, n)
    return m.SerializeToString()


def make_external(t: Any, location: str, length: int) -> None:
    import onnx

    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.ClearField("raw_data")
    t.ClearField("float_data")


def hostile_uploads(
    cloud: Path, replay: Path, same_counter: Path, other_hw: Path, local: Callable[[str], Path]
) -> dict[str, tuple[bytes, str]]:
    """name -> (upload body, a word the refusal must contain).

    ``cloud``: a well-formed but unsigned cloud bundle (counter above the committed one);
    ``replay``: a signed target at or below the committed counter; ``same_counter``: other
    content at the committed counter; ``other_hw``: for other hardware; ``local(kind)``: a
    local bundle signed in the way ``kind`` names ("unsigned", "stranger", "tampered").
    """
    manifest, model = read_members(cloud)
    mbytes = manifest_for(manifest, model)
    good = cloud.read_bytes()
    flipped = bytearray(model)
    flipped[len(flipped) // 2] ^= 0xFF
    pickled = pickle.dumps({"weights": [1.0] * 64}, protocol=4)
    ext = external_data_model(model)
    huge = info(MODEL, 2**31)
    return {
        "random bytes": (os.urandom(10), "not a bundle archive"),
        "random 64 KiB": (os.urandom(65536), "bundle"),
        "truncated tar": (good[: good.find(model) + len(model) // 2], "corrupt archive"),
        "gzip of garbage": (gzip.compress(b"not a tar at all" * 100), "bundle"),
        "empty tar": (write_tar([]), "empty archive"),
        "manifest not JSON": (
            write_tar([(info(MANIFEST, 9), b"{not json"), (info(MODEL, len(model)), model)]),
            "manifest",
        ),
        "not a signed target": (good, "not a signed target"),
        "local, unsigned": (local("unsigned").read_bytes(), "must be signed"),
        "local, stranger's key": (local("stranger").read_bytes(), "not this robot"),
        "local, bad signature": (local("tampered").read_bytes(), "bad signature"),
        "wrong hardware id": (other_hw.read_bytes(), "for hardware"),
        "lower release counter (signed replay)": (replay.read_bytes(), "not above the committed"),
        "same release counter": (same_counter.read_bytes(), "not above the committed"),
        "artifact hash mismatch": (bundle_bytes(mbytes, bytes(flipped)), "sha256 mismatch"),
        "artifact size differs": (bundle_bytes(mbytes, model + b"\0" * 16), "the manifest says"),
        "oversize member": (
            _raw_tar([(info(MANIFEST, len(mbytes)), mbytes), (huge, b"\0" * 4096)]),
            "limit",
        ),
        "symlink member": (
            write_tar(
                [
                    (info(MANIFEST, len(mbytes)), mbytes),
                    (info(MODEL, type=tarfile.SYMTYPE, linkname="/etc/shadow"), None),
                ]
            ),
            "is a link",
        ),
        "hardlink member": (
            write_tar(
                [
                    (info(MANIFEST, len(mbytes)), mbytes),
                    (info(MODEL, type=tarfile.LNKTYPE, linkname=MANIFEST), None),
                ]
            ),
            "is a link",
        ),
        "path traversal member": (
            bundle_bytes(manifest_for(manifest, model), model, name="../../model_fp32.onnx"),
            "path traversal",
        ),
        "absolute path member": (
            bundle_bytes(mbytes, model, name="/tmp/model_fp32.onnx"),
            "absolute",
        ),
        "executable member": (bundle_bytes(mbytes, model, mode=0o755), "executable"),
        "fifo member": (
            write_tar(
                [(info(MANIFEST, len(mbytes)), mbytes), (info(MODEL, type=tarfile.FIFOTYPE), None)]
            ),
            "fifo",
        ),
        "pickle named .onnx": (
            bundle_bytes(manifest_for(manifest, pickled), pickled),
            "pickle",
        ),
        "external-data ONNX": (
            bundle_bytes(manifest_for(manifest, ext), ext),
            "external file",
        ),
        "manifest not first": (
            write_tar([(info(MODEL, len(model)), model), (info(MANIFEST, len(mbytes)), mbytes)]),
            "first member",
        ),
        "duplicate member": (
            write_tar(
                [
                    (info(MANIFEST, len(mbytes)), mbytes),
                    (info(MODEL, len(model)), model),
                    (info(MODEL, len(model)), model),
                ]
            ),
            "twice",
        ),
        "unexpected extra file": (
            write_tar(
                [
                    (info(MANIFEST, len(mbytes)), mbytes),
                    (info(MODEL, len(model)), model),
                    (info("extra.onnx", len(model)), model),
                ]
            ),
            "not in the manifest",
        ),
        "missing artifact": (write_tar([(info(MANIFEST, len(mbytes)), mbytes)]), "missing"),
        ".data artifact": (
            bundle_bytes(manifest_for(manifest, model, name="weights.data"), model, "weights.data"),
            "allowed",
        ),
    }
