"""The robot's TUF trust layer (brain/ota/trust.py) against real repositories and servers.

Every fault the OTA issue lists at the trust level: unsigned metadata, wrong key, below
threshold, duplicate signatures, flipped bits, mix-and-match, rollback/replay, expiry,
truncated / oversized / slow downloads, hardware id, root rotation.  Repositories are made with
cloud_jobs.publish (python-tuf Metadata API, real ed25519 keys); HTTP is a real loopback server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from brain.bundle.unpack import read_archive_manifest
from brain.ota import trust
from brain.ota.trust import (
    BadSignatureError,
    ExpiredMetadataError,
    IncompatibleTargetError,
    IncompleteDownloadError,
    MetadataError,
    MixAndMatchError,
    ReplayError,
    ResumableFetcher,
    RollbackError,
    SlowDownloadError,
    TargetMismatchError,
    TrustedRepository,
    TrustError,
    TrustNotInitialisedError,
    check_hardware,
    check_manifest_matches,
    check_release_counter,
    init_trust,
)
from cloud_jobs.publish.keys import KeyStore
from cloud_jobs.publish.repository import Expiry, Repository, publish_bundle
from tests.emulation import wall
from tests.tuf_helpers import make_bundle, make_repo, provision, serve, trickle

HW = "donkey-pi5"


@pytest.fixture
def published(tmp_path: Path):
    """A repository with two releases for HW and one for other hardware."""
    keys, repo = make_repo(tmp_path)
    for version, counter, hw in (("1.0.0", 1, HW), ("1.1.0", 2, HW), ("9.0.0", 9, "arm-pi5")):
        publish_bundle(
            repo, make_bundle(tmp_path, version=version, release_counter=counter, hardware_id=hw)
        )
    return keys, repo


def _client(tmp_path: Path, repo: Repository, source=None, name="robot", **kw) -> TrustedRepository:
    md = provision(tmp_path, repo.dir, name)
    return TrustedRepository(
        md, source if source is not None else repo.dir, tmp_path / name / "dl", **kw
    )


def _ser() -> JSONSerializer:
    return JSONSerializer(compact=False)


def _resign(path: Path, signers: list[CryptoSigner], edit=None) -> None:
    """Rewrite a metadata file: optional edit of .signed, signatures replaced by ``signers``."""
    md = Metadata.from_file(str(path))
    if edit is not None:
        edit(md.signed)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    path.write_bytes(md.to_bytes(_ser()))


def _role_signers(keys: KeyStore, role: str) -> list[CryptoSigner]:
    return keys.signers(keys.roles[role].keyids)


# ----------------------------------------------------------------------------- happy paths


def test_local_directory_latest_filters_hardware_and_downloads_verified(tmp_path, published):
    _, repo = published
    client = _client(tmp_path, repo)
    client.refresh()
    latest = client.latest(HW)
    assert latest is not None
    assert (latest.version, latest.release_counter, latest.hardware_id) == ("1.1.0", 2, HW)
    assert client.latest("arm-pi5").version == "9.0.0"
    assert client.latest("unknown-hw") is None
    path = client.download(latest, tmp_path / "dl")
    assert read_archive_manifest(path).version == "1.1.0"
    assert path.stat().st_size == latest.length


def test_http_download_and_cache(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url)
        target = client.latest(HW)
        path = client.download(target)
        n = len(srv.requests)
        assert client.download(target) == path  # cached: verified, not fetched again
        assert len(srv.requests) == n
        assert any(p.startswith("/targets/") for p, _ in srv.requests)


def test_not_provisioned_and_trust_anchor_not_silently_replaced(tmp_path, published):
    _, repo = published
    with pytest.raises(TrustNotInitialisedError):
        TrustedRepository(tmp_path / "empty", repo.dir, tmp_path / "dl").refresh()
    md = provision(tmp_path, repo.dir)
    _, other_repo = make_repo(tmp_path / "other")
    with pytest.raises(TrustError, match="different trusted root"):
        init_trust(md, (other_repo.dir / "metadata" / "1.root.json").read_bytes())
    with pytest.raises(MetadataError, match="not valid TUF metadata"):
        init_trust(tmp_path / "x", b"{not json")


# ----------------------------------------------------------------------------- signatures


def test_unsigned_metadata_is_rejected(tmp_path, published):
    _, repo = published
    _resign(repo.meta_dir / "timestamp.json", [])
    with pytest.raises(BadSignatureError, match="timestamp"):
        _client(tmp_path, repo).refresh()


def test_wrong_key_is_rejected(tmp_path, published):
    _, repo = published
    stranger = CryptoSigner.generate_ed25519()
    tv = repo.targets.signed.version
    _resign(repo.meta_dir / f"{tv}.targets.json", [stranger])
    with pytest.raises(BadSignatureError, match="targets"):
        _client(tmp_path, repo).refresh()


def test_tampered_metadata_body_breaks_the_signature(tmp_path, published):
    _, repo = published
    tv = repo.targets.signed.version
    path = repo.meta_dir / f"{tv}.targets.json"
    doc = json.loads(path.read_text())
    name = next(iter(doc["signed"]["targets"]))
    doc["signed"]["targets"][name]["custom"]["release_counter"] = 99  # keep the old signature
    path.write_text(json.dumps(doc))
    with pytest.raises(BadSignatureError):
        _client(tmp_path, repo).refresh()


def _threshold_two(tmp_path: Path):
    keys, repo = make_repo(tmp_path, thresholds={"targets": 2}, counts={"targets": 3})
    publish_bundle(repo, make_bundle(tmp_path))
    return keys, repo


def test_below_threshold_is_rejected(tmp_path):
    keys, repo = _threshold_two(tmp_path)
    path = repo.meta_dir / f"{repo.targets.signed.version}.targets.json"
    _resign(path, _role_signers(keys, "targets")[:1])
    with pytest.raises(BadSignatureError, match="targets"):
        _client(tmp_path, repo).refresh()


def test_threshold_met_by_two_of_three_is_accepted(tmp_path):
    keys, repo = _threshold_two(tmp_path)
    path = repo.meta_dir / f"{repo.targets.signed.version}.targets.json"
    _resign(path, _role_signers(keys, "targets")[1:])
    client = _client(tmp_path, repo)
    assert client.latest(HW).version == "1.0.0"


def test_duplicate_signatures_from_one_key_do_not_count_twice(tmp_path):
    keys, repo = _threshold_two(tmp_path)
    path = repo.meta_dir / f"{repo.targets.signed.version}.targets.json"
    _resign(path, _role_signers(keys, "targets")[:1])
    doc = json.loads(path.read_text())
    assert len(doc["signatures"]) == 1
    doc["signatures"] = doc["signatures"] * 2  # the same key's valid signature, twice
    path.write_text(json.dumps(doc))
    with pytest.raises(TrustError) as err:
        _client(tmp_path, repo).refresh()
    assert isinstance(err.value, BadSignatureError | MetadataError)
    assert "targets" in str(err.value) or "signature" in str(err.value).lower()


# ----------------------------------------------------------------------------- version attacks


def test_rollback_to_an_older_timestamp_is_rejected(tmp_path, published):
    _, repo = published
    old_timestamp = (repo.meta_dir / "timestamp.json").read_bytes()
    client = _client(tmp_path, repo)
    client.refresh()
    publish_bundle(repo, make_bundle(tmp_path, version="1.2.0", release_counter=3))
    client.refresh()
    assert client.latest(HW).version == "1.2.0"
    # The attacker (or a stale mirror) serves the older, validly signed state again.
    (repo.meta_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(RollbackError, match="timestamp"):
        client.refresh()


def test_mix_and_match_of_versions_is_rejected(tmp_path, published):
    _, repo = published
    tv = repo.targets.signed.version
    # The snapshot names targets v{tv}; serve the (validly signed) v{tv-1} under that name.
    shutil.copy(repo.meta_dir / f"{tv - 1}.targets.json", repo.meta_dir / f"{tv}.targets.json")
    with pytest.raises(MixAndMatchError, match="targets"):
        _client(tmp_path, repo).refresh()


def test_replay_of_an_older_signed_release(tmp_path, published):
    _, repo = published
    client = _client(tmp_path, repo)
    latest = client.latest(HW)
    check_release_counter(latest, committed_counter=1)  # newer: fine
    check_release_counter(latest, committed_counter=None)
    with pytest.raises(ReplayError, match="not above"):
        check_release_counter(latest, committed_counter=2)
    old = client.get("donkey-pi5-1.0.0.tar")
    with pytest.raises(ReplayError):
        check_release_counter(old, committed_counter=2)


def test_expired_metadata_is_rejected(tmp_path):
    keys, _ = make_repo(tmp_path / "a")
    past = datetime.now(UTC) - timedelta(days=3)
    repo = Repository.create(tmp_path / "old-repo", keys, now=past)
    with pytest.raises(ExpiredMetadataError, match="expired"):
        _client(tmp_path, repo).refresh()


def test_expired_targets_with_fresh_timestamp_is_rejected(tmp_path):
    keys, _ = make_repo(tmp_path / "a")
    past = datetime.now(UTC) - timedelta(days=3)
    repo = Repository.create(tmp_path / "r", keys, expiry=Expiry(targets=timedelta(days=1)))
    repo.now = past
    publish_bundle(repo, make_bundle(tmp_path))  # targets signed 3 days ago for 1 day
    repo.now = datetime.now(UTC)
    # Re-sign the timestamp only (a margin of -10 days: targets "is not near expiry").
    assert repo.refresh(margin={"targets": timedelta(days=-10)}) == ["timestamp"]
    with pytest.raises(ExpiredMetadataError):
        _client(tmp_path, repo).refresh()


# ----------------------------------------------------------------------------- hardware id


def test_incompatible_hardware_id(tmp_path, published):
    _, repo = published
    client = _client(tmp_path, repo)
    arm = client.latest("arm-pi5")
    with pytest.raises(IncompatibleTargetError, match="arm-pi5"):
        check_hardware(arm, HW)
    path = client.download(arm)
    manifest = read_archive_manifest(path)
    car = client.latest(HW)
    with pytest.raises(IncompatibleTargetError):
        check_manifest_matches(car, manifest)  # an arm bundle behind a car target


def test_target_without_custom_fields_is_skipped(tmp_path, published):
    _, repo = published
    repo.add_target(make_bundle(tmp_path, version="7.0.0"), name="stray.tar")  # no custom
    client = _client(tmp_path, repo)
    assert client.latest(HW).version == "1.1.0"
    with pytest.raises(IncompatibleTargetError, match="custom"):
        client.get("stray.tar")


# ----------------------------------------------------------------------------- downloads


def test_flipped_bit_in_the_bundle_is_rejected_and_not_kept(tmp_path, published):
    _, repo = published
    client = _client(tmp_path, repo)
    target = client.latest(HW)
    stored = repo.targets_dir / f"{target.hashes['sha256']}.{target.name}"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(TargetMismatchError, match="hash"):
        client.download(target)
    assert list((tmp_path / "robot" / "dl").iterdir()) == []


def test_flipped_bit_in_the_bundle_manifest_is_rejected(tmp_path, published):
    import tarfile

    _, repo = published
    client = _client(tmp_path, repo)
    target = client.latest(HW)
    stored = repo.targets_dir / f"{target.hashes['sha256']}.{target.name}"
    with tarfile.open(stored) as tar:
        m = tar.getmember("edge_manifest.json")
    data = bytearray(stored.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x01  # still a tar, the manifest says something else
    stored.write_bytes(bytes(data))
    with pytest.raises(TargetMismatchError):
        client.download(target)


def test_truncated_download_resumes_with_a_range_request(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url)
        target = client.latest(HW)
        cut = target.length // 3
        srv.hook = lambda path, body: body[:cut] if path.startswith("/targets/") else body
        with pytest.raises(IncompleteDownloadError, match="resumes"):
            client.download(target)
        part = tmp_path / "robot" / "dl" / (target.name + trust.PART_SUFFIX)
        assert part.stat().st_size == cut
        srv.hook = None
        srv.requests.clear()
        path = client.download(target)
        ranges = [r for p, r in srv.requests if p.startswith("/targets/")]
        assert ranges == [f"bytes={cut}-"]
        assert not part.exists()
        assert read_archive_manifest(path).version == target.version


def test_resume_when_the_server_ignores_ranges(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        srv.ranges = False
        client = _client(tmp_path, repo, source=srv.url)
        target = client.latest(HW)
        part = tmp_path / "robot" / "dl" / (target.name + trust.PART_SUFFIX)
        part.parent.mkdir(parents=True)
        part.write_bytes(b"\0" * 100)  # stale garbage: must be replaced, not prepended
        assert read_archive_manifest(client.download(target)).version == target.version


def test_poisoned_partial_download_is_discarded(tmp_path, published):
    _, repo = published
    client = _client(tmp_path, repo)
    target = client.latest(HW)
    part = tmp_path / "robot" / "dl" / (target.name + trust.PART_SUFFIX)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"X" * 512)  # a wrong prefix: resuming would give a wrong file
    with pytest.raises(TargetMismatchError):
        client.download(target)
    assert not part.exists()
    assert client.download(target).exists()  # the next attempt starts over and succeeds


def test_oversized_download_is_cut_off(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url)
        target = client.latest(HW)
        srv.hook = lambda p, body: body + b"\0" * 100_000 if p.startswith("/targets/") else body
        with pytest.raises(TargetMismatchError, match="oversize"):
            client.download(target)
        assert list((tmp_path / "robot" / "dl").iterdir()) == []


def test_oversized_metadata_is_rejected(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url)
        srv.hook = lambda p, body: body + b" " * 20_000 if p.endswith("timestamp.json") else body
        with pytest.raises(MetadataError):
            client.refresh()


def _slow_fetcher() -> ResumableFetcher:
    return ResumableFetcher(socket_timeout=2.0, min_bytes_per_s=2000, grace_s=0.3, chunk_size=1024)


@pytest.mark.slow
@pytest.mark.timing
def test_slow_bundle_download_is_aborted(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url, fetcher=_slow_fetcher())
        target = client.latest(HW)
        # 16 bytes every 20 ms = 800 B/s: every gap is far below any socket timeout.
        srv.hook = lambda p, body: trickle(body, 0.02, 16) if p.startswith("/targets/") else body
        t0 = time.monotonic()
        with pytest.raises(SlowDownloadError, match="B/s"):
            client.download(target)
        assert time.monotonic() - t0 < wall(3.0)


def test_slow_metadata_is_aborted(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        client = _client(tmp_path, repo, source=srv.url, fetcher=_slow_fetcher())
        srv.hook = lambda p, body: trickle(body, 0.05, 8) if p.endswith("timestamp.json") else body
        with pytest.raises(SlowDownloadError):
            client.refresh()


def test_unreachable_repository(tmp_path, published):
    _, repo = published
    with serve(repo.dir) as srv:
        url = srv.url
    client = _client(tmp_path, repo, source=url)
    with pytest.raises(trust.DownloadFailedError):
        client.refresh()


# ----------------------------------------------------------------------------- root rotation


def test_root_rotation_old_and_new_keys_accepted_revoked_key_rejected(tmp_path, published):
    keys, repo = published
    client = _client(tmp_path, repo)
    client.refresh()
    old_root_keyid = keys.roles["root"].keyids[0]
    old_signer = keys.signer(old_root_keyid)
    new_root = repo.rotate(role="root", add=1, revoke=[old_root_keyid], threshold=1)
    assert new_root.signed.version == 2
    assert set(new_root.signatures) == {old_root_keyid, *keys.roles["root"].keyids}
    # The robot walks 1 -> 2 (v2 is signed by the old threshold and the new one).
    client.refresh()
    assert client.latest(HW).version == "1.1.0"
    assert json.loads((client.metadata_dir / "root.json").read_text())["signed"]["version"] == 2
    assert (keys.dir / "retired" / f"{old_root_keyid}.key").exists()

    # The revoked key (say it leaked) signs a root v3 that adds the attacker's key: refused.
    evil = CryptoSigner.generate_ed25519()

    def add_evil(signed) -> None:
        signed.version = 3
        signed.add_key(evil.public_key, "root")
        signed.add_key(evil.public_key, "timestamp")

    v3 = repo.meta_dir / "3.root.json"
    shutil.copy(repo.meta_dir / "2.root.json", v3)
    _resign(v3, [old_signer, evil], edit=add_evil)
    with pytest.raises(BadSignatureError, match="root"):
        client.refresh()


def test_rotated_root_signed_only_by_new_keys_is_rejected(tmp_path, published):
    keys, repo = published
    client = _client(tmp_path, repo)
    client.refresh()
    old = keys.roles["root"].keyids[0]
    repo.rotate(role="root", add=1, revoke=[old], threshold=1)
    v2 = repo.meta_dir / "2.root.json"
    md = Metadata.from_file(str(v2))
    del md.signatures[old]  # drop the old root's endorsement
    v2.write_bytes(md.to_bytes(_ser()))
    with pytest.raises(BadSignatureError, match="root"):
        client.refresh()


def test_timestamp_key_rotation_revokes_the_old_key(tmp_path, published):
    keys, repo = published
    client = _client(tmp_path, repo)
    client.refresh()
    old_ts = keys.roles["timestamp"].keyids[0]
    old_signer = keys.signer(old_ts)
    repo.rotate(role="timestamp", add=1, revoke=[old_ts])
    client.refresh()  # new root + timestamp signed with the new key
    # A timestamp signed with the revoked key is no longer good enough.
    _resign(
        repo.meta_dir / "timestamp.json",
        [old_signer],
        edit=lambda s: setattr(s, "version", s.version + 1),
    )
    with pytest.raises(BadSignatureError, match="timestamp"):
        client.refresh()


# ----------------------------------------------------------------------------- side-loading


def test_side_load_directory_cannot_escape(tmp_path, published):
    _, repo = published
    fetcher = ResumableFetcher(local_root=repo.dir)
    with pytest.raises(Exception, match="outside"):
        list(fetcher.fetch_from((repo.dir.parent / "keys" / "keys.json").as_uri(), 0)[0])


def test_side_load_copy_of_the_repository(tmp_path, published):
    """A USB stick holding a copy of the repository works exactly like the server."""
    _, repo = published
    stick = tmp_path / "usb"
    shutil.copytree(repo.dir, stick)
    client = _client(tmp_path, repo, source=stick)
    assert client.latest(HW).version == "1.1.0"


# ----------------------------------------------------------------------------- conformance CLI


def test_conformance_cli_protocol(tmp_path, published):
    from brain.ota.conformance import main

    _, repo = published
    md, targets = tmp_path / "cmeta", tmp_path / "ctargets"
    md.mkdir()
    targets.mkdir()
    with serve(repo.dir) as srv:
        murl, turl = f"{srv.url}/metadata", f"{srv.url}/targets"
        root = repo.meta_dir / "1.root.json"
        assert main(["--metadata-dir", str(md), "init", str(root)]) == 0
        assert not srv.requests  # init makes no requests
        assert main(["--metadata-dir", str(md), "--metadata-url", murl, "refresh"]) == 0
        assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= {
            p.name for p in md.iterdir()
        }
        dl = [
            "--metadata-dir", str(md), "--metadata-url", murl,
            "--target-name", "donkey-pi5-1.0.0.tar", "--target-base-url", turl,
            "--target-dir", str(targets), "download",
        ]  # fmt: skip
        assert main(dl) == 0
        assert [p.name for p in targets.iterdir()] == ["donkey-pi5-1.0.0.tar"]
        n = len(srv.requests)
        assert main(dl) == 0  # cached
        assert not [p for p, _ in srv.requests[n:] if p.startswith("/targets/")]
        dl[dl.index("donkey-pi5-1.0.0.tar")] = "no-such.tar"
        assert main(dl) == 1
        srv.hook = lambda p, body: body[:10] if p.startswith("/targets/") else body
        shutil.rmtree(targets)
        targets.mkdir()
        dl[dl.index("no-such.tar")] = "donkey-pi5-1.1.0.tar"
        assert main(dl) == 1
        assert list(targets.iterdir()) == []  # a failed download leaves nothing
        _resign(repo.meta_dir / "timestamp.json", [])
        assert main(["--metadata-dir", str(md), "--metadata-url", murl, "refresh"]) == 1


def test_conformance_cli_downloads_every_target_name_in_order(tmp_path, published):
    """--target-name repeats (the client protocol allows it): all of them, in order, one refresh."""
    from brain.ota.conformance import main

    _, repo = published
    md, targets = tmp_path / "cmeta", tmp_path / "ctargets"
    md.mkdir()
    targets.mkdir()
    names = ["donkey-pi5-1.1.0.tar", "arm-pi5-9.0.0.tar", "donkey-pi5-1.0.0.tar"]
    with serve(repo.dir) as srv:
        murl, turl = f"{srv.url}/metadata", f"{srv.url}/targets"
        assert main(["--metadata-dir", str(md), "init", str(repo.meta_dir / "1.root.json")]) == 0

        def dl(*target_names: str) -> list[str]:
            return [
                "--metadata-dir", str(md), "--metadata-url", murl, "--target-base-url", turl,
                "--target-dir", str(targets),
                *[a for n in target_names for a in ("--target-name", n)], "download",
            ]  # fmt: skip

        assert main(dl(*names)) == 0

        def fetched(since: int = 0) -> list[str]:  # names as served: <sha256>.<name>
            paths = [p for p, _ in srv.requests[since:] if p.startswith("/targets/")]
            return [p.rsplit("/", 1)[-1].split(".", 1)[-1] for p in paths]

        assert fetched() == names
        assert sum(p.endswith("timestamp.json") for p, _ in srv.requests) == 1  # one updater
        assert sorted(p.name for p in targets.iterdir()) == sorted(names)
        # a missing target in the middle: exit 1, and what follows it is not fetched
        shutil.rmtree(targets)
        targets.mkdir()
        n = len(srv.requests)
        assert main(dl(names[0], "no-such.tar", names[1])) == 1
        assert fetched(n) == [names[0]]
        assert [p.name for p in targets.iterdir()] == [names[0]]


def test_conformance_cli_runs_as_a_module(tmp_path, published):
    _, repo = published
    md = tmp_path / "m"
    md.mkdir()
    root = repo.meta_dir / "1.root.json"
    cmd = [sys.executable, "-m", "brain.ota.conformance", "--metadata-dir", str(md)]
    assert subprocess.run([*cmd, "init", str(root)], check=False).returncode == 0
    r = subprocess.run(
        [*cmd, "--metadata-url", (repo.dir / "nothing").as_uri(), "refresh"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "error" in r.stderr


def test_full_disk_while_downloading_frees_the_space(tmp_path):
    """A real EFBIG (RLIMIT_FSIZE) in a child: a clear error, and the partial file is gone."""
    _, repo = make_repo(tmp_path)
    publish_bundle(repo, make_bundle(tmp_path, pad_bytes=1_000_000))
    md = provision(tmp_path, repo.dir)
    dl = tmp_path / "dl"
    code = f"""
import resource, signal, sys
from brain.ota.trust import TrustedRepository, TrustError
repo = TrustedRepository({str(md)!r}, {str(repo.dir)!r}, {str(dl)!r})
target = repo.latest("donkey-pi5")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
try:
    repo.download(target)
except TrustError as e:
    print("ERR", e)
    sys.exit(3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 3, r.stderr
    assert "no space" in r.stdout
    assert list(dl.iterdir()) == []
