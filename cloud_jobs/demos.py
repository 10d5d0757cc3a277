"""Expert demonstrations recorded in the simulator, with DART-style noise injection.

Behaviour cloning from clean expert drives suffers from compounding error: the
learner never sees what to do once it has drifted off the expert's line.  DART
(Laskey et al., 2017) fixes this on the data side: while recording, the car is
driven by the expert's action *plus noise*, so it wanders around the line, but
the label stored for every step is the expert's clean action at the state the
car is really in.  The data then show how to recover from the errors a learner
will make.

Here the noise is an Ornstein-Uhlenbeck process on steering (and a weaker one on
throttle): temporally correlated, so the car really drifts instead of jittering
in place, and clipped.  Each episode is one :class:`DemoSpec`, drawn from a seeded
RNG per episode index: its track, lighting, ground texture, start pose along the
track and a servo trim (``SimConfig.steering_trim``) drawn uniformly in
``[-trim_range, trim_range]``: a mis-trimmed car that a policy with test-time memory
can learn to adapt to, with labels from an expert who knows the trim.

Episodes are written with :class:`rlds.writer.EpisodeWriter` with the same
metadata as the daemon's recorder (robot id ``sim``, ``rate_hz``,
``action_names``, the ``sim`` config, mode ``autonomous``, source ``expert``,
tags), camera frames at the robot's resolution (640x480 by default) so training
sees the same ``preprocess_frame`` path as on the robot.

Per step, ``action`` is the label (clean expert action) and ``extra`` holds
``executed_action`` (what the car did), ``expert_action`` (the trim-aware pure
pursuit command), ``nominal_action`` (the same without the trim), ``noise``,
``cte_m``, ``speed_mps`` and the car ``state``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain import __version__
from brain.config import CameraConfig, SimConfig
from brain.hardware.sim import SimWorld, make_track
from brain.hardware.sim.world import Pose
from rlds.types import StepInput
from rlds.writer import EpisodeWriter

ACTION_NAMES = ("steering", "throttle")
LIGHTINGS = ("day", "dusk", "overcast", "glare")
TEXTURES = ("asphalt", "concrete", "carpet")
#: An episode stops early when the car is this far beyond the road edge (it is lost).
LOST_MARGIN_M = 0.6
LABELS = ("trim_aware", "nominal")
DRIVES = ("label", "nominal", "misjudged", "partial")
#: SimConfig.steering_trim's bound.
MAX_TRIM = 0.5


@dataclass(frozen=True, slots=True)
class DemoSpec:
    """Everything that makes one demonstration episode what it is (JSON-able)."""

    index: int
    track: str
    seed: int
    lighting: str
    texture: str
    steering_trim: float
    #: Start pose: arc length along the centreline, lateral offset (m, + left), yaw error (rad).
    start_s: float
    start_lateral_m: float
    start_yaw_rad: float
    #: Stationary std of the OU steering noise (normalised units); throttle gets ``throttle_noise``.
    noise: float
    throttle_noise: float
    noise_tau_s: float
    steps: int
    rate_hz: float
    width: int
    height: int
    #: "trim_aware": label = pure pursuit minus the trim (what a driver who knows the
    #: trim commands; the sim's expert), which makes the trim worth inferring from history;
    #: "nominal": label = pure pursuit unaware of the trim.
    label: str = "trim_aware"
    #: What the noise is added to for driving: "label" (DART: the car follows the label plus
    #: noise) or "nominal" (the trim-unaware pure pursuit plus noise, so a mis-trim shows in
    #: the images as the drift it causes while the labels say how to correct it) or
    #: "misjudged" (the unaware pure pursuit minus ``drive_trim``, a trim the driver wrongly
    #: believes in, drawn independently of the true one) or "partial" (the unaware pure
    #: pursuit minus a random share, uniform in [0, 1] per episode, of the true trim).
    #: Under "label" the executed commands already hold the whole correction, so a policy fed
    #: back its executed actions learns to read the trim off them, which at run time finds
    #: only its own correction there.  "misjudged" commands say nothing about the trim (it
    #: shows only in how the view answers them); "partial" ones hold part of it, and the
    #: drift shows the rest: what a policy that is still adapting sees of its own commands.
    drive: str = "label"
    #: The trim the "misjudged" or "partial" driver takes out of its commands (0 otherwise).
    drive_trim: float = 0.0
    #: The range the trim was drawn from (0: no trim), recorded with the episode.
    trim_range: float = 0.0
    jpeg_quality: int = 90


def plan_demos(
    tracks: Sequence[str],
    episodes: int,
    *,
    steps: int = 600,
    seed: int = 0,
    noise: float = 0.1,
    noise_tau_s: float = 0.6,
    rate_hz: float = 20.0,
    width: int = 640,
    height: int = 480,
    lightings: Sequence[str] = LIGHTINGS,
    textures: Sequence[str] = TEXTURES,
    trim_range: float = 0.0,
    start_jitter: bool = True,
    label: str = "trim_aware",
    drive: str = "label",
    jpeg_quality: int = 90,
) -> list[DemoSpec]:
    """One spec per episode; episode ``i`` depends only on (``seed``, ``i``) and the arguments.

    Tracks are used round-robin so each gets its share; lighting, texture and start
    pose are drawn at random (every lighting/texture appears once enough episodes
    are recorded).  ``trim_range`` > 0 draws a servo trim uniformly in
    [-trim_range, trim_range] per episode (from the same seeded RNG).
    """
    if not tracks:
        raise ValueError("at least one track is needed")
    if episodes < 1 or steps < 1:
        raise ValueError("episodes and steps must be >= 1")
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if drive not in DRIVES:
        raise ValueError(f"drive must be one of {DRIVES}, got {drive!r}")
    if not 0.0 <= trim_range <= MAX_TRIM:
        raise ValueError(f"trim range must be in [0, {MAX_TRIM}], got {trim_range}")
    for t in tracks:
        make_track(t)  # fail early on a bad name, with the track module's message
    specs = []
    for i in range(episodes):
        rng = np.random.default_rng([int(seed), i])
        track = make_track(tracks[i % len(tracks)])
        # The draws keep their order: an episode index means the same episode in every plan.
        ep_seed = int(rng.integers(0, 2**31 - 1))
        lighting = str(lightings[int(rng.integers(len(lightings)))])
        texture = str(textures[int(rng.integers(len(textures)))])
        trim = round(float(rng.uniform(-trim_range, trim_range)), 4) if trim_range > 0 else 0.0
        specs.append(
            DemoSpec(
                index=i,
                track=track.name,
                seed=ep_seed,
                lighting=lighting,
                texture=texture,
                steering_trim=trim,
                start_s=float(rng.uniform(0.0, track.length)) if start_jitter else 0.0,
                start_lateral_m=float(rng.uniform(-0.15, 0.15)) if start_jitter else 0.0,
                start_yaw_rad=float(rng.uniform(-0.15, 0.15)) if start_jitter else 0.0,
                noise=float(noise),
                throttle_noise=float(noise) * 0.3,
                noise_tau_s=float(noise_tau_s),
                steps=int(steps),
                rate_hz=float(rate_hz),
                width=int(width),
                height=int(height),
                label=label,
                drive=drive,
                trim_range=float(trim_range),
                jpeg_quality=int(jpeg_quality),
                drive_trim=_drive_trim(drive, seed, i, trim_range, trim),
            )
        )
    return specs


def _drive_trim(drive: str, seed: int, index: int, trim_range: float, trim: float) -> float:
    """The trim the driver takes out: "misjudged", uniform in the same range independent of
    the true one; "partial", a uniform share of it; from a stream of its own, so the other
    draws stay what they were before these drives."""
    if drive not in ("misjudged", "partial") or trim_range <= 0:
        return 0.0
    rng = np.random.default_rng([int(seed), index, 11])
    if drive == "misjudged":
        return round(float(rng.uniform(-trim_range, trim_range)), 4)
    return round(float(rng.uniform(0.0, 1.0)) * trim, 4)


def start_pose(track_name: str, s: float, lateral: float, yaw_err: float) -> Pose:
    """The pose ``lateral`` m left of the centreline at arc length ``s``, yawed by ``yaw_err``."""
    tr = make_track(track_name)
    i = round(s / tr.spacing) % tr.n
    x, y = (float(v) for v in tr.points[i])
    h = float(tr.heading[i])
    return Pose(x - math.sin(h) * lateral, y + math.cos(h) * lateral, h + yaw_err)


class OUNoise:
    """Ornstein-Uhlenbeck noise with stationary std ``sigma`` and correlation time ``tau``.

    Sampled exactly at a fixed ``dt``: ``x' = a x + sigma sqrt(1 - a^2) n`` with
    ``a = exp(-dt / tau)``, clipped to ``±clip_sigmas * sigma``.
    """

    def __init__(
        self, sigma: float, tau_s: float, dt: float, rng: np.random.Generator, clip_sigmas=2.5
    ):
        self.sigma = float(sigma)
        self.a = math.exp(-dt / max(tau_s, 1e-6))
        self.b = self.sigma * math.sqrt(max(0.0, 1.0 - self.a * self.a))
        self.limit = clip_sigmas * self.sigma
        self.rng = rng
        # Start in the stationary distribution: no warm-up transient.
        self.x = (
            float(np.clip(rng.normal(0.0, self.sigma), -self.limit, self.limit)) if sigma else 0.0
        )

    def __call__(self) -> float:
        if self.sigma <= 0:
            return 0.0
        self.x = self.a * self.x + self.b * float(self.rng.standard_normal())
        self.x = min(self.limit, max(-self.limit, self.x))
        return self.x


def sim_config_for(spec: DemoSpec) -> SimConfig:
    # Validated: a spec's lighting and texture are plain strings from the demo plan.
    return SimConfig.model_validate(
        {
            "track": spec.track,
            "seed": spec.seed,
            "lighting": spec.lighting,
            "texture": spec.texture,
            "steering_trim": spec.steering_trim,
        }
    )


def episode_metadata(
    spec: DemoSpec, sim_cfg: SimConfig, tags: Sequence[str] = ()
) -> dict[str, Any]:
    """Episode metadata in the daemon recorder's shape, plus the demo's own spec."""
    spec_d = asdict(spec)
    return {
        "robot_id": "sim",
        "robot_kind": "car",
        "config_hash": hashlib.sha256(json.dumps(spec_d, sort_keys=True).encode()).hexdigest()[:16],
        "software_version": __version__,
        "model_version": None,
        "mode": "autonomous",
        "source": "expert",
        "rate_hz": spec.rate_hz,
        "action_names": list(ACTION_NAMES),
        "sensors": {
            "image": {
                "driver": "sim",
                "width": spec.width,
                "height": spec.height,
                "fps": spec.rate_hz,
            }
        },
        "tags": [
            "demo",
            "expert",
            f"track={spec.track}",
            f"lighting={spec.lighting}",
            f"texture={spec.texture}",
            f"dart_noise={spec.noise:g}",
            *tags,
        ],
        "sim": sim_cfg.model_dump(mode="json"),
        "demo": {**spec_d, "generator": "cloud_jobs.demos", "noise_process": "ornstein-uhlenbeck"},
        "started_wall": time.time(),
    }


def _drive_base(spec: DemoSpec, label: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """The command the noise is added to, per ``spec.drive``."""
    if spec.drive == "label":
        return label
    if spec.drive == "nominal" or not spec.drive_trim:
        return nominal
    base = nominal.copy()
    base[0] = max(-1.0, min(1.0, float(base[0]) - spec.drive_trim))
    return base


def record_episode(spec: DemoSpec, out: Path, tags: Sequence[str] = ()) -> dict[str, Any]:
    """Drive one episode with the noisy expert and write it under ``out``; returns a summary."""
    t_wall = time.perf_counter()
    sim_cfg = sim_config_for(spec)
    world = SimWorld(sim_cfg, CameraConfig(width=spec.width, height=spec.height))
    world.reset(start_pose(spec.track, spec.start_s, spec.start_lateral_m, spec.start_yaw_rad))
    dt = 1.0 / spec.rate_hz
    rng = np.random.default_rng([spec.seed, spec.index, 7])
    steer_noise = OUNoise(spec.noise, spec.noise_tau_s, dt, rng)
    thr_noise = OUNoise(spec.throttle_noise, spec.noise_tau_s, dt, rng)
    half = world.track.half_width
    lost = False
    max_noise = 0.0
    with EpisodeWriter(
        out, episode_metadata(spec, sim_cfg, tags), jpeg_quality=spec.jpeg_quality
    ) as writer:
        for k in range(spec.steps):
            state = world.state
            image = world.render_rgb()
            expert = world.expert_action()  # knows the trim
            nominal = world.expert_action(trim_aware=False)
            label = expert if spec.label == "trim_aware" else nominal
            noise = np.array([steer_noise(), thr_noise()])
            base = _drive_base(spec, label, nominal)
            executed = np.clip(base + noise, -1.0, 1.0)
            max_noise = max(max_noise, abs(float(noise[0])))
            cte = float(world.tracker.m.cte_m)
            t = k * dt
            writer.append(
                StepInput(
                    t=t,
                    action=label,
                    observation={"image": image},
                    timestamps={"image": t},
                    extra={
                        "mode": "autonomous",
                        "source": "expert",
                        "frame_seq": k,
                        "executed_action": [float(v) for v in executed],
                        "expert_action": [float(v) for v in expert],
                        "nominal_action": [float(v) for v in nominal],
                        "noise": [float(v) for v in noise],
                        "cte_m": cte,
                        "speed_mps": float(state.speed),
                        "state": [float(v) for v in state.as_array()],
                    },
                )
            )
            world.step(executed, dt)
            if abs(world.tracker.m.cte_m) > half + LOST_MARGIN_M:
                lost = True
                break
        m = world.metrics()
        info = writer.close(
            terminal=False,
            extra_metadata={
                "demo_result": {
                    "laps": m["laps"],
                    "progress_m": m["progress_m"],
                    "mean_abs_cte_m": m["mean_abs_cte_m"],
                    "max_abs_cte_m": m["max_abs_cte_m"],
                    "off_track_events": m["off_track_events"],
                    "lost": lost,
                    "max_abs_steering_noise": max_noise,
                }
            },
        )
    assert info is not None
    return {
        "index": spec.index,
        "episode_id": info.episode_id,
        "path": str(info.path),
        "track": spec.track,
        "lighting": spec.lighting,
        "texture": spec.texture,
        "steering_trim": spec.steering_trim,
        "steps": info.num_steps,
        "laps": m["laps"],
        "mean_abs_cte_m": m["mean_abs_cte_m"],
        "max_abs_cte_m": m["max_abs_cte_m"],
        "off_track_events": m["off_track_events"],
        "lost": lost,
        "wall_s": time.perf_counter() - t_wall,
    }


def _worker(args: tuple[DemoSpec, str, tuple[str, ...]]) -> dict[str, Any]:
    import cv2

    cv2.setNumThreads(1)  # one process per core; OpenCV's own pool would oversubscribe
    spec, out, tags = args
    return record_episode(spec, Path(out), tags)


def record_demos(
    specs: Sequence[DemoSpec],
    out: Path,
    *,
    workers: int = 0,
    tags: Sequence[str] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Record every spec under ``out`` (the episodes root); ``workers`` 0 = one per core (max 8)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = workers if workers > 0 else min(8, os.cpu_count() or 1)
    n = max(1, min(n, len(specs)))
    jobs = [(s, str(out), tuple(tags)) for s in specs]
    results: list[dict[str, Any]] = []
    if n == 1:
        for job in jobs:
            results.append(_worker(job))
            if progress:
                _progress(results[-1], len(results), len(jobs))
    else:
        # spawn: a clean interpreter per worker (no forked OpenCV/torch thread state)
        with mp.get_context("spawn").Pool(n) as pool:
            for r in pool.imap_unordered(_worker, jobs):
                results.append(r)
                if progress:
                    _progress(r, len(results), len(jobs))
    results.sort(key=lambda r: r["index"])
    return results


def _progress(r: dict[str, Any], done: int, total: int) -> None:
    print(
        f"[{done}/{total}] {r['episode_id']} {r['track']:>10} {r['lighting']:>8}/{r['texture']:<8}"
        f" steps={r['steps']} laps={r['laps']} mean|cte|={r['mean_abs_cte_m']:.3f}"
        f" off={r['off_track_events']}{' LOST' if r['lost'] else ''} ({r['wall_s']:.1f}s)",
        file=sys.stderr,
        flush=True,
    )


def build_parser(prog: str = "cloud_jobs record-demos") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Record expert demonstrations in the simulator (DART noise injection).",
    )
    p.add_argument("--out", required=True, type=Path, help="episodes root to write into")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--steps", type=int, default=600, help="control steps per episode")
    p.add_argument("--tracks", default="oval,kidney,hairpin", help="comma-separated layouts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="stationary std of the OU steering noise added to the executed action (0 = none)",
    )
    p.add_argument("--noise-tau", type=float, default=0.6, help="noise correlation time (s)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=20.0, help="control rate (Hz)")
    p.add_argument(
        "--trim-range",
        type=float,
        default=0.0,
        help="draw a servo trim (sim.steering_trim) in [-X, X] per episode, from --seed",
    )
    p.add_argument(
        "--label",
        choices=LABELS,
        default="trim_aware",
        help="trim_aware: pure pursuit minus the trim (the sim's expert); nominal: without",
    )
    p.add_argument(
        "--drive",
        choices=DRIVES,
        default="label",
        help="label: the car follows label + noise (DART); nominal: trim-unaware expert + "
        "noise; misjudged: trim-unaware expert minus an independent random trim + noise; "
        "partial: trim-unaware expert minus a random share of the trim + noise",
    )
    p.add_argument("--lightings", default=",".join(LIGHTINGS))
    p.add_argument("--textures", default=",".join(TEXTURES))
    p.add_argument("--no-start-jitter", action="store_true", help="always start on the line")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    p.add_argument("--tag", action="append", default=[], help="extra episode tag (repeatable)")
    p.add_argument("--quiet", action="store_true")
    return p


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def record_demos_main(argv: Sequence[str] | None = None) -> int:
    """``cloud_jobs record-demos``: prints a JSON summary on stdout; progress on stderr."""
    args = build_parser().parse_args(argv)
    try:
        specs = plan_demos(
            _csv(args.tracks),
            args.episodes,
            steps=args.steps,
            seed=args.seed,
            noise=args.noise,
            noise_tau_s=args.noise_tau,
            rate_hz=args.rate,
            width=args.width,
            height=args.height,
            lightings=_csv(args.lightings),
            textures=_csv(args.textures),
            trim_range=args.trim_range,
            start_jitter=not args.no_start_jitter,
            label=args.label,
            drive=args.drive,
            jpeg_quality=args.jpeg_quality,
        )
        for s in specs:
            sim_config_for(s)  # validate lighting/texture/offset names before any work
    except ValueError as e:
        print(f"record-demos: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = record_demos(
        specs, args.out, workers=args.workers, tags=args.tag, progress=not args.quiet
    )
    wall = time.perf_counter() - t0
    steps = sum(r["steps"] for r in results)
    summary = {
        "out": str(args.out),
        "episodes": len(results),
        "steps": steps,
        "wall_s": round(wall, 2),
        "steps_per_s": round(steps / wall, 1) if wall > 0 else None,
        "lost": sum(r["lost"] for r in results),
        "off_track_events": sum(r["off_track_events"] for r in results),
        "mean_abs_cte_m": float(np.mean([r["mean_abs_cte_m"] for r in results])),
        "episode_ids": [r["episode_id"] for r in results],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(record_demos_main())
