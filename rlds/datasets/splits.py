"""Deterministic train/val/test splits by episode.

Splitting by episode (never by step) keeps consecutive, near-identical frames
of one drive out of both train and test.  The split depends only on the seed
and the set of episode ids, not on their order or on the machine, so the
same export run twice, or on the cloud, gives the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLIT_NAMES = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1), with a clear error for anything else."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--split needs three fractions train,val,test; got {text!r}")
    try:
        fr = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--split fractions must be numbers; got {text!r}") from None
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"--split fractions must be non-negative and sum to 1; got {text!r}")
    return fr  # type: ignore[return-value]


def assign_splits(
    episode_ids: Sequence[str],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, str]:
    """Map each episode id to 'train', 'val' or 'test'.

    Sizes follow the fractions by largest remainder, so they always add up to
    the number of episodes; the order is a seeded hash, so another seed gives
    another split of the same sizes.
    """
    ids = sorted(set(episode_ids))
    if len(ids) != len(episode_ids):
        raise ValueError("episode ids must be unique")
    n = len(ids)
    raw = [f * n for f in fractions]
    sizes = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: (-(raw[i] - sizes[i]), i))[: n - sum(sizes)]:
        sizes[i] += 1
    order = sorted(ids, key=lambda e: hashlib.sha256(f"{seed}:{e}".encode()).hexdigest())
    out: dict[str, str] = {}
    start = 0
    for name, size in zip(SPLIT_NAMES, sizes, strict=True):
        for e in order[start : start + size]:
            out[e] = name
        start += size
    return out
