"""Edge bundles: manifest schema, deterministic packing, hostile archives, staging, local bundles.

Archives in the hostile-archive tests are written with the real ``tarfile`` module; the
models are real ONNX files that onnxruntime runs through the robot's own loader.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from brain.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleError,
    EdgeManifest,
    manifest_sha256,
    parse_manifest,
    read_manifest,
)
from brain.bundle.pack import build_bundle
from brain.bundle.unpack import (
    clean_staging,
    read_archive_manifest,
    unpack_bundle,
    verify_bundle_dir,
)
from tests.tuf_helpers import (
    FIXED_PROVENANCE,
    make_bundle,
    make_export_dir,
    tiny_onnx,
    write_report,
)

HW = "donkey-pi5"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


def _manifest_dict(bundle: Path) -> dict:
    return read_archive_manifest(bundle).model_dump(mode="json")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _reg(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(bundle) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m, f.read() if f else b""))
    return out


def _assert_untouched(dest: Path) -> None:
    assert not dest.exists() or list(dest.iterdir()) == []
    leftovers = [p.name for p in dest.parent.iterdir() if ".unpack-" in p.name]
    assert leftovers == []


# ----------------------------------------------------------------------------- manifest


def test_manifest_roundtrip_and_canonical_bytes(bundle):
    m = read_archive_manifest(bundle)
    assert (m.version, m.release_counter, m.hardware_id) == ("1.0.0", 1, HW)
    assert m.action.names == ["steering", "throttle"]
    assert m.preferred_backends == ["onnx_fp32"]
    assert m.model_file("onnx_fp32") == "model_fp32.onnx"
    assert m.provenance.source == "cloud" and m.provenance.base_version is None
    again = parse_manifest(m.to_json_bytes())
    assert again == m and again.to_json_bytes() == m.to_json_bytes()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(release_counter="3"), "release_counter"),
        (lambda d: d.update(release_counter=-1), "release_counter"),
        (lambda d: d.update(hardware_id="Donkey Pi"), "hardware_id"),
        (lambda d: d.update(version="../evil"), "version"),
        (lambda d: d["action"].update(low=[-1.0]), "action"),
        (lambda d: d["action"].update(high=[-2.0, 1.0]), "action"),
        (lambda d: d.update(preferred_backends=["litert_fp32"]), "preferred_backends"),
        (lambda d: d.update(preferred_backends=["tensorrt"]), "preferred_backends"),
        (lambda d: d["safety"].update(max_abs_action=[1.0]), "max_abs_action"),
        (lambda d: d["safety"].update(max_latency_ms=0), "max_latency_ms"),
        (lambda d: d["provenance"].update(source="local"), "base_version"),
        (lambda d: d["provenance"].update(base_version="0.9"), "base_version"),
        (lambda d: d["provenance"].update(created_utc="yesterday"), "created_utc"),
        (lambda d: d["observation"]["image"].update(dtype="float32"), "dtype"),
        (lambda d: d["artifacts"]["model_fp32.onnx"].update(sha256="XYZ"), "sha256"),
        (
            lambda d: d["artifacts"].update(
                {"model.pt": {"sha256": "0" * 64, "size": 1, "backend": "onnx_fp32"}}
            ),
            "model.pt",
        ),
        (
            lambda d: d["artifacts"].update(
                {"../x.onnx": {"sha256": "0" * 64, "size": 1, "backend": "onnx_fp32"}}
            ),
            "../x.onnx",
        ),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.pop("safety"), "safety"),
    ],
)
def test_manifest_schema_refuses_bad_fields(tmp_path, bundle, mutate, field):
    d = _manifest_dict(bundle)
    mutate(d)
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(d))
    with pytest.raises(BundleError) as err:
        read_manifest(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[]", b"\xff\xfe", b'{"schema_version": 1, "schema_version": 1}', b"x" * (2 << 20)],
)
def test_malformed_manifest_json(tmp_path, raw):
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(raw)
    with pytest.raises(BundleError, match=str(path)):
        read_manifest(path)


# ----------------------------------------------------------------------------- packing


def test_build_is_deterministic_flat_and_not_executable(tmp_path):
    a = make_bundle(tmp_path / "a")
    b = make_bundle(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()  # same inputs -> same TUF hash
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [MANIFEST_NAME, "model_fp32.onnx"]
    for m in members:
        assert m.isreg() and m.mode == 0o644 and m.mtime == 0 and m.uid == 0
    assert not (a.stat().st_mode & 0o111)


def test_build_checks_report_and_refuses_pickles_and_executables(tmp_path):
    export = make_export_dir(tmp_path / "e")
    kw = {"version": "1", "release_counter": 1, "hardware_id": HW}
    # A checkpoint listed as an artifact.
    (export / "policy.pt").write_bytes(b"\x80\x04junk")
    write_report(export, {"model_fp32.onnx": "onnx_fp32", "policy.pt": "onnx_fp32"})
    with pytest.raises(BundleError, match="pickle"):
        build_bundle(export, tmp_path / "x.tar", **kw)
    # A pickle renamed to .onnx.
    (export / "model_fp32.onnx").write_bytes(b"\x80\x04\x95pickled")
    write_report(export, {"model_fp32.onnx": "onnx_fp32"})
    with pytest.raises(BundleError, match="pickle"):
        build_bundle(export, tmp_path / "x.tar", **kw)
    # A torch zip checkpoint renamed to .onnx.
    (export / "model_fp32.onnx").write_bytes(b"PK\x03\x04rest")
    write_report(export, {"model_fp32.onnx": "onnx_fp32"})
    with pytest.raises(BundleError, match="zip"):
        build_bundle(export, tmp_path / "x.tar", **kw)
    # Execute bits.
    tiny_onnx(export / "model_fp32.onnx")
    write_report(export, {"model_fp32.onnx": "onnx_fp32"})
    os.chmod(export / "model_fp32.onnx", 0o755)
    with pytest.raises(BundleError, match="execute"):
        build_bundle(export, tmp_path / "x.tar", **kw)
    os.chmod(export / "model_fp32.onnx", 0o644)
    # The report's hash does not match the file.
    report = json.loads((export / "export_report.json").read_text())
    report["artifacts"][0]["sha256"] = "0" * 64
    (export / "export_report.json").write_text(json.dumps(report))
    with pytest.raises(BundleError, match="does not match"):
        build_bundle(export, tmp_path / "x.tar", **kw)
    assert not (tmp_path / "x.tar").exists()


def test_build_refuses_symlinked_artifact(tmp_path):
    export = make_export_dir(tmp_path / "e")
    real = tmp_path / "elsewhere.onnx"
    (export / "model_fp32.onnx").rename(real)
    (export / "model_fp32.onnx").symlink_to(real)
    with pytest.raises(BundleError, match="regular file"):
        build_bundle(export, tmp_path / "x.tar", version="1", release_counter=1, hardware_id=HW)


def test_build_skips_failed_gates_and_missing_report(tmp_path):
    export = make_export_dir(tmp_path / "e")
    tiny_onnx(export / "model_int8.onnx", bias=0.1)
    write_report(export, {"model_fp32.onnx": "onnx_fp32", "model_int8.onnx": "onnx_int8"})
    report = json.loads((export / "export_report.json").read_text())
    report["artifacts"][1]["gate_passed"] = False
    report["preferred_backends"] = ["onnx_int8", "onnx_fp32"]
    (export / "export_report.json").write_text(json.dumps(report))
    out = build_bundle(export, tmp_path / "b.tar", version="1", release_counter=1, hardware_id=HW)
    m = read_archive_manifest(out)
    assert list(m.artifacts) == ["model_fp32.onnx"] and m.preferred_backends == ["onnx_fp32"]
    with pytest.raises(BundleError, match="missing"):
        build_bundle(tmp_path, tmp_path / "c.tar", version="1", release_counter=1, hardware_id=HW)


@pytest.mark.torch
@pytest.mark.slow
def test_real_policy_export_bundles_and_runs_on_the_robot_loader(tmp_path):
    """The cloud path end to end: a torch Policy -> ONNX -> bundle -> slot -> the runtime loader."""
    torch = pytest.importorskip("torch")
    from brain.model.export import export_onnx
    from brain.model.policy import build_policy
    from brain.policy.onnx_model import load_model

    torch.manual_seed(0)
    policy = build_policy("tiny", image_hw=(32, 32))
    export = tmp_path / "export"
    export.mkdir()
    export_onnx(policy, export / "model_fp32.onnx", version="t1")
    write_report(export, {"model_fp32.onnx": "onnx_fp32"})
    report = json.loads((export / "export_report.json").read_text())
    report["image"].update(height=32, width=32)
    (export / "export_report.json").write_text(json.dumps(report))
    out = build_bundle(
        export, tmp_path / "b.tar", version="t1", release_counter=1, hardware_id=HW,
        provenance=FIXED_PROVENANCE,
    )  # fmt: skip
    slot = tmp_path / "slots" / "A"
    m = unpack_bundle(out, slot)
    model = load_model(slot / m.model_file("onnx_fp32"), action_names=m.action.names)
    assert model is not None


def test_unpacked_tiny_model_loads_in_the_runtime(tmp_path, bundle):
    from brain.policy.onnx_model import load_model

    slot = tmp_path / "slots" / "A"
    m = unpack_bundle(bundle, slot)
    model = load_model(slot / m.model_file("onnx_fp32"), action_names=m.action.names)
    assert model is not None


# ----------------------------------------------------------------------------- unpacking


def test_unpack_and_verify(tmp_path, bundle):
    slot = tmp_path / "slots" / "B"
    slot.mkdir(parents=True)  # an empty inactive slot is fine
    m = unpack_bundle(bundle, slot)
    assert sorted(p.name for p in slot.iterdir()) == [MANIFEST_NAME, "model_fp32.onnx"]
    assert verify_bundle_dir(slot) == m
    assert manifest_sha256(slot) == hashlib.sha256((slot / MANIFEST_NAME).read_bytes()).hexdigest()
    with pytest.raises(BundleError, match="not empty"):
        unpack_bundle(bundle, slot)  # never over an existing bundle


def test_gzip_bundle_roundtrip(tmp_path):
    export = make_export_dir(tmp_path / "e")
    out = build_bundle(
        export, tmp_path / "b.tar.gz", version="1", release_counter=1, hardware_id=HW,
        compress=True, provenance=FIXED_PROVENANCE,
    )  # fmt: skip
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert unpack_bundle(out, tmp_path / "s").version == "1"


def _hostile_cases(bundle: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes | None]]]:
    (mi, mdata), (_wi, wdata) = _members(bundle)

    def link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    dev = tarfile.TarInfo("model_fp32.onnx")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    fifo = tarfile.TarInfo("model_fp32.onnx")
    fifo.type = tarfile.FIFOTYPE
    dirent = tarfile.TarInfo("sub")
    dirent.type = tarfile.DIRTYPE
    flipped = bytearray(wdata)
    flipped[len(flipped) // 2] ^= 0x40
    return {
        "traversal": [(mi, mdata), (_reg("../model_fp32.onnx"), wdata)],
        "absolute": [(mi, mdata), (_reg("/tmp/model_fp32.onnx"), wdata)],
        "subdir": [(mi, mdata), (_reg("x/model_fp32.onnx"), wdata)],
        "directory": [(mi, mdata), (dirent, None)],
        "symlink": [(mi, mdata), (link("model_fp32.onnx", tarfile.SYMTYPE), None)],
        "hardlink": [(mi, mdata), (link("model_fp32.onnx", tarfile.LNKTYPE, MANIFEST_NAME), None)],
        "device": [(mi, mdata), (dev, None)],
        "fifo": [(mi, mdata), (fifo, None)],
        "duplicate": [
            (mi, mdata),
            (_reg("model_fp32.onnx"), wdata),
            (_reg("model_fp32.onnx"), wdata),
        ],
        "duplicate_manifest": [(mi, mdata), (_reg(MANIFEST_NAME), mdata)],
        "unexpected": [
            (mi, mdata),
            (_reg("model_fp32.onnx"), wdata),
            (_reg("run.sh"), b"#!/bin/sh"),
        ],
        "executable": [(mi, mdata), (_reg("model_fp32.onnx", 0o755), wdata)],
        "manifest_not_first": [(_reg("model_fp32.onnx"), wdata), (mi, mdata)],
        "missing_artifact": [(mi, mdata)],
        "flipped_weights": [(mi, mdata), (_reg("model_fp32.onnx"), bytes(flipped))],
        "wrong_size": [(mi, mdata), (_reg("model_fp32.onnx"), wdata + b"\0")],
        "malformed_json": [(_reg(MANIFEST_NAME), mdata[:-20]), (_reg("model_fp32.onnx"), wdata)],
        "empty": [],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("traversal", "traversal"),
        ("absolute", "absolute"),
        ("subdir", "traversal"),
        ("directory", "not a regular file"),
        ("symlink", "link"),
        ("hardlink", "link"),
        ("device", "device"),
        ("fifo", "fifo"),
        ("duplicate", "twice"),
        ("duplicate_manifest", "twice"),
        ("unexpected", "unexpected file 'run.sh'"),
        ("executable", "executable"),
        ("manifest_not_first", "first member"),
        ("missing_artifact", "missing"),
        ("flipped_weights", "sha256 mismatch"),
        ("wrong_size", "manifest says"),
        ("malformed_json", "malformed JSON"),
        ("empty", "empty archive"),
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path, bundle, case, message):
    archive = _tar(tmp_path / f"{case}.tar", _hostile_cases(bundle)[case])
    dest = tmp_path / "slots" / "B"
    with pytest.raises(BundleError, match=message):
        unpack_bundle(archive, dest)
    _assert_untouched(dest)
    assert not (tmp_path / "model_fp32.onnx").exists()  # nothing escaped


def test_flipped_bit_in_manifest_hash_field(tmp_path, bundle):
    (_mi, mdata), (wi, wdata) = _members(bundle)
    d = json.loads(mdata)
    sha = d["artifacts"]["model_fp32.onnx"]["sha256"]
    d["artifacts"]["model_fp32.onnx"]["sha256"] = ("1" if sha[0] != "1" else "2") + sha[1:]
    archive = _tar(tmp_path / "m.tar", [(_reg(MANIFEST_NAME), json.dumps(d).encode()), (wi, wdata)])
    with pytest.raises(BundleError, match="sha256 mismatch"):
        unpack_bundle(archive, tmp_path / "s")


def test_truncated_and_garbage_archives(tmp_path, bundle):
    data = bundle.read_bytes()
    with tarfile.open(bundle) as tar:
        weights = tar.getmember("model_fp32.onnx")
    cut = weights.offset_data + weights.size // 2  # in the middle of the weights
    for name, blob in (("trunc.tar", data[:cut]), ("junk.tar", os.urandom(4096))):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(BundleError):
            unpack_bundle(p, tmp_path / "slots" / name)
        _assert_untouched(tmp_path / "slots" / name)
    with pytest.raises(BundleError, match="no such bundle"):
        unpack_bundle(tmp_path / "nope.tar", tmp_path / "s")


def test_oversize_archive_is_refused(tmp_path):
    big = make_bundle(tmp_path, pad_bytes=200_000)
    with pytest.raises(BundleError, match="limit"):
        unpack_bundle(big, tmp_path / "s", max_bytes=100_000)
    _assert_untouched(tmp_path / "s")


def test_pickle_smuggled_past_the_packer_is_refused(tmp_path, bundle):
    (_mi, mdata), _ = _members(bundle)
    payload = b"\x80\x04\x95" + b"\0" * 64
    d = json.loads(mdata)
    d["artifacts"]["model_fp32.onnx"].update(
        sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)
    )
    archive = _tar(
        tmp_path / "p.tar",
        [(_reg(MANIFEST_NAME), json.dumps(d).encode()), (_reg("model_fp32.onnx"), payload)],
    )
    with pytest.raises(BundleError, match="pickle"):
        unpack_bundle(archive, tmp_path / "s")


# ----------------------------------------------------------------------------- full disk


def test_full_disk_while_writing_fails_cleanly(tmp_path, monkeypatch):
    big = make_bundle(tmp_path, pad_bytes=3_000_000)
    dest = tmp_path / "slots" / "B"
    real_write = os.write
    written = {"n": 0}

    def write(fd, data):
        written["n"] += len(data)
        if written["n"] > 1_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(BundleError, match="no space"):
        unpack_bundle(big, dest)
    monkeypatch.undo()
    _assert_untouched(dest)
    assert unpack_bundle(big, dest).version == "1.0.0"  # space back: works


def test_full_disk_detected_before_writing(tmp_path, bundle, monkeypatch):
    import shutil as _shutil

    from brain.bundle import unpack as unpack_mod

    usage = _shutil.disk_usage(tmp_path)
    monkeypatch.setattr(unpack_mod.shutil, "disk_usage", lambda p: usage._replace(free=10))
    with pytest.raises(BundleError, match="no space"):
        unpack_bundle(bundle, tmp_path / "s")
    _assert_untouched(tmp_path / "s")


def test_file_size_limit_from_the_kernel(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE) in a child process, not a monkeypatch."""
    big = make_bundle(tmp_path, pad_bytes=2_000_000)
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
from brain.bundle.unpack import unpack_bundle
from brain.bundle.manifest import BundleError
try:
    unpack_bundle({str(big)!r}, {str(tmp_path / "s")!r})
except BundleError as e:
    print("ERR", e)
    sys.exit(3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 3, r.stderr
    assert "no space" in r.stdout
    _assert_untouched(tmp_path / "s")


# ----------------------------------------------------------------------------- boot checks


def test_verify_bundle_dir_catches_corruption(tmp_path, bundle):
    slot = tmp_path / "A"
    unpack_bundle(bundle, slot)
    weights = slot / "model_fp32.onnx"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        verify_bundle_dir(slot)
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(BundleError, match="bytes"):
        verify_bundle_dir(slot)
    weights.unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle_dir(slot)
    (slot / "model_fp32.onnx").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="regular file"):
        verify_bundle_dir(slot)
    (slot / "model_fp32.onnx").unlink()
    unpack_bundle(bundle, tmp_path / "A2")
    (tmp_path / "A2" / "extra.py").write_text("import os")
    with pytest.raises(BundleError, match="unexpected"):
        verify_bundle_dir(tmp_path / "A2")


def test_clean_staging_removes_crash_leftovers(tmp_path):
    slots = tmp_path / "slots"
    (slots / ".B.unpack-abc").mkdir(parents=True)
    (slots / ".B.unpack-abc" / "model_fp32.onnx").write_bytes(b"half")
    (slots / "A").mkdir()
    removed = clean_staging(slots)
    assert [p.name for p in removed] == [".B.unpack-abc"]
    assert sorted(p.name for p in slots.iterdir()) == ["A"]


# ----------------------------------------------------------------------------- local bundles


def _local_bundle(tmp_path: Path, base_dir: Path, key, **prov_overrides) -> Path:
    from brain.ota.device_key import sign_local_manifest

    base = read_manifest(base_dir)
    prov = {
        **FIXED_PROVENANCE,
        "source": "local",
        "base_version": base.version,
        "base_manifest_sha256": manifest_sha256(base_dir),
        **prov_overrides,
    }
    export = make_export_dir(tmp_path / "local-export", bias=0.2)
    return build_bundle(
        export, tmp_path / "local.tar", version="1.0.0-local.1",
        release_counter=base.release_counter,
        hardware_id=base.hardware_id, provenance=prov,
        sign=(lambda b: sign_local_manifest(b, key)) if key is not None else None,
    )  # fmt: skip


def test_device_key_is_created_once_private(tmp_path):
    from brain.ota.device_key import KEY_NAME, load_or_create_device_key

    k1 = load_or_create_device_key(tmp_path / "state")
    k2 = load_or_create_device_key(tmp_path / "state")
    assert k1.private_bytes_raw() == k2.private_bytes_raw()
    assert (tmp_path / "state" / KEY_NAME).stat().st_mode & 0o777 == 0o600
    os.chmod(tmp_path / "state" / KEY_NAME, 0o644)
    from brain.ota.trust import TrustError

    with pytest.raises(TrustError, match="readable by others"):
        load_or_create_device_key(tmp_path / "state")


def test_local_bundle_trusted_only_as_a_signed_derivative(tmp_path, bundle):
    from brain.ota.device_key import (
        DeviceSignatureError,
        NotADerivativeError,
        load_or_create_device_key,
        verify_local_bundle,
    )

    key = load_or_create_device_key(tmp_path / "state")
    pub = (tmp_path / "state" / "device_key.pub").read_bytes()
    base_dir = tmp_path / "slots" / "A"
    base = unpack_bundle(bundle, base_dir)
    base_sha = manifest_sha256(base_dir)

    def check(archive: Path, name: str, **kw) -> EdgeManifest:
        d = tmp_path / "slots" / name
        unpack_bundle(archive, d)
        return verify_local_bundle(
            d, device_public_key=kw.get("pub", pub), committed_base=kw.get("base", base),
            committed_base_manifest_sha256=kw.get("sha", base_sha),
        )  # fmt: skip

    good = _local_bundle(tmp_path / "g", base_dir, key)
    m = check(good, "B")
    assert m.provenance.source == "local" and m.provenance.base_version == base.version
    assert (tmp_path / "slots" / "B" / SIGNATURE_NAME).exists()
    # The slots helper passes the committed version string: also accepted.
    assert check(good, "B2", base=base.version).version == m.version

    # Not signed at all.
    with pytest.raises(DeviceSignatureError, match=r"no edge_manifest\.sig"):
        check(_local_bundle(tmp_path / "u", base_dir, None), "C")
    # Signed by another robot's key.
    other = load_or_create_device_key(tmp_path / "other-state")
    with pytest.raises(DeviceSignatureError, match="not this robot"):
        check(_local_bundle(tmp_path / "o", base_dir, other), "D")
    # Derived from something that is not the committed base.
    with pytest.raises(NotADerivativeError, match="derives from"):
        check(_local_bundle(tmp_path / "v", base_dir, key, base_version="0.0.1"), "E")
    with pytest.raises(NotADerivativeError, match="sha256"):
        check(_local_bundle(tmp_path / "s", base_dir, key, base_manifest_sha256="0" * 64), "F")
    # A bundle claiming to be a cloud bundle is never trusted through the device key.
    with pytest.raises(BundleError):
        # (a cloud manifest cannot even carry base fields: the schema refuses it)
        _local_bundle(tmp_path / "c", base_dir, key, source="cloud")
    # The manifest changed after signing (a flipped bit the hashes would not catch).
    d = tmp_path / "slots" / "G"
    unpack_bundle(good, d)
    mpath = d / MANIFEST_NAME
    mpath.write_bytes(
        mpath.read_bytes().replace(b'"max_latency_ms": 40.0', b'"max_latency_ms": 90.0')
    )
    with pytest.raises(DeviceSignatureError, match="bad signature"):
        verify_local_bundle(
            d, device_public_key=pub, committed_base=base, committed_base_manifest_sha256=base_sha
        )


def test_local_bundle_must_keep_the_action_spec(tmp_path, bundle):
    from brain.ota.device_key import (
        NotADerivativeError,
        load_or_create_device_key,
        verify_local_bundle,
    )

    key = load_or_create_device_key(tmp_path / "state")
    base_dir = tmp_path / "A"
    base = unpack_bundle(bundle, base_dir)
    export = make_export_dir(tmp_path / "e")
    from brain.ota.device_key import sign_local_manifest

    out = build_bundle(
        export, tmp_path / "l.tar", version="l1", release_counter=1, hardware_id=HW,
        action_low=[-0.5, -1.0], action_high=[0.5, 1.0],
        provenance={**FIXED_PROVENANCE, "source": "local", "base_version": base.version,
                    "base_manifest_sha256": manifest_sha256(base_dir)},
        sign=lambda b: sign_local_manifest(b, key),
    )  # fmt: skip
    unpack_bundle(out, tmp_path / "B")
    with pytest.raises(NotADerivativeError, match="action spec"):
        verify_local_bundle(
            tmp_path / "B", device_public_key=key.public_key(), committed_base=base,
            committed_base_manifest_sha256=manifest_sha256(base_dir),
        )  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def test_cloud_jobs_bundle_cli(tmp_path, capsys):
    from cloud_jobs.cli import main

    export = make_export_dir(tmp_path / "e")
    out = tmp_path / "b.tar"
    args = ["bundle", str(export), "--out", str(out), "--version", "2.0.0"]
    args += ["--release-counter", "5", "--hardware-id", HW, "--safety", '{"max_latency_ms": 25}']
    assert main(args) == 0
    m = read_archive_manifest(out)
    assert (m.release_counter, m.safety.max_latency_ms) == (5, 25.0)
    assert "version 2.0.0" in capsys.readouterr().out
    assert main(["bundle", str(tmp_path), "--out", str(out), "--version", "x",
                 "--release-counter", "1", "--hardware-id", HW]) == 1  # fmt: skip
    assert "export_report.json" in capsys.readouterr().err


def test_local_bundle_built_from_its_base_inherits_the_spec(tmp_path):
    """A cloud bundle with its own action ranges: ``base_manifest`` makes a matching derivative."""
    from brain.ota.device_key import (
        load_or_create_device_key,
        sign_local_manifest,
        verify_local_bundle,
    )

    cloud = build_bundle(
        make_export_dir(tmp_path / "c"), tmp_path / "c.tar", version="2.0.0", release_counter=4,
        hardware_id=HW, action_low=[-0.8, -0.3], action_high=[0.8, 0.6],
        safety={"max_latency_ms": 25.0}, provenance=FIXED_PROVENANCE,
    )  # fmt: skip
    base_dir = tmp_path / "slots" / "A"
    base = unpack_bundle(cloud, base_dir)
    key = load_or_create_device_key(tmp_path / "state")
    local = build_bundle(
        make_export_dir(tmp_path / "l", bias=0.3), tmp_path / "l.tar", version="2.0.0-local.1",
        release_counter=4, hardware_id=HW, base_manifest=base,
        provenance={**FIXED_PROVENANCE, "source": "local"},
        sign=lambda b: sign_local_manifest(b, key),
    )  # fmt: skip
    unpack_bundle(local, tmp_path / "slots" / "B")
    m = verify_local_bundle(
        tmp_path / "slots" / "B", device_public_key=key.public_key(), committed_base=base,
        committed_base_manifest_sha256=manifest_sha256(base_dir),
    )  # fmt: skip
    assert m.action == base.action and m.safety.max_latency_ms == 25.0
    assert m.provenance.base_version == "2.0.0"
