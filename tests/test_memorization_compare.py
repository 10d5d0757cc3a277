"""cloud_jobs.memorization: memorize vs frozen bookkeeping over real sim drives (no torch).

The drivers are the sim's expert, the "frozen" one with a steering bias added, so the two
modes drive differently and every figure can be checked against the drives it came from.
The torch policy's run of the same comparison is the pipeline's (tests/test_pipeline.py).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brain.hardware.sim import SimWorld
from brain.hardware.sim.closed_loop import EvalConditions, ExpertDriver, run_drive
from cloud_jobs.memorization import compare

COND = EvalConditions(laps=1, max_steps=120, render_size="model")


class BiasedExpert(ExpertDriver):
    def __init__(self, bias: float) -> None:
        self.bias = bias

    def act(self, image: np.ndarray | None, world: SimWorld) -> np.ndarray:
        return world.expert_action() + np.array([self.bias, 0.0])


def _driver(lr: float) -> ExpertDriver:
    return ExpertDriver() if lr == 1.0 else BiasedExpert(0.2)


def test_every_condition_is_driven_and_the_figures_are_its_means() -> None:
    seen: list[float] = []

    def make(lr: float) -> ExpertDriver:
        seen.append(lr)
        return _driver(lr)

    r = compare(make, ["oval", "chicane"], COND, 0.15)
    assert seen == [1.0, 1.0, 0.0, 0.0] * 3  # a fresh driver per drive: 3 trims x 2 modes x 2
    assert [(x["steering_trim"], x["mode"], x["track"]) for x in r["runs"][:4]] == [
        (0.15, "memorize", "oval"),
        (0.15, "memorize", "chicane"),
        (0.15, "frozen", "oval"),
        (0.15, "frozen", "chicane"),
    ]
    assert r["step_budget"] == {"oval": 120, "chicane": 120}
    assert all(x["steps"] > 0 and math.isfinite(x["mean_abs_cte_m"]) for x in r["runs"])
    cte = r["mean_abs_cte_m"]
    for key, v in cte.items():
        trim, mode = key.split("/")
        rows = [x for x in r["runs"] if f"{x['steering_trim']:+.2f}" == trim and x["mode"] == mode]
        assert len(rows) == 2 and v == pytest.approx(np.mean([x["mean_abs_cte_m"] for x in rows]))
    s = r["summary"]
    mem = (cte["+0.15/memorize"] + cte["-0.15/memorize"]) / 2
    frz = (cte["+0.15/frozen"] + cte["-0.15/frozen"]) / 2
    assert s["ratio_trimmed"] == pytest.approx(mem / frz) and s["ratio_trimmed"] < 1
    assert s["ratio_untrimmed"] == pytest.approx(cte["+0.00/memorize"] / cte["+0.00/frozen"])
    assert s["trim_cost_frozen"] == pytest.approx(frz / cte["+0.00/frozen"])


def test_the_drive_is_the_evaluations_own() -> None:
    """Same conditions, same trim: compare's row is run_drive's row for that driver."""
    r = compare(_driver, ["oval"], COND, 0.2)
    row, _ = run_drive(
        BiasedExpert(0.2), "oval", EvalConditions(**{**COND.__dict__, "steering_trim": -0.2})
    )
    assert r["mean_abs_cte_m"]["-0.20/frozen"] == row["mean_abs_cte_m"]


@pytest.mark.parametrize(
    ("trim", "tracks"), [(0.0, ["oval"]), (-0.1, ["oval"]), (0.9, ["oval"]), (0.1, [])]
)
def test_a_bad_trim_or_no_track_is_refused_before_driving(trim: float, tracks: list[str]) -> None:
    drives: list[float] = []
    with pytest.raises(ValueError):
        compare(lambda lr: drives.append(lr) or ExpertDriver(), tracks, COND, trim)
    assert drives == []


def test_evaluate_cli_refuses_flags_that_contradict_the_comparison(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "cloud_jobs", "evaluate", "--memorization-trim", "0.15"]
    for extra, says in (
        ([], "give --policy"),
        (["--policy", str(tmp_path / "p.pt"), "--no-memorize"], "drop --memorize/--no-memorize"),
        (["--policy", str(tmp_path / "p.pt"), "--steering-trim", "0.1"], "drop --steering-trim"),
    ):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
