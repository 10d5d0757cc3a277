"""`continuon pipeline` end to end on the simulated robot, with a small budget, and its report.

One real run (subprocesses: the daemon, cloud_jobs train/export/bundle/publish, a loopback
HTTP server for the TUF repository), then a `--skip-train` run reusing its model.  The
report's figures are checked against the files the stages wrote, not against constants.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONTINUON = Path(sys.executable).with_name("continuon")


def _pipeline(runs: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        str(CONTINUON),
        "pipeline",
        *("--model", "tiny", "--budget-minutes", "8", "--runs-root", str(runs)),
        *("--run-dir", str(run_dir), "--record-seconds", "8", "--daemon-episodes", "2"),
        *("--demo-episodes", "6", "--demo-steps", "300", "--laps", "1"),
        # a few minutes of training may not clear the release gate: publish anyway (recorded);
        # tests/test_release.py has the run the gate stops
        "--force",
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=840, check=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    pytest.importorskip("torch")  # the train stage needs the train extra
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / "first"
    proc = _pipeline(runs, run_dir)
    return runs, run_dir, proc


def test_every_stage_runs_and_the_progress_is_shown(first_run):
    _, run_dir, proc = first_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = json.loads((run_dir / "stages.json").read_text())
    assert [s["name"] for s in stages][:3] == ["record", "validate", "train"]
    assert all(s["status"] == "done" for s in stages if s["name"] != "report"), stages
    for s in stages[:-1]:
        assert f"] {s['name']}" in proc.stdout  # one progress line per stage
    assert f"report: {run_dir / 'report.md'}" in proc.stdout


def test_report_figures_match_what_the_stages_wrote(first_run):
    _, run_dir, proc = first_run
    assert proc.returncode == 0
    report = json.loads((run_dir / "report.json").read_text())
    figs = report["figures"]

    # closed loop: the report's table is eval.json's summary, expert side by side
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert figs["closed_loop"] == ev["summary"]
    pol, exp = figs["closed_loop"]["policy"], figs["closed_loop"]["expert"]
    assert figs["cte_ratio_vs_expert"] == pytest.approx(
        pol["mean_abs_cte_m"] / exp["mean_abs_cte_m"]
    )

    # export: sizes are the files' sizes, the bundle is the file that was published
    ex = figs["export"]
    exp_report = json.loads((run_dir / "export" / "export_report.json").read_text())
    for art in exp_report["artifacts"]:
        size = (run_dir / "export" / art["file"]).stat().st_size
        assert ex["artifact_bytes"][art["backend"]] == size
    assert ex["bundle_bytes"] == (run_dir / "bundle.tar").stat().st_size
    assert ex["preferred_backends"] and ex["preferred_backends"][0] in ex["artifact_bytes"]
    # a backend that failed its gate (INT8 of a barely trained model may) is never shipped
    failed = [a["backend"] for a in exp_report["artifacts"] if a.get("gate_passed") is False]
    assert ex["failed_gates"] == failed
    assert not set(failed) & set(ex["preferred_backends"])

    # the demos were recorded with a servo trim each, drawn in the default range
    from rlds.reader import list_episodes

    trims = [e.metadata["sim"]["steering_trim"] for e in list_episodes(run_dir / "demos")]
    assert len(set(trims)) == len(trims) == 6 and all(abs(t) <= 0.1 for t in trims)

    # the release gate's verdict is in the published bundle's manifest, forced or passed
    gate = figs["release_gate"]
    (published,) = (run_dir / "repo" / "targets").glob("*.tar")
    from brain.bundle.unpack import read_archive_manifest

    release = read_archive_manifest(published).release
    assert release is not None and release.model_dump(mode="json")["reasons"] == gate["reasons"]
    assert release.passed == gate["passed"] and release.forced == (not gate["passed"])

    # the daemon's updater committed exactly the exported model, and drove on it
    version = exp_report["model_version"]
    assert figs["update"]["phase"] == "committed"
    assert figs["update"]["committed"]["version"] == version
    assert figs["drive"]["model_version"] == version
    assert figs["drive"]["deadline_misses"] is not None
    assert figs["drive"]["sensor_to_actuation_p99_ms"] > 0
    assert figs["daemon_exit_code"] == 0  # SIGTERM: clean shutdown

    # the bench measured the backends it reports
    bench = json.loads((run_dir / "bench.json").read_text())
    assert figs["bench"]["onnx_fp32_p50_ms"] == bench["onnx_fp32_p50_ms"] > 0

    md = (run_dir / "report.md").read_text()
    for png in ("training_curve.png", "latency_histogram.png", "eval/track_chicane.png"):
        assert f"]({png})" in md and (run_dir / png).stat().st_size > 1000
    assert f"{pol['mean_abs_cte_m']:.3f}"[:4] in md


def test_memorization_figures_come_from_the_drives(first_run):
    """Memorize vs frozen at trim +-0.15 and 0: the report's numbers are memorization.json's."""
    _, run_dir, proc = first_run
    assert proc.returncode == 0
    figs = json.loads((run_dir / "report.json").read_text())["figures"]
    memo = json.loads((run_dir / "memorization.json").read_text())
    assert figs["memorization"] == memo and memo["trim"] == 0.15
    assert memo["tracks"] == ["chicane"] and memo["laps"] == 1

    # six drives, one per (trim, memory lr), each a real run with steps and a finite |cte|
    conds = {(r["steering_trim"], r["memory_lr"]) for r in memo["runs"]}
    assert conds == {(t, lr) for t in (0.15, -0.15, 0.0) for lr in (1.0, 0.0)}
    assert len(memo["runs"]) == 6
    assert all(r["steps"] > 0 and math.isfinite(r["mean_abs_cte_m"]) for r in memo["runs"])
    cte = memo["mean_abs_cte_m"]
    for r in memo["runs"]:
        key = f"{r['steering_trim']:+.2f}/{'memorize' if r['memory_lr'] else 'frozen'}"
        assert cte[key] == r["mean_abs_cte_m"]  # one track: the mean is that drive's

    summ = memo["summary"]
    mem = (cte["+0.15/memorize"] + cte["-0.15/memorize"]) / 2
    frz = (cte["+0.15/frozen"] + cte["-0.15/frozen"]) / 2
    assert summ["memorize_trimmed_cte_m"] == pytest.approx(mem)
    assert summ["frozen_trimmed_cte_m"] == pytest.approx(frz)
    pairs = {
        "ratio_trimmed": (mem, frz),
        "ratio_untrimmed": (cte["+0.00/memorize"], cte["+0.00/frozen"]),
        "trim_cost_memorize": (mem, cte["+0.00/memorize"]),
        "trim_cost_frozen": (frz, cte["+0.00/frozen"]),
    }
    for k, (a, b) in pairs.items():
        assert summ[k] == (pytest.approx(a / b) if b > 0 else None), k

    md = (run_dir / "report.md").read_text()
    section = md.split("## Test-time memorization (mis-trimmed car)", 1)[1].split("\n## ", 1)[0]
    assert md.index("## Closed loop") < md.index("## Test-time memorization")
    assert "| steering trim | memorize: mean abs cte (m) | frozen: mean abs cte (m) |" in section
    for t in ("+0.15", "-0.15", "+0.00"):
        row = f"| {t} | {round(cte[f'{t}/memorize'], 3)} | {round(cte[f'{t}/frozen'], 3)} |"
        assert row in section
    r = summ["ratio_trimmed"]
    assert f"under the trim: **{'n/a' if r is None else f'{r:.2f}x'}**" in section
    assert "the memory helps" in section

    # the model was trained with the recipe, and the report says so
    recipe = {
        "action_feedback": True,
        "motion_feedback": True,
        "stateful": True,
        "teacher_forcing": True,
        "memory_dropout": 0.25,
    }
    assert figs["recipe"] == recipe
    trained = yaml.safe_load((run_dir / "train" / "config.yaml").read_text())
    assert trained["recurrence"] == {k: recipe[k] for k in trained["recurrence"]}
    assert (
        "Training recipe switches on: action_feedback, motion_feedback, stateful, "
        "teacher_forcing, memory_dropout=0.25." in md
    )


def test_skip_train_reuses_the_last_model(first_run):
    runs, first_dir, proc = first_run
    assert proc.returncode == 0
    # --memorization-trim 0 leaves the comparison out (the recipe line stays)
    again = _pipeline(runs, runs / "second", "--skip-train", "--memorization-trim", "0")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    stages = {s["name"]: s for s in json.loads((runs / "second" / "stages.json").read_text())}
    assert {stages[n]["status"] for n in ("record", "validate", "train")} == {"skipped"}
    assert stages["memorization"]["status"] == "skipped"
    first = json.loads((first_dir / "report.json").read_text())["figures"]
    second = json.loads((runs / "second" / "report.json").read_text())["figures"]
    assert second["update"]["committed"]["version"] == first["export"]["model_version"]
    assert "memorization" not in second and second["recipe"] == first["recipe"]
    assert not (runs / "second" / "memorization.json").exists()
    md = (runs / "second" / "report.md").read_text()
    assert "Test-time memorization" not in md and "Training recipe switches on" in md


@pytest.mark.parametrize(
    ("trim", "says"),
    [("-0.1", "must be >= 0"), ("nan", "must be >= 0"), ("0.9", "less than or equal to 0.5")],
)
def test_a_bad_memorization_trim_is_refused_before_anything_runs(tmp_path, trim, says):
    proc = _pipeline(tmp_path / "runs", tmp_path / "runs" / "x", "--memorization-trim", trim)
    assert proc.returncode == 2
    assert "--memorization-trim" in proc.stderr and says in proc.stderr, proc.stderr
    assert not (tmp_path / "runs" / "x").exists()


def test_skip_train_without_an_earlier_run_says_what_is_missing(tmp_path):
    proc = _pipeline(tmp_path / "none", tmp_path / "none" / "x", "--skip-train")
    assert proc.returncode == 1
    assert "needs a trained model from an earlier run" in proc.stderr
