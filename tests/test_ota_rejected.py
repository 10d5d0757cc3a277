"""Slots survive bad input (issue 17, F3): a bundle is verified in staging before any slot changes.

The finding: the updater cleared the inactive slot before it verified trust, so 10 random
bytes uploaded -> 422 and the previous committed bundle was gone (rollback: 409 "slot A is
empty").  Here, against the real daemon's upload route, a real TUF repository and real
onnxruntime: every kind of rejected upload, a truncated download, a crash mid-install and a
full (real, tmpfs) disk leave the committed and the previous bundle in place, the committed
model keeps driving and rollback still works.  Also the self-contained-model rule: an ONNX
tensor with external data is refused by our own check, whatever onnxruntime would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from brain.bundle.manifest import BundleError, manifest_sha256
from brain.bundle.onnx_check import check_onnx_bytes
from brain.ota.slots import Slots
from brain.ota.state import StateStore
from brain.ota.updater import Updater
from tests.api_helpers import running_api
from tests.ota_craft import external_data_model, hostile_uploads, make_external
from tests.ota_helpers import (
    ACTIONS,
    HW,
    fast_safety,
    make_bundle,
    make_export,
    ota_config,
    ota_overrides,
)
from tests.waiting import wait_until_async

pytest.importorskip("tuf")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(d / "v1.tar", "1.0.0", 1, bias=0.1),
        "v2": make_bundle(d / "v2.tar", "2.0.0", 2, bias=0.3),
        "v2b": make_bundle(d / "v2b.tar", "2.0.1", 2, bias=0.25),
        "v3": make_bundle(d / "v3.tar", "3.0.0", 3, bias=-0.2),
        "big": make_bundle(d / "big.tar", "4.0.0", 4, pad_mb=3.0),
        "other_hw": make_bundle(d / "hw.tar", "9.0.0", 9, hardware_id="continuon-arm"),
    }


def new_repo(tmp_path: Path):
    from cloud_jobs.publish.keys import KeyStore
    from cloud_jobs.publish.repository import Repository

    keys = KeyStore.init(tmp_path / "keys")
    Repository.create(tmp_path / "repo", keys)
    return tmp_path / "repo", keys


def publish(repo, archive: Path) -> None:
    from cloud_jobs.publish.repository import Repository, publish_bundle

    repo_dir, keys = repo
    publish_bundle(Repository(repo_dir, keys), archive)


def slot_bytes(root: Path) -> dict[str, dict[str, bytes]]:
    slots = Slots(root)
    return {
        s: {p.name: p.read_bytes() for p in sorted(slots.path(s).iterdir())}
        for s in ("A", "B")
        if slots.path(s).is_dir()
    }


def local_bundle(out: Path, base_dir: Path, version: str, sign) -> Path:
    from brain.bundle.pack import build_bundle

    return build_bundle(
        make_export(out.parent / f"export-{version}", bias=0.05),
        out,
        version=version,
        release_counter=1,
        hardware_id=HW,
        safety=fast_safety(),
        provenance={
            "source": "local",
            "base_version": "2.0.0",
            "base_manifest_sha256": manifest_sha256(base_dir),
        },
        sign=sign,
    )


# ----------------------------------------------------------------------------- self-contained ONNX


def _variants(model: bytes) -> dict[str, bytes]:
    """The dummy policy with one tensor, in each place the format allows, made external."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def ext_tensor(name: str) -> onnx.TensorProto:
        t = numpy_helper.from_array(np.ones(4, np.float32), name)
        make_external(t, "weights.bin", 16)
        return t

    out = {"initializer": external_data_model(model, "weights.bin")}
    m = onnx.load_model_from_string(model)
    m.graph.node.append(helper.make_node("Constant", [], ["c_ext"], value=ext_tensor("c")))
    out["Constant attribute"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    sub = helper.make_graph(
        [],
        "then",
        [],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [ext_tensor("w")],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    m.graph.initializer.append(cond)
    m.graph.node.append(
        helper.make_node("If", ["cond"], ["if_out"], then_branch=sub, else_branch=sub)
    )
    out["If subgraph initializer"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    fn = m.functions.add()
    fn.name, fn.domain = "f", "custom"
    fn.node.append(helper.make_node("Constant", [], ["y"], value=ext_tensor("fc")))
    out["function body"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    fn = m.functions.add()
    fn.name, fn.domain = "g", "custom"
    fn.attribute_proto.append(helper.make_attribute("default", ext_tensor("fd")))
    out["function attribute default"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    info = m.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], [ext_tensor("ti")]))
    out["training_info initialization"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    sp = m.graph.sparse_initializer.add()
    sp.values.CopyFrom(ext_tensor("sv"))
    sp.indices.CopyFrom(numpy_helper.from_array(np.arange(4, dtype=np.int64), "si"))
    sp.dims.extend([8])
    out["sparse initializer"] = m.SerializeToString()
    m = onnx.load_model_from_string(model)
    t = m.graph.initializer[0]
    e = t.external_data.add()  # location left DEFAULT, an external_data entry all the same
    e.key, e.value = "location", "weights.bin"
    out["external_data entry, default location"] = m.SerializeToString()
    return out


def test_external_data_is_refused_wherever_the_tensor_sits(bundles):
    from tests.ota_craft import read_members

    _, model = read_members(bundles["v1"])
    check_onnx_bytes(model, "clean")  # a self-contained model passes
    for where, data in _variants(model).items():
        with pytest.raises(BundleError, match="external file") as ei:
            check_onnx_bytes(data, "m.onnx")
        print(f"{where}: {ei.value}")
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        check_onnx_bytes(b"\x08\x07garbage" * 10, "junk.onnx")


def test_the_onnx_subset_matches_onnx_own_schema():
    """Our protobuf subset (no onnx import in the daemon) has onnx.proto's numbers and types."""
    from onnx import onnx_ml_pb2

    from brain.bundle.onnx_check import _SCHEMA, EXTERNAL

    assert onnx_ml_pb2.TensorProto.EXTERNAL == EXTERNAL
    for msg, fields in _SCHEMA.items():
        theirs = {f.name: f for f in getattr(onnx_ml_pb2, msg).DESCRIPTOR.fields}
        for name, number, typ, repeated in fields:
            f = theirs[name]
            assert f.number == number, (msg, name)
            theirs_repeated = (
                f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
            )
            assert theirs_repeated == repeated, (msg, name)
            if f.message_type is not None:
                assert f.message_type.name == typ, (msg, name)
            else:
                assert typ in ("string", "int32"), (msg, name)
    # every place onnx.proto can hold a tensor or a graph is walked
    holders = {"TensorProto", "SparseTensorProto", "GraphProto", "AttributeProto", "NodeProto"}
    for msg in ("ModelProto", "GraphProto", "NodeProto", "AttributeProto", "FunctionProto",
                "TrainingInfoProto", "SparseTensorProto"):  # fmt: skip
        for f in getattr(onnx_ml_pb2, msg).DESCRIPTOR.fields:
            if f.message_type is not None and f.message_type.name in holders:
                assert f.name in {n for n, *_ in _SCHEMA[msg]}, (msg, f.name)


def test_the_check_does_not_import_onnx(tmp_path, bundles):
    """The daemon pays neither the onnx package's import (~0.7 s) nor its memory."""
    import sys

    from tests.ota_craft import read_members

    _, model = read_members(bundles["v1"])
    (tmp_path / "ok.onnx").write_bytes(model)
    (tmp_path / "ext.onnx").write_bytes(external_data_model(model))
    code = (
        "import sys; from brain.policy.onnx_model import load_model; "
        "from brain.bundle.onnx_check import check_onnx_file; "
        f"m = load_model({str(tmp_path / 'ok.onnx')!r}); "
        "import brain.bundle.manifest as bm\n"
        f"try: check_onnx_file({str(tmp_path / 'ext.onnx')!r})\n"
        "except bm.BundleError: pass\n"
        "else: raise SystemExit('not refused')\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_load_refuses_external_data_that_onnxruntime_would_load(tmp_path, bundles):
    """Inside the model's directory onnxruntime (any version) follows the reference; we do not."""
    import onnxruntime as ort

    from brain.bundle.pack import check_artifact_file
    from brain.policy import PolicyLoadError, load_model
    from tests.ota_craft import read_members

    _, model = read_members(bundles["v1"])
    d = tmp_path / "m"
    d.mkdir()
    ext = external_data_model(model, "weights.bin")
    (d / "policy.onnx").write_bytes(ext)
    (d / "weights.bin").write_bytes(np.float32(1 / 255).tobytes())
    ort.InferenceSession(str(d / "policy.onnx"), providers=["CPUExecutionProvider"])  # loads
    with pytest.raises(PolicyLoadError, match=r"external file \('weights.bin'\)"):
        load_model(d / "policy.onnx")
    with pytest.raises(BundleError, match="external file"):
        check_artifact_file(d / "policy.onnx")  # nor can it be packed
    (d / "ok.onnx").write_bytes(model)
    assert load_model(d / "ok.onnx").version  # the same model, self-contained, loads


def test_a_slot_holding_external_data_fails_verification(tmp_path, bundles):
    """A bundle committed before this rule (or edited on disk) is not booted on."""
    import json

    from brain.bundle.unpack import verify_bundle_dir
    from tests.ota_craft import read_members

    slots = Slots(tmp_path)
    slots.stage(bundles["v1"], "A")
    manifest, model = read_members(bundles["v1"])
    ext = external_data_model(model, "../../../etc/hostname")
    import hashlib

    manifest["artifacts"]["model_fp32.onnx"].update(
        sha256=hashlib.sha256(ext).hexdigest(), size=len(ext)
    )
    (slots.path("A") / "model_fp32.onnx").write_bytes(ext)
    (slots.path("A") / "edge_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="external file"):
        verify_bundle_dir(slots.path("A"))


# ----------------------------------------------------------------------------- the real daemon


@pytest.mark.slow
def test_rejected_uploads_keep_both_slots_and_rollback_works(tmp_path, bundles):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from brain.ota.device_key import load_or_create_device_key, sign_local_manifest

    repo = new_repo(tmp_path)
    publish(repo, bundles["v1"])

    async def driven_by(api, version: str, n: int = 10) -> np.ndarray:
        daemon = api.daemon
        c0, t0 = daemon.policy.stats()["count"], time.monotonic()
        await wait_until_async(lambda: daemon.policy.stats()["count"] >= c0 + n, timeout=30.0)
        assert daemon.policy.stats()["model_version"] == version
        writes = [a for t, kind, a in api.actuators.snapshot() if kind == "write" and t > t0]
        return np.array(writes)

    async def body():
        async with running_api(tmp_path, **ota_overrides(repo[0])) as api:
            daemon, c = api.daemon, api.client
            h = api.bearer(await api.token())
            oct_h = dict(h, **{"Content-Type": "application/octet-stream"})
            await wait_until_async(
                lambda: daemon.brain.update_status().to_json()["phase"] == "committed", timeout=30.0
            )
            await asyncio.to_thread(publish, repo, bundles["v2"])
            res = (await daemon.brain.check_update()).to_json()
            assert res["result"] == "committed 2.0.0", res
            ota_dir = api.config.ota_dir()
            before = slot_bytes(ota_dir)
            assert set(before) == {"A", "B"}
            key = load_or_create_device_key(api.config.state_dir())
            stranger = Ed25519PrivateKey.generate()
            signers = {
                "unsigned": None,
                "stranger": lambda m: sign_local_manifest(m, stranger),
                "tampered": lambda m: sign_local_manifest(m + b" ", key),
            }
            base = ota_dir / "slots" / "B"
            cases = hostile_uploads(
                bundles["v3"],
                bundles["v1"],  # a signed target below the committed counter: a replay
                bundles["v2b"],
                bundles["other_hw"],
                lambda kind: local_bundle(
                    tmp_path / "local" / f"{kind}.tar", base, f"2.0.0-{kind}", signers[kind]
                ),
            )
            assert len(cases) >= 20
            daemon.brain.set_mode("autonomous")
            answers = {}
            for name, (data, needle) in cases.items():
                resp = await c.post("/api/v1/updates/upload", data=data, headers=oct_h)
                msg = (await resp.json())["error"]["message"]
                answers[name] = (resp.status, msg)
                assert resp.status == 422 and needle in msg, (name, resp.status, msg)
                st = daemon.brain.update_status().to_json()
                assert st["committed"]["version"] == "2.0.0", name
                assert st["previous"]["version"] == "1.0.0", name
                assert slot_bytes(ota_dir) == before, name  # not a byte changed in either slot
            assert sorted(p.name for p in (ota_dir / "slots").iterdir()) == ["A", "B"]
            assert list((api.config.state_dir() / "edge" / "uploads").iterdir()) == []
            st = daemon.brain.update_status().to_json()
            assert st["failed_versions"] == []  # refusals say nothing about a model
            # the committed model still drives ...
            w2 = await driven_by(api, "2.0.0")
            # ... and rollback to the previous bundle still works, through the API
            resp = await c.post("/api/v1/updates/rollback", headers=h)
            body = await resp.json()
            assert resp.status == 200 and body["result"] == "rolled back to 1.0.0", body
            w1 = await driven_by(api, "1.0.0")
            return answers, w2, w1

    answers, w2, w1 = asyncio.run(body())
    for name, (status, msg) in answers.items():
        print(f"{name:40s} {status} {msg[:110]}")
    assert len(w2) and len(w1) and np.abs(w2).max() > 0.01 and np.abs(w1).max() > 0.01
    assert not np.allclose(w2.mean(axis=0), w1.mean(axis=0))  # two different models drove


# ----------------------------------------------------------------------------- the updater


def make_updater(root: Path, repo_dir: Path | None = None) -> Updater:
    from brain.ota.trust import TrustedRepository

    return Updater(
        root,
        ota_config(repository_url=str(repo_dir) if repo_dir else None),
        hardware_id=HW,
        action_names=tuple(ACTIONS),
        repository=(
            (lambda src: TrustedRepository(root / "metadata", src or str(repo_dir), root / "dl"))
            if repo_dir
            else None
        ),
        require_signature=repo_dir is not None,
    )


def two_slots(root: Path, bundles, repo_dir: Path | None = None) -> Updater:
    """An updater (no daemon: installs stage) with 1.0.0 previous in A and 2.0.0 committed in B."""
    from brain.ota.state import OtaState, SlotRecord

    slots = Slots(root)
    recs = []
    for slot, name in (("A", "v1"), ("B", "v2")):
        m = slots.stage(bundles[name], slot)
        recs.append(
            SlotRecord(
                slot=slot,
                version=m.version,
                release_counter=m.release_counter,
                manifest_sha256=slots.manifest_sha256(slot),
            )
        )
    st = OtaState(phase="committed", previous=recs[0], committed=recs[1], release_counter=2)
    StateStore(root).save(st)
    StateStore(root).save_committed(recs[1])
    return make_updater(root, repo_dir)


def assert_both_slots(root: Path, before) -> None:
    up = make_updater(root).open()  # a restart: boot recovery
    try:
        st = up.state
        assert st.committed.version == "2.0.0" and st.previous.version == "1.0.0", st
        up.slots.verify("B", st.committed.manifest_sha256)
        up.slots.verify("A", st.previous.manifest_sha256)
        assert slot_bytes(root) == before
        assert sorted(p.name for p in up.slots.dir.iterdir()) == ["A", "B"]
    finally:
        up.close()


def test_failed_or_truncated_download_keeps_both_slots(tmp_path, bundles):
    from brain.ota.trust import init_trust

    repo = new_repo(tmp_path)
    publish(repo, bundles["v3"])
    root = tmp_path / "ota"
    init_trust(root / "metadata", (repo[0] / "metadata" / "1.root.json").read_bytes())
    up = two_slots(root, bundles, repo[0])
    before = slot_bytes(root)
    [stored] = (repo[0] / "targets").glob("*-3.0.0.tar")
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 3])  # the server holds a truncated file
    with pytest.raises(Exception, match=r"(?i)length|incomplete|mismatch|truncat"):
        asyncio.run(up.check())
    assert up.state.phase == "failed" and "download of 3.0.0" in up.state.last_error
    assert_both_slots(root, before)
    stored.unlink()  # the server lost it: the download fails outright
    with pytest.raises(Exception):  # noqa: B017 - any download error will do
        asyncio.run(make_updater(root, repo[0]).check())
    assert_both_slots(root, before)
    stored.write_bytes(good)  # and once it is whole again it installs (stages)
    res = asyncio.run(make_updater(root, repo[0]).check())
    assert res["result"] == "3.0.0 staged; the daemon tries it at next start", res
    st = StateStore(root).load()
    assert st.candidate.slot == "A" and st.previous is None  # 1.0.0 replaced, on purpose


@pytest.mark.parametrize("phase", ["downloading", "verifying", "unpacking"])
def test_a_crash_mid_install_keeps_the_previous_bundle(tmp_path, bundles, phase):
    """Killed while the new bundle was still in staging: the previous one is still in its slot."""
    root = tmp_path / "ota"
    two_slots(root, bundles)
    before = slot_bytes(root)
    store = StateStore(root)
    store.save(store.load().with_(phase=phase))
    leftover = Slots(root).new_staging()
    Slots(root).unpack_staging(bundles["v3"], leftover)  # what the crash left behind
    assert_both_slots(root, before)
    assert StateStore(root).load().phase == "failed"


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> Path:
    """Write until the filesystem is full; returns the filler file."""
    filler = where / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def test_full_disk_while_staging_keeps_both_slots(tmp_path, bundles):
    """A real small filesystem (tmpfs), not a patched write."""
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        root = mnt / "ota"
        up = two_slots(root, bundles)
        before = slot_bytes(root)
        # 1. a bundle bigger than the free space: refused before it is written
        with pytest.raises(BundleError, match="no space left on device: need"):
            asyncio.run(up.install(bundles["big"]))
        assert "no space left on device" in up.status()["last_error"]
        assert StateStore(root).load().phase == "failed"
        assert_both_slots(root, before)
        # 2. the disk is full while the daemon runs: even the state file cannot be written;
        #    the error says so, and nothing stored is lost
        up = make_updater(root).open()
        filler = fill(mnt)
        assert os.statvfs(mnt).f_bavail == 0
        with pytest.raises(OSError) as ei:
            asyncio.run(up.install(bundles["v3"]))
        assert ei.value.errno == errno.ENOSPC
        assert up.status()["last_error"].startswith("disk full"), up.status()["last_error"]
        up.close()
        up = make_updater(root).open()  # a restart on the full disk boots all the same
        assert up.state.committed.version == "2.0.0" and up.state.previous.version == "1.0.0"
        up.close()
        filler.unlink()
        assert_both_slots(root, before)
        # 3. space for what the manifest declares, not for the pages it takes: the disk
        #    fills up while the model is being written (a real ENOSPC half way)
        big_small = make_bundle(tmp_path / "b" / "v5.tar", "5.0.0", 5, pad_mb=0.05)
        from brain.bundle.unpack import read_archive_manifest

        need = read_archive_manifest(big_small).total_size()
        page = os.statvfs(mnt).f_frsize
        up = make_updater(root).open()  # running, as in the daemon (its lock file exists)
        filler = fill(mnt)
        with open(filler, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            while os.statvfs(mnt).f_bavail * page < need:
                size -= page
                f.truncate(size)
        free = os.statvfs(mnt).f_bavail * page
        assert need <= free < need + page  # the model's last page and the manifest do not fit
        with pytest.raises(BundleError, match=r"no space left on device \(") as ei:
            asyncio.run(up.install(big_small))
        print(f"need {need}, free {free}: {ei.value}")
        assert "no space left on device" in up.status()["last_error"]
        up.close()
        filler.unlink()
        assert_both_slots(root, before)
        # and with space again the same bundle installs (a full disk is not a failed version)
        res = asyncio.run(make_updater(root).install(big_small))
        assert res["result"].startswith("5.0.0 staged"), res
