"""The brain's episode housekeeping as the network sees it (brain/episodes.py via BrainHandle)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from brain.config import parse_config
from brain.episodes import EpisodeStore
from brain.interface import CommandError, NotFound
from tests.rlds_helpers import write_episode


def _config(tmp_path: Path):
    return parse_config({"paths": {"state_dir": str(tmp_path / "state")}})


def _store(tmp_path: Path, recording: str | None = None) -> EpisodeStore:
    cfg = _config(tmp_path)
    cfg.episodes_dir().mkdir(parents=True)
    return EpisodeStore(cfg, recording_id=lambda: recording)


def test_list_reports_committed_and_interrupted(tmp_path):
    store = _store(tmp_path)
    w1, _ = write_episode(store.root, 12, seed=1)
    w2 = write_episode(store.root, 5, seed=2)[0]
    rows = store.list()
    ids = {r["episode_id"]: r for r in rows}
    assert ids[w1.episode_id]["num_steps"] == 12
    assert ids[w2.episode_id]["status"] in ("complete", "truncated", "committed")
    json.dumps(rows)  # JSON-ready


def test_delete_removes_only_the_named_episode(tmp_path):
    store = _store(tmp_path)
    w1, _ = write_episode(store.root, 6, seed=1)
    w2, _ = write_episode(store.root, 6, seed=2)
    assert store.delete(w1.episode_id) == {"deleted": w1.episode_id}
    left = [r["episode_id"] for r in store.list()]
    assert left == [w2.episode_id]


@pytest.mark.parametrize("bad", ["", "../state", "/etc", "nope", "a/b", 5])
def test_delete_refuses_unknown_or_path_like_ids(tmp_path, bad):
    store = _store(tmp_path)
    write_episode(store.root, 6, seed=1)
    with pytest.raises(NotFound):
        store.delete(bad)
    assert len(store.list()) == 1


def test_delete_refuses_the_episode_being_recorded(tmp_path):
    cfg = _config(tmp_path)
    cfg.episodes_dir().mkdir(parents=True)
    w, _ = write_episode(cfg.episodes_dir(), 6, seed=1)
    store = EpisodeStore(cfg, recording_id=lambda: w.episode_id)
    with pytest.raises(CommandError, match="being recorded"):
        store.delete(w.episode_id)
    assert len(store.list()) == 1


def test_export_validates_options_and_writes_a_dataset(tmp_path):
    store = _store(tmp_path)
    for s in range(3):
        write_episode(store.root, 8, seed=s)
    with pytest.raises(CommandError, match="format"):
        asyncio.run(store.export({"format": "zip"}))
    with pytest.raises(CommandError, match="seed"):
        asyncio.run(store.export({"seed": "x"}))
    res = asyncio.run(store.export({"format": "rlds"}))
    assert res["episodes"] == 3 and sum(res["splits"].values()) == 3
    assert Path(res["out_dir"]).is_dir()
    again = asyncio.run(store.export({"format": "rlds"}))
    assert again["up_to_date"] is True
