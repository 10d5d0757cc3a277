"""The pipeline's stages, in the order a robot builder would run them by hand.

record (daemon + sim expert) → validate/export → train → evaluate → memorize vs frozen
on a mis-trimmed car (a report figure, not a gate) → release gate →
export/quantize (parity gate) → bundle → publish (TUF, served on loopback) → the daemon's
updater installs it (hot swap, health window) → autonomous laps → report.  A model that
fails the release gate stops the run there (``--force`` publishes it anyway, recorded).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from brain.bundle.manifest import ReleaseGate
from cloud_jobs.pipeline.daemon import DaemonProcess, continuon_exe
from cloud_jobs.pipeline.delivery import run_delivery_stages
from cloud_jobs.pipeline.report import write_report
from cloud_jobs.pipeline.stages import StageFailed, Stages, cloud_jobs_cmd, run_cmd
from cloud_jobs.release import judge
from common.digest import sha256_file
from common.durable import replace_file

if TYPE_CHECKING:
    from cloud_jobs.pipeline.delivery import Repo

ROOT = Path(__file__).resolve().parents[2]
STAGES = (
    "record",
    "validate",
    "train",
    "evaluate",
    "memorization",
    "gate",
    "export",
    "bundle",
    "publish",
    "update",
    "drive",
    "bench",
    "report",
)


@dataclass(slots=True)
class PipelineOptions:
    budget_minutes: float = 20.0
    skip_train: bool = False
    runs_root: Path = Path("runs/pipeline")
    model: str = "pi5"  # pi5 | tiny (tiny: the CI test's few-minute budget)
    record_seconds: float = 45.0  # per daemon-recorded episode
    daemon_episodes: int = 2
    demo_episodes: int = 12
    demo_steps: int = 400
    demo_tracks: str = "oval,kidney,hairpin,random-1,random-2,random-3"
    #: Each demo's servo trim (sim.steering_trim) is drawn in [-x, x]; the labels know it.
    demo_trim_range: float = 0.1
    eval_tracks: str = "chicane"
    laps: int = 1
    #: Memorize vs frozen with the steering trimmed by +-this and 0 (cloud_jobs.memorization);
    #: 0 leaves the comparison out.
    memorization_trim: float = 0.15
    drive_laps: int = 1
    camera: tuple[int, int] = (160, 120)  # width, height of the sim camera for this run
    train_steps: int | None = None  # default: the training config's (pi5: 420, tiny: 600)
    gate: ReleaseGate = field(default_factory=ReleaseGate)
    force: bool = False  # publish although the release gate fails (recorded in the bundle)


class Pipeline:
    def __init__(self, opts: PipelineOptions, run_dir: Path | None = None) -> None:
        self.opts = opts
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_dir = (run_dir or opts.runs_root / stamp).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.run_dir / "commands.log"
        self.started = time.monotonic()
        self.figures: dict[str, Any] = {}
        self.stages = Stages(self.run_dir, STAGES)
        # Filled by the stages, in order (each is set before a later stage reads it).
        self.policy_pt: Path | None = None
        self.eval_json: Path | None = None
        self.export_dir: Path | None = None
        self.model_version: str | None = None
        self.bundle: Path | None = None
        self.repo: Repo | None = None
        self.trusted_root: Path | None = None
        self.daemon: DaemonProcess | None = None

    # ------------------------------------------------------------------ helpers

    def _minutes_left(self) -> float:
        return self.opts.budget_minutes - (time.monotonic() - self.started) / 60.0

    def robot_config(self, name: str, **over: Any) -> Path:
        """A sim robot config for this run: its own state dir, a small camera, headless."""
        raw = yaml.safe_load((ROOT / "configs" / "sim-donkey.yaml").read_text())
        raw["paths"] = {"state_dir": str(self.run_dir / f"robot-{name}")}
        raw["logging"] = {"level": "INFO", "format": "json"}
        w, h = self.opts.camera
        raw["hardware"]["camera"].update(width=w, height=h)
        raw.setdefault("api", {})["port"] = 0
        raw.setdefault("discovery", {})["enabled"] = False
        for dotted, value in over.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        path = self.run_dir / f"robot-{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    # ------------------------------------------------------------------ stages

    def record(self) -> dict[str, Any]:
        """The daemon records with the sim's expert driving; demos add more layouts, faster."""
        cfg = self.robot_config("record", **{"control.autopilot": "expert"})
        daemon = DaemonProcess(cfg, self.run_dir / "daemon-record.log")
        daemon.start()
        try:
            daemon.ctl("record", "start", "--tag", "pipeline")
            for _ in range(self.opts.daemon_episodes):
                daemon.ctl("mode", "autonomous")
                time.sleep(self.opts.record_seconds)
                daemon.ctl("mode", "idle")
                time.sleep(0.5)
            daemon.ctl("record", "stop")
            stats = daemon.ctl("stats")
        finally:
            rc = daemon.stop()
        episodes = json.loads(
            run_cmd([*continuon_exe(), "episodes", "list", "--json", "--config", cfg], self.log)
        )["episodes"]
        if len(episodes) < self.opts.daemon_episodes:
            raise StageFailed(
                f"the daemon committed {len(episodes)} episode(s), "
                f"expected {self.opts.daemon_episodes}"
            )
        demos = self.run_dir / "demos"
        w, h = self.opts.camera
        run_cmd(
            [
                *cloud_jobs_cmd(),
                "record-demos",
                "--out",
                demos,
                "--episodes",
                self.opts.demo_episodes,
                "--steps",
                self.opts.demo_steps,
                "--tracks",
                self.opts.demo_tracks,
                "--width",
                w,
                "--height",
                h,
                "--trim-range",
                self.opts.demo_trim_range,
            ],
            self.log,
        )
        self.record_config = cfg
        sim = (stats.get("sim") or {}) if isinstance(stats, dict) else {}
        return {
            "summary": f"{len(episodes)} daemon episodes + {self.opts.demo_episodes} demos",
            "daemon_episodes": len(episodes),
            "daemon_steps": sum(e["num_steps"] for e in episodes),
            "daemon_exit_code": rc,
            "expert_laps_while_recording": sim.get("laps"),
            "demo_episodes": self.opts.demo_episodes,
        }

    def validate(self) -> dict[str, Any]:
        cfg = self.record_config
        run_cmd([*continuon_exe(), "episodes", "validate", "--config", cfg], self.log)
        out = self.run_dir / "dataset"
        run_cmd(
            [
                *continuon_exe(),
                *("episodes", "export", "--format", "rlds", "--out", out, "--config", cfg),
            ],
            self.log,
        )
        self.dataset = out
        n = len(list((self.run_dir / "robot-record" / "episodes").glob("*")))
        return {"summary": f"{n} episode(s) valid, exported to {out.name}/", "dataset": str(out)}

    def train(self) -> dict[str, Any]:
        base = "tiny.yaml" if self.opts.model == "tiny" else "pi5.yaml"
        raw = yaml.safe_load((ROOT / "configs" / "train" / base).read_text())
        raw["name"] = f"pipeline-{self.opts.model}"
        demos = self.run_dir / "demos"
        raw["data"]["sources"] = [{"path": str(self.dataset)}, {"path": str(demos)}]
        _apply_recipe(raw)
        # Training gets what the budget leaves after the later stages (~40 % of it, >= 1 min).
        minutes = max(1.0, min(self._minutes_left() * 0.55, self.opts.budget_minutes * 0.6))
        raw["train"]["max_minutes"] = round(minutes, 2)
        raw["train"]["progress"] = "off"
        if self.opts.train_steps is not None:
            raw["train"]["steps"] = self.opts.train_steps
        elif self.opts.model == "tiny":
            raw["train"]["steps"] = 600
        cfg = self.run_dir / "train.yaml"
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        run_dir = self.run_dir / "train"
        run_cmd([*cloud_jobs_cmd(), "train", "--config", cfg, "--run-dir", run_dir], self.log)
        self.policy_pt = run_dir / "policy.pt"
        if not self.policy_pt.is_file():
            raise StageFailed(f"training wrote no {self.policy_pt}")
        replace_file(self.opts.runs_root / "last-policy.txt", f"{self.policy_pt}\n".encode())
        self.figures["recipe"] = recipe_switches(run_dir / "config.yaml")
        metrics = [
            json.loads(line)
            for line in (run_dir / "metrics.ndjson").read_text().splitlines()
            if line.strip()
        ]
        train_rows = [m for m in metrics if "loss" in m]
        steps = max((int(m["step"]) for m in metrics if "step" in m), default=0)
        return {
            "summary": f"{steps} steps, budget {minutes:.1f} min",
            "steps": steps,
            "budget_minutes": minutes,
            "final_loss": train_rows[-1]["loss"] if train_rows else None,
        }

    def reuse_policy(self) -> None:
        marker = self.opts.runs_root / "last-policy.txt"
        if not marker.is_file():
            raise StageFailed(
                f"--skip-train needs a trained model from an earlier run ({marker} is missing)"
            )
        self.policy_pt = Path(marker.read_text().strip())
        if not self.policy_pt.is_file():
            raise StageFailed(f"{self.policy_pt} (from {marker}) no longer exists")
        self.figures["recipe"] = recipe_switches(self.policy_pt.parent / "config.yaml")

    def evaluate(self) -> dict[str, Any]:
        out = self.run_dir / "eval"
        w, h = self.opts.camera
        run_cmd(
            [
                *cloud_jobs_cmd(),
                "evaluate",
                *("--policy", self.policy_pt, "--tracks", self.opts.eval_tracks),
                *("--laps", self.opts.laps, "--out", out, "--width", w, "--height", h, "--quiet"),
            ],
            self.log,
        )
        self.eval_json = out / "eval.json"
        result = json.loads(self.eval_json.read_text())
        self.figures["closed_loop"] = result.get("summary", {})
        return {"summary": _eval_summary(result), "eval": str(self.eval_json)}

    def memorization(self) -> dict[str, Any]:
        """Memorize vs frozen under +-trim and none, 1 lap each (report only, never gated)."""
        w, h = self.opts.camera
        trim = self.opts.memorization_trim
        run_cmd(
            [
                *cloud_jobs_cmd(),
                "evaluate",
                *("--policy", self.policy_pt, "--tracks", self.opts.eval_tracks, "--laps", 1),
                *("--memorization-trim", trim, "--out", self.run_dir),
                *("--width", w, "--height", h, "--quiet"),
            ],
            self.log,
        )
        result = json.loads((self.run_dir / "memorization.json").read_text())
        self.figures["memorization"] = result
        r, r0 = result["summary"]["ratio_trimmed"], result["summary"]["ratio_untrimmed"]
        return {
            "summary": f"memorize/frozen {_x(r)} at trim +-{trim:g}, {_x(r0)} without",
            "memorization": str(self.run_dir / "memorization.json"),
        }

    def release_gate(self) -> dict[str, Any]:
        """Judge the evaluation before anything is exported or published (cloud_jobs.release)."""
        assert self.eval_json is not None and self.policy_pt is not None
        record = judge(
            json.loads(self.eval_json.read_text()),
            self.opts.gate,
            checkpoint_sha256=sha256_file(self.policy_pt),
            forced=self.opts.force,
        )
        self.figures["release_gate"] = record.model_dump(mode="json")
        why = "; ".join(record.reasons)
        if not record.passed and not self.opts.force:
            raise StageFailed(f"the release gate failed, nothing is published: {why}")
        return {"summary": "passed" if record.passed else f"FAILED, forced past it: {why}"}

    # The stages after the gate (export → ... → bench) are in delivery.py.

    def run(self) -> Path:
        s = self.stages
        try:
            if self.opts.skip_train:
                s.skip("record", "--skip-train")
                s.skip("validate", "--skip-train")
                s.skip("train", "--skip-train (reusing the last trained model)")
                self.reuse_policy()
            else:
                s.run("record", self.record)
                s.run("validate", self.validate)
                s.run("train", self.train)
            s.run("evaluate", self.evaluate)
            if self.opts.memorization_trim > 0:
                s.run("memorization", self.memorization)
            else:
                s.skip("memorization", "--memorization-trim 0")
            s.run("gate", self.release_gate)
            run_delivery_stages(self)
        finally:
            s.run("report", lambda: write_report(self))
        return self.run_dir


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _eval_summary(result: dict[str, Any]) -> str:
    summ = result.get("summary", {})
    pol = summ.get("policy", summ)
    parts = []
    for k in ("laps", "off_track_events", "mean_abs_cte_m"):
        if k in pol:
            v = pol[k]
            parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


#: The memorization recipe (docs/training.md): what the pipeline's training always has on,
#: whichever model it trains (configs/train/pi5.yaml and the pi5 preset have it; the tiny
#: preset and tiny.yaml leave parts of it off).
RECIPE_MODEL = {"action_feedback": True, "motion_feedback": True}
RECIPE_RECURRENCE = {"stateful": True, "teacher_forcing": True, "memory_dropout": 0.25}


def _apply_recipe(raw: dict[str, Any]) -> None:
    """Switch the recipe on where the base config leaves it out (a config's own value wins)."""
    model = raw.setdefault("model", {})
    overrides = model.setdefault("overrides", {}) or {}
    model["overrides"] = {**RECIPE_MODEL, **overrides}
    raw["recurrence"] = {**RECIPE_RECURRENCE, **(raw.get("recurrence") or {})}


def recipe_switches(config_yaml: Path) -> dict[str, Any]:
    """The recipe's switches as the training run resolved them (its ``config.yaml``)."""
    if not config_yaml.is_file():
        return {}
    raw = yaml.safe_load(config_yaml.read_text()) or {}
    model = (raw.get("model") or {}).get("overrides") or {}
    rec = raw.get("recurrence") or {}
    return {k: model.get(k, False) for k in RECIPE_MODEL} | {
        k: rec.get(k, False if k != "memory_dropout" else 0.0) for k in RECIPE_RECURRENCE
    }


def run_pipeline(opts: PipelineOptions, run_dir: Path | None = None) -> Path:
    return Pipeline(opts, run_dir).run()
