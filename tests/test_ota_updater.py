"""The A/B updater against real bundles, a real PolicyRunner and real onnxruntime."""

from __future__ import annotations

import asyncio
import errno
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brain.ota.lock import UpdaterBusy
from brain.ota.state import StateStore
from brain.ota.updater import Updater, UpdateRefused
from brain.policy import PolicyRunner
from tests.ota_helpers import ACTIONS, HW, H, W, make_bundle, ota_config


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(d / "v1.tar", "1.0.0", 1, bias=0.0),
        "v2": make_bundle(d / "v2.tar", "2.0.0", 2, bias=0.5),
        "v3": make_bundle(d / "v3.tar", "3.0.0", 3, bias=-0.5),
        "v2b": make_bundle(d / "v2b.tar", "2.0.1", 2, bias=0.25),  # same counter as v2
        "other_hw": make_bundle(d / "hw.tar", "9.0.0", 9, hardware_id="continuon-arm"),
        "nan_tex": make_bundle(d / "nan.tar", "4.0.0", 4, nan_on_texture=True),
    }


class Robot:
    """A PolicyRunner fed textured camera-like images at ~100 Hz, as the control loop would."""

    def __init__(self):
        self.runner = PolicyRunner(None, deadline_s=0.5).start()
        self.versions: list[str | None] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._drive, daemon=True)
        self._t.start()

    def _drive(self):
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            res = self.runner.infer(img, time.monotonic()) if self.runner.model else None
            self.versions.append(res.model_version if res is not None else None)
            time.sleep(0.01)

    def close(self):
        self._stop.set()
        self._t.join()
        self.runner.close()


@pytest.fixture
def robot():
    r = Robot()
    yield r
    r.close()


def make_updater(root: Path, robot: Robot | None, **cfg) -> Updater:
    return Updater(
        root,
        ota_config(**cfg),
        hardware_id=HW,
        action_names=tuple(ACTIONS),
        policy=robot.runner if robot else None,
        poll_s=0.01,
        require_signature=False,  # trust has its own tests (and test_ota_trusted_install)
    ).open()


def boot(root: Path, robot: Robot, **cfg) -> Updater:
    """What the daemon does at start: recover, load the committed bundle, resume a staged one."""
    up = make_updater(root, robot, **cfg)
    model = up.load_active()
    if model is not None:
        robot.runner.swap(model).wait(5)
    return up


def test_first_install_then_upgrade_alternates_slots(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    assert up.status()["committed"] is None and robot.runner.model is None
    r1 = asyncio.run(up.install(bundles["v1"]))
    assert r1["result"] == "committed 1.0.0", r1
    assert robot.runner.model.version == "1.0.0"
    r2 = asyncio.run(up.install(bundles["v2"]))
    assert r2["result"] == "committed 2.0.0"
    st = StateStore(tmp_path).load()
    assert (st.committed.slot, st.previous.slot) == ("B", "A")
    assert st.release_counter == 2 and st.phase == "committed"
    assert json.loads((tmp_path / "committed.json").read_text())["version"] == "2.0.0"
    assert r2["health"]["healthy"] and r2["health"]["seen"]["inferences"] > 0
    up.close()
    # a restart boots on the committed bundle
    robot.runner.swap(robot.runner.previous_model).wait(5)
    up = boot(tmp_path, robot)
    assert robot.runner.model.version == "2.0.0"
    up.close()


@pytest.mark.parametrize(
    "name, needle",
    [
        ("v1", "not above the committed 2"),  # replay of an older signed bundle
        ("v2b", "not above the committed 2"),  # same counter, other content
        ("other_hw", "for hardware 'continuon-arm'"),
    ],
)
def test_refused_bundles_leave_the_robot_alone(tmp_path, robot, bundles, name, needle):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v2"]))
    swaps = robot.runner.stats()["swaps"]
    with pytest.raises(UpdateRefused, match=needle):
        asyncio.run(up.install(bundles[name]))
    st = StateStore(tmp_path).load()
    assert st.phase == "failed" and st.committed.version == "2.0.0" and st.release_counter == 2
    assert robot.runner.stats()["swaps"] == swaps and robot.runner.model.version == "2.0.0"
    up.slots.verify(st.committed.slot, st.committed.manifest_sha256)
    assert not up.slots.path(st.inactive_slot()).exists()  # the refused bundle is gone
    assert not st.failed  # refusals are not failed trials
    up.close()


@pytest.mark.slow
def test_unhealthy_model_rolls_back_and_is_never_retried(tmp_path, robot, bundles):
    up = boot(tmp_path, robot, health_window_s=5.0)
    asyncio.run(up.install(bundles["v1"]))
    t0 = time.monotonic()
    res = asyncio.run(up.install(bundles["nan_tex"]))
    took = time.monotonic() - t0
    assert res["result"].startswith("rolled back 4.0.0"), res
    assert "NaN/Inf outputs" in res["result"]
    assert took < 3.0  # failed early, not at the end of the 5 s window
    assert robot.runner.model.version == "1.0.0"
    time.sleep(0.1)
    # the old model drove before, and drives again after; the bad one only for a few ticks
    seq = robot.versions
    seq = seq[seq.index("1.0.0") :]  # from when the robot first had a model
    bad = [i for i, v in enumerate(seq) if v is None]
    assert seq[-1] == "1.0.0"
    assert len(bad) <= 10, f"{len(bad)} neutral ticks"
    st = StateStore(tmp_path).load()
    assert st.phase == "rolled_back" and st.committed.version == "1.0.0"
    assert st.failed[0].version == "4.0.0" and st.release_counter == 1
    with pytest.raises(UpdateRefused, match="failed before"):
        asyncio.run(up.install(bundles["nan_tex"]))
    up.close()


def test_smoke_test_refuses_a_broken_model_before_the_swap(tmp_path, robot, bundles, monkeypatch):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    n = len(robot.versions)
    swaps = robot.runner.stats()["swaps"]
    # a model that raises on every step (onnxruntime rejects the state we feed it)
    from brain.ota import updater as mod

    def broken(model, steps, max_ms):
        raise mod.SmokeTestFailed("step 0 produced NaN/Inf outputs")

    monkeypatch.setattr(mod, "smoke_test", broken)
    with pytest.raises(UpdateRefused, match="refused before the swap"):
        asyncio.run(up.install(bundles["v2"]))
    time.sleep(0.05)
    assert robot.runner.stats()["swaps"] == swaps
    assert all(v == "1.0.0" for v in robot.versions[n:])  # never a neutral tick
    st = StateStore(tmp_path).load()
    assert st.failed[0].version == "2.0.0" and st.committed.version == "1.0.0"
    up.close()


def test_real_smoke_test_catches_nan_on_a_grey_image(tmp_path):
    from brain.ota.updater import SmokeTestFailed, smoke_test
    from brain.policy import load_model
    from brain.policy.testing import build_dummy_policy

    ok = load_model(build_dummy_policy(tmp_path / "a.onnx", height=H, width=W, conv=False))
    assert smoke_test(ok, 3, None)["median_step_ms"] >= 0
    with pytest.raises(SmokeTestFailed, match="takes"):
        smoke_test(ok, 3, 1e-6)
    bad = load_model(build_dummy_policy(tmp_path / "b.onnx", height=H, width=W, nan=True))
    with pytest.raises(SmokeTestFailed, match="NaN"):
        smoke_test(bad, 3, None)


def test_full_disk_while_staging_fails_cleanly(tmp_path, robot, bundles, monkeypatch):
    import brain.bundle.unpack as unpack

    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    before = {p.name: p.read_bytes() for p in up.slots.path("A").iterdir()}

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unpack, "_write_all", full)
    with pytest.raises(Exception, match="no space left"):
        asyncio.run(up.install(bundles["v2"]))
    st = StateStore(tmp_path).load()
    assert st.phase == "failed" and "no space left" in st.last_error
    assert st.committed.version == "1.0.0" and not st.failed
    assert {p.name: p.read_bytes() for p in up.slots.path("A").iterdir()} == before
    assert sorted(p.name for p in up.slots.dir.iterdir()) == ["A"]  # nothing half-written
    assert robot.runner.model.version == "1.0.0"
    monkeypatch.undo()
    assert asyncio.run(up.install(bundles["v2"]))["result"] == "committed 2.0.0"  # retryable
    up.close()


def test_restart_during_trial_counts_as_failure(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    st = StateStore(tmp_path).load()
    cand = st.committed.model_copy(update={"slot": "B", "version": "2.0.0", "release_counter": 2})
    up.slots.stage(bundles["v2"], "B")
    cand = cand.model_copy(update={"manifest_sha256": up.slots.manifest_sha256("B")})
    StateStore(tmp_path).save(st.with_(phase="trial", candidate=cand, trial_started_at=time.time()))
    up.close()
    up = boot(tmp_path, robot)
    st = up.state
    assert st.phase == "rolled_back" and st.committed.version == "1.0.0"
    assert st.failed[0].version == "2.0.0" and "restarted during the trial" in st.failed[0].reason
    assert robot.runner.model.version == "1.0.0"
    with pytest.raises(UpdateRefused, match="failed before"):
        asyncio.run(up.install(bundles["v2"]))
    up.close()


def test_corrupt_state_file_boots_on_last_known_good(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    asyncio.run(up.install(bundles["v2"]))
    up.close()
    (tmp_path / "state.json").write_bytes(b'{"phase": "tri')  # torn by a bad disk
    up = boot(tmp_path, robot)
    assert up.state.committed.version == "2.0.0" and up.state.release_counter == 2
    assert any("state file unreadable" in n for n in up.boot_notes)
    assert "not valid JSON" in up.status()["last_error"]
    assert list(tmp_path.glob("state.corrupt-*"))  # kept for inspection
    assert StateStore(tmp_path).load().committed.version == "2.0.0"  # rewritten, parses
    # both files gone bad: no model, but the replay protection survives from the slots
    up.close()
    (tmp_path / "state.json").write_text("[]")
    (tmp_path / "committed.json").write_text("{}")
    up = make_updater(tmp_path, robot)
    assert up.state.committed is None and up.state.release_counter == 2
    with pytest.raises(UpdateRefused, match="not above"):
        asyncio.run(up.install(bundles["v1"]))
    up.close()


def test_tampered_committed_slot_falls_back_to_previous(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    asyncio.run(up.install(bundles["v2"]))
    up.close()
    model = up.slots.path("B") / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    up = boot(tmp_path, robot)
    assert up.state.committed.version == "1.0.0"
    assert any("sha256 mismatch" in n for n in up.boot_notes)
    assert robot.runner.model.version == "1.0.0"
    up.close()


def test_operator_rollback_during_trial_and_after_commit(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    up.close()
    up = boot(tmp_path, robot, health_window_s=30.0)

    async def rollback_mid_trial():
        task = asyncio.ensure_future(up.install(bundles["v2"]))
        while up.state.phase != "trial":
            await asyncio.sleep(0.01)
        res = await up.rollback()
        return res, await task

    res, same = asyncio.run(rollback_mid_trial())
    assert res["result"].startswith("rolled back 2.0.0: rolled back by the operator")
    assert same == res and robot.runner.model.version == "1.0.0"
    up.close()

    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v3"]))
    assert robot.runner.model.version == "3.0.0"
    res = asyncio.run(up.rollback())
    assert res["result"] == "rolled back to 1.0.0"
    assert robot.runner.model.version == "1.0.0"
    st = StateStore(tmp_path).load()
    assert st.committed.version == "1.0.0" and st.release_counter == 3  # never decreases
    assert [f.version for f in st.failed] == ["2.0.0", "3.0.0"]
    with pytest.raises(UpdateRefused, match="nothing to roll back"):
        asyncio.run(up.rollback())
    with pytest.raises(UpdateRefused, match="not above the committed 3"):
        asyncio.run(up.install(bundles["v2b"]))  # the counter did not go back with the model
    up.close()


def test_offline_rollback_works_on_the_state_file(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    asyncio.run(up.install(bundles["v2"]))
    up.close()
    offline = Updater(
        tmp_path, ota_config(), hardware_id=HW, action_names=tuple(ACTIONS), require_signature=False
    )
    res = asyncio.run(offline.rollback())
    assert res["result"] == "rolled back to 1.0.0"
    st = StateStore(tmp_path).load()
    assert st.committed.version == "1.0.0" and st.release_counter == 2
    up = boot(tmp_path, robot)
    assert robot.runner.model.version == "1.0.0"
    up.close()


def test_one_updater_at_a_time(tmp_path, robot, bundles):
    up = make_updater(tmp_path, robot)
    with pytest.raises(UpdaterBusy, match="another updater"):
        make_updater(tmp_path, None)
    up.close()

    async def two_at_once():
        first = asyncio.ensure_future(up.install(bundles["v1"]))
        await asyncio.sleep(0)
        with pytest.raises(UpdaterBusy, match="already in progress"):
            await up.install(bundles["v2"])
        return await first

    up = make_updater(tmp_path, robot)
    assert asyncio.run(two_at_once())["result"] == "committed 1.0.0"
    up.close()


def test_offline_install_stages_and_the_daemon_tries_it_at_start(tmp_path, robot, bundles):
    up = boot(tmp_path, robot)
    asyncio.run(up.install(bundles["v1"]))
    up.close()
    offline = Updater(
        tmp_path, ota_config(), hardware_id=HW, action_names=tuple(ACTIONS), require_signature=False
    )
    res = asyncio.run(offline.install(bundles["v2"]))  # takes the lock for the operation only
    assert "staged" in res["result"] and res["phase"] == "staged"
    assert not offline.lock.held
    st = StateStore(tmp_path).load()
    assert (st.committed.version, st.committed.slot) == ("1.0.0", "A")  # untouched
    assert (st.candidate.version, st.candidate.slot) == ("2.0.0", "B")
    offline.slots.verify("A", st.committed.manifest_sha256)
    up = boot(tmp_path, robot)
    assert robot.runner.model.version == "1.0.0"  # boots on the committed one
    res = asyncio.run(up.resume())
    assert res["result"] == "committed 2.0.0" and robot.runner.model.version == "2.0.0"
    up.close()


def test_missing_archive_is_a_clear_error(tmp_path, robot):
    up = make_updater(tmp_path, robot)
    with pytest.raises(UpdateRefused, match="no such bundle archive"):
        asyncio.run(up.install(tmp_path / "nope.tar"))
    garbage = tmp_path / "g.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(Exception, match=r"not a bundle archive|corrupt"):
        asyncio.run(up.install(garbage))
    assert StateStore(tmp_path).load().phase == "failed"
    up.close()


def _local_bundle(tmp_path, base_dir, version, *, sign, base_version=None, bias=0.2):
    from brain.bundle.manifest import manifest_sha256
    from brain.bundle.pack import build_bundle
    from tests.ota_helpers import fast_safety, make_export

    export = make_export(tmp_path / f"export-{version}", bias=bias)
    return build_bundle(
        export,
        tmp_path / f"{version}.tar",
        version=version,
        release_counter=1,
        hardware_id=HW,
        safety=fast_safety(),
        provenance={
            "source": "local",
            "base_version": base_version or "1.0.0",
            "base_manifest_sha256": manifest_sha256(base_dir),
        },
        sign=sign,
    )


def test_local_bundle_is_trusted_only_as_a_device_signed_derivative(tmp_path, robot, bundles):
    from brain.config import parse_config
    from brain.ota.device_key import load_or_create_device_key, sign_local_manifest
    from brain.ota.wiring import local_verifier
    from tests.ota_helpers import seed_committed

    cfg = parse_config(
        {"paths": {"state_dir": str(tmp_path / "state")}, "ota": {"health_window_s": 0.2}}
    )
    seed_committed(cfg.ota_dir(), bundles["v1"], "A")
    base_dir = cfg.ota_dir() / "slots" / "A"
    key = load_or_create_device_key(cfg.state_dir())  # the robot's own key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = Ed25519PrivateKey.generate()
    up = Updater(
        cfg.ota_dir(),
        ota_config(),
        hardware_id=HW,
        action_names=tuple(ACTIONS),
        policy=robot.runner,
        verify_local=local_verifier(cfg),
        poll_s=0.01,
    ).open()
    robot.runner.swap(up.load_active()).wait(5)
    b = tmp_path / "local"
    refused = {
        "unsigned": _local_bundle(b, base_dir, "1.0.0-l1", sign=None),
        "stranger": _local_bundle(
            b, base_dir, "1.0.0-l2", sign=lambda m: sign_local_manifest(m, stranger)
        ),
        "other base": _local_bundle(
            b,
            base_dir,
            "1.0.0-l3",
            base_version="0.9.0",
            sign=lambda m: sign_local_manifest(m, key),
        ),
    }
    for what, archive in refused.items():
        with pytest.raises(Exception) as ei:
            asyncio.run(up.install(archive))
        assert up.state.phase == "failed", what
        assert up.state.committed.version == "1.0.0", what
        assert robot.runner.model.version == "1.0.0", what
        needle = {"unsigned": "must be signed", "stranger": "not this robot", "other base": "0.9.0"}
        assert needle[what] in str(ei.value), (what, ei.value)
    ok = _local_bundle(b, base_dir, "1.0.0-l4", sign=lambda m: sign_local_manifest(m, key))
    res = asyncio.run(up.install(ok))
    assert res["result"] == "committed 1.0.0-l4", res
    assert res["committed"]["source"] == "local" and res["release_counter"] == 1
    assert robot.runner.model.version == "1.0.0-l4"
    up.close()


def test_cloud_bundle_needs_a_signed_target(tmp_path, robot, bundles):
    up = Updater(
        tmp_path, ota_config(), hardware_id=HW, action_names=tuple(ACTIONS), policy=robot.runner
    ).open()
    with pytest.raises(UpdateRefused, match="not a signed target of the repository"):
        asyncio.run(up.install(bundles["v1"]))
    assert up.state.committed is None and robot.runner.model is None
    up.close()


def test_check_downloads_a_signed_target_and_completes_a_partial_download(tmp_path, robot, bundles):
    from brain.ota.trust import TrustedRepository, init_trust
    from cloud_jobs.publish.keys import KeyStore
    from cloud_jobs.publish.repository import Repository, publish_bundle

    repo_dir = tmp_path / "repo"
    repo = Repository.create(repo_dir, KeyStore.init(tmp_path / "keys"))
    publish_bundle(repo, bundles["v1"])
    root = tmp_path / "ota"
    init_trust(root / "metadata", (repo_dir / "metadata" / "1.root.json").read_bytes())

    def updater():
        return Updater(
            root,
            ota_config(repository_url=str(repo_dir)),
            hardware_id=HW,
            action_names=tuple(ACTIONS),
            policy=robot.runner,
            repository=lambda src: TrustedRepository(
                root / "metadata", src or str(repo_dir), root / "downloads"
            ),
            poll_s=0.01,
        ).open()

    up = updater()
    assert asyncio.run(up.check())["result"] == "committed 1.0.0"
    assert asyncio.run(up.check())["result"] == "up to date"
    # half of 2.0.0 was downloaded before the robot lost power: the rest is fetched
    publish_bundle(Repository(repo_dir, repo.keys), bundles["v2"])
    target = TrustedRepository(root / "metadata", str(repo_dir), root / "downloads")
    t = target.latest(HW)
    blob = bundles["v2"].read_bytes()
    (root / "downloads").mkdir(exist_ok=True)
    (root / "downloads" / f"{t.name}.part").write_bytes(blob[: len(blob) // 2])
    res = asyncio.run(up.check())
    assert res["result"] == "committed 2.0.0", res
    assert (root / "downloads" / t.name).read_bytes() == blob
    assert not (root / "downloads" / f"{t.name}.part").exists()
    # a tampered download is never installed: TUF refuses it, the robot stays on 2.0.0
    publish_bundle(Repository(repo_dir, repo.keys), bundles["v3"])
    target.refresh()
    t3 = target.latest(HW)
    stored = next((repo_dir / "targets").glob(f"*.{t3.name}"))
    data = bytearray(stored.read_bytes())
    data[-1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"(?i)hash|length|mismatch"):
        asyncio.run(up.check())
    assert up.state.committed.version == "2.0.0" and robot.runner.model.version == "2.0.0"
    # unsigned (tampered) metadata: the check fails, says why, and changes nothing
    ts = repo_dir / "metadata" / "timestamp.json"
    ts.write_text(ts.read_text().replace('"sig": "', '"sig": "00', 1))
    phase = up.state.phase
    from brain.ota.trust import TrustError

    with pytest.raises(TrustError):
        asyncio.run(up.check())
    assert up.state.phase == phase and "check" in up.state.last_error
    assert StateStore(root).load().committed.version == "2.0.0"
    up.close()
