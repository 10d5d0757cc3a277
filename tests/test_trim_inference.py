"""bench/trim_inference.py: the offline share of a servo trim a policy leaves uncorrected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.bench_helpers import load_bench

pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.torch]


def test_slope_is_the_labels_own_for_a_policy_that_steers_straight(tmp_path: Path) -> None:
    import torch

    from brain.model import build_policy, save_policy
    from cloud_jobs import demos
    from rlds.reader import list_episodes

    specs = demos.plan_demos(
        ["oval"], 5, steps=40, width=64, height=48, trim_range=0.3, seed=3, drive="misjudged"
    )
    demos.record_demos(specs, tmp_path / "eps", workers=1)
    policy = build_policy("tiny", action_feedback=True, motion_feedback=True)
    with torch.no_grad():  # the head outputs exactly 0: the error is the label itself
        policy.head.net[-1].weight.zero_()
        policy.head.net[-1].bias.zero_()
    save_policy(policy, tmp_path / "policy.pt")
    out = tmp_path / "ti.json"
    argv = ["--policy", str(tmp_path / "policy.pt"), "--episodes", str(tmp_path / "eps"),
            "--ticks", "40", "--skip", "10", "--json", str(out)]  # fmt: skip
    assert load_bench("trim_inference").main(argv) == 0
    report = json.loads(out.read_text())
    assert report["episodes"] == 5
    trims, means = [], []
    for ep in list_episodes(tmp_path / "eps"):
        trims.append(ep.metadata["sim"]["steering_trim"])
        steps = list(ep.steps(decode_images=False))
        means.append(np.mean([s.action[0] for s in steps[10:40]]))
    want = float(np.polyfit(trims, means, 1)[0])
    assert want < -0.5  # the trim-aware labels carry the trim
    rows = {r["condition"]: r for r in report["rows"]}
    assert set(rows) == {"executed-lr1", "executed-lr0", "own-lr1", "own-lr0"}
    for row in rows.values():
        assert row["slope"] == pytest.approx(want, abs=2e-3)


def test_too_few_trimmed_episodes_is_an_error(tmp_path: Path) -> None:
    from brain.model import build_policy, save_policy
    from cloud_jobs import demos

    demos.record_demos(demos.plan_demos(["oval"], 2, steps=12, width=64, height=48),
                       tmp_path / "eps", workers=1)  # fmt: skip
    save_policy(build_policy("tiny"), tmp_path / "policy.pt")
    argv = ["--policy", str(tmp_path / "policy.pt"), "--episodes", str(tmp_path / "eps"),
            "--ticks", "12", "--skip", "2"]  # fmt: skip
    with pytest.raises(SystemExit, match="different steering trims"):
        load_bench("trim_inference").main(argv)
