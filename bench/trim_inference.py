"""How much of a servo trim does a trained policy infer from history?  Offline, in a minute.

The closed-loop memorize/frozen comparison (bench/memorization.py, ``cloud_jobs evaluate
--memorization-trim``) takes minutes per policy and says only *that* the memory did not help.
This replays recorded trimmed demonstrations (``cloud_jobs record-demos --trim-range``, whose
labels are the trim-aware expert's) through the policy and regresses each episode's mean
steering error (label - prediction, after the first ``--skip`` ticks) on the episode's trim.
The slope is the share of the trim the policy leaves uncorrected: -1 means it ignores the
trim, 0 that it takes all of it out.  Four conditions:

- ``executed``: the actions the car executed are fed back (teacher forcing, as in training);
- ``own``: the policy's own outputs are fed back (as on the robot, but on recorded images);

each with the memory written (lr 1) and frozen (lr 0).  A policy that reads the trim off the
executed commands (what ``--drive label`` demos allow: the command already holds the expert's
correction) shows a slope near 0 fed its executed actions and near -1 fed its own: a shortcut
that cannot work on the robot, where the fed-back command is its own.  Equal slopes with the
memory written and frozen mean the memory is not where the estimate lives.

    python bench/trim_inference.py --policy runs/pi5/policy.pt --episodes data/episodes \\
        --json bench/results/trim_inference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import print_table

#: (what is fed back, memory lr) -> the condition's name in the table and JSON.
CONDITIONS = {
    ("executed", 1.0): "executed-lr1",
    ("executed", 0.0): "executed-lr0",
    ("own", 1.0): "own-lr1",
    ("own", 0.0): "own-lr0",
}


def load_episode(ep: Any, ticks: int, hw: tuple[int, int]) -> tuple[np.ndarray, ...] | None:
    """(frames [T, H, W, 3], labels [T, A], executed [T, A]) of a trimmed sim episode."""
    from brain.model import preprocess_frame

    frames, labels, executed = [], [], []
    for step in ep.steps():
        if step.index >= ticks:
            break
        frames.append(preprocess_frame(step.observation["image"], hw))
        labels.append(step.action)
        executed.append(step.extra.get("executed_action", step.action))
    if len(frames) < ticks:
        return None
    return np.stack(frames), np.asarray(labels, np.float32), np.asarray(executed, np.float32)


def replay(policy: Any, data: tuple[np.ndarray, ...], feedback: str, lr: float, skip: int) -> float:
    """Mean steering error (label - prediction) of one episode under one condition, over the
    ticks after ``skip`` (the memory and CMS run over the whole replay)."""
    import torch

    frames, labels, executed = data
    policy.set_memorize(lr=lr)
    state, memory = policy.initial_state(1)
    # A model without action feedback has no fed-back command: both conditions are the same.
    tf = feedback == "executed" and policy.config.action_feedback
    fed = torch.from_numpy(executed)[None] if tf else None
    with torch.no_grad():
        pred, _, _ = policy.forward_sequence(
            torch.from_numpy(frames)[None], state, memory, executed_actions=fed
        )
    return float((labels[skip:, 0] - pred[0, skip:, 0].numpy()).mean())


def measure(policy_path: Path, episodes: Path, ticks: int, skip: int) -> dict[str, Any]:
    import torch

    from brain.model import load_policy
    from rlds.reader import list_episodes

    torch.set_num_threads(1)
    policy = load_policy(policy_path).eval()
    hw = policy.config.image_hw
    trims: list[float] = []
    errors: dict[tuple[str, float], list[float]] = {c: [] for c in CONDITIONS}
    t0 = time.perf_counter()
    for ep in list_episodes(episodes):
        trim = (ep.metadata.get("sim") or {}).get("steering_trim")
        data = load_episode(ep, ticks, hw) if trim is not None else None
        if trim is None or data is None:
            continue
        trims.append(float(trim))
        for feedback, lr in CONDITIONS:
            errors[feedback, lr].append(replay(policy, data, feedback, lr, skip))
    if len(trims) < 3 or np.std(trims) == 0:
        raise SystemExit(f"{episodes}: need >= 3 sim episodes with different steering trims")
    x = np.asarray(trims)
    rows = []
    for cond, errs in errors.items():
        y = np.asarray(errs)
        rows.append(
            {
                "condition": CONDITIONS[cond],
                "slope": round(float(np.polyfit(x, y, 1)[0]), 3),
                "rms_bias": round(float(np.sqrt((y**2).mean())), 4),
            }
        )
    return {
        "policy": str(policy_path),
        "episodes": len(trims),
        "trim_std": round(float(x.std()), 4),
        "ticks": ticks,
        "skip": skip,
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, required=True, help="a policy.pt from cloud_jobs train")
    ap.add_argument("--episodes", type=Path, required=True, help="trimmed demos (record-demos)")
    ap.add_argument("--ticks", type=int, default=240, help="ticks replayed per episode")
    ap.add_argument("--skip", type=int, default=80, help="first ticks left out of the error")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 0 <= args.skip < args.ticks:
        ap.error("--skip must be in [0, --ticks)")
    report = measure(args.policy, args.episodes, args.ticks, args.skip)
    print_table(
        f"trim inference: {report['episodes']} episodes, trim std {report['trim_std']}, "
        f"ticks {args.skip}-{args.ticks} ({report['wall_s']} s)",
        report["rows"],
        [("condition", "condition"), ("slope", "slope"), ("rms_bias", "rms bias")],
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
