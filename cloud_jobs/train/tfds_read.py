"""Reading a TFDS (RLDS) export of episodes back, without TensorFlow.

``rlds.datasets.tfds`` writes one ``tf.train.Example`` per episode into
TFRecord-framed shards.  Here the shards are scanned with the project's own
framing code (``rlds.tfrecord.scan``: lengths and CRC32C checked) and each
Example is decoded by a small hand-written protobuf reader that knows just the
messages involved::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entry: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1; }           // packed or not
    Int64List { repeated int64 value = 1; }           // packed or not

Only what training needs is interpreted: ``steps/observation/image`` (the
stored JPEG bytes), ``steps/action`` (float64 bytes per step), the RLDS flags,
``steps/extra_json`` when the export included it, and
``episode_metadata/metadata_json`` (the episode's exported metadata, from which
``episode_id`` and ``sim.track`` come).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlds import tfrecord

__all__ = ["TfdsEpisode", "TfdsError", "is_tfds_dir", "list_tfds_episodes", "parse_example"]


class TfdsError(ValueError):
    """A TFDS export directory or record could not be read."""


# --------------------------------------------------------------------------- protobuf


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if i >= len(buf):
            raise TfdsError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise TfdsError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field of one message.

    Length-delimited values are zero-copy ``memoryview`` slices of ``buf``.
    """
    i, n = 0, len(buf)
    while i < n:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        value: int | memoryview
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            if i + 8 > n:
                raise TfdsError("truncated fixed64")
            value = buf[i : i + 8]
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise TfdsError(f"field {field}: length {length} runs past the message end")
            value = buf[i : i + length]
            i += length
        elif wire == 5:
            if i + 4 > n:
                raise TfdsError("truncated fixed32")
            value = buf[i : i + 4]
            i += 4
        else:
            raise TfdsError(f"field {field}: unsupported wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: memoryview) -> tuple[str, Any]:
    """One ``Feature`` -> ("bytes", [memoryview]) | ("float", ndarray) | ("int64", ndarray)."""
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == 1:
            return "bytes", [v for f, w, v in _fields(value) if f == 1 and w == 2]
        if field == 2:
            parts: list[bytes] = []
            for f, w, v in _fields(value):
                if f == 1 and w in (2, 5):  # packed run, or a single fixed32
                    parts.append(bytes(v))
            return "float", np.frombuffer(b"".join(parts), dtype="<f4").astype(np.float32)
        if field == 3:
            ints: list[int] = []
            for f, w, v in _fields(value):
                if f != 1:
                    continue
                if w == 0:
                    ints.append(_signed64(v))
                elif w == 2:
                    j = 0
                    while j < len(v):
                        x, j = _varint(v, j)
                        ints.append(_signed64(x))
            return "int64", np.asarray(ints, dtype=np.int64)
    return "bytes", []  # a Feature with no kind set: an empty list


def parse_example(data: bytes | memoryview) -> dict[str, tuple[str, Any]]:
    """A serialized ``tf.train.Example`` -> {feature key: (kind, values)}."""
    buf = memoryview(data)
    out: dict[str, tuple[str, Any]] = {}
    for field, wire, features in _fields(buf):
        if field != 1 or wire != 2:
            continue
        for f, w, entry in _fields(features):
            if f != 1 or w != 2:
                continue
            key = None
            value: memoryview | None = None
            for ef, ew, ev in _fields(entry):
                if ef == 1 and ew == 2:
                    key = bytes(ev).decode("utf-8")
                elif ef == 2 and ew == 2:
                    value = ev
            if key is None:
                raise TfdsError("feature map entry without a key")
            out[key] = _feature(value) if value is not None else ("bytes", [])
    return out


# --------------------------------------------------------------------------- episodes


def is_tfds_dir(path: Path) -> bool:
    return (Path(path) / "dataset_info.json").is_file()


@dataclass
class TfdsEpisode:
    """One episode of a TFDS export: where its record is, and its metadata."""

    episode_id: str
    metadata: dict[str, Any]
    num_steps: int
    split: str
    shard: Path
    offset: int
    length: int
    #: sha256 of the serialized Example (the episode's content checksum).
    checksum: str

    def read(self) -> dict[str, tuple[str, Any]]:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            item = next(tfrecord.scan(f, start_offset=self.offset), None)
        if not isinstance(item, tfrecord.Record):
            what = item.describe(self.shard) if item is not None else f"{self.shard}: no record"
            raise TfdsError(f"episode {self.episode_id}: {what}")
        return parse_example(item.data)

    def steps_arrays(self) -> tuple[list[bytes], np.ndarray, list[dict[str, Any]] | None]:
        """(JPEG bytes per step, float64 actions [N, A], per-step ``extra`` or None)."""
        feats = self.read()
        where = f"{self.shard} (episode {self.episode_id})"
        img = feats.get("steps/observation/image")
        if img is None or img[0] != "bytes":
            raise TfdsError(f"{where}: no steps/observation/image feature")
        act = feats.get("steps/action")
        if act is None or act[0] != "bytes":
            raise TfdsError(f"{where}: no steps/action feature")
        images = [bytes(v) for v in img[1]]
        rows = [np.frombuffer(bytes(v), dtype="<f8") for v in act[1]]
        if len(images) != len(rows):
            raise TfdsError(f"{where}: {len(images)} images but {len(rows)} actions")
        actions = np.stack(rows).astype(np.float64) if rows else np.zeros((0, 0))
        extras = None
        ex = feats.get("steps/extra_json")
        if ex is not None and ex[0] == "bytes":
            extras = [json.loads(bytes(v)) for v in ex[1]]
            if len(extras) != len(images):
                raise TfdsError(f"{where}: {len(extras)} extra_json values for {len(images)} steps")
        return images, actions, extras


def _shards(root: Path, info: dict[str, Any], split: str) -> list[Path]:
    name = info.get("name", "")
    files = sorted(root.glob(f"{name}-{split}.tfrecord-*-of-*"))
    return files


def list_tfds_episodes(root: Path, splits: list[str] | None = None) -> list[TfdsEpisode]:
    """Every episode of the export at ``root`` (of ``splits``, default all), in file order."""
    root = Path(root)
    try:
        info = json.loads((root / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TfdsError(f"{root}: unreadable dataset_info.json: {e}") from None
    available = [s.get("name") for s in info.get("splits", [])]
    wanted = available if splits is None else splits
    missing = [s for s in wanted if s not in available]
    if missing:
        raise TfdsError(f"{root}: no split(s) {missing}; the export has {available}")
    out: list[TfdsEpisode] = []
    for split in wanted:
        for shard in _shards(root, info, split):
            with open(shard, "rb") as f:
                for item in tfrecord.scan(f):
                    if isinstance(item, tfrecord.FrameError):
                        raise TfdsError(item.describe(shard))
                    feats = parse_example(item.data)
                    meta_f = feats.get("episode_metadata/metadata_json")
                    meta: dict[str, Any] = {}
                    if meta_f is not None and meta_f[0] == "bytes" and meta_f[1]:
                        meta = json.loads(bytes(meta_f[1][0]))
                    flags = feats.get("steps/is_first")
                    n = len(flags[1]) if flags is not None else int(meta.get("num_steps", 0))
                    ep_id = str(meta.get("episode_id") or f"{shard.name}#{item.index}")
                    out.append(
                        TfdsEpisode(
                            episode_id=ep_id,
                            metadata=meta,
                            num_steps=n,
                            split=split,
                            shard=shard,
                            offset=item.offset,
                            length=len(item.data),
                            checksum=hashlib.sha256(item.data).hexdigest(),
                        )
                    )
    return out
