"""Export episodes as a TFDS dataset directory in RLDS layout -- without TensorFlow.

``tfds.builder_from_directory(out_dir).as_dataset(split="train")`` loads the
result with the real ``tensorflow-datasets``; nothing here imports TensorFlow.

What is written (``<name>`` is ``dataset_name``)::

    out_dir/
      dataset_info.json     name, version, and per split: shard lengths, bytes
      features.json         the FeaturesDict, as tfds' ``Feature.to_json`` writes it
      <name>-train.tfrecord-00000-of-00002
      <name>-train.tfrecord-00001-of-00002
      <name>-val.tfrecord-00000-of-00001 ...

Every record is one serialized ``tf.train.Example`` holding one whole EPISODE,
the way tfds serializes a ``FeaturesDict`` with a ``steps: tfds.features.Dataset``
feature: one key per leaf (``steps/observation/image``,
``episode_metadata/robot`` ...), each step's values concatenated in step order.

Features (per step, under ``steps``):

* ``observation/<name>`` -- JPEG observations (``image``) as ``Image`` uint8
  HxWx3 ``jpeg``: the JPEG bytes stored on the robot are copied verbatim, never
  decoded and re-encoded, so the pixels are exactly what decoding the stored
  frame gives.  16-bit PNG observations (``depth``) as ``Image`` uint16 HxWx1
  ``png``: also copied verbatim, and lossless, so depth comes back bit-exact
  (with a trailing channel axis of 1, as tfds images always have).  Other
  (raw) observations as ``Tensor`` of their dtype and shape.
  Image dimensions that differ between episodes are declared ``None``.
* ``action`` float64 [A], ``reward`` float64, ``discount`` float64, ``t`` float64
  (the step's monotonic time), ``timestamps/<sensor>`` float64 for every sensor
  named in some episode's first step (NaN where a step lacks it): float64
  ``Tensor``\\ s with ``encoding="bytes"``, because a ``tf.train.FloatList`` is
  float32 and would round them.  Values are bit-exact.
* ``is_first``, ``is_last``, ``is_terminal`` bool.
* ``extra_json`` (only with ``include_extra=True``): the step's ``extra`` dict as JSON.

Per episode, under ``episode_metadata``: every top-level scalar key of the
*transformed* metadata that all exported episodes share with one type (str ->
Text, bool, int -> int64, float -> float64), always ``truncated`` and
``num_steps``, and ``metadata_json`` -- the whole transformed metadata as JSON
(nested values included).  ``transform_metadata`` (the anonymizer) sees the
episode's metadata with its ``episode_id``, so nothing bypasses it: a key it
drops appears nowhere in the output.

Every episode must have the same observation names, encodings and action size
(a mixed set is refused with a message naming the episode), and every episode
must be in ``splits``.  Splits without episodes are left out of the dataset.

Atomicity and re-runs: the dataset is written into a hidden sibling directory
(``.<out_dir>.tfds-tmp-<random>``) and renamed into place only when complete, so
an interrupted export leaves no partial dataset, and running it again simply
starts over (leftover temporary directories of earlier runs are removed).  An
existing ``out_dir`` is replaced if it is empty or holds a TFDS dataset
(``dataset_info.json``); anything else is refused rather than deleted.  The
output is deterministic: the same episodes, splits and transform give
byte-identical files (nothing time- or machine-dependent is written), so a
manifest of checksums compares equal across re-runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import google_crc32c
import numpy as np

from common.durable import fsync_dir, move, replace_dir
from rlds import images
from rlds.crc import mask, masked_crc32c
from rlds.errors import EpisodeError
from rlds.export import tf_example as pb
from rlds.tfrecord import OVERHEAD
from rlds.types import StepData

__all__ = ["DEFAULT_SHARD_MAX_BYTES", "TfdsExportStats", "export_tfds"]

DEFAULT_SHARD_MAX_BYTES = 64 * 1024 * 1024
FILE_FORMAT = "tfrecord"
FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SPLIT_ORDER = ("train", "val", "test")
METADATA_JSON_KEY = "metadata_json"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")

_FEATURES = "tensorflow_datasets.core.features."
_CLS_DICT = _FEATURES + "features_dict.FeaturesDict"
_CLS_DATASET = _FEATURES + "dataset_feature.Dataset"
_CLS_TENSOR = _FEATURES + "tensor_feature.Tensor"
_CLS_SCALAR = _FEATURES + "scalar.Scalar"
_CLS_IMAGE = _FEATURES + "image_feature.Image"
_CLS_TEXT = _FEATURES + "text_feature.Text"

# Raw observation dtypes tf.io.decode_raw can read back.
_RAW_DTYPES = frozenset(
    {
        *("float16", "float32", "float64", "complex64", "complex128"),
        *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    }
)


class EpisodeLike(Protocol):
    episode_id: str
    metadata: dict[str, Any]
    num_steps: int
    truncated: bool

    def steps(self, decode_images: bool = True) -> Iterator[StepData]: ...


@dataclass
class TfdsExportStats:
    """What the last ``export_tfds`` call wrote (filled in when ``stats`` is passed)."""

    episodes: int = 0
    steps: int = 0
    bytes: int = 0
    splits: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- #
# Image headers: shapes without decoding, and a first check that bytes are sane.


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_shape(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's SOF segment; ValueError if malformed."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("JPEG is truncated (no EOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (seg_len,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF:
            if i + 2 + seg_len > n or seg_len < 8:
                raise ValueError("JPEG SOF segment is truncated")
            h, w = struct.unpack_from(">HH", data, i + 5)
            comps = data[i + 9]
            if h == 0 or w == 0 or comps not in (1, 3):
                raise ValueError(f"JPEG frame header is invalid ({h}x{w}x{comps})")
            return h, w, comps
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + seg_len
    raise ValueError("JPEG has no frame header")


def png16_shape(data: bytes) -> tuple[int, int]:
    """(height, width) of a 16-bit greyscale PNG; ValueError for anything else."""
    if len(data) < 33 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (bad signature or IHDR)")
    w, h, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
    if bit_depth != 16 or color_type != 0:
        raise ValueError(f"PNG is not 16-bit greyscale (bit depth {bit_depth}, type {color_type})")
    if not data.endswith(b"IEND\xaeB`\x82"):
        raise ValueError("PNG is truncated (no IEND chunk)")
    if w == 0 or h == 0:
        raise ValueError("PNG has a zero dimension")
    return h, w


# --------------------------------------------------------------------------- #
# Schema: what features every episode has, inferred from the first step of each.


@dataclass
class _Obs:
    name: str
    kind: str  # images.JPEG | images.PNG16 | images.RAW | "bool"
    dtype: str
    shape: list[int | None]


@dataclass
class _Schema:
    obs: dict[str, _Obs]
    action_dim: int
    timestamps: list[str]
    meta_types: dict[str, str]  # key -> "text" | "bool" | "int64" | "float64"
    include_extra: bool


def _observations_of(step: StepData) -> dict[str, tuple[str, Any]]:
    """name -> (kind, payload) for one step, images as their stored bytes."""
    out: dict[str, tuple[str, Any]] = {}
    for name, data in step.encoded.items():
        kind = images.sniff(data)
        if kind is None:
            raise ValueError(f"observation {name!r}: stored bytes are neither JPEG nor PNG")
        out[name] = (kind, data)
    for name, arr in step.observation.items():
        if name in out:
            continue
        a = np.asarray(arr)
        out[name] = ("bool" if a.dtype == np.bool_ else images.RAW, a)
    return out


def _obs_spec(name: str, kind: str, payload: Any) -> _Obs:
    if kind == images.JPEG:
        h, w, _ = jpeg_shape(payload)
        return _Obs(name, kind, "uint8", [h, w, 3])
    if kind == images.PNG16:
        h, w = png16_shape(payload)
        return _Obs(name, kind, "uint16", [h, w, 1])
    dtype = payload.dtype.name
    if kind == images.RAW and dtype not in _RAW_DTYPES:
        raise ValueError(f"observation {name!r}: dtype {dtype} cannot be exported to TFDS")
    return _Obs(name, kind, dtype, list(payload.shape))


def _meta_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64" if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "text"
    return None


def _merge_meta_types(metas: list[dict[str, Any]]) -> dict[str, str]:
    common: dict[str, str] | None = None
    for meta in metas:
        types: dict[str, str] = {}
        for k, v in meta.items():
            t = _meta_type(v)
            if t is not None and _KEY_RE.match(k) and k != METADATA_JSON_KEY:
                types[k] = t
        if common is None:
            common = types
            continue
        merged = {}
        for k, t in common.items():
            other = types.get(k)
            if other == t:
                merged[k] = t
            elif {t, other} == {"int64", "float64"}:
                merged[k] = "float64"
        common = merged
    return dict(sorted((common or {}).items()))


def _check_name(kind: str, name: str) -> None:
    if not _KEY_RE.match(name):
        raise EpisodeError(f"{kind} name {name!r} cannot be a TFDS feature name")


# --------------------------------------------------------------------------- #
# features.json


def _tensor_json(
    cls: str, shape: Sequence[int | None], dtype: str, encoding: str
) -> dict[str, Any]:
    dims = [str(-1 if d is None else d) for d in shape]
    return {
        "pythonClassName": cls,
        "tensor": {
            "shape": {"dimensions": dims} if dims else {},
            "dtype": dtype,
            "encoding": encoding,
        },
    }


def _scalar_json(dtype: str) -> dict[str, Any]:
    # float64 goes as bytes: a FloatList would round it to float32.
    if dtype == "float64":
        return _tensor_json(_CLS_TENSOR, [], "float64", "bytes")
    return _tensor_json(_CLS_SCALAR, [], dtype, "none")


def _dict_json(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"pythonClassName": _CLS_DICT, "featuresDict": {"features": features}}


def _obs_json(o: _Obs) -> dict[str, Any]:
    if o.kind in (images.JPEG, images.PNG16):
        dims = [str(-1 if d is None else d) for d in o.shape]
        return {
            "pythonClassName": _CLS_IMAGE,
            "image": {
                "shape": {"dimensions": dims},
                "dtype": o.dtype,
                "encodingFormat": "jpeg" if o.kind == images.JPEG else "png",
            },
        }
    if o.kind == "bool":
        return _tensor_json(_CLS_TENSOR, o.shape, "bool", "none")
    return _tensor_json(_CLS_TENSOR, o.shape, o.dtype, "bytes")


def features_json(schema: _Schema) -> dict[str, Any]:
    step: dict[str, dict[str, Any]] = {
        "observation": _dict_json({n: _obs_json(o) for n, o in sorted(schema.obs.items())}),
        "action": _tensor_json(_CLS_TENSOR, [schema.action_dim], "float64", "bytes"),
        "reward": _scalar_json("float64"),
        "discount": _scalar_json("float64"),
        "is_first": _scalar_json("bool"),
        "is_last": _scalar_json("bool"),
        "is_terminal": _scalar_json("bool"),
        "t": _scalar_json("float64"),
    }
    if schema.timestamps:
        step["timestamps"] = _dict_json({k: _scalar_json("float64") for k in schema.timestamps})
    if schema.include_extra:
        step["extra_json"] = {"pythonClassName": _CLS_TEXT, "text": {}}
    meta: dict[str, dict[str, Any]] = {}
    for k, t in schema.meta_types.items():
        meta[k] = {"pythonClassName": _CLS_TEXT, "text": {}} if t == "text" else _scalar_json(t)
    meta[METADATA_JSON_KEY] = {"pythonClassName": _CLS_TEXT, "text": {}}
    return _dict_json(
        {
            "steps": {
                "pythonClassName": _CLS_DATASET,
                "sequence": {"feature": _dict_json(step), "length": "-1"},
            },
            "episode_metadata": _dict_json(meta),
        }
    )


# --------------------------------------------------------------------------- #
# One episode -> one serialized tf.train.Example


def _f64_bytes(values: Sequence[float]) -> list[bytes]:
    raw = np.asarray(values, dtype="<f8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def _meta_feature(t: str, value: Any) -> pb.Feature:
    if t == "text":
        return pb.bytes_feature([str(value).encode("utf-8")])
    if t == "bool":
        return pb.int64_feature([int(bool(value))])
    if t == "int64":
        return pb.int64_feature([int(value)])
    return pb.bytes_feature(_f64_bytes([float(value)]))


def _encode_episode(
    ep: EpisodeLike, meta: dict[str, Any], schema: _Schema, where: str
) -> tuple[list[bytes | memoryview], int, int]:
    """The serialized Example as chunks, its size in bytes, and the number of steps."""
    obs_vals: dict[str, list[Any]] = {n: [] for n in schema.obs}
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    discounts: list[float] = []
    ts: list[float] = []
    flags: dict[str, list[int]] = {"is_first": [], "is_last": [], "is_terminal": []}
    stamps: dict[str, list[float]] = {k: [] for k in schema.timestamps}
    extras: list[bytes] = []

    n = 0
    for step in ep.steps(decode_images=False):
        at = f"{where}: step {n}"
        try:
            present = _observations_of(step)
        except ValueError as e:
            raise EpisodeError(f"{at}: {e}") from None
        if set(present) != set(schema.obs):
            raise EpisodeError(
                f"{at}: observations {sorted(present)} differ from the dataset's "
                f"{sorted(schema.obs)}"
            )
        for name, spec in schema.obs.items():
            kind, payload = present[name]
            if kind != spec.kind:
                raise EpisodeError(f"{at}: observation {name!r} is {kind}, expected {spec.kind}")
            if kind in (images.JPEG, images.PNG16):
                try:
                    shape = (
                        [*jpeg_shape(payload)[:2], 3]
                        if kind == images.JPEG
                        else [*png16_shape(payload), 1]
                    )
                except ValueError as e:
                    raise EpisodeError(f"{at}: observation {name!r}: {e}") from None
                # Sizes may differ between episodes (declared None), never silently.
                spec.shape = [a if a == b else None for a, b in zip(spec.shape, shape, strict=True)]
                obs_vals[name].append(payload)
            else:
                if list(payload.shape) != spec.shape or (
                    kind == images.RAW and payload.dtype.name != spec.dtype
                ):
                    raise EpisodeError(
                        f"{at}: observation {name!r} is {payload.dtype.name}{list(payload.shape)}, "
                        f"expected {spec.dtype}{spec.shape}"
                    )
                obs_vals[name].append(payload)
        action = np.asarray(step.action, dtype=np.float64).reshape(-1)
        if action.shape[0] != schema.action_dim:
            raise EpisodeError(
                f"{at}: action has {action.shape[0]} values, expected {schema.action_dim}"
            )
        actions.append(action)
        rewards.append(float(step.reward))
        discounts.append(float(step.discount))
        ts.append(float(step.t))
        flags["is_first"].append(int(bool(step.is_first)))
        flags["is_last"].append(int(bool(step.is_last)))
        flags["is_terminal"].append(int(bool(step.is_terminal)))
        for k in schema.timestamps:
            v = step.timestamps.get(k)
            stamps[k].append(math.nan if v is None else float(v))
        if schema.include_extra:
            extras.append(json.dumps(step.extra, sort_keys=True, default=str).encode())
        n += 1
    if n != ep.num_steps:
        raise EpisodeError(f"{where}: read {n} steps but the episode says {ep.num_steps}")

    feats: dict[str, pb.Feature] = {}
    for name, spec in schema.obs.items():
        key = f"steps/observation/{name}"
        vals = obs_vals[name]
        if spec.kind in (images.JPEG, images.PNG16):
            feats[key] = pb.bytes_feature(vals)
        elif spec.kind == "bool":
            flat: Any = np.concatenate([v.reshape(-1) for v in vals]) if vals else []
            feats[key] = pb.int64_feature(int(b) for b in flat)
        else:
            le = np.dtype(spec.dtype).newbyteorder("<")
            feats[key] = pb.bytes_feature(np.ascontiguousarray(v, dtype=le).tobytes() for v in vals)
    feats["steps/action"] = pb.bytes_feature(
        np.ascontiguousarray(a, dtype="<f8").tobytes() for a in actions
    )
    feats["steps/reward"] = pb.bytes_feature(_f64_bytes(rewards))
    feats["steps/discount"] = pb.bytes_feature(_f64_bytes(discounts))
    feats["steps/t"] = pb.bytes_feature(_f64_bytes(ts))
    for k, flag_vals in flags.items():
        feats[f"steps/{k}"] = pb.int64_feature(flag_vals)
    for k, stamp_vals in stamps.items():
        feats[f"steps/timestamps/{k}"] = pb.bytes_feature(_f64_bytes(stamp_vals))
    if schema.include_extra:
        feats["steps/extra_json"] = pb.bytes_feature(extras)

    meta = {**meta, "num_steps": n}
    for k, t in schema.meta_types.items():
        feats[f"episode_metadata/{k}"] = _meta_feature(t, meta[k])
    meta_json = json.dumps(meta, sort_keys=True, default=str, separators=(",", ":"))
    feats[f"episode_metadata/{METADATA_JSON_KEY}"] = pb.bytes_feature([meta_json.encode()])
    chunks, size = pb.example_chunks(feats)
    return chunks, size, n


# --------------------------------------------------------------------------- #
# Files


_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class _ShardWriter:
    """Shards of one split: a new file whenever the next record would overflow."""

    def __init__(self, tmp: Path, prefix: str, max_bytes: int) -> None:
        self.tmp, self.prefix, self.max_bytes = tmp, prefix, max_bytes
        self.lengths: list[int] = []
        self.num_bytes = 0  # serialized examples, no framing: what tfds records
        self._f: Any = None
        self._size = 0

    def write(self, chunks: list[bytes | memoryview], size: int) -> None:
        """Append one record, TFRecord-framed, whose data is ``chunks`` (``size`` bytes).

        The CRC is computed chunk by chunk and the chunks written as they are, so
        an episode's tens of megabytes of JPEG are never joined into one buffer.
        """
        framed = size + OVERHEAD
        if self._f is None or (self._size and self._size + framed > self.max_bytes):
            self._next()
        crc = 0
        for c in chunks:
            crc = google_crc32c.extend(crc, c)
        length = _U64.pack(size)
        self._f.write(length + _U32.pack(masked_crc32c(length)))
        self._f.writelines(chunks)
        self._f.write(_U32.pack(mask(crc)))
        self._size += framed
        self.lengths[-1] += 1
        self.num_bytes += size

    def _next(self) -> None:
        self._close()
        # held open across write() calls: closed by finish(), or close() on errors
        self._f = open(self.tmp / f"{self.prefix}-{len(self.lengths):05d}", "wb")  # noqa: SIM115
        self._size = 0
        self.lengths.append(0)

    def _close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def finish(self) -> list[str]:
        """Rename the shards to their final ``-XXXXX-of-YYYYY`` names."""
        self._close()
        total = len(self.lengths)
        names = []
        for i in range(total):
            final = f"{self.prefix}-{i:05d}-of-{total:05d}"
            move(self.tmp / f"{self.prefix}-{i:05d}", self.tmp / final)
            names.append(final)
        return names


def _write_json(path: Path, obj: Any, indent: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _place(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``, replacing an old dataset there."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise EpisodeError(f"{out_dir} exists and is not a directory")
        contents = list(out_dir.iterdir())
        if contents and not (out_dir / "dataset_info.json").is_file():
            raise EpisodeError(
                f"{out_dir} is not empty and holds no TFDS dataset; refusing to replace it"
            )
    replace_dir(tmp, out_dir)


# --------------------------------------------------------------------------- #


def export_tfds(
    episodes: Sequence[EpisodeLike],
    out_dir: Path,
    *,
    splits: dict[str, str],
    dataset_name: str = "continuon_episodes",
    version: str = "1.0.0",
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
    include_extra: bool = False,
    description: str = "Continuon Brain robot episodes in RLDS layout.",
    stats: TfdsExportStats | None = None,
) -> list[Path]:
    """Write ``episodes`` as a TFDS (RLDS) dataset in ``out_dir``; return the files written.

    ``splits`` maps each episode's (original) ``episode_id`` to its split name.
    ``transform_metadata`` (e.g. the anonymizer) gets a copy of each episode's
    metadata and returns what is written.  Raises ``EpisodeError`` for corrupt or
    inconsistent episodes (the message names the episode and step) and
    ``ValueError`` for bad arguments; ``out_dir`` is untouched in either case.
    See the module docstring for the layout.
    """
    out_dir = Path(out_dir)
    if not _NAME_RE.match(dataset_name):
        raise ValueError(f"dataset_name {dataset_name!r} must be snake_case (tfds naming)")
    if not _VERSION_RE.match(version):
        raise ValueError(f"version {version!r} must be MAJOR.MINOR.PATCH")
    if shard_max_bytes < 1:
        raise ValueError("shard_max_bytes must be positive")
    if not episodes:
        raise ValueError("no episodes to export")
    ids = [ep.episode_id for ep in episodes]
    if len(set(ids)) != len(ids):
        raise ValueError("episode ids must be unique")
    missing = [i for i in ids if i not in splits]
    if missing:
        raise ValueError(f"{len(missing)} episode(s) have no split, e.g. {missing[0]}")
    for s in {splits[i] for i in ids}:
        if not _SPLIT_RE.match(s):
            raise ValueError(f"split name {s!r} is not a valid TFDS split name")

    # Pass 1: metadata and the first step of every episode -> the schema.
    metas: list[dict[str, Any]] = []
    first_obs: dict[str, _Obs] | None = None
    first_where = ""
    action_dim = -1
    stamp_keys: set[str] = set()
    for ep in episodes:
        where = f"episode {ep.episode_id} ({getattr(ep, 'path', '?')})"
        meta = dict(ep.metadata)
        meta.setdefault("episode_id", ep.episode_id)
        meta = transform_metadata(meta) if transform_metadata is not None else meta
        if not isinstance(meta, dict):
            raise ValueError(f"transform_metadata returned {type(meta).__name__}, not a dict")
        metas.append({**meta, "truncated": bool(ep.truncated), "num_steps": int(ep.num_steps)})
        it = ep.steps(decode_images=False)
        try:
            step = next(it, None)
        finally:
            it.close()  # type: ignore[attr-defined]
        if step is None:
            raise EpisodeError(f"{where}: has no steps")
        try:
            obs = {n: _obs_spec(n, k, p) for n, (k, p) in _observations_of(step).items()}
        except ValueError as e:
            raise EpisodeError(f"{where}: step 0: {e}") from None
        for name in obs:
            _check_name("observation", name)
        dim = int(np.asarray(step.action).size)
        if first_obs is None:
            first_obs, first_where, action_dim = obs, where, dim
        else:
            sig = {n: o.kind for n, o in obs.items()}
            ref = {n: o.kind for n, o in first_obs.items()}
            if sig != ref:
                raise EpisodeError(
                    f"{where}: observations {sig} differ from {ref} of {first_where}; "
                    "export episodes with the same sensors together"
                )
            if dim != action_dim:
                raise EpisodeError(
                    f"{where}: action size {dim} differs from {action_dim} of {first_where}"
                )
            for n, o in obs.items():
                f = first_obs[n]
                if o.kind in (images.JPEG, images.PNG16):
                    f.shape = [a if a == b else None for a, b in zip(f.shape, o.shape, strict=True)]
                elif (o.dtype, o.shape) != (f.dtype, f.shape):
                    raise EpisodeError(
                        f"{where}: observation {n!r} is {o.dtype}{o.shape}, "
                        f"{first_where} has {f.dtype}{f.shape}"
                    )
        for k in step.timestamps:
            _check_name("timestamp", k)
        stamp_keys.update(step.timestamps)
    assert first_obs is not None
    schema = _Schema(
        obs=first_obs,
        action_dim=action_dim,
        timestamps=sorted(stamp_keys),
        meta_types=_merge_meta_types(metas),
        include_extra=include_extra,
    )

    # Pass 2: write the shards into a temporary sibling, then rename into place.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tfds-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    tmp = out_dir.parent / f".{out_dir.name}.tfds-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    names: list[str] = []
    split_infos: list[dict[str, Any]] = []
    st = TfdsExportStats()
    try:
        split_names = sorted(
            set(splits[i] for i in ids),
            key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s),
        )
        for split in split_names:
            writer = _ShardWriter(
                tmp, f"{dataset_name}-{split}.{FILE_FORMAT}", max_bytes=shard_max_bytes
            )
            count = 0
            try:
                for ep, meta in zip(episodes, metas, strict=True):
                    if splits[ep.episode_id] != split:
                        continue
                    where = f"episode {ep.episode_id} ({getattr(ep, 'path', '?')})"
                    chunks, nbytes, nsteps = _encode_episode(ep, meta, schema, where)
                    writer.write(chunks, nbytes)
                    count += 1
                    st.steps += nsteps
                names.extend(writer.finish())
            except BaseException:
                writer.close()  # release the open shard; the temp dir is removed below
                raise
            split_infos.append(
                {
                    "name": split,
                    "filepathTemplate": FILEPATH_TEMPLATE,
                    "numBytes": str(writer.num_bytes),
                    "shardLengths": [str(x) for x in writer.lengths],
                }
            )
            st.splits[split] = count
            st.episodes += count
            st.bytes += writer.num_bytes
        _write_json(tmp / "features.json", features_json(schema), indent=4)
        _write_json(
            tmp / "dataset_info.json",
            {
                "name": dataset_name,
                "version": version,
                "description": description,
                "fileFormat": FILE_FORMAT,
                "splits": split_infos,
            },
            indent=2,
        )
        names += ["features.json", "dataset_info.json"]
        fsync_dir(tmp)
        _place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if stats is not None:
        stats.__dict__.update(st.__dict__)
    return [out_dir / n for n in names]
