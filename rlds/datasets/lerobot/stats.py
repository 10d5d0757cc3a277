"""Per-feature stats the way LeRobot computes and aggregates them (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlds.datasets.lerobot.layout import DEPTH_KEY, QUANTILES, VIDEO_KEY


def _quantile_keys() -> list[str]:
    return [f"q{round(q * 100):02d}" for q in QUANTILES]


def vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of an (N,) or (N, D) array, shaped as LeRobot keeps them."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float64)
    flat = x.reshape(len(x), -1).astype(np.float64)
    out = {
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "mean": flat.mean(axis=0),
        "std": flat.std(axis=0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    qs = np.quantile(flat, QUANTILES, axis=0)
    for key, q in zip(_quantile_keys(), qs, strict=True):
        out[key] = q
    return out


def image_stats(images: np.ndarray, scale: float = 255.0) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, C, H, W) samples, divided by ``scale``, shapes (C, 1, 1)."""
    n, c = images.shape[:2]
    per_pixel = images.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    out = {
        "min": per_pixel.min(axis=0),
        "max": per_pixel.max(axis=0),
        "mean": per_pixel.mean(axis=0),
        "std": per_pixel.std(axis=0),
    }
    qs = np.quantile(per_pixel, QUANTILES, axis=0)
    for key, q in zip(_quantile_keys(), qs, strict=True):
        out[key] = q
    res = {k: (v / scale).reshape(c, 1, 1) for k, v in out.items()}
    res["count"] = np.array([n], dtype=np.int64)
    return res


def aggregate_stats(
    per_episode: Sequence[dict[str, dict[str, np.ndarray]]],
) -> dict[str, Any]:
    """Combine episode stats: count-weighted mean, pooled variance, min of mins ...

    Quantiles are combined as LeRobot does, by a count-weighted mean.
    """
    keys: list[str] = []
    for st in per_episode:
        keys.extend(k for k in st if k not in keys)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in keys:
        items = [st[key] for st in per_episode if key in st]
        counts = np.stack([s["count"] for s in items]).astype(np.float64)
        means = np.stack([s["mean"] for s in items])
        w = counts.reshape(counts.shape[0], *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * w).sum(axis=0) / total
        var = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * w).sum(
            axis=0
        ) / total
        agg = {
            "min": np.min(np.stack([s["min"] for s in items]), axis=0),
            "max": np.max(np.stack([s["max"] for s in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(total)], dtype=np.int64),
        }
        for q in _quantile_keys():
            agg[q] = (np.stack([s[q] for s in items]) * w).sum(axis=0) / total
        out[key] = agg
    return out


def sample_indices(n: int) -> list[int]:
    """LeRobot's image sampling: every frame up to 100, then about n**0.75 (max 10k)."""
    num = n if n < 100 else max(100, min(int(n**0.75), 10_000))
    indices: list[int] = np.round(np.linspace(0, n - 1, num)).astype(int).tolist()
    return indices


def downsample(chw: np.ndarray) -> np.ndarray:
    """LeRobot's stats downsampling: images of 300 px or more go to about 150 px."""
    _, h, w = chw.shape
    if max(h, w) < 300:
        return chw
    step = int(w / 150) if w > h else int(h / 150)
    return chw[:, ::step, ::step]


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def episode_stats(
    columns: dict[str, np.ndarray],
    image_samples: list[np.ndarray],
    depth_samples: list[np.ndarray] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """One episode's stats: every frame column, and the sampled camera (and depth) frames."""
    ep_stats = {key: vector_stats(val) for key, val in columns.items()}
    ep_stats[VIDEO_KEY] = image_stats(np.stack(image_samples))
    if depth_samples is not None:
        ep_stats[DEPTH_KEY] = image_stats(np.stack(depth_samples), scale=1.0)
    return ep_stats
