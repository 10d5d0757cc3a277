"""Expert demonstrations (DART) and closed-loop evaluation in the real simulator.

Renders are tiny (64x48 / 160x120) and step counts short so the file runs in well
under two minutes on a laptop CPU; what is checked is the plumbing end to end:
episodes on disk, metrics, eval.json, plots, the torch and ONNX paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from brain.config import CameraConfig
from brain.hardware.sim import SimWorld
from cloud_jobs import demos, evaluate
from rlds.reader import list_episodes
from rlds.validate import validate_episode

torch = pytest.importorskip("torch")
model = pytest.importorskip("brain.model")

pytestmark = pytest.mark.torch


# ----------------------------------------------------------------------------- demonstrations


def test_plan_demos_is_seeded_and_varied() -> None:
    a = demos.plan_demos(["oval", "kidney"], 12, seed=3, trim_range=0.2)
    b = demos.plan_demos(["oval", "kidney"], 12, seed=3, trim_range=0.2)
    c = demos.plan_demos(["oval", "kidney"], 12, seed=4, trim_range=0.2)
    assert a == b and a != c
    assert [s.track for s in a[:4]] == ["oval", "kidney", "oval", "kidney"]
    assert len({s.lighting for s in a}) > 1 and len({s.texture for s in a}) > 1
    assert len({round(s.start_s, 3) for s in a}) == 12
    assert all(abs(s.steering_trim) <= 0.2 for s in a)
    assert len({s.steering_trim for s in a}) > 1
    # Episode i depends only on (seed, i): asking for more episodes keeps the first ones.
    assert demos.plan_demos(["oval", "kidney"], 14, seed=3, trim_range=0.2)[:12] == a
    with pytest.raises(ValueError, match="unknown track"):
        demos.plan_demos(["moon"], 1)


def test_ou_noise_is_correlated_with_the_requested_std() -> None:
    dt, tau, sigma = 0.05, 0.6, 0.1
    noise = demos.OUNoise(sigma, tau, dt, np.random.default_rng(0), clip_sigmas=10)
    x = np.array([noise() for _ in range(40000)])
    assert abs(x.std() - sigma) < 0.01
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(lag1 - math.exp(-dt / tau)) < 0.02
    clipped = demos.OUNoise(sigma, tau, dt, np.random.default_rng(0), clip_sigmas=1.0)
    assert max(abs(clipped()) for _ in range(2000)) <= sigma + 1e-12


@pytest.mark.slow
def test_record_demos_labels_are_clean_while_the_car_followed_the_noisy_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "episodes"
    rc = demos.record_demos_main(
        [
            "--out", str(out), "--episodes", "2", "--steps", "60", "--tracks", "oval,kidney",
            "--width", "64", "--height", "48", "--noise", "0.2", "--workers", "1", "--seed", "5",
            "--tag", "unit-test", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["steps"] == 120
    episodes = list_episodes(out)
    assert len(episodes) == 2
    for ep in episodes:
        report = validate_episode(ep.path)
        assert report.ok, report.render()
        meta = ep.metadata
        assert meta["robot_id"] == "sim" and meta["mode"] == "autonomous"
        assert meta["source"] == "expert" and meta["rate_hz"] == 20.0
        assert meta["action_names"] == ["steering", "throttle"]
        assert "unit-test" in meta["tags"] and f"track={meta['sim']['track']}" in meta["tags"]
        for key in ("track", "lighting", "texture", "seed", "steering_trim"):
            assert key in meta["sim"]
        assert meta["sensors"]["image"]["width"] == 64

        spec = demos.DemoSpec(**{k: v for k, v in meta["demo"].items() if k in _SPEC_FIELDS})
        steps = list(ep.steps())
        assert len(steps) == 60
        assert steps[0].observation["image"].shape == (48, 64, 3)
        labels = np.array([s.action for s in steps])
        executed = np.array([s.extra["executed_action"] for s in steps])
        noise = np.array([s.extra["noise"] for s in steps])
        # Labels are the expert's clean actions; the car was driven by label + noise.
        np.testing.assert_array_equal(labels, np.array([s.extra["expert_action"] for s in steps]))
        np.testing.assert_allclose(executed, np.clip(labels + noise, -1, 1), atol=1e-12)
        assert np.abs(executed - labels)[:, 0].max() > 0.05

        # Replaying the executed actions reproduces the recorded drive exactly, and the
        # label at every recorded state is what the expert says there.
        world = SimWorld(demos.sim_config_for(spec), None)
        world.reset(
            demos.start_pose(spec.track, spec.start_s, spec.start_lateral_m, spec.start_yaw_rad)
        )
        for s, a in zip(steps, executed, strict=True):
            np.testing.assert_allclose(world.state.as_array(), s.extra["state"], atol=1e-12)
            np.testing.assert_allclose(world.expert_action(), s.action, atol=1e-12)
            world.step(a, 0.05)
        # Driving the clean labels instead would have gone elsewhere.
        world.reset(
            demos.start_pose(spec.track, spec.start_s, spec.start_lateral_m, spec.start_yaw_rad)
        )
        for a in labels:
            world.step(a, 0.05)
        assert (
            abs(world.state.x - steps[-1].extra["state"][0])
            + abs(world.state.y - steps[-1].extra["state"][1])
            > 1e-3
        )


_SPEC_FIELDS = set(demos.DemoSpec.__dataclass_fields__)


def test_record_demos_draws_a_trim_per_episode_from_the_seed(tmp_path: Path) -> None:
    argv = ["--episodes", "3", "--steps", "4", "--tracks", "oval", "--width", "64"]
    argv += ["--height", "48", "--workers", "1", "--trim-range", "0.2", "--quiet"]
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert demos.record_demos_main([*argv, "--seed", seed, "--out", str(tmp_path / run)]) == 0

    def trims(run: str) -> list[float]:
        eps = sorted(list_episodes(tmp_path / run), key=lambda e: e.metadata["demo"]["index"])
        for ep in eps:  # the sim config the car ran with and the demo spec agree
            assert ep.metadata["sim"]["steering_trim"] == ep.metadata["demo"]["steering_trim"]
            assert ep.metadata["demo"]["trim_range"] == 0.2
        return [ep.metadata["sim"]["steering_trim"] for ep in eps]

    a = trims("a")
    assert len(set(a)) == 3 and all(abs(t) <= 0.2 for t in a)
    assert a == trims("b") and a != trims("c")
    assert a == [s.steering_trim for s in demos.plan_demos(["oval"], 3, seed=7, trim_range=0.2)]
    assert demos.record_demos_main(["--out", str(tmp_path / "x"), "--trim-range", "0.7"]) == 2


@pytest.mark.slow
def test_record_demos_parallel_and_trim_aware_labels(tmp_path: Path) -> None:
    specs = demos.plan_demos(
        ["oval"], 2, steps=20, width=64, height=48, trim_range=0.3,
        label="trim_aware", drive="nominal", seed=2,
    )  # fmt: skip
    results = demos.record_demos(specs, tmp_path, workers=2)
    assert [r["index"] for r in results] == [0, 1]
    for ep in list_episodes(tmp_path):
        trim = ep.metadata["sim"]["steering_trim"]
        assert trim != 0.0 and ep.metadata["demo"]["trim_range"] == 0.3
        for s in ep.steps(decode_images=False):
            nominal = np.array(s.extra["nominal_action"])
            want = np.clip(nominal[0] - trim, -1, 1)
            assert s.action[0] == pytest.approx(want, abs=1e-12)
            assert s.extra["expert_action"][0] == pytest.approx(want, abs=1e-12)
            # drive="nominal": the car follows the trim-unaware expert (plus noise).
            assert s.extra["executed_action"][0] == pytest.approx(
                np.clip(nominal[0] + s.extra["noise"][0], -1, 1), abs=1e-12
            )


@pytest.mark.slow
@pytest.mark.parametrize("drive", ["misjudged", "partial"])
def test_drives_that_take_out_another_trim(tmp_path: Path, drive: str) -> None:
    specs = demos.plan_demos(["oval"], 6, steps=12, width=64, height=48, trim_range=0.3, seed=4,
                             drive=drive)  # fmt: skip
    plain = demos.plan_demos(["oval"], 6, steps=12, width=64, height=48, trim_range=0.3, seed=4)
    # The other draws are those of the same plan with the default drive.
    assert [s.steering_trim for s in plain] == [s.steering_trim for s in specs]
    assert [s.seed for s in plain] == [s.seed for s in specs]
    assert all(s.drive_trim == 0.0 for s in plain)
    beliefs = [s.drive_trim for s in specs]
    trims = [s.steering_trim for s in specs]
    assert len(set(beliefs)) == 6 and all(abs(b) <= 0.3 for b in beliefs)
    if drive == "misjudged":  # independent of the true trim
        assert any(b * t < 0 for b, t in zip(beliefs, trims, strict=True))
    else:  # a share of it
        assert all(0 <= b / t <= 1 for b, t in zip(beliefs, trims, strict=True))
    demos.record_demos(specs[:2], tmp_path, workers=1)
    for ep in list_episodes(tmp_path):
        belief = ep.metadata["demo"]["drive_trim"]
        assert ep.metadata["demo"]["drive"] == drive and belief != 0.0
        for s in ep.steps(decode_images=False):
            nominal = np.array(s.extra["nominal_action"])
            # The label still takes out the true trim; the car is driven by the belief.
            assert s.action[0] == pytest.approx(s.extra["expert_action"][0], abs=1e-12)
            want = np.clip(np.clip(nominal[0] - belief, -1, 1) + s.extra["noise"][0], -1, 1)
            assert s.extra["executed_action"][0] == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- evaluation


def _run_dir(tmp_path: Path, **overrides: object) -> Path:
    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    policy = model.build_policy("tiny", **overrides)
    model.save_policy(policy, run / "policy.pt")
    with open(run / "metrics.ndjson", "w") as f:
        for i in range(10):
            f.write(json.dumps({"step": 10 * i, "loss": 1.0 / (i + 1), "lr": 1e-3}) + "\n")
        f.write('{"step": 100, "loss"')  # a half-written line of a live run is skipped
    return run


POLICY_KEYS = {
    "laps", "completed", "termination", "steps", "sim_time_s", "mean_abs_cte_m",
    "max_abs_cte_m", "off_track_events", "off_track_time_s", "mean_speed_mps", "progress_m",
    "distance_m", "lap_times_s", "track_length_m",
}  # fmt: skip


@pytest.mark.slow
def test_evaluate_cli_untrained_policy_and_expert(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    out = tmp_path / "eval"
    rc = evaluate.cli_main(
        [
            "--policy", str(run / "policy.pt"), "--tracks", "oval,random-101", "--laps", "1",
            "--max-steps", "40", "--width", "160", "--height", "120", "--out", str(out),
            "--memorize", "--surprise-threshold", "0.1", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["backend"] == "torch" and result["memory_lr"] == 1.0
    assert result["surprise_threshold"] == 0.1
    for track in ("oval", "random-101"):
        rows = result["tracks"][track]
        assert set(rows) == {"policy", "expert"}
        for row in rows.values():
            assert set(row) >= POLICY_KEYS
            assert row["steps"] <= 40
        assert (out / result["plots"][track]).stat().st_size > 10_000
    assert result["plots"]["training"] == "training_curves.png"
    assert (out / "training_curves.png").is_file()
    assert set(result["summary"]) == {"policy", "expert"}
    assert result["conditions"]["step_budget"] == {"oval": 40, "random-101": 40}


@pytest.mark.slow
@pytest.mark.parametrize("track", ["chicane", "random-101"])
def test_expert_baseline_laps_without_leaving_the_road(tmp_path: Path, track: str) -> None:
    out = tmp_path / "eval"
    rc = evaluate.cli_main(["--tracks", track, "--laps", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    result = json.loads((out / "eval.json").read_text())
    row = result["tracks"][track]["expert"]
    assert row["laps"] >= 1 and row["completed"] and row["termination"] == "laps_done"
    assert row["off_track_events"] == 0 and row["max_abs_cte_m"] < 0.2
    assert len(row["lap_times_s"]) == 1 and row["mean_speed_mps"] > 1.0


def test_onnx_path_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    # A bias on the throttle so the untrained car moves and the drives are comparable.
    run = _run_dir(tmp_path)
    policy = model.load_policy(run / "policy.pt")
    with torch.no_grad():
        policy.head.net[-1].bias.copy_(torch.tensor([0.05, 0.6]))
    model.save_policy(policy, run / "policy.pt")
    model.export_onnx(policy, run / "policy.onnx")
    args = ["--tracks", "oval", "--laps", "1", "--max-steps", "60", "--render-size", "model"]
    args += ["--no-expert-baseline", "--quiet", "--no-plots"]
    assert (
        evaluate.cli_main([*args, "--policy", str(run / "policy.pt"), "--out", str(tmp_path / "t")])
        == 0
    )
    assert (
        evaluate.cli_main([*args, "--onnx", str(run / "policy.onnx"), "--out", str(tmp_path / "o")])
        == 0
    )
    t = json.loads((tmp_path / "t" / "eval.json").read_text())
    o = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert o["backend"] == "onnx" and t["backend"] == "torch"
    rt, ro = t["tracks"]["oval"]["policy"], o["tracks"]["oval"]["policy"]
    assert rt["distance_m"] > 1.0  # it drove
    for key in ("mean_abs_cte_m", "max_abs_cte_m", "progress_m", "distance_m"):
        assert ro[key] == pytest.approx(rt[key], abs=2e-3), key


def test_render_paths_agree() -> None:
    d = evaluate.compare_render_paths("chicane", samples=4)
    assert d["mean_abs_diff"] < 8.0, d


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    assert evaluate.cli_main(["--tracks", "moon", "--out", str(tmp_path)]) == 2
    assert evaluate.cli_main(["--policy", str(tmp_path / "none.pt"), "--tracks", "oval"]) == 1
    assert demos.record_demos_main(["--out", str(tmp_path), "--tracks", "moon"]) == 2


def test_resize_matches_the_robot_runner() -> None:
    world = SimWorld(demos.sim_config_for(demos.plan_demos(["oval"], 1)[0]), CameraConfig())
    rgb = world.render_rgb()
    np.testing.assert_array_equal(evaluate.resize_frame(rgb), model.preprocess_frame(rgb))


@pytest.mark.slow
def test_suite_with_a_policy_reports_success_and_the_cte_ratio(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    out = tmp_path / "suite"
    argv = ["--policy", str(run / "policy.pt"), "--suite", "standard", "--max-steps", "4"]
    assert evaluate.cli_main([*argv, "--render-size", "model", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert len(result["runs"]) == 60 and result["backend"] == "torch"
    assert {(r["lighting"], r["texture"]) for r in result["runs"]} == {
        (li, tx) for li in ("day", "dusk", "glare") for tx in ("asphalt", "carpet")
    }
    pol = result["summary"]["policy"]
    assert pol["tracks"] == 60 and pol["success_rate"] == 0.0  # 4 steps are no lap
    assert pol["cte_ratio"] == pytest.approx(
        pol["mean_abs_cte_m"] / result["summary"]["expert"]["mean_abs_cte_m"]
    )
    assert result["checkpoint_sha256"] == evaluate.sha256_file(run / "policy.pt")
    assert "| policy | 0/60 (0%)" in (out / "suite.md").read_text()
