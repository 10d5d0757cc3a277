"""The release gate: a model is published only after its closed-loop evaluation passes.

The verdict is judged on ``eval.json`` in the shape ``cloud_jobs evaluate`` writes (one test
takes a real expert-only evaluation); ``cloud_jobs publish`` is run through its CLI against a
real TUF repository, and the robot's own TUF client downloads what was published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from brain.bundle.manifest import ReleaseGate, ReleaseRecord
from brain.bundle.unpack import read_archive_manifest
from brain.ota.trust import TrustedRepository
from cloud_jobs import evaluate
from cloud_jobs.cli import main as cloud_jobs
from cloud_jobs.release import judge, load_evaluation
from tests.tuf_helpers import make_bundle, make_repo, provision

HW = "donkey-pi5"
CKPT = "ab" * 32  # the checkpoint hash tests/tuf_helpers' export reports


def _eval(
    *,
    runs: int = 3,
    completed: int = 3,
    off: int = 0,
    cte: float = 0.03,
    expert_cte: float = 0.02,
    laps: int = 1,
    ckpt: str | None = CKPT,
    expert: bool = True,
) -> dict[str, Any]:
    pol = {"tracks": runs, "completed": completed, "laps": completed * laps}
    pol |= {"off_track_events": off, "mean_abs_cte_m": cte, "max_abs_cte_m": 3 * cte}
    summary: dict[str, Any] = {"policy": pol}
    if expert:
        summary["expert"] = {"tracks": runs, "completed": runs, "off_track_events": 0}
        summary["expert"]["mean_abs_cte_m"] = expert_cte
    out: dict[str, Any] = {"kind": "closed_loop_eval", "conditions": {"laps": laps}}
    out["summary"] = summary
    if ckpt is not None:
        out["checkpoint_sha256"] = ckpt
    return out


# ----------------------------------------------------------------------------- the verdict


def test_a_good_evaluation_passes() -> None:
    rec = judge(_eval(), ReleaseGate(), checkpoint_sha256=CKPT)
    assert rec.passed and not rec.forced and rec.reasons == []
    assert rec.cte_ratio == pytest.approx(1.5) and rec.runs == 3 and rec.completed == 3


@pytest.mark.parametrize(
    ("ev", "gate", "why"),
    [
        (_eval(completed=2), ReleaseGate(), "completed the laps on 2 of 3"),
        (_eval(off=1), ReleaseGate(), "1 off-track event"),
        (_eval(cte=0.4), ReleaseGate(), "20.00x the expert's"),
        (_eval(cte=0.05), ReleaseGate(max_cte_ratio=2.0), "2.50x the expert's (gate: 2x)"),
        (_eval(laps=1), ReleaseGate(min_laps=3), "asked for 1 lap(s) per run, the gate 3"),
        (_eval(expert=False), ReleaseGate(), "no expert baseline"),
        (_eval(ckpt="cd" * 32), ReleaseGate(), "of checkpoint cdcdcdcdcdcd"),
        (_eval(ckpt=None), ReleaseGate(), "of checkpoint None"),
        ({"kind": "closed_loop_eval", "summary": {}}, ReleaseGate(), "no policy results"),
    ],
)
def test_each_failure_is_named(ev: dict[str, Any], gate: ReleaseGate, why: str) -> None:
    rec = judge(ev, gate, checkpoint_sha256=CKPT)
    assert not rec.passed and not rec.forced
    assert any(why in r for r in rec.reasons), rec.reasons


def test_thresholds_are_configurable_and_forced_only_means_something_on_a_failure() -> None:
    # The make-demo model of the issue: 0 laps, 1 off-track, |cte| 20x the expert's.
    bad = _eval(runs=1, completed=0, off=1, cte=0.4)
    rec = judge(bad, ReleaseGate(), forced=True)
    assert not rec.passed and rec.forced and len(rec.reasons) == 3
    lax = ReleaseGate(min_completed_fraction=0.0, max_off_track_events=1, max_cte_ratio=25)
    assert judge(bad, lax).passed
    assert not judge(bad, lax, forced=True).forced  # nothing was forced past
    assert not judge(None, ReleaseGate()).passed
    with pytest.raises(ValueError, match="max_cte_ratio"):
        ReleaseGate(max_cte_ratio=0)
    with pytest.raises(ValueError, match="must say why"):
        ReleaseRecord(passed=False, forced=True, reasons=[], gate=ReleaseGate())


@pytest.mark.slow
def test_an_expert_only_evaluation_releases_nothing(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["--tracks", "oval", "--laps", "1", "--out", str(out), "--no-plots", "--quiet"]
    assert evaluate.cli_main(argv) == 0
    data, digest = load_evaluation(out / "eval.json")
    rec = judge(data, ReleaseGate(), evaluation_sha256=digest)
    assert not rec.passed and "no policy results" in rec.reasons[0]
    assert rec.evaluation_sha256 == digest and len(digest) == 64


# ----------------------------------------------------------------------------- cloud_jobs publish


@pytest.fixture()
def repo_and_bundle(tmp_path: Path) -> tuple[Path, Path, Path]:
    keys, repo = make_repo(tmp_path)
    return keys.dir, repo.dir, make_bundle(tmp_path, version="2.0.0", release_counter=2)


def _publish(keys: Path, repo: Path, bundle: Path, *extra: str) -> int:
    return cloud_jobs(["publish", "--repo", str(repo), "--keys", str(keys), str(bundle), *extra])


def _published(repo: Path) -> list[Path]:
    return sorted((repo / "targets").glob("*.tar")) if (repo / "targets").is_dir() else []


def _write(tmp: Path, ev: dict[str, Any], name: str = "eval.json") -> Path:
    path = tmp / name
    path.write_text(json.dumps(ev))
    return path


def test_publish_refuses_without_a_passing_evaluation(
    tmp_path: Path, repo_and_bundle: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, repo, bundle = repo_and_bundle
    assert _publish(keys, repo, bundle) == 1
    assert "no closed-loop evaluation" in capsys.readouterr().err
    bad = _write(tmp_path, _eval(runs=1, completed=0, off=1, cte=0.4))
    assert _publish(keys, repo, bundle, "--evaluation", str(bad)) == 1
    err = capsys.readouterr().err
    assert "release gate failed" in err and "1 off-track event" in err and "--force" in err
    other = _write(tmp_path, _eval(ckpt="cd" * 32), "other.json")
    assert _publish(keys, repo, bundle, "--evaluation", str(other)) == 1
    assert "not of the released model's" in capsys.readouterr().err
    not_eval = _write(tmp_path, {"summary": {}}, "x.json")
    assert _publish(keys, repo, bundle, "--evaluation", str(not_eval)) == 1
    assert "not a closed-loop evaluation" in capsys.readouterr().err
    assert _publish(keys, repo, bundle, "--evaluation", str(bad), "--gate-max-cte-ratio", "0") == 1
    assert "max_cte_ratio" in capsys.readouterr().err
    assert _published(repo) == []  # nothing reached the repository


def test_a_passing_model_is_published_with_its_verdict(
    tmp_path: Path, repo_and_bundle: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, repo, bundle = repo_and_bundle
    good = _write(tmp_path, _eval())
    assert _publish(keys, repo, bundle, "--evaluation", str(good)) == 0
    assert "release gate passed" in capsys.readouterr().out
    (target,) = _published(repo)
    m = read_archive_manifest(target)
    assert m.release is not None and m.release.passed and not m.release.forced
    assert m.release.evaluation_sha256 == load_evaluation(good)[1]
    # the artifacts are the bundle's own; only the manifest gained the record
    assert m.artifacts == read_archive_manifest(bundle).artifacts
    # a robot provisioned with the root downloads and verifies what was published
    client = TrustedRepository(provision(tmp_path, repo), repo, tmp_path / "dl")
    info = client.latest(HW)
    assert info is not None and info.version == "2.0.0"
    assert read_archive_manifest(client.download(info)).release == m.release


def test_force_publishes_a_failing_model_and_the_manifest_says_so(
    tmp_path: Path, repo_and_bundle: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, repo, bundle = repo_and_bundle
    bad = _write(tmp_path, _eval(runs=1, completed=0, off=1, cte=0.4))
    assert _publish(keys, repo, bundle, "--evaluation", str(bad), "--force") == 0
    assert "FORCED past the release gate" in capsys.readouterr().out
    (target,) = _published(repo)
    rec = read_archive_manifest(target).release
    assert rec is not None and rec.forced and not rec.passed
    assert rec.off_track_events == 1 and rec.cte_ratio == pytest.approx(20.0)
    assert any("completed the laps on 0 of 1" in r for r in rec.reasons)
    assert read_archive_manifest(bundle).release is None  # the input bundle is untouched


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.torch
@pytest.mark.slow
def test_the_pipeline_stops_at_a_failing_gate_before_publishing(tmp_path: Path) -> None:
    """An untrained policy (reused as with --skip-train) is evaluated, fails, and stops the run."""
    torch = pytest.importorskip("torch")
    from brain.model import build_policy, save_policy
    from cloud_jobs.pipeline.run import Pipeline, PipelineOptions
    from cloud_jobs.pipeline.stages import StageFailed

    runs = tmp_path / "runs"
    runs.mkdir()
    torch.manual_seed(0)
    save_policy(build_policy("tiny"), tmp_path / "policy.pt")
    (runs / "last-policy.txt").write_text(f"{tmp_path / 'policy.pt'}\n")
    opts = PipelineOptions(skip_train=True, runs_root=runs, model="tiny", eval_tracks="oval")
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed, match="release gate failed, nothing is published"):
        Pipeline(opts, run_dir).run()
    stages = {s["name"]: s for s in json.loads((run_dir / "stages.json").read_text())}
    assert stages["evaluate"]["status"] == "done" and stages["gate"]["status"] == "failed"
    for later in ("export", "bundle", "publish", "update", "drive"):
        assert stages[later]["status"] == "pending", later
    assert not (run_dir / "repo").exists() and not (run_dir / "bundle.tar").exists()
    report = (run_dir / "report.md").read_text()
    figs = json.loads((run_dir / "report.json").read_text())["figures"]
    gate = figs["release_gate"]
    assert not gate["passed"] and not gate["forced"] and gate["reasons"]
    assert "## Release gate" in report and "FAILED" in report
    assert all(r in report for r in gate["reasons"])
    # the verdict is the evaluation's: the policy's own summary, judged
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert gate["completed"] == ev["summary"]["policy"]["completed"] < 1


@pytest.mark.parametrize("force", [False, True])
def test_the_pipelines_publish_stage_goes_through_the_gate(tmp_path: Path, force: bool) -> None:
    """delivery.publish runs `cloud_jobs publish --evaluation ... [--force]` as a subprocess."""
    from cloud_jobs.pipeline import delivery
    from cloud_jobs.pipeline.run import Pipeline, PipelineOptions
    from cloud_jobs.pipeline.stages import HARDWARE_ID, StageFailed

    p = Pipeline(PipelineOptions(force=force), tmp_path / "run")
    p.bundle = make_bundle(tmp_path, hardware_id=HARDWARE_ID, release_counter=1)
    p.model_version = "1.0.0"
    p.eval_json = _write(tmp_path, _eval(runs=1, completed=0, off=1, cte=0.4))
    try:
        if not force:
            with pytest.raises(StageFailed, match=r"release gate failed.*1 off-track event"):
                delivery.publish(p)
            assert _published(p.run_dir / "repo") == []
            return
        delivery.publish(p)
    finally:
        if p.repo is not None:
            p.repo.stop()
    (target,) = _published(p.run_dir / "repo")
    rec = read_archive_manifest(target).release
    assert rec is not None and rec.forced and rec.off_track_events == 1
