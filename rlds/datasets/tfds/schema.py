"""The dataset's schema: what features every episode has, from the first step of each."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rlds import images
from rlds.datasets.tfds.headers import jpeg_shape, png16_shape
from rlds.errors import EpisodeError
from rlds.types import StepData

METADATA_JSON_KEY = "metadata_json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

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
class Obs:
    name: str
    kind: str  # images.JPEG | images.PNG16 | images.RAW | "bool"
    dtype: str
    shape: list[int | None]


@dataclass
class Schema:
    obs: dict[str, Obs]
    action_dim: int
    timestamps: list[str]
    meta_types: dict[str, str]  # key -> "text" | "bool" | "int64" | "float64"
    include_extra: bool


def observations_of(step: StepData) -> dict[str, tuple[str, Any]]:
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


def obs_spec(name: str, kind: str, payload: Any) -> Obs:
    if kind == images.JPEG:
        h, w, _ = jpeg_shape(payload)
        return Obs(name, kind, "uint8", [h, w, 3])
    if kind == images.PNG16:
        h, w = png16_shape(payload)
        return Obs(name, kind, "uint16", [h, w, 1])
    dtype = payload.dtype.name
    if kind == images.RAW and dtype not in _RAW_DTYPES:
        raise ValueError(f"observation {name!r}: dtype {dtype} cannot be exported to TFDS")
    return Obs(name, kind, dtype, list(payload.shape))


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


def merge_meta_types(metas: list[dict[str, Any]]) -> dict[str, str]:
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


def check_name(kind: str, name: str) -> None:
    if not _KEY_RE.match(name):
        raise EpisodeError(f"{kind} name {name!r} cannot be a TFDS feature name")


def infer_schema(
    episodes: Sequence[EpisodeLike],
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None,
    include_extra: bool,
) -> tuple[Schema, list[dict[str, Any]]]:
    """Pass 1: the schema from every episode's first step, and each one's transformed metadata.

    Only the first step is read, so a mismatch between episodes is refused before
    anything is written.
    """
    metas: list[dict[str, Any]] = []
    first_obs: dict[str, Obs] | None = None
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
        step = _first_step(ep, where)
        try:
            obs = {n: obs_spec(n, k, p) for n, (k, p) in observations_of(step).items()}
        except ValueError as e:
            raise EpisodeError(f"{where}: step 0: {e}") from None
        for name in obs:
            check_name("observation", name)
        dim = int(np.asarray(step.action).size)
        if first_obs is None:
            first_obs, first_where, action_dim = obs, where, dim
        else:
            _check_same(obs, dim, first_obs, action_dim, where, first_where)
        for k in step.timestamps:
            check_name("timestamp", k)
        stamp_keys.update(step.timestamps)
    assert first_obs is not None
    schema = Schema(
        obs=first_obs,
        action_dim=action_dim,
        timestamps=sorted(stamp_keys),
        meta_types=merge_meta_types(metas),
        include_extra=include_extra,
    )
    return schema, metas


def _first_step(ep: EpisodeLike, where: str) -> StepData:
    it = ep.steps(decode_images=False)
    try:
        step = next(it, None)
    finally:
        it.close()  # type: ignore[attr-defined]
    if step is None:
        raise EpisodeError(f"{where}: has no steps")
    return step


def _check_same(
    obs: dict[str, Obs],
    dim: int,
    first_obs: dict[str, Obs],
    action_dim: int,
    where: str,
    first_where: str,
) -> None:
    """Refuse an episode whose sensors differ from the first one's; widen image sizes."""
    sig = {n: o.kind for n, o in obs.items()}
    ref = {n: o.kind for n, o in first_obs.items()}
    if sig != ref:
        raise EpisodeError(
            f"{where}: observations {sig} differ from {ref} of {first_where}; "
            "export episodes with the same sensors together"
        )
    if dim != action_dim:
        raise EpisodeError(f"{where}: action size {dim} differs from {action_dim} of {first_where}")
    for n, o in obs.items():
        f = first_obs[n]
        if o.kind in (images.JPEG, images.PNG16):
            f.shape = [a if a == b else None for a, b in zip(f.shape, o.shape, strict=True)]
        elif (o.dtype, o.shape) != (f.dtype, f.shape):
            raise EpisodeError(
                f"{where}: observation {n!r} is {o.dtype}{o.shape}, "
                f"{first_where} has {f.dtype}{f.shape}"
            )
