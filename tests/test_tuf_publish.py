"""Publishing (cloud_jobs keys / publish): keys, the static TUF repository, expiry, rotation."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import Metadata

from brain.ota.trust import TrustedRepository
from cloud_jobs.cli import main as cloud_jobs
from cloud_jobs.publish.keys import KeysError, KeyStore
from cloud_jobs.publish.repository import PublishError, Repository, publish_bundle
from tests.tuf_helpers import make_bundle, make_export_dir, make_repo, provision, serve

HW = "donkey-pi5"


def test_keys_init_files_modes_and_thresholds(tmp_path):
    ks = KeyStore.init(tmp_path / "k", thresholds={"root": 2}, counts={"root": 3})
    assert ks.roles["root"].threshold == 2 and len(ks.roles["root"].keyids) == 3
    for role in ("targets", "snapshot", "timestamp"):
        assert ks.roles[role].threshold == 1 and len(ks.roles[role].keyids) == 1
    keyfiles = list((tmp_path / "k").glob("*.key"))
    assert len(keyfiles) == 6
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keyfiles)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    with pytest.raises(KeysError, match="already holds keys"):
        KeyStore.init(tmp_path / "k")
    with pytest.raises(KeysError, match="impossible"):
        KeyStore.init(tmp_path / "k2", thresholds={"root": 3}, counts={"root": 2})
    os.chmod(keyfiles[0], 0o644)
    with pytest.raises(KeysError, match="readable by others"):
        ks.signer(keyfiles[0].stem)


def test_repository_layout_is_static_and_consistent(tmp_path):
    _, repo = make_repo(tmp_path)
    publish_bundle(repo, make_bundle(tmp_path, version="1.0.0", release_counter=1))
    publish_bundle(repo, make_bundle(tmp_path, version="1.1.0", release_counter=2))
    meta = {p.name for p in repo.meta_dir.iterdir()}
    # Every version stays (a client mid-refresh still finds what its timestamp named).
    assert {"1.root.json", "root.json", "timestamp.json"} <= meta
    assert {"1.targets.json", "2.targets.json", "3.targets.json", "3.snapshot.json"} <= meta
    assert not [n for n in meta if n.endswith(".tmp") or n.startswith(".")]
    targets = sorted(p.name for p in repo.targets_dir.iterdir())
    assert len(targets) == 2 and all(len(n.split(".", 1)[0]) == 64 for n in targets)
    t = Metadata.from_file(str(repo.meta_dir / "3.targets.json")).signed
    assert t.targets["donkey-pi5-1.1.0.tar"].custom == {
        "version": "1.1.0",
        "release_counter": 2,
        "hardware_id": HW,
    }
    # A fresh Repository object reads back the same state.
    again = Repository(repo.dir, repo.keys)
    assert again.targets.signed.version == 3 and again.timestamp.signed.version == 3


def test_publish_refuses_counters_that_do_not_increase_and_mismatches(tmp_path):
    _, repo = make_repo(tmp_path)
    publish_bundle(repo, make_bundle(tmp_path, version="1.1.0", release_counter=5))
    with pytest.raises(PublishError, match="not above 5"):
        publish_bundle(repo, make_bundle(tmp_path, version="1.0.9", release_counter=4))
    with pytest.raises(PublishError, match="not above 5"):
        publish_bundle(repo, make_bundle(tmp_path, version="1.2.0", release_counter=5))
    # Another hardware id has its own sequence.
    publish_bundle(repo, make_bundle(tmp_path, version="0.1", release_counter=1, hardware_id="arm"))
    b = make_bundle(tmp_path, version="1.3.0", release_counter=6)
    with pytest.raises(PublishError, match="release counter 7 given"):
        publish_bundle(repo, b, release_counter=7)
    with pytest.raises(PublishError, match="hardware id"):
        publish_bundle(repo, b, hardware_id="arm")
    not_a_bundle = tmp_path / "x.tar"
    not_a_bundle.write_bytes(b"nope" * 300)
    with pytest.raises(PublishError):
        publish_bundle(repo, not_a_bundle)


def test_publishing_needs_the_targets_key_but_not_the_root_key(tmp_path):
    keys, repo = make_repo(tmp_path)
    # Move the root key offline: day-to-day publishing still works.
    offline = tmp_path / "offline"
    offline.mkdir()
    for k in keys.roles["root"].keyids:
        (keys.dir / f"{k}.key").rename(offline / f"{k}.key")
    publish_bundle(repo, make_bundle(tmp_path))
    with pytest.raises(PublishError, match="current root keys"):
        repo.rotate(role="root")
    for k in keys.roles["targets"].keyids:
        (keys.dir / f"{k}.key").unlink()
    with pytest.raises(KeysError, match="signing targets"):
        publish_bundle(repo, make_bundle(tmp_path, version="2", release_counter=2))


def test_refresh_resigns_only_what_is_near_expiry(tmp_path):
    keys, _ = make_repo(tmp_path / "k")
    t0 = datetime.now(UTC).replace(microsecond=0)
    repo = Repository.create(tmp_path / "repo", keys, now=t0)
    assert repo.refresh() == []
    repo.now = t0 + timedelta(hours=13)  # timestamp (1 day) is past half its life
    assert repo.refresh() == ["timestamp"]
    repo.now = t0 + timedelta(days=4)  # snapshot (7 days) too
    assert repo.refresh() == ["snapshot", "timestamp"]
    repo.now = t0 + timedelta(days=50)  # targets (90 days)
    assert repo.refresh() == ["targets", "snapshot", "timestamp"]
    repo.now = t0 + timedelta(days=200)  # root (365 days): a new root version
    done = repo.refresh()
    assert done[0] == "root" and repo.root.signed.version == 2
    assert repo.refresh(force=True) == ["root", "targets", "snapshot", "timestamp"]


def test_a_robot_follows_refreshes_over_http(tmp_path):
    _, repo = make_repo(tmp_path)
    publish_bundle(repo, make_bundle(tmp_path))
    md = provision(tmp_path, repo.dir)
    with serve(repo.dir) as srv:
        client = TrustedRepository(md, srv.url, tmp_path / "dl")
        client.refresh()
        for _ in range(3):
            repo.refresh(force=True)
            client.refresh()
        assert client.latest(HW).version == "1.0.0"
    ts = json.loads((md / "timestamp.json").read_text())["signed"]["version"]
    assert ts == repo.timestamp.signed.version


def test_cli_end_to_end(tmp_path, capsys):
    keys, repo_dir = tmp_path / "keys", tmp_path / "repo"
    assert (
        cloud_jobs(["keys", "init", "--dir", str(keys), "--threshold", "2", "--root-keys", "3"])
        == 0
    )
    assert "root: threshold 2 of 3" in capsys.readouterr().out
    assert cloud_jobs(["publish", "init", "--repo", str(repo_dir), "--keys", str(keys)]) == 0
    assert "1.root.json" in capsys.readouterr().out
    export = make_export_dir(tmp_path / "export")
    bundle = tmp_path / "b.tar"
    assert cloud_jobs([
        "bundle", str(export), "--out", str(bundle), "--version", "3.0.0",
        "--release-counter", "3", "--hardware-id", HW,
    ]) == 0  # fmt: skip
    # the release gate's input (tests/test_release.py covers the gate itself)
    passing = {
        "kind": "closed_loop_eval",
        "checkpoint_sha256": "ab" * 32,
        "conditions": {"laps": 1},
        "summary": {
            "policy": {"tracks": 1, "completed": 1, "off_track_events": 0, "mean_abs_cte_m": 0.02},
            "expert": {"tracks": 1, "completed": 1, "off_track_events": 0, "mean_abs_cte_m": 0.02},
        },
    }
    (tmp_path / "eval.json").write_text(json.dumps(passing))
    pub = ["publish", "--repo", str(repo_dir), "--keys", str(keys), str(bundle)]
    pub += ["--evaluation", str(tmp_path / "eval.json")]
    assert cloud_jobs([*pub, "--release-counter", "3", "--hardware-id", HW]) == 0
    assert "published donkey-pi5-3.0.0.tar" in capsys.readouterr().out
    assert cloud_jobs([*pub, "--release-counter", "3"]) == 1  # same counter again
    assert "not above 3" in capsys.readouterr().err
    assert cloud_jobs(["publish", "list", "--repo", str(repo_dir)]) == 0
    assert "'release_counter': 3" in capsys.readouterr().out
    assert cloud_jobs(["publish", "refresh", "--repo", str(repo_dir), "--keys", str(keys)]) == 0
    assert "nothing" in capsys.readouterr().out
    # Rotate: revoke one root key, add one, keep threshold 2.
    old = KeyStore(keys).roles["root"].keyids[0]
    rot = ["keys", "rotate-root", "--keys", str(keys), "--repo", str(repo_dir)]
    assert cloud_jobs([*rot, "--revoke", old, "--add", "1"]) == 0
    assert "published root v2" in capsys.readouterr().out
    root2 = Metadata.from_file(str(repo_dir / "metadata" / "2.root.json")).signed
    assert old not in root2.roles["root"].keyids and root2.roles["root"].threshold == 2
    assert (keys / "retired" / f"{old}.key").exists()
    # The robot provisioned with root v1 ends up on root v2 and sees the release.
    md = provision(tmp_path, repo_dir)
    client = TrustedRepository(md, repo_dir, tmp_path / "dl")
    assert client.latest(HW).release_counter == 3
    assert cloud_jobs([*rot, "--revoke", "0" * 64]) == 1
    assert "not a root key" in capsys.readouterr().err
    assert (
        cloud_jobs(["publish", "--repo", str(tmp_path / "none"), "--keys", str(keys), str(bundle)])
        == 1
    )
    assert "no repository" in capsys.readouterr().err
