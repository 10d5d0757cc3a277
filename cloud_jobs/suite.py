"""The generalization suite: ``cloud_jobs evaluate --suite standard``.

One held-out track says little about a policy that will meet a new room; the suite drives
it under every combination of unseen layouts, lighting and floor, side by side with the
expert on the same conditions, and reports how often it completes its laps without an
off-track event (success) and its mean |cross-track error| relative to the expert's.

``standard``: 10 random layouts that no recipe in this repository trains on
(``random-1001`` ... ``random-1010``; the demos use ``random-1`` ... ``random-7``) x
{day, dusk, glare} x {asphalt, carpet} = 60 conditions.

The result is an ``eval.json`` the release gate reads like any other (``summary.policy`` /
``summary.expert`` with the same keys as a track evaluation), plus ``runs`` (one row per
condition) and ``breakdown`` (success rate per layout, lighting and texture), and a
markdown table ``suite.md``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain import __version__
from brain.hardware.sim.closed_loop import (
    Driver,
    EvalConditions,
    ExpertDriver,
    run_drive,
    sim_config,
    step_budget,
)
from brain.hardware.sim.track import make_track
from common.durable import replace_file, write_json


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    tracks: tuple[str, ...]
    lightings: tuple[str, ...]
    textures: tuple[str, ...]

    def conditions(self) -> list[tuple[str, str, str]]:
        """(track, lighting, texture) for every condition, layout-major."""
        return [(t, li, tx) for t in self.tracks for li in self.lightings for tx in self.textures]


SUITES: dict[str, Suite] = {
    "standard": Suite(
        "standard",
        tuple(f"random-{1000 + i}" for i in range(1, 11)),
        ("day", "dusk", "glare"),
        ("asphalt", "carpet"),
    ),
}
#: What a run row keeps per driver (the trace and lap times stay out of a 60-row table).
ROW_KEYS = (
    "laps",
    "completed",
    "termination",
    "steps",
    "mean_abs_cte_m",
    "max_abs_cte_m",
    "off_track_events",
    "mean_speed_mps",
    "progress_m",
)


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r} (known: {', '.join(SUITES)})") from None


def success(row: dict[str, Any]) -> bool:
    """A condition is a success when the laps are done without a single off-track event."""
    return bool(row["completed"]) and int(row["off_track_events"]) == 0


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One driver's results over runs: the keys the release gate and the reports read."""
    if not rows:
        return {}
    return {
        "tracks": len(rows),
        "completed": sum(bool(r["completed"]) for r in rows),
        "successes": sum(success(r) for r in rows),
        "success_rate": sum(success(r) for r in rows) / len(rows),
        "laps": sum(int(r["laps"]) for r in rows),
        "mean_abs_cte_m": float(np.mean([r["mean_abs_cte_m"] for r in rows])),
        "max_abs_cte_m": float(np.max([r["max_abs_cte_m"] for r in rows])),
        "off_track_events": sum(int(r["off_track_events"]) for r in rows),
        "mean_speed_mps": float(np.mean([r["mean_speed_mps"] for r in rows])),
    }


def aggregate(runs: Sequence[dict[str, Any]], drivers: Sequence[str]) -> dict[str, Any]:
    """Summary per driver, the |cte| ratios and success per layout/lighting/texture."""
    out: dict[str, Any] = {"summary": {d: summarize([r[d] for r in runs]) for d in drivers}}
    if "policy" in drivers and "expert" in drivers:
        pol, exp = out["summary"]["policy"], out["summary"]["expert"]
        # Ratio of the means (what the release gate uses) and the median per-condition ratio,
        # which one disastrous condition cannot dominate.
        pol["cte_ratio"] = pol["mean_abs_cte_m"] / max(exp["mean_abs_cte_m"], 1e-6)
        per = [
            r["policy"]["mean_abs_cte_m"] / max(r["expert"]["mean_abs_cte_m"], 1e-6) for r in runs
        ]
        pol["median_condition_cte_ratio"] = float(statistics.median(per))
    main = "policy" if "policy" in drivers else drivers[0]
    breakdown: dict[str, dict[str, float]] = {}
    for key in ("track", "lighting", "texture"):
        groups: dict[str, list[bool]] = {}
        for r in runs:
            groups.setdefault(r[key], []).append(success(r[main]))
        breakdown[key] = {k: sum(v) / len(v) for k, v in groups.items()}
    out["breakdown"] = {"driver": main, "success_rate": breakdown}
    return out


def run_suite(
    policy: Driver | None,
    suite: Suite,
    base: EvalConditions,
    *,
    expert_baseline: bool = True,
    info: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drive every condition of ``suite`` (policy, then the expert) under ``base``'s settings."""
    drivers: list[Driver] = [policy] if policy is not None else []
    if expert_baseline:
        drivers.append(ExpertDriver())
    if not drivers:
        raise ValueError("nothing to evaluate: no policy and no expert baseline")
    conds = suite.conditions()
    for track, lighting, texture in conds:  # bad names fail before any driving
        make_track(track)
        sim_config(track, dataclasses.replace(base, lighting=lighting, texture=texture))
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for i, (track, lighting, texture) in enumerate(conds):
        c = dataclasses.replace(base, lighting=lighting, texture=texture)
        row: dict[str, Any] = {"track": track, "lighting": lighting, "texture": texture}
        for d in drivers:
            r, _ = run_drive(d, track, c)
            row[d.name] = {k: r[k] for k in ROW_KEYS}
        runs.append(row)
        if log:
            log(_progress(i, len(conds), row, [d.name for d in drivers]))
    names = [d.name for d in drivers]
    return {
        "kind": "closed_loop_eval",
        "software_version": __version__,
        **(info or {}),
        "suite": suite.name,
        "conditions": {
            **{
                k: v
                for k, v in dataclasses.asdict(base).items()
                if k not in ("lighting", "texture")
            },
            "tracks": list(suite.tracks),
            "lightings": list(suite.lightings),
            "textures": list(suite.textures),
            "step_budget": {t: step_budget(t, base) for t in suite.tracks},
        },
        "runs": runs,
        **aggregate(runs, names),
        "wall_s": time.perf_counter() - t0,
    }


def _progress(i: int, n: int, row: dict[str, Any], names: list[str]) -> str:
    cells = []
    for name in names:
        r = row[name]
        mark = "ok" if success(r) else r["termination"]
        cells.append(f"{name} {mark} |cte| {r['mean_abs_cte_m']:.3f}")
    where = f"{row['track']}/{row['lighting']}/{row['texture']}"
    return f"[{i + 1}/{n}] {where:<28} " + "  ".join(cells)


def table_markdown(result: dict[str, Any]) -> str:
    """The suite's headline table and the success rate per lighting and texture."""
    s = result["summary"]
    lines = [
        f"Suite `{result['suite']}`: {s[next(iter(s))]['tracks']} conditions, "
        f"{result['conditions']['laps']} lap(s) each.",
        "",
        "| driver | success (laps, no off-track) | completed | off-track events "
        "| mean \\|cte\\| (m) | \\|cte\\| ratio to the expert (of means / median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in s.items():
        ratio = ""
        if "cte_ratio" in d:
            ratio = f"{d['cte_ratio']:.2f}x / {d['median_condition_cte_ratio']:.2f}x"
        lines.append(
            f"| {name} | {d['successes']}/{d['tracks']} ({d['success_rate']:.0%}) "
            f"| {d['completed']} | {d['off_track_events']} | {d['mean_abs_cte_m']:.3f} | {ratio} |"
        )
    b = result["breakdown"]["success_rate"]
    for key in ("lighting", "texture"):
        cells = ", ".join(f"{k} {v:.0%}" for k, v in b[key].items())
        lines.append(f"\nSuccess by {key} ({result['breakdown']['driver']}): {cells}.")
    return "\n".join(lines) + "\n"


def write_suite(result: dict[str, Any], out: Path) -> None:
    """``eval.json`` and ``suite.md`` under ``out``, each replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result, sort_keys=False)
    replace_file(out / "suite.md", table_markdown(result).encode("utf-8"))
