"""Recovery of interrupted episodes: truncation, discarding, commit-crash windows, idempotence."""

from __future__ import annotations

import json
import os

import numpy as np

from rlds import tfrecord
from rlds.reader import list_episodes, list_interrupted, open_episode
from rlds.recovery import recover
from rlds.validate import validate_episode
from rlds.writer import EpisodeWriter
from tests.rlds_helpers import make_step, write_episode


def _interrupted(root, n, seed=9, tail=b""):
    """An episode with n steps on disk (n+1 appended, the last held) and ``tail`` appended."""
    w = EpisodeWriter(root, {"seed": seed, "depth_scale": 0.001})
    frames: dict = {}
    for i in range(n + 1):
        w.append(make_step(seed, i, frames))
    path = w.path
    os.close(w._fd)  # simulate the process dying: no close, no abort
    w._fd = -1
    with open(path / "steps.tfrecord", "ab") as f:
        f.write(tail)
    return path


def test_recover_truncates_and_commits(tmp_path):
    path = _interrupted(tmp_path, 12, tail=b"\x07" * 50)
    size_before = (path / "steps.tfrecord").stat().st_size
    committed_before = write_episode(tmp_path, 3, seed=1)[1].path
    meta_before = (committed_before / "episode.json").read_bytes()

    (rep,) = recover(tmp_path, min_steps=10)
    assert rep.action == "recovered" and rep.num_steps == 12 and rep.bytes_dropped == 50
    assert rep.bytes_kept == size_before - 50 and "12 steps" in str(rep)
    ep = open_episode(path)
    assert (ep.status, ep.truncated, ep.num_steps) == ("recovered", True, 12)
    assert ep.metadata["recovery"]["bytes_dropped"] == 50
    assert "bad length CRC" in ep.metadata["recovery"]["scan_stop"]
    assert not (path / "open.json").exists()
    steps = list(ep.steps())
    for i, s in enumerate(steps):
        assert s.action.tobytes() == np.asarray(make_step(9, i).action).tobytes()
    assert steps[-1].is_last and not steps[-1].is_terminal
    assert not any(s.is_last for s in steps[:-1])
    assert validate_episode(path).ok, validate_episode(path).render()
    # never touches committed episodes; idempotent
    assert (committed_before / "episode.json").read_bytes() == meta_before
    assert recover(tmp_path, min_steps=10) == []
    assert len(list_episodes(tmp_path)) == 2 and list_interrupted(tmp_path) == []


def test_torn_last_record(tmp_path):
    path = _interrupted(tmp_path, 11)
    steps = path / "steps.tfrecord"
    with open(steps, "rb") as f:
        recs = list(tfrecord.scan(f))
    os.truncate(steps, recs[-1].offset + 100)  # half of record 10 reached the disk
    (rep,) = recover(tmp_path, min_steps=10)
    assert rep.action == "recovered" and rep.num_steps == 10 and rep.bytes_dropped == 100
    assert steps.stat().st_size == recs[-1].offset
    assert validate_episode(path).ok


def test_short_episode_is_discarded_not_deleted(tmp_path):
    path = _interrupted(tmp_path, 3)
    (rep,) = recover(tmp_path, min_steps=10)
    assert rep.action == "discarded" and rep.num_steps == 3 and "min_steps" in rep.reason
    assert not path.exists()
    moved = tmp_path / ".discarded" / path.name
    assert rep.path == moved and (moved / "steps.tfrecord").stat().st_size > 0
    assert recover(tmp_path) == [] and list_episodes(tmp_path) == []


def test_no_open_json_is_discarded(tmp_path):
    path = _interrupted(tmp_path, 12)
    (path / "open.json").unlink()
    (rep,) = recover(tmp_path, min_steps=1)
    assert rep.action == "discarded" and "no open.json" in rep.reason


def test_crash_during_commit_with_complete_temp(tmp_path):
    _, info = write_episode(tmp_path, 12, seed=3)
    p = info.path
    (p / "episode.json").rename(p / "episode.json.tmp")  # the rename never happened
    (p / "open.json").write_text(json.dumps(info.metadata))
    (rep,) = recover(tmp_path)
    assert rep.action == "finished-commit"
    ep = open_episode(p)
    assert ep.status == "complete" and not ep.truncated
    assert not (p / "open.json").exists() and not (p / "episode.json.tmp").exists()
    assert validate_episode(p).ok


def test_crash_during_commit_with_partial_temp(tmp_path):
    _, info = write_episode(tmp_path, 12, seed=3)
    p = info.path
    text = (p / "episode.json").read_text()
    (p / "episode.json").unlink()
    (p / "episode.json.tmp").write_text(text[: len(text) // 2])
    start = {k: info.metadata[k] for k in ("format", "format_version", "episode_id")}
    start |= {k: info.metadata[k] for k in ("start_utc", "start_wall", "writer", "seed")}
    (p / "open.json").write_text(json.dumps(start))
    (rep,) = recover(tmp_path)
    assert rep.action == "recovered" and rep.num_steps == 12 and rep.bytes_dropped == 0
    ep = open_episode(p)
    assert ep.status == "recovered" and ep.metadata["steps_sha256"] == info.steps_sha256


def test_crash_after_commit_rename(tmp_path):
    _, info = write_episode(tmp_path, 4, seed=3)
    p = info.path
    before = (p / "episode.json").read_bytes()
    (p / "open.json").write_text("{}")
    (rep,) = recover(tmp_path)
    assert rep.action == "finished-commit" and not (p / "open.json").exists()
    assert (p / "episode.json").read_bytes() == before


def test_live_writer_is_skipped(tmp_path):
    w = EpisodeWriter(tmp_path, {})
    for i in range(20):
        w.append(make_step(1, i))
    (rep,) = recover(tmp_path, min_steps=1)
    assert rep.action == "skipped-locked"
    assert (w.path / "open.json").exists()
    assert w.close().num_steps == 20
    assert recover(tmp_path) == []
