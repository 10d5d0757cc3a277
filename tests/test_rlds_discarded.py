"""`.discarded/` stays bounded: purge by size and age, at daemon start and from the CLI."""

from __future__ import annotations

import os
import time

import yaml

from brain.cli import main
from brain.config import parse_config
from brain.recorder import Recorder
from rlds.layout import DISCARDED_DIR, RESERVE_FILE
from rlds.reader import list_episodes
from rlds.recovery import recover
from rlds.storage import dir_size, purge_discarded
from rlds.writer import EpisodeWriter
from tests.daemon_helpers import sim_config
from tests.rlds_helpers import make_step

DAY = 86400.0


def discard_some(root, n, steps=3):
    """``n`` real short episodes, interrupted, then discarded by recovery (oldest first)."""
    for k in range(n):
        w = EpisodeWriter(root, {"seed": k, "depth_scale": 0.001})
        for i in range(steps):
            w.append(make_step(k, i))
        w.abort("test")
        recover(root, min_steps=steps + 10)
    found = sorted((root / DISCARDED_DIR).iterdir())
    assert len(found) == n
    now = time.time()
    for age, p in zip(range(n, 0, -1), found, strict=True):  # the first is the oldest
        os.utime(p, (now - age * DAY, now - age * DAY))
    return found


def test_discarded_entries_hold_no_reserve(tmp_path):
    (d,) = discard_some(tmp_path, 1)
    assert sorted(p.name for p in d.iterdir()) == ["open.json", "steps.tfrecord"]
    assert not (d / RESERVE_FILE).exists()


def test_purge_by_size_removes_oldest_first_and_keeps_committed(tmp_path):
    w = EpisodeWriter(tmp_path, {"seed": 9, "depth_scale": 0.001})
    for i in range(5):
        w.append(make_step(9, i))
    kept_episode = w.close().episode_id
    found = discard_some(tmp_path, 5)
    sizes = [dir_size(p) for p in found]
    cap = sum(sizes[-2:])  # room for the two newest
    purged = purge_discarded(tmp_path, max_bytes=cap)
    assert [p.name for p in purged] == [p.name for p in found[:3]]
    assert sorted((tmp_path / DISCARDED_DIR).iterdir()) == found[3:]
    assert dir_size(tmp_path / DISCARDED_DIR) <= cap
    assert [e.episode_id for e in list_episodes(tmp_path)] == [kept_episode]
    assert not any((tmp_path / ".trash").iterdir())
    assert purge_discarded(tmp_path, max_bytes=cap) == []  # idempotent


def test_purge_by_age(tmp_path):
    found = discard_some(tmp_path, 4)  # 4, 3, 2, 1 days old
    purged = purge_discarded(tmp_path, max_age_s=2.5 * DAY)
    assert [p.name for p in purged] == [p.name for p in found[:2]]
    assert all(p.age_s > 2.5 * DAY for p in purged)
    assert sorted((tmp_path / DISCARDED_DIR).iterdir()) == found[2:]


def test_daemon_start_applies_the_configured_bounds(tmp_path):
    raw = sim_config(tmp_path, **{"recording.discarded_max_age_days": 2.5})
    cfg = parse_config(raw)
    root = cfg.episodes_dir()
    found = discard_some(root, 4)
    rec = Recorder(cfg, sensor_specs={})
    rec.recover()  # what the daemon runs at start
    assert sorted((root / DISCARDED_DIR).iterdir()) == found[2:]


def test_cli_purge_discarded(tmp_path, capsys):
    raw = sim_config(tmp_path, **{"recording.discarded_max_age_days": None})
    cfg_path = tmp_path / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    root = parse_config(raw).episodes_dir()
    found = discard_some(root, 3)

    assert main(["episodes", "purge-discarded", "--config", str(cfg_path)]) == 0
    assert "0 removed" in capsys.readouterr().out  # within the default 256 MB, no age limit
    argv = ["episodes", "purge-discarded", "--config", str(cfg_path), "--older-than-days", "1.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 removed" in out and found[0].name in out and found[1].name in out
    assert main(["episodes", "purge-discarded", "--config", str(cfg_path), "--max-mb", "-1"]) == 2
    assert main(["episodes", "purge-discarded", "--config", str(cfg_path), "--all"]) == 0
    assert "1 removed" in capsys.readouterr().out
    assert list((root / DISCARDED_DIR).iterdir()) == []
