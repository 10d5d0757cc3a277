"""Memorize vs frozen on a mis-trimmed car: the comparison behind docs/model.md's table.

The policy's fast memory is written at run time (memory lr 1, "memorize") or not at all
(lr 0, "frozen").  With the steering servo mis-trimmed by +T and -T the memorizing policy
should stay closer to the line than the frozen one; the same pair without a trim shows
whether freezing merely hurts everywhere (then a "gain" under the trim is not adaptation).
Each drive is :func:`brain.hardware.sim.closed_loop.run_drive`, the evaluation's one way to
drive; ``cloud_jobs evaluate --memorization-trim T`` (and so the pipeline's report) calls
:func:`compare` with its driver factory (this module knows no torch); bench/memorization.py,
which sweeps several trims and backends, shares its modes, keys and ratio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from brain.hardware.sim.closed_loop import (
    Driver,
    EvalConditions,
    run_drive,
    sim_config,
    step_budget,
)

#: memory lr multiplier per mode: what ``--memorize`` / ``--no-memorize`` set.
MODES = {"memorize": 1.0, "frozen": 0.0}


def condition_key(trim: float, mode: str) -> str:
    """``+0.15/memorize``: one condition's key in :func:`compare`'s ``mean_abs_cte_m``."""
    return f"{trim:+.2f}/{mode}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None where b is 0 or missing (a drive too short to leave the line)."""
    if a is None or b is None or not b > 0:
        return None
    return float(a / b)


def figures(trim: float, cte: dict[str, float]) -> dict[str, Any]:
    """The summary of one comparison from its per-condition mean |cte| (m).

    ratio_trimmed: memorize / frozen over +-trim (< 1: the memory helps against the trim);
    ratio_untrimmed: the same without a trim; trim_cost_*: |cte| under the trims / without.
    """
    mem = float(np.mean([cte[condition_key(t, "memorize")] for t in (trim, -trim)]))
    frz = float(np.mean([cte[condition_key(t, "frozen")] for t in (trim, -trim)]))
    mem0, frz0 = cte[condition_key(0.0, "memorize")], cte[condition_key(0.0, "frozen")]
    return {
        "memorize_trimmed_cte_m": mem,
        "frozen_trimmed_cte_m": frz,
        "memorize_untrimmed_cte_m": mem0,
        "frozen_untrimmed_cte_m": frz0,
        "ratio_trimmed": ratio(mem, frz),
        "ratio_untrimmed": ratio(mem0, frz0),
        "trim_cost_memorize": ratio(mem, mem0),
        "trim_cost_frozen": ratio(frz, frz0),
    }


def check_trim(trim: float, conditions: EvalConditions | None = None) -> None:
    """Refuse a trim the comparison cannot drive (not positive, or +-trim outside the sim's
    servo range), naming it, before any driving."""
    if not (math.isfinite(trim) and trim > 0):
        raise ValueError(f"the memorization trim must be a positive number, got {trim}")
    base = conditions if conditions is not None else EvalConditions()
    for t in (trim, -trim):  # the sim's own range check
        sim_config("oval", dataclasses.replace(base, steering_trim=t))


def compare(
    make_driver: Callable[[float], Driver],
    tracks: Sequence[str],
    conditions: EvalConditions,
    trim: float,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drive every track at steering trim +trim, -trim and 0, memorizing and frozen.

    ``make_driver(memory_lr)`` returns a fresh driver; ``conditions`` give everything but
    the trim (laps, step budget, camera); mean |cte| per condition is averaged over tracks.
    """
    check_trim(trim, conditions)
    if not tracks:
        raise ValueError("the memorization comparison needs at least one track")
    runs: list[dict[str, Any]] = []
    cte: dict[str, float] = {}
    for t in (trim, -trim, 0.0):
        cond = dataclasses.replace(conditions, steering_trim=t)
        for mode, lr in MODES.items():
            per_track = []
            for track in tracks:
                row, _ = run_drive(make_driver(lr), track, cond)
                per_track.append(float(row["mean_abs_cte_m"]))
                keep = ("laps", "steps", "off_track_events", "termination", "mean_abs_cte_m")
                runs.append(
                    {"track": track, "steering_trim": t, "mode": mode, "memory_lr": lr}
                    | {k: row[k] for k in keep}
                )
                if log:
                    log(
                        f"{track:>12} trim {t:+.2f} {mode:>8}: mean|cte| "
                        f"{row['mean_abs_cte_m']:.3f} m laps {row['laps']} ({row['termination']})"
                    )
            cte[condition_key(t, mode)] = float(np.mean(per_track))
    return {
        "kind": "memorization_comparison",
        "trim": trim,
        "tracks": list(tracks),
        "laps": conditions.laps,
        "step_budget": {t: step_budget(t, conditions) for t in tracks},
        "runs": runs,
        "mean_abs_cte_m": cte,
        "summary": figures(trim, cte),
    }
