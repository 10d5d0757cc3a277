"""Storage budget: the free-space floor, quota eviction of exported episodes only, deletion."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from rlds import storage
from rlds.errors import EpisodeError
from rlds.reader import list_episodes
from rlds.storage import StorageBudget, delete_episode, is_exported, mark_exported
from rlds.writer import EpisodeWriter
from tests.rlds_helpers import make_step, write_episode

DU = namedtuple("DU", "total used free")


@pytest.fixture
def free_space(monkeypatch):
    box = {"free": 10**12}
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: DU(2 * 10**12, 0, box["free"]))
    return box


def _episodes(root, k, n=5):
    return [write_episode(root, n, seed=s)[1].path for s in range(k)]


def test_can_start_refuses_below_the_floor(tmp_path, free_space):
    b = StorageBudget(tmp_path, quota_bytes=None, min_free_bytes=2 * 1024**3)
    ok, reason = b.can_start()
    assert ok and reason.startswith("ok")
    free_space["free"] = 1024**3
    ok, reason = b.can_start()
    assert not ok
    assert "1.0 GiB" in reason and "floor of 2.0 GiB" in reason and str(tmp_path) in reason


def test_can_start_refuses_over_quota(tmp_path, free_space):
    _episodes(tmp_path, 2)
    used = storage.dir_size(tmp_path)
    ok, reason = StorageBudget(tmp_path, quota_bytes=used, min_free_bytes=0).can_start()
    assert not ok and "quota" in reason and "export some first" in reason
    assert StorageBudget(tmp_path, quota_bytes=used + 1, min_free_bytes=0).can_start()[0]


def test_evict_removes_only_exported_oldest_first(tmp_path, free_space):
    paths = _episodes(tmp_path, 5)
    interrupted = EpisodeWriter(tmp_path, {})
    interrupted.append(make_step(1, 0))
    interrupted.abort("test")
    mark_exported(paths[3], "rlds", "/out/a")
    mark_exported(paths[1], "lerobot", "/out/b")
    mark_exported(paths[1], "rlds", "/out/c")
    assert is_exported(paths[1]) and not is_exported(paths[0])
    exports = json.loads((paths[1] / "exports.json").read_text())["exports"]
    assert [e["format"] for e in exports] == ["lerobot", "rlds"]

    per_ep = storage.dir_size(paths[0])
    total = storage.dir_size(tmp_path)
    b = StorageBudget(tmp_path, quota_bytes=total - per_ep // 2, min_free_bytes=0)
    u = b.usage()
    assert (u.episodes, u.exported, u.interrupted) == (5, 2, 1)
    assert b.evict() == [paths[1].name]  # the oldest exported one was enough
    assert not paths[1].exists() and paths[3].exists()

    b = StorageBudget(tmp_path, quota_bytes=0, min_free_bytes=0)  # impossible quota
    assert b.evict() == [paths[3].name]  # every exported one goes, nothing else
    left = {e.path for e in list_episodes(tmp_path)}
    assert left == {paths[0], paths[2], paths[4]}
    assert interrupted.path.exists()
    assert b.evict() == []
    assert not b.can_start()[0]


def test_evict_for_free_space_floor(tmp_path, free_space):
    paths = _episodes(tmp_path, 3)
    for p in paths:
        mark_exported(p, "rlds", "/x")
    free_space["free"] = 100
    b = StorageBudget(tmp_path, quota_bytes=None, min_free_bytes=1000)
    # free space does not change in this fake, so every exported episode is evicted
    assert b.evict() == [p.name for p in paths]
    free_space["free"] = 5000
    assert b.evict(needed_bytes=100) == []


def test_mark_exported_needs_a_committed_episode(tmp_path):
    w = EpisodeWriter(tmp_path, {})
    w.append(make_step(1, 0))
    with pytest.raises(EpisodeError, match="committed"):
        mark_exported(w.path, "rlds", "/x")
    w.close()
    mark_exported(w.path, "rlds", "/x")


def test_delete_episode(tmp_path):
    (p,) = _episodes(tmp_path, 1)
    delete_episode(p)
    assert not p.exists() and list(tmp_path.iterdir()) == [tmp_path / ".trash"]
    assert list((tmp_path / ".trash").iterdir()) == []
    other = tmp_path / "not-an-episode"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(EpisodeError, match="not an episode"):
        delete_episode(other)
    w = EpisodeWriter(tmp_path, {})
    w.append(make_step(1, 0))
    with pytest.raises(EpisodeError, match="being recorded"):
        delete_episode(w.path)
    w.close()
    delete_episode(w.path)


def test_listing_survives_a_concurrent_delete(tmp_path, monkeypatch):
    """A delete that lands while the listing looks into the episode: the listing goes on."""
    paths = _episodes(tmp_path, 3)
    victim = paths[1]
    real_exists = Path.exists
    fired = []

    def exists(self, *args, **kwargs):
        if self.parent == victim and not fired:  # after is_dir(), before iterdir()
            fired.append(self)
            storage._remove_dir(tmp_path, victim)  # what delete_episode does
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    listed = list_episodes(tmp_path)
    assert fired and not victim.exists()
    assert [e.path for e in listed] == [paths[0], paths[2]]


def test_usage_counts_bytes(tmp_path, free_space):
    _episodes(tmp_path, 2)
    u = StorageBudget(tmp_path, quota_bytes=10**9, min_free_bytes=0).usage()
    assert u.used_bytes == sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert u.free_bytes == free_space["free"] and shutil is storage.shutil
