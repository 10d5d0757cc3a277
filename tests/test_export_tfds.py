"""TFDS/RLDS export, checked with the real tensorflow-datasets (TensorFlow is imported once)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from rlds.datasets import tf_example as pb  # noqa: E402
from rlds.datasets.tfds import TfdsExportStats, export_tfds, jpeg_shape, png16_shape  # noqa: E402
from rlds.errors import EpisodeError  # noqa: E402
from rlds.reader import list_episodes  # noqa: E402
from rlds.tfrecord import OVERHEAD  # noqa: E402
from rlds.types import StepData, StepInput  # noqa: E402
from rlds.writer import EpisodeWriter  # noqa: E402

pytestmark = pytest.mark.slow

H, W = 48, 64


def _frame(rng: np.random.Generator, i: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 4 + i, yy * 5, (xx + yy + 7 * i) % 256], axis=-1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
    depth = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    return img, depth


def _record(root: Path, n_steps: int, seed: int, terminal: bool) -> dict[str, Any]:
    """One episode with the real writer; returns what went in, for comparison."""
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(
        root,
        {
            "robot": f"robot-{seed}",
            "software_version": "0.1.0",
            "operator": "alice",
            "tags": ["x"],
            "depth_scale": 0.001,
        },
    )
    steps = []
    for i in range(n_steps):
        img, depth = _frame(rng, i)
        s = StepInput(
            t=1000.0 + i / 3 + seed,
            action=rng.normal(size=3),
            reward=float(rng.normal()),
            discount=0.99 if i % 2 else 1.0,
            observation={"image": img, "depth": depth},
            timestamps={"image": 999.9 + i / 7, "depth": 999.8 + i / 11},
        )
        w.append(s)
        steps.append(s)
    info = w.close(terminal=terminal)
    assert info is not None
    return {"id": info.episode_id, "steps": steps, "terminal": terminal}


def _drop_operator(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "operator"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("episodes")
    truth = [_record(root, n, seed, terminal=seed == 0) for seed, n in enumerate([4, 6, 3, 5])]
    eps = list_episodes(root)
    assert len(eps) == 4
    by_id = {t["id"]: t for t in truth}
    ids = [e.episode_id for e in eps]
    splits = {ids[0]: "train", ids[1]: "val", ids[2]: "train", ids[3]: "train"}
    out = tmp_path_factory.mktemp("export") / "ds"
    stats = TfdsExportStats()
    files = export_tfds(eps, out, splits=splits, transform_metadata=_drop_operator, stats=stats)
    return {
        "eps": eps,
        "truth": by_id,
        "splits": splits,
        "out": out,
        "files": files,
        "stats": stats,
    }


def _load(out: Path, split: str) -> list[dict[str, Any]]:
    ds = tfds.builder_from_directory(str(out)).as_dataset(split=split)
    return [
        {"meta": ep["episode_metadata"], "steps": list(ep["steps"])} for ep in tfds.as_numpy(ds)
    ]


def test_layout_and_split_info(recorded):
    out = recorded["out"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "continuon_episodes-train.tfrecord-00000-of-00001",
        "continuon_episodes-val.tfrecord-00000-of-00001",
        "dataset_info.json",
        "features.json",
    ]
    assert sorted(p.name for p in recorded["files"]) == names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    info = tfds.builder_from_directory(str(out)).info
    assert info.splits["train"].num_examples == 3
    assert info.splits["val"].num_examples == 1
    assert "test" not in info.splits
    raw = json.loads((out / "dataset_info.json").read_text())
    for s in raw["splits"]:
        shard = out / f"continuon_episodes-{s['name']}.tfrecord-00000-of-00001"
        n = int(s["shardLengths"][0])
        # tfds counts the serialized examples, without the 16 bytes of framing per record
        assert int(s["numBytes"]) == shard.stat().st_size - OVERHEAD * n
    assert recorded["stats"].splits == {"train": 3, "val": 1}
    assert recorded["stats"].steps == 4 + 6 + 3 + 5


def test_values_round_trip(recorded):
    truth, eps = recorded["truth"], {e.episode_id: e for e in recorded["eps"]}
    seen = 0
    for split, want in (("train", 3), ("val", 1)):
        loaded = _load(recorded["out"], split)
        assert len(loaded) == want
        for ep in loaded:
            eid = ep["meta"]["episode_id"].decode()
            assert recorded["splits"][eid] == split
            t, src = truth[eid], eps[eid]
            stored = list(src.steps(decode_images=False))
            assert len(ep["steps"]) == len(t["steps"]) == int(ep["meta"]["num_steps"])
            n = len(t["steps"])
            for i, (got, sin, sto) in enumerate(zip(ep["steps"], t["steps"], stored, strict=True)):
                assert got["action"].dtype == np.float64
                assert np.array_equal(got["action"], np.asarray(sin.action, np.float64))
                assert got["reward"] == sin.reward
                assert got["discount"] == sin.discount
                assert got["t"] == sin.t
                assert got["timestamps"]["image"] == sin.timestamps["image"]
                assert got["timestamps"]["depth"] == sin.timestamps["depth"]
                assert bool(got["is_first"]) == (i == 0)
                assert bool(got["is_last"]) == (i == n - 1)
                assert bool(got["is_terminal"]) == (i == n - 1 and t["terminal"])
                # depth: lossless, bit-exact
                depth = got["observation"]["depth"]
                assert depth.dtype == np.uint16 and depth.shape == (H, W, 1)
                assert np.array_equal(depth[..., 0], sin.observation["depth"])
                # image: exactly the stored JPEG, decoded (no re-encoding happened)
                img = got["observation"]["image"]
                assert img.dtype == np.uint8 and img.shape == (H, W, 3)
                jpeg = sto.encoded["image"]
                assert np.array_equal(img, tf.io.decode_jpeg(jpeg, channels=3).numpy())
                err = np.abs(img.astype(int) - sin.observation["image"].astype(int)).mean()
                assert err < 6
            seen += 1
    assert seen == 4


def test_image_bytes_are_copied_verbatim(recorded):
    eps = {e.episode_id: e for e in recorded["eps"]}
    path = recorded["out"] / "continuon_episodes-val.tfrecord-00000-of-00001"
    (record,) = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    ex = tf.train.Example.FromString(record)
    eid = ex.features.feature["episode_metadata/episode_id"].bytes_list.value[0].decode()
    stored = list(eps[eid].steps(decode_images=False))
    got = ex.features.feature["steps/observation/image"].bytes_list.value
    assert list(got) == [s.encoded["image"] for s in stored]
    got = ex.features.feature["steps/observation/depth"].bytes_list.value
    assert list(got) == [s.encoded["depth"] for s in stored]


def test_metadata_transformed(recorded):
    for ep in _load(recorded["out"], "train"):
        meta = ep["meta"]
        assert "operator" not in meta
        full = json.loads(meta["metadata_json"])
        assert "operator" not in full
        assert "alice" not in meta["metadata_json"].decode()
        assert meta["robot"].decode().startswith("robot-")
        assert meta["software_version"] == b"0.1.0"
        assert full["tags"] == ["x"]
        assert meta["depth_scale"] == 0.001  # typed float64, bit-exact
        assert not meta["truncated"]


def test_multiple_shards_and_deterministic(recorded, tmp_path):
    eps = recorded["eps"]
    splits = {e.episode_id: "train" for e in eps}
    a, b = tmp_path / "a", tmp_path / "b"
    export_tfds(eps, a, splits=splits, shard_max_bytes=1)  # one episode per shard
    files = export_tfds(eps, b, splits=splits, shard_max_bytes=1)
    shards = sorted(p for p in files if ".tfrecord-" in p.name)
    assert [p.name for p in shards] == [
        f"continuon_episodes-train.tfrecord-{i:05d}-of-00004" for i in range(4)
    ]
    for p in files:  # byte-identical re-export
        assert p.read_bytes() == (a / p.name).read_bytes()
    info = json.loads((b / "dataset_info.json").read_text())["splits"][0]
    assert info["shardLengths"] == ["1", "1", "1", "1"]
    assert int(info["numBytes"]) == sum(p.stat().st_size - OVERHEAD for p in shards)
    loaded = _load(b, "train")
    assert [m["meta"]["episode_id"].decode() for m in loaded] == [e.episode_id for e in eps]
    # exporting over an existing dataset replaces it
    export_tfds(eps[:1], b, splits=splits)
    assert tfds.builder_from_directory(str(b)).info.splits["train"].num_examples == 1


def test_corrupt_steps_file_is_a_clear_error(recorded, tmp_path):
    import shutil

    src = recorded["eps"][1]
    copy = tmp_path / "eps" / src.path.name
    shutil.copytree(src.path, copy)
    steps = copy / "steps.tfrecord"
    data = bytearray(steps.read_bytes())
    data[len(data) // 2] ^= 0xFF
    steps.write_bytes(bytes(data))
    (ep,) = list_episodes(tmp_path / "eps")
    out = tmp_path / "out"
    with pytest.raises(EpisodeError, match=r"steps\.tfrecord: record \d+ .*bad data CRC"):
        export_tfds([ep], out, splits={ep.episode_id: "train"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps"]  # nothing half-written


# --- synthetic episodes: corrupt images, mismatched episodes, truncation ---------------------


@dataclass
class FakeEpisode:
    episode_id: str
    step_list: list[StepData]
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.step_list)

    def steps(self, decode_images: bool = True):
        yield from self.step_list


def _fake(
    eid: str, n: int, *, image: bytes | None = None, action_dim: int = 2, **kw
) -> FakeEpisode:
    from rlds import images

    jpeg = image or images.encode_jpeg(np.full((8, 10, 3), 77, np.uint8), 90)
    steps = [
        StepData(
            index=i, t=float(i), is_first=i == 0, is_last=i == n - 1, is_terminal=False,
            action=np.arange(action_dim, dtype=np.float64), reward=0.0, discount=1.0,
            observation={"pose": np.array([i, -i], np.int32), "bump": np.array([i % 2 == 0])},
            timestamps={}, extra={"mode": "auto", "i": i}, encoded={"image": jpeg},
        )
        for i in range(n)
    ]  # fmt: skip
    return FakeEpisode(eid, steps, metadata={"episode_id": eid, "robot": "r"}, **kw)


def test_synthetic_raw_observations_extra_and_truncated(tmp_path):
    eps = [_fake("e1", 3, truncated=True), _fake("e2", 2)]
    export_tfds(eps, tmp_path / "o", splits={"e1": "test", "e2": "test"}, include_extra=True)
    loaded = _load(tmp_path / "o", "test")
    assert [bool(e["meta"]["truncated"]) for e in loaded] == [True, False]
    s = loaded[0]["steps"][2]
    assert s["observation"]["pose"].dtype == np.int32
    assert list(s["observation"]["pose"]) == [2, -2]
    assert list(s["observation"]["bump"]) == [True]
    assert s["observation"]["image"].shape == (8, 10, 3)
    assert json.loads(s["extra_json"]) == {"i": 2, "mode": "auto"}


def test_image_sizes_that_differ_are_declared_unknown(tmp_path):
    from rlds import images

    big = images.encode_jpeg(np.zeros((12, 10, 3), np.uint8), 90)
    eps = [_fake("e1", 2), _fake("e2", 2, image=big)]
    export_tfds(eps, tmp_path / "o", splits={"e1": "train", "e2": "train"})
    info = tfds.builder_from_directory(str(tmp_path / "o")).info
    assert info.features["steps"]["observation"]["image"].shape == (None, 10, 3)
    shapes = [e["steps"][0]["observation"]["image"].shape for e in _load(tmp_path / "o", "train")]
    assert shapes == [(8, 10, 3), (12, 10, 3)]


def test_corrupt_and_inconsistent_input_errors(tmp_path):
    out = tmp_path / "o"
    bad = _fake("e1", 3)
    bad.step_list[1].encoded["image"] = b"\xff\xd8\xff\xe0garbage"
    with pytest.raises(EpisodeError, match=r"episode e1 .*step 1: observation 'image'.*truncated"):
        export_tfds([bad], out, splits={"e1": "train"})
    with pytest.raises(EpisodeError, match="action size 3 differs"):
        export_tfds(
            [_fake("e1", 2), _fake("e2", 2, action_dim=3)],
            out,
            splits={"e1": "train", "e2": "train"},
        )
    with pytest.raises(ValueError, match="no split"):
        export_tfds([_fake("e1", 2)], out, splits={})
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(EpisodeError, match="refusing to replace"):
        export_tfds([_fake("e1", 2)], out, splits={"e1": "train"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert (out / "precious.txt").read_text() == "x"


def test_image_header_parsers():
    from rlds import images

    jpeg = images.encode_jpeg(np.zeros((31, 17, 3), np.uint8), 80)
    assert jpeg_shape(jpeg) == (31, 17, 3)
    assert png16_shape(images.encode_png16(np.zeros((5, 9), np.uint16))) == (5, 9)
    for bad in (b"", b"nope", jpeg[:-10], jpeg[:20] + b"\xff\xd9"):
        with pytest.raises(ValueError):
            jpeg_shape(bad)
    with pytest.raises(ValueError, match="16-bit"):
        png16_shape(images.encode_png16(np.zeros((5, 9), np.uint16))[:24] + b"\x08" + b"\0" * 40)


def test_example_encoding_matches_protobuf():
    feats = {
        "b": pb.bytes_feature([b"", b"x" * 300, "é".encode()]),
        "f": pb.float_feature(np.array([0.5, -1e30, 3.25], np.float32)),
        "i": pb.int64_feature([0, 1, -1, 2**63 - 1, -(2**63), 300]),
        "empty_b": pb.bytes_feature([]),
        "empty_f": pb.float_feature([]),
        "empty_i": pb.int64_feature([]),
        "ключ": pb.int64_feature([7]),
    }
    ours = pb.serialize_example(feats)
    ex = tf.train.Example()
    f = ex.features.feature
    f["b"].bytes_list.value.extend([b"", b"x" * 300, "é".encode()])
    f["f"].float_list.value.extend([0.5, -1e30, 3.25])
    f["i"].int64_list.value.extend([0, 1, -1, 2**63 - 1, -(2**63), 300])
    f["empty_b"].bytes_list.SetInParent()
    f["empty_f"].float_list.SetInParent()
    f["empty_i"].int64_list.SetInParent()
    f["ключ"].int64_list.value.append(7)
    assert tf.train.Example.FromString(ours) == ex
    assert ours == ex.SerializeToString(deterministic=True)
