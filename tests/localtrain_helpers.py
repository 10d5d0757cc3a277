"""Shared fixtures for the local-training tests: a tiny policy and small real episodes.

The episodes are real RLDS files (``rlds.writer.EpisodeWriter``, JPEG frames) whose images
carry the label: a bright vertical bar whose x position is the steering the "driver" gave,
so a fine-tune has something learnable and the held-out error can really go down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlds.types import StepInput
from rlds.writer import EpisodeWriter

HW = (24, 32)


def bar_frame(steer: float, rng: np.random.Generator) -> np.ndarray:
    h, w = HW
    img = rng.integers(20, 60, (h, w, 3), dtype=np.uint8)
    x = round((steer + 1) / 2 * (w - 4))
    img[:, x : x + 4] = 230
    return img


def write_episodes(root: Path, n: int, steps: int = 24, seed: int = 0) -> list[str]:
    """``n`` committed episodes of ``steps`` ticks; steering follows a slow sine per episode."""
    ids = []
    for e in range(n):
        rng = np.random.default_rng([seed, e])
        phase = rng.uniform(0, 2 * np.pi)
        w = EpisodeWriter(
            root,
            {"robot": "test", "sensors": {"image": {"width": HW[1], "height": HW[0]}}},
            fsync_interval_s=60.0,
        )
        for i in range(steps):
            steer = float(np.sin(phase + i * 0.25)) * 0.8
            w.append(
                StepInput(
                    t=i * 0.05,
                    action=[steer, 0.3],
                    observation={"image": bar_frame(steer, rng)},
                    timestamps={"image": i * 0.05},
                )
            )
        w.close()
        ids.append(w.episode_id)
    return ids


def tiny_base(path: Path, seed: int = 0) -> Path:
    import torch

    from brain.model import build_policy, save_policy

    torch.manual_seed(seed)
    save_policy(build_policy("tiny", image_hw=HW), path)
    return path


def commit_cloud_base(ota_dir: Path, base_pt: Path, version: str = "1.4.0", counter: int = 7):
    """A robot whose committed bundle is a cloud bundle exported from ``base_pt``.

    Its manifest names ``sha256(base_pt)`` as ``provenance.checkpoint_sha256``, as
    ``cloud_jobs export`` writes it.  The ONNX inside is the OTA tests' small dummy policy
    (the trainer only checks the hash; the daemon drives with whatever is committed), so no
    torch is needed here.  Returns the manifest's sha256 as the updater records it.
    """
    import json

    from brain.bundle.pack import build_bundle
    from common.digest import sha256_file
    from tests.ota_helpers import fast_safety, make_export, seed_committed

    work = ota_dir.parent / f"cloud-{version}"
    export = make_export(work / "export")
    report = json.loads((export / "export_report.json").read_text())
    report["source"] = {"checkpoint": "policy.pt", "checkpoint_sha256": sha256_file(base_pt)}
    (export / "export_report.json").write_text(json.dumps(report))
    archive = build_bundle(
        export,
        work / "bundle.tar",
        version=version,
        release_counter=counter,
        hardware_id="continuon-car",
        safety=fast_safety(),
    )
    return seed_committed(ota_dir, archive, "A").committed.manifest_sha256
