"""The one decoded-frame cache (``rlds.framecache``) that both trainers use.

Real episodes written by ``rlds.writer``, real JPEG decoding; the resize is the one
``brain.localtrain`` injects (``brain.imaging.resize_rgb``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from brain.imaging import resize_rgb
from rlds import framecache
from rlds.reader import list_episodes
from rlds.types import StepInput
from rlds.writer import EpisodeWriter

HW = (24, 32)


def _episode(root: Path, steps: int = 12, extra: bool = True) -> None:
    with EpisodeWriter(root, {"robot_id": "sim"}, fsync_interval_s=60) as wr:
        for i in range(steps):
            img = np.full((48, 64, 3), 20 * (i % 10), np.uint8)
            ex = {"expert_action": [0.1 * i, 0.2], "executed_action": [0.1 * i, 0.3]}
            if i == 3:  # a step without the extras, and one with a malformed one
                ex = {}
            if i == 4:
                ex = {"expert_action": [1.0], "executed_action": "x"}
            wr.append(
                StepInput(
                    t=i * 0.05,
                    action=[0.1 * i, 0.5],
                    observation={"image": img},
                    extra=ex if extra else {},
                )
            )


def _load(
    root: Path, cache: Path, resize: framecache.Resize | None = None
) -> framecache.CachedFrames:
    (ep,) = list_episodes(root)
    return framecache.load_or_build(
        cache,
        checksum=framecache.native_checksum(ep),
        episode_id=ep.episode_id,
        image_hw=HW,
        resize=resize or (lambda rgb: resize_rgb(rgb, HW)),
        read=framecache.native_reader(ep),
    )


def test_decodes_once_and_keeps_every_action_source(tmp_path: Path) -> None:
    _episode(tmp_path / "eps")
    entry = _load(tmp_path / "eps", tmp_path / "cache")
    assert entry.frames.shape == (12, *HW, 3) and entry.frames.dtype == np.uint8
    assert isinstance(entry.frames, np.memmap)
    assert abs(int(entry.frames[2].mean()) - 40) <= 2  # the JPEG round trip, resized
    assert entry.actions.shape == (12, len(framecache.ACTION_SOURCES), 2)
    expert, executed = entry.source("expert_action"), entry.source("executed_action")
    np.testing.assert_allclose(expert[5], [0.5, 0.2], rtol=1e-6)
    np.testing.assert_allclose(executed[5], [0.5, 0.3], rtol=1e-6)
    # steps without the source (or with a malformed one) fall back to the step's action
    np.testing.assert_allclose(expert[3:5], entry.source("action")[3:5])
    np.testing.assert_allclose(executed[3:5, 1], [0.5, 0.5])
    with pytest.raises(framecache.FrameCacheError, match="unknown action source"):
        entry.source("nope")

    # a second open reuses the entry: a resize that would fail is never called
    def boom(rgb: np.ndarray) -> np.ndarray:
        raise AssertionError("decoded twice")

    again = _load(tmp_path / "eps", tmp_path / "cache", resize=boom)
    assert again.path == entry.path
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.path.name]  # no leftovers


def test_a_damaged_entry_is_rebuilt_and_a_bad_frame_leaves_nothing(tmp_path: Path) -> None:
    _episode(tmp_path / "eps")
    entry = _load(tmp_path / "eps", tmp_path / "cache")
    (entry.path / "frames.npy").write_bytes(b"\x93NUMPY truncated")  # e.g. a power cut
    rebuilt = _load(tmp_path / "eps", tmp_path / "cache")
    assert rebuilt.frames.shape == (12, *HW, 3) and int(rebuilt.frames[2].mean()) > 0
    meta = json.loads((rebuilt.path / "meta.json").read_text())
    assert meta["num_steps"] == 12 and meta["format"] == framecache.FORMAT

    # a resize that returns the wrong size is refused, and no entry is left behind
    with pytest.raises(framecache.FrameCacheError, match="resized frame"):
        _load(tmp_path / "eps", tmp_path / "other", resize=lambda rgb: rgb)
    assert list((tmp_path / "other").iterdir()) == []


def test_concurrent_builders_share_one_entry(tmp_path: Path) -> None:
    _episode(tmp_path / "eps", steps=30)
    got: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            got.append(_load(tmp_path / "eps", tmp_path / "cache").path)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(set(got)) == 1 and len(got) == 3
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [got[0].name]


def test_the_key_follows_content_and_size(tmp_path: Path) -> None:
    a = framecache.cache_key("rlds:abc:1", HW)
    assert a == framecache.cache_key("rlds:abc:1", HW)
    assert a != framecache.cache_key("rlds:abd:1", HW)
    assert a != framecache.cache_key("rlds:abc:1", (HW[0], HW[1] + 1))
