"""The promotion gate: a fine-tuned candidate replaces the current policy only if it is better.

Torch-free: the worker measures, this module decides.  Three checks, all must pass:

1. **Held-out action error.**  Candidate and current policy run over the held-out episodes
   (never trained on), tick by tick with their recurrent state carried as on the robot; the
   mean absolute error against the recorded actions must improve by at least
   ``min_improvement`` (a fraction; 0 = "not worse").
2. **Safety bound.**  The mean absolute change of the action between current and candidate
   on the same frames must stay under ``max_action_change``: a fine-tune that rewrites the
   driving wholesale from a few minutes of data is not trusted, however good its numbers.
3. **Closed loop** (only when the robot is the simulated one): both drive the robot's own sim
   world (:func:`brain.hardware.sim.closed_loop.run_drive`) for the same number of ticks; the
   candidate must not make less progress, nor leave the road more often.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from brain.hardware.sim.closed_loop import Driver, EvalConditions, run_drive

#: A candidate must reach this fraction of the current policy's closed-loop progress.
PROGRESS_TOLERANCE = 0.95


@dataclass
class GateMetrics:
    held_out_episodes: int
    held_out_steps: int
    base_mae: float | None
    candidate_mae: float | None
    mean_action_change: float | None
    closed_loop: dict[str, dict[str, Any]] | None = None  # {"base": row, "candidate": row}


@dataclass
class GateDecision:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    metrics: GateMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reasons": list(self.reasons),
            "metrics": None if self.metrics is None else asdict(self.metrics),
        }


def decide(m: GateMetrics, *, max_action_change: float, min_improvement: float) -> GateDecision:
    """Accept or reject, with every reason for a rejection (and the pass lines when accepted)."""
    problems: list[str] = []
    notes: list[str] = []
    if m.held_out_episodes == 0 or m.base_mae is None or m.candidate_mae is None:
        problems.append("no held-out episodes to judge the candidate on")
    else:
        limit = m.base_mae * (1.0 - min_improvement)
        if not m.candidate_mae <= limit:
            problems.append(
                f"worse on held-out episodes: action error {m.candidate_mae:.4f} vs "
                f"{m.base_mae:.4f} for the current policy (must be <= {limit:.4f})"
            )
        else:
            notes.append(f"held-out action error {m.base_mae:.4f} -> {m.candidate_mae:.4f}")
    if m.mean_action_change is not None:
        if not m.mean_action_change <= max_action_change:
            problems.append(
                f"mean action change {m.mean_action_change:.3f} exceeds the safety bound "
                f"{max_action_change:.3f}"
            )
        else:
            notes.append(f"mean action change {m.mean_action_change:.3f} <= {max_action_change}")
    if m.closed_loop is not None:
        why = closed_loop_worse(m.closed_loop["base"], m.closed_loop["candidate"])
        if why:
            problems.append(f"worse in closed loop: {why}")
        else:
            c = m.closed_loop["candidate"]
            notes.append(
                f"closed loop: progress {c['progress_m']:.1f} m, "
                f"off-track {c['off_track_events']}, mean |cte| {c['mean_abs_cte_m']:.3f} m"
            )
    if problems:
        return GateDecision(False, problems, m)
    return GateDecision(True, notes, m)


def closed_loop_worse(base: dict[str, Any], cand: dict[str, Any]) -> str | None:
    """Why ``cand`` drove worse than ``base`` (None when it did not)."""
    if cand.get("termination") == "bad_action":
        return "the candidate produced a non-finite or malformed action"
    if cand["progress_m"] < PROGRESS_TOLERANCE * base["progress_m"] - 1e-6:
        return f"progress {cand['progress_m']:.1f} m vs {base['progress_m']:.1f} m"
    if cand["off_track_events"] > base["off_track_events"]:
        return f"off-track events {cand['off_track_events']} vs {base['off_track_events']}"
    return None


def closed_loop_compare(
    base: Driver,
    candidate: Driver,
    sim: dict[str, Any],
    *,
    steps: int,
    rate_hz: float = 20.0,
) -> dict[str, dict[str, Any]]:
    """Both drivers on the robot's sim world (same track, lighting, texture, seed, trim)."""
    cond = EvalConditions(
        laps=1_000,  # the step budget ends the drive, not the laps
        rate_hz=rate_hz,
        max_steps=steps,
        seed=int(sim.get("seed", 0)),
        lighting=str(sim.get("lighting", "day")),
        texture=str(sim.get("texture", "asphalt")),
        steering_trim=float(sim.get("steering_trim", 0.0)),
        render_size="model",  # ~10x cheaper than 640x480 + resize, and close (docs/evaluation.md)
    )
    hw = tuple(getattr(candidate, "image_hw", (120, 160)))
    if min(hw) < 32:  # the sim camera's smallest size: render bigger and resize down
        cond = dataclasses.replace(cond, render_size="full", width=160, height=120)
    track = str(sim.get("track", "oval"))
    out: dict[str, dict[str, Any]] = {}
    for key, driver in (("base", base), ("candidate", candidate)):
        row, _ = run_drive(driver, track, cond)
        out[key] = {
            k: row[k]
            for k in (
                "progress_m",
                "off_track_events",
                "mean_abs_cte_m",
                "mean_speed_mps",
                "laps",
                "steps",
                "termination",
            )
        }
    return out
