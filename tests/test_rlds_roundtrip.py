"""Writer -> reader round trips, RLDS flags, encoding reuse, misuse errors, stats and memory."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc

import numpy as np
import pytest

from rlds import images, jsonvalues
from rlds.errors import EpisodeError
from rlds.reader import list_episodes, list_interrupted, open_episode
from rlds.types import StepInput
from rlds.validate import validate_episode
from rlds.writer import EpisodeWriter
from tests.rlds_helpers import depth, frame, make_step, write_episode


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_round_trip_bit_exact(tmp_path):
    n = 23
    _, info = write_episode(tmp_path, n, seed=7, terminal=True)
    assert info is not None and info.num_steps == n
    ep = open_episode(info.path)
    assert (ep.episode_id, ep.num_steps, ep.truncated, ep.status) == (
        info.episode_id,
        n,
        False,
        "complete",
    )
    assert ep.metadata["robot"] == "test" and ep.metadata["terminal"] is True
    steps = list(ep.steps())
    assert len(steps) == n
    for i, s in enumerate(steps):
        want = make_step(7, i)
        assert s.index == i
        assert (s.is_first, s.is_last, s.is_terminal) == (i == 0, i == n - 1, i == n - 1)
        assert s.action.dtype == np.float64
        assert s.action.tobytes() == np.asarray(want.action, np.float64).tobytes()  # NaN/-inf too
        assert _bits(s.t) == _bits(want.t)
        assert _bits(s.reward) == _bits(want.reward)
        assert _bits(s.discount) == _bits(want.discount)
        assert {k: _bits(v) for k, v in s.timestamps.items()} == {
            k: _bits(v) for k, v in want.timestamps.items()
        }
        assert s.extra == want.extra
        # depth: lossless
        assert s.observation["depth"].dtype == np.uint16
        np.testing.assert_array_equal(s.observation["depth"], want.observation["depth"])
        # other arrays: raw, bit-exact, dtype kept
        assert s.observation["state"].dtype == np.float32
        assert s.observation["state"].tobytes() == want.observation["state"].tobytes()
        # image: the stored JPEG is exactly what the encoder produced for the input frame ...
        img = want.observation["image"]
        assert s.encoded["image"] == images.encode_jpeg(img, 90)
        # ... and decodes close to it
        got = s.observation["image"]
        assert got.shape == img.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - img.astype(int)).mean() < 6.0
    assert math.isclose(ep.metadata["duration_s"], (n - 1) * 0.02)
    assert validate_episode(info.path).ok


def test_jpeg_keeps_rgb_channel_order(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 200
    w = EpisodeWriter(tmp_path, {})
    w.append(StepInput(t=0.0, action=[0.0], observation={"image": red}))
    (s,) = open_episode(w.close().path).steps()
    assert np.abs(s.observation["image"].astype(int) - red).max() <= 2


def test_non_finite_and_negative_zero_floats_are_bit_exact(tmp_path):
    odd = [
        float("nan"),
        -float("nan"),
        struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],  # NaN with a payload
        float("inf"),
        -float("inf"),
        -0.0,
        5e-324,
        1.7976931348623157e308,
        0.1,
    ]
    w = EpisodeWriter(tmp_path, {})
    w.append(StepInput(t=0.0, action=odd, reward=-0.0, discount=float("nan"), extra={"x": odd[:4]}))
    w.append(StepInput(t=0.0, action=odd[::-1], reward=float("-inf"), timestamps={"a": -0.0}))
    info = w.close()
    s0, s1 = open_episode(info.path).steps()
    assert s0.action.tobytes() == np.array(odd).tobytes()
    assert s1.action.tobytes() == np.array(odd[::-1]).tobytes()
    assert _bits(s0.reward) == _bits(-0.0) and math.isnan(s0.discount)
    assert _bits(s1.reward) == _bits(-math.inf) and _bits(s1.timestamps["a"]) == _bits(-0.0)
    assert [_bits(v) for v in s0.extra["x"]] == [_bits(v) for v in odd[:4]]
    # and the files are strict JSON (no NaN tokens)
    raw = (info.path / "steps.tfrecord").read_bytes()
    assert b"NaN" not in raw and b"Infinity" not in raw
    json.loads((info.path / "episode.json").read_text())


def test_json_values_reject_non_json(tmp_path):
    assert jsonvalues.loads(jsonvalues.dumps({"a": np.arange(3), "b": np.float32(1.5)})) == {
        "a": [0, 1, 2],
        "b": 1.5,
    }
    w = EpisodeWriter(tmp_path, {})
    with pytest.raises(EpisodeError, match="not serializable"):
        w.append(StepInput(t=0.0, action=[0.0], extra={"obj": object()}))
    w.close()


def test_decode_images_false_gives_bytes_only(tmp_path):
    _, info = write_episode(tmp_path, 3, seed=2)
    for s in open_episode(info.path).steps(decode_images=False):
        assert set(s.observation) == {"state"}
        assert images.sniff(s.encoded["image"]) == "jpeg"
        assert images.sniff(s.encoded["depth"]) == "png16"


def test_is_last_is_written_with_the_held_back_step(tmp_path):
    w = EpisodeWriter(tmp_path, {})
    w.append(StepInput(t=0.0, action=[1.0]))
    assert (w.path / "steps.tfrecord").stat().st_size == 0  # step 0 held back
    assert w.num_steps == 1
    w.append(StepInput(t=0.1, action=[2.0]))
    size1 = (w.path / "steps.tfrecord").stat().st_size
    assert size1 > 0  # step 0 written (is_last=False) once step 1 arrived
    info = w.close(terminal=False)
    steps = list(open_episode(info.path).steps())
    assert [(s.is_first, s.is_last, s.is_terminal) for s in steps] == [
        (True, False, False),
        (False, True, False),
    ]


def test_single_step_episode_is_first_and_last(tmp_path):
    w = EpisodeWriter(tmp_path, {})
    w.append(StepInput(t=0.0, action=[]))
    (s,) = open_episode(w.close(terminal=True).path).steps()
    assert (s.is_first, s.is_last, s.is_terminal) == (True, True, True)
    assert s.action.shape == (0,)


def test_empty_episode_is_removed(tmp_path):
    w = EpisodeWriter(tmp_path, {"a": 1})
    assert (w.path / "open.json").exists()
    assert w.close() is None
    assert not w.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_frame_encoding_reused_by_identity_and_seq(tmp_path, monkeypatch):
    calls = []
    real = images.encode_jpeg
    monkeypatch.setattr(
        images, "encode_jpeg", lambda a, q: calls.append(1) or real(a, q), raising=True
    )
    w = EpisodeWriter(tmp_path, {})
    img = frame(1, 0)
    for i in range(3):  # the same object three times
        w.append(StepInput(t=i, action=[0.0], observation={"image": img}))
    assert len(calls) == 1
    for i in range(3, 5):  # a copy (new object) but the same frame_seq
        w.append(
            StepInput(t=i, action=[0.0], observation={"image": img.copy()}, extra={"frame_seq": 9})
        )
    assert len(calls) == 2
    w.append(
        StepInput(t=5, action=[0.0], observation={"image": img.copy()}, extra={"frame_seq": 9})
    )
    assert len(calls) == 2
    w.append(StepInput(t=6, action=[0.0], observation={"image": frame(1, 1)}))  # new frame
    assert len(calls) == 3
    pre = images.encode_jpeg(frame(1, 2), 50)  # caller-supplied bytes are used as they are
    w.append(
        StepInput(t=7, action=[0.0], observation={"image": frame(1, 2)}, encoded={"image": pre})
    )
    assert len(calls) == 4  # (the one above; the writer did not encode)
    stats = w.stats()
    assert stats["encodes_reused"] == 4
    info = w.close()
    steps = list(open_episode(info.path).steps(decode_images=False))
    assert steps[0].encoded["image"] == steps[2].encoded["image"]
    assert steps[7].encoded["image"] == pre


def test_encoded_without_array_and_mismatched_encoding(tmp_path):
    w = EpisodeWriter(tmp_path, {})
    jpg = images.encode_jpeg(frame(2, 0), 80)
    w.append(StepInput(t=0.0, action=[0.0], encoded={"image": jpg}))
    with pytest.raises(EpisodeError, match="neither JPEG nor PNG"):
        w.append(StepInput(t=0.1, action=[0.0], encoded={"image": b"garbage"}))
    with pytest.raises(EpisodeError, match="would be stored as png16"):
        w.append(StepInput(t=0.1, action=[0.0], observation={"d": depth(1, 1)}, encoded={"d": jpg}))
    (s,) = open_episode(w.close().path).steps()
    assert s.observation["image"].shape == frame(2, 0).shape


def test_misuse_raises_episode_error(tmp_path):
    with pytest.raises(EpisodeError, match="reserved"):
        EpisodeWriter(tmp_path, {"num_steps": 3})
    with pytest.raises(EpisodeError, match="JSON"):
        EpisodeWriter(tmp_path, {"x": object()})
    w = EpisodeWriter(tmp_path, {})
    w.append(StepInput(t=1.0, action=[0.0, 1.0]))
    with pytest.raises(EpisodeError, match="first step had 2"):
        w.append(StepInput(t=1.1, action=[0.0, 1.0, 2.0]))
    with pytest.raises(EpisodeError, match="backwards"):
        w.append(StepInput(t=0.5, action=[0.0, 1.0]))
    with pytest.raises(EpisodeError, match="finite"):
        w.append(StepInput(t=float("nan"), action=[0.0, 1.0]))
    with pytest.raises(EpisodeError, match="1-D"):
        w.append(StepInput(t=2.0, action=[[0.0, 1.0]]))
    with pytest.raises(EpisodeError, match="StepInput"):
        w.append({"t": 2.0})  # type: ignore[arg-type]
    with pytest.raises(EpisodeError, match="reserved"):
        w.close(extra_metadata={"status": "x"})
    info = w.close(extra_metadata={"note": "ok"})
    assert info.num_steps == 1 and info.metadata["note"] == "ok"
    with pytest.raises(EpisodeError, match="closed"):
        w.append(StepInput(t=3.0, action=[0.0, 1.0]))
    with pytest.raises(EpisodeError, match="already closed"):
        w.close()


def test_abort_leaves_an_interrupted_episode(tmp_path):
    w = EpisodeWriter(tmp_path, {"k": 1})
    for i in range(4):
        w.append(make_step(1, i))
    w.abort("operator pulled the plug")
    assert list_interrupted(tmp_path) == [w.path]
    assert list_episodes(tmp_path) == []
    opened = json.loads((w.path / "open.json").read_text())
    assert opened["abort_reason"] == "operator pulled the plug"
    with pytest.raises(EpisodeError, match="interrupted"):
        open_episode(w.path)
    from rlds.recovery import recover

    (rep,) = recover(tmp_path, min_steps=1)
    assert rep.action == "recovered" and rep.num_steps == 4  # the held step was written too
    assert "plug" in rep.reason


def test_context_manager_commits_or_aborts(tmp_path):
    with EpisodeWriter(tmp_path / "a", {}) as w:
        w.append(StepInput(t=0.0, action=[0.0]))
    assert open_episode(w.path).status == "complete"
    with pytest.raises(RuntimeError), EpisodeWriter(tmp_path / "b", {}) as w2:
        w2.append(StepInput(t=0.0, action=[0.0]))
        raise RuntimeError("boom")
    assert list_interrupted(tmp_path / "b") == [w2.path]


def test_list_episodes_sorted_by_start(tmp_path):
    paths = []
    for k in range(4):
        _, info = write_episode(tmp_path, 1, seed=k)
        paths.append(info.path)
    eps = list_episodes(tmp_path)
    assert [e.path for e in eps] == paths
    starts = [e.metadata["start_utc"] for e in eps]
    assert starts == sorted(starts)


def test_fsyncs_happen_at_the_interval(tmp_path):
    now = [0.0]
    w = EpisodeWriter(tmp_path, {}, fsync_interval_s=1.0, clock=lambda: now[0])
    for i in range(41):  # 40 steps written, one every 0.25 s of (fake) time
        now[0] = i * 0.25
        w.append(StepInput(t=now[0], action=[0.0]))
    s = w.stats()
    assert s["steps_written"] == 40
    assert s["fsyncs"] == 10, s  # at t = 1.0, 2.0, ..., 10.0
    w.close()
    assert w.stats()["fsyncs"] == 11  # plus the one at close
    assert w.stats()["fsync_ms_max"] >= w.stats()["fsync_ms_p99"] >= w.stats()["fsync_ms_p50"] > 0

    w = EpisodeWriter(tmp_path, {}, fsync_interval_s=3600.0, clock=lambda: now[0])
    for i in range(20):
        w.append(StepInput(t=i, action=[0.0]))
    assert w.stats()["fsyncs"] == 0
    w.close()
    assert w.stats()["fsyncs"] == 1


def test_stats_report_encode_times_and_bytes(tmp_path):
    w, info = write_episode(tmp_path, 10, seed=4)
    s = w.stats()
    assert s["steps"] == 10 and s["bytes"] == info.file_size
    assert s["encode_ms_p99"] >= s["encode_ms_p50"] > 0
    # every second step reuses its frame's JPEG (same object) and PNG (same depth_seq)
    assert s["encodes_reused"] == 10


@pytest.mark.slow
def test_writer_memory_does_not_grow_per_step(tmp_path):
    w = EpisodeWriter(tmp_path, {}, fsync_interval_s=3600.0)

    def run(n0, n1):
        for i in range(n0, n1):
            img = np.full((8, 8, 3), i % 256, np.uint8)  # a fresh array every step
            w.append(
                StepInput(
                    t=float(i),
                    action=[float(i), 0.5],
                    observation={"image": img, "v": np.arange(4, dtype=np.float64)},
                    timestamps={"image": float(i)},
                    extra={"frame_seq": i, "mode": "manual"},
                )
            )

    run(0, 1500)  # fills the bounded timing windows
    tracemalloc.start()
    try:
        run(1500, 2000)
        base, _ = tracemalloc.get_traced_memory()
        run(2000, 5000)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 3000 more steps: any per-step retention (even 100 bytes) would show up as >= 300 kB
    assert grown - base < 64 * 1024, grown - base
    w.close()
