"""One episode -> one serialized ``tf.train.Example`` (the record of one episode)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlds import images
from rlds.datasets import tf_example as pb
from rlds.datasets.tfds.headers import jpeg_shape, png16_shape
from rlds.datasets.tfds.schema import METADATA_JSON_KEY, EpisodeLike, Schema, observations_of
from rlds.errors import EpisodeError
from rlds.types import StepData


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


@dataclass
class _Columns:
    """One episode's values per feature, gathered in step order."""

    schema: Schema
    obs_vals: dict[str, list[Any]] = field(init=False)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    discounts: list[float] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    flags: dict[str, list[int]] = field(
        default_factory=lambda: {"is_first": [], "is_last": [], "is_terminal": []}
    )
    stamps: dict[str, list[float]] = field(init=False)
    extras: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.obs_vals = {n: [] for n in self.schema.obs}
        self.stamps = {k: [] for k in self.schema.timestamps}

    def add(self, step: StepData, at: str) -> None:
        """Check one step against the schema and append its values."""
        schema = self.schema
        self._add_observations(step, at)
        action = np.asarray(step.action, dtype=np.float64).reshape(-1)
        if action.shape[0] != schema.action_dim:
            raise EpisodeError(
                f"{at}: action has {action.shape[0]} values, expected {schema.action_dim}"
            )
        self.actions.append(action)
        self.rewards.append(float(step.reward))
        self.discounts.append(float(step.discount))
        self.ts.append(float(step.t))
        self.flags["is_first"].append(int(bool(step.is_first)))
        self.flags["is_last"].append(int(bool(step.is_last)))
        self.flags["is_terminal"].append(int(bool(step.is_terminal)))
        for k in schema.timestamps:
            v = step.timestamps.get(k)
            self.stamps[k].append(math.nan if v is None else float(v))
        if schema.include_extra:
            self.extras.append(json.dumps(step.extra, sort_keys=True, default=str).encode())

    def _add_observations(self, step: StepData, at: str) -> None:
        schema = self.schema
        try:
            present = observations_of(step)
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
                self.obs_vals[name].append(payload)
            else:
                if list(payload.shape) != spec.shape or (
                    kind == images.RAW and payload.dtype.name != spec.dtype
                ):
                    raise EpisodeError(
                        f"{at}: observation {name!r} is {payload.dtype.name}{list(payload.shape)}, "
                        f"expected {spec.dtype}{spec.shape}"
                    )
                self.obs_vals[name].append(payload)

    def step_features(self) -> dict[str, pb.Feature]:
        """The ``steps/...`` features: each step's values concatenated in step order."""
        schema = self.schema
        feats: dict[str, pb.Feature] = {}
        for name, spec in schema.obs.items():
            key = f"steps/observation/{name}"
            vals = self.obs_vals[name]
            if spec.kind in (images.JPEG, images.PNG16):
                feats[key] = pb.bytes_feature(vals)
            elif spec.kind == "bool":
                flat: Any = np.concatenate([v.reshape(-1) for v in vals]) if vals else []
                feats[key] = pb.int64_feature(int(b) for b in flat)
            else:
                le = np.dtype(spec.dtype).newbyteorder("<")
                feats[key] = pb.bytes_feature(
                    np.ascontiguousarray(v, dtype=le).tobytes() for v in vals
                )
        feats["steps/action"] = pb.bytes_feature(
            np.ascontiguousarray(a, dtype="<f8").tobytes() for a in self.actions
        )
        feats["steps/reward"] = pb.bytes_feature(_f64_bytes(self.rewards))
        feats["steps/discount"] = pb.bytes_feature(_f64_bytes(self.discounts))
        feats["steps/t"] = pb.bytes_feature(_f64_bytes(self.ts))
        for k, flag_vals in self.flags.items():
            feats[f"steps/{k}"] = pb.int64_feature(flag_vals)
        for k, stamp_vals in self.stamps.items():
            feats[f"steps/timestamps/{k}"] = pb.bytes_feature(_f64_bytes(stamp_vals))
        if schema.include_extra:
            feats["steps/extra_json"] = pb.bytes_feature(self.extras)
        return feats


def encode_episode(
    ep: EpisodeLike, meta: dict[str, Any], schema: Schema, where: str
) -> tuple[list[bytes | memoryview], int, int]:
    """The serialized Example as chunks, its size in bytes, and the number of steps."""
    cols = _Columns(schema)
    n = 0
    for step in ep.steps(decode_images=False):
        cols.add(step, f"{where}: step {n}")
        n += 1
    if n != ep.num_steps:
        raise EpisodeError(f"{where}: read {n} steps but the episode says {ep.num_steps}")

    feats = cols.step_features()
    meta = {**meta, "num_steps": n}
    for k, t in schema.meta_types.items():
        feats[f"episode_metadata/{k}"] = _meta_feature(t, meta[k])
    meta_json = json.dumps(meta, sort_keys=True, default=str, separators=(",", ":"))
    feats[f"episode_metadata/{METADATA_JSON_KEY}"] = pb.bytes_feature([meta_json.encode()])
    chunks, size = pb.example_chunks(feats)
    return chunks, size, n
