"""Parity of an exported backend against the PyTorch policy.

Open loop: each held-out episode is run step by step from zero state through the torch
policy and through the backend, each carrying *its own* recurrent state (as the robot
does), and the actions (and next states) are compared; the actions are also scored against
the episode's labels.  Closed loop: the backend drives the simulator
(:func:`cloud_jobs.evaluate.evaluate`) and its progress and cross-track error are compared
with the FP32 ONNX graph's under identical conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .episodes import Sequence as EpSequence

#: FP32 backends must match torch this closely (max abs action difference).
FP32_ATOL = 1e-4
#: Quantized / closed-loop results may be this much worse than FP32 (percent).
MAX_DROP_PCT = 2.0
#: Absolute slack on the held-out action MAE (so that a near-perfect FP32 MAE does not turn
#: rounding noise into a "relative" failure); documented in docs/export.md.
MAE_ABS_SLACK = 1e-3
#: Cross-track errors below this are compared as if they were this (metres).
CTE_FLOOR_M = 0.02


@dataclass
class Rollout:
    actions: np.ndarray  # [T, A]
    states: dict[str, np.ndarray]  # name -> [T, ...] state after each step


def torch_rollout(policy: Any, seq: EpSequence) -> Rollout:
    import torch

    policy.eval()
    state, memory = policy.initial_state(1, device="cpu")
    acts, st, mem = [], [], []
    with torch.no_grad():
        for frame in seq.frames:
            a, state, memory = policy.step(torch.from_numpy(frame[None]), state, memory)
            acts.append(a[0].numpy().astype(np.float64))
            st.append(state[0].numpy().copy())
            mem.append(memory[0].numpy().copy())
    return Rollout(np.stack(acts), {"state": np.stack(st), "memory": np.stack(mem)})


def model_rollout(model: Any, seq: EpSequence) -> Rollout:
    rec = model.initial_recurrent()
    acts: list[np.ndarray] = []
    states: dict[str, list[np.ndarray]] = {k: [] for k in rec}
    for frame in seq.frames:
        a, rec = model.step(frame, rec)
        acts.append(np.asarray(a, dtype=np.float64))
        for k, v in rec.items():
            states[k].append(np.asarray(v).reshape(-1).copy())
    return Rollout(np.stack(acts), {k: np.stack(v) for k, v in states.items()})


def open_loop(
    reference: Sequence[Rollout], rollouts: Sequence[Rollout], seqs: Sequence[EpSequence]
) -> dict[str, Any]:
    """Differences to the reference and errors against the labels, over all sequences."""
    da = np.concatenate(
        [np.abs(r.actions - t.actions) for r, t in zip(rollouts, reference, strict=True)]
    )
    ds = [
        float(np.max(np.abs(r.states[k] - t.states[k])))
        for r, t in zip(rollouts, reference, strict=True)
        for k in t.states
        if k in r.states
    ]
    err = np.concatenate(
        [np.abs(r.actions - s.labels) for r, s in zip(rollouts, seqs, strict=True)]
    )
    return {
        "steps": int(da.shape[0]),
        "episodes": len(seqs),
        "max_abs_action_diff": float(da.max()),
        "mean_abs_action_diff": float(da.mean()),
        "max_abs_state_diff": max(ds) if ds else None,
        "action_mae_vs_labels": float(err.mean()),
        "action_mae_vs_labels_per_dim": [float(v) for v in err.mean(axis=0)],
    }


def fp32_gate(result: dict[str, Any], atol: float = FP32_ATOL) -> dict[str, Any]:
    ok = result["max_abs_action_diff"] <= atol
    return dict(result, gate="fp32_max_abs_action_diff", threshold=atol, passed=bool(ok))


def quantized_gate(
    result: dict[str, Any], fp32_mae: float, max_drop_pct: float = MAX_DROP_PCT
) -> dict[str, Any]:
    """Held-out action MAE no more than ``max_drop_pct`` % worse than FP32's (+ tiny slack)."""
    mae = result["action_mae_vs_labels"]
    limit = fp32_mae * (1.0 + max_drop_pct / 100.0) + MAE_ABS_SLACK
    pct = 100.0 * (mae - fp32_mae) / fp32_mae if fp32_mae > 0 else 0.0
    return dict(
        result,
        gate="heldout_action_mae_vs_fp32",
        fp32_action_mae_vs_labels=fp32_mae,
        mae_increase_pct=pct,
        threshold=limit,
        passed=bool(mae <= limit),
    )


# ----------------------------------------------------------------------------- closed loop


class ModelDriver:
    """Any runtime model (LoadedModel, LiteRTModel) driving the sim, state carried."""

    needs_image = True

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.image_hw = tuple(model.input_size)
        self.recurrent: dict[str, np.ndarray] | None = None

    def reset(self) -> None:
        self.recurrent = self.model.initial_recurrent()

    def act(self, image: np.ndarray | None, world: Any) -> np.ndarray:
        assert image is not None
        action, self.recurrent = self.model.step(image, self.recurrent)
        return action


def closed_loop_metrics(
    model: Any, name: str, tracks: Sequence[str], conditions: Any
) -> dict[str, Any]:
    from cloud_jobs.evaluate import evaluate

    res = evaluate(
        ModelDriver(model, name), tracks, conditions, None, expert_baseline=False, plots=False
    )
    per_track = {t: res["tracks"][t][name] for t in tracks}
    summary = dict(res["summary"][name])
    summary["progress_m"] = float(sum(r["progress_m"] for r in per_track.values()))
    summary["per_track"] = {
        t: {
            k: r[k]
            for k in (
                "laps",
                "progress_m",
                "mean_abs_cte_m",
                "off_track_events",
                "termination",
                "steps",
            )
        }
        for t, r in per_track.items()
    }
    return summary


def closed_loop_drop(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """How much worse ``other`` drove than ``base``, in percent (positive = worse)."""
    p0, p1 = base["progress_m"], other["progress_m"]
    progress = 100.0 * (p0 - p1) / p0 if p0 > 0 else 0.0
    c0, c1 = base["mean_abs_cte_m"], other["mean_abs_cte_m"]
    cte = 100.0 * (c1 - c0) / max(c0, CTE_FLOOR_M)
    laps = 100.0 * (base["laps"] - other["laps"]) / base["laps"] if base["laps"] else 0.0
    return {
        "progress_drop_pct": progress,
        "cte_increase_pct": cte,
        "laps_drop_pct": laps,
        "extra_off_track_events": float(other["off_track_events"] - base["off_track_events"]),
        "drop_pct": max(progress, cte, laps),
    }
