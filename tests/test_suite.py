"""The generalization suite (cloud_jobs.suite): its conditions, its aggregation, its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from brain.bundle.manifest import ReleaseGate
from brain.hardware.sim.closed_loop import EvalConditions, ExpertDriver
from cloud_jobs import evaluate, suite
from cloud_jobs.release import judge


def _r(completed: bool, off: int, cte: float, laps: int = 1) -> dict[str, Any]:
    return {
        "laps": laps if completed else 0,
        "completed": completed,
        "termination": "laps_done" if completed else "left_track",
        "steps": 100,
        "mean_abs_cte_m": cte,
        "max_abs_cte_m": 2 * cte,
        "off_track_events": off,
        "mean_speed_mps": 1.5,
        "progress_m": 20.0,
    }


def _row(where: str, policy: dict[str, Any], expert: dict[str, Any]) -> dict[str, Any]:
    track, lighting, texture = where.split("/")
    return {"track": track, "lighting": lighting, "texture": texture} | {
        "policy": policy,
        "expert": expert,
    }


RUNS = [
    _row("a/day/asphalt", _r(True, 0, 0.02), _r(True, 0, 0.01)),
    _row("a/dusk/asphalt", _r(True, 2, 0.10), _r(True, 0, 0.02)),  # lapped, but off track
    _row("b/day/carpet", _r(False, 1, 0.40), _r(True, 0, 0.02)),
    _row("b/dusk/carpet", _r(True, 0, 0.03), _r(True, 0, 0.01)),
]


def test_the_standard_suite_is_60_unseen_conditions() -> None:
    s = suite.get_suite("standard")
    conds = s.conditions()
    assert len(conds) == 60 and len(set(conds)) == 60
    assert {c[1] for c in conds} == {"day", "dusk", "glare"}
    assert {c[2] for c in conds} == {"asphalt", "carpet"}
    # none of the layouts any shipped recipe trains on (demos: random-1 ... random-7)
    from cloud_jobs.pipeline.run import PipelineOptions

    trained = set(PipelineOptions().demo_tracks.split(",")) | {f"random-{i}" for i in range(1, 8)}
    assert not trained & set(s.tracks) and len(s.tracks) == 10
    with pytest.raises(ValueError, match="unknown suite"):
        suite.get_suite("huge")


def test_aggregation_counts_success_as_laps_without_off_track() -> None:
    agg = suite.aggregate(RUNS, ["policy", "expert"])
    pol, exp = agg["summary"]["policy"], agg["summary"]["expert"]
    assert pol["tracks"] == 4 and pol["completed"] == 3  # completed, one of them off track
    assert pol["successes"] == 2 and pol["success_rate"] == 0.5
    assert pol["off_track_events"] == 3 and pol["laps"] == 3
    assert exp["successes"] == 4 and exp["success_rate"] == 1.0
    assert pol["mean_abs_cte_m"] == pytest.approx((0.02 + 0.10 + 0.40 + 0.03) / 4)
    assert pol["max_abs_cte_m"] == pytest.approx(0.80)
    # ratio of the means, and the median of the per-condition ratios (2, 5, 20, 3)
    assert pol["cte_ratio"] == pytest.approx(0.1375 / 0.015)
    assert pol["median_condition_cte_ratio"] == pytest.approx(4.0)
    b = agg["breakdown"]
    assert b["driver"] == "policy"
    assert b["success_rate"]["lighting"] == {"day": 0.5, "dusk": 0.5}
    assert b["success_rate"]["texture"] == {"asphalt": 0.5, "carpet": 0.5}
    assert b["success_rate"]["track"] == {"a": 0.5, "b": 0.5}
    # expert alone: its own breakdown, no ratio
    alone = suite.aggregate(RUNS, ["expert"])
    assert "cte_ratio" not in alone["summary"]["expert"]
    assert alone["breakdown"]["driver"] == "expert"


def test_a_suite_result_goes_through_the_release_gate() -> None:
    result = {"kind": "closed_loop_eval", "conditions": {"laps": 1}}
    result |= suite.aggregate(RUNS, ["policy", "expert"])
    rec = judge(result, ReleaseGate())
    assert not rec.passed and rec.runs == 4 and rec.completed == 3
    assert any("3 off-track" in r for r in rec.reasons)
    table = suite.table_markdown({**result, "suite": "standard"})
    assert "| policy | 2/4 (50%) | 3 | 3 |" in table
    assert "9.17x / 4.00x" in table and "Success by lighting (policy): day 50%, dusk 50%" in table


def test_run_suite_drives_every_condition(tmp_path: Path) -> None:
    small = suite.Suite("small", ("oval", "random-1001"), ("day", "glare"), ("carpet",))
    base = EvalConditions(laps=1, max_steps=30)
    result = suite.run_suite(ExpertDriver(), small, base, expert_baseline=False)
    assert [(r["track"], r["lighting"], r["texture"]) for r in result["runs"]] == small.conditions()
    assert all(r["expert"]["steps"] == 30 for r in result["runs"])
    assert result["summary"]["expert"]["tracks"] == 4
    assert result["summary"]["expert"]["successes"] == 0  # 30 steps are not a lap
    assert result["conditions"]["step_budget"] == {"oval": 30, "random-1001": 30}
    suite.write_suite(result, tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["runs"] == result["runs"]
    assert "Suite `small`: 4 conditions" in (tmp_path / "suite.md").read_text()


def test_cli_suite_with_the_expert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "suite"
    argv = ["--suite", "standard", "--max-steps", "5", "--out", str(out), "--quiet"]
    assert evaluate.cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["expert"]["tracks"] == 60
    result = json.loads((out / "eval.json").read_text())
    assert result["suite"] == "standard" and len(result["runs"]) == 60
    assert result["conditions"]["laps"] == 1  # the suite's default
    assert evaluate.cli_main([*argv, "--tracks", "oval"]) == 2
    assert "drop --tracks" in capsys.readouterr().err
