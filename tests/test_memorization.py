"""Test-time memorization against a steering mis-trim (issue [model], item 5).

The recipe and the measurement live in ``bench/memorization.py`` (the harness that sweeps
seeds); these tests run it once at a size that measures something, and once as a smoke run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_memorization", ROOT / "bench/memorization.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_memorization_bench_smoke(tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "report.json"
    argv = [
        "--out", str(tmp_path / "cache"), "--seeds", "0", "--episodes", "4", "--steps", "80",
        "--iters", "2", "--window", "16", "--trims", "0.1", "--max-steps", "40",
        "--json", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert set(run["mean_abs_cte_m"]) == {
        f"{t}/{m}" for t in ("+0.10", "-0.10", "+0.00") for m in ("memorize", "frozen")
    }
    assert all(v >= 0 for v in run["mean_abs_cte_m"].values())
    assert report["summary"]["seeds"] == 1 and "seeds_adapted" in report["summary"]
    # the episodes carry the evenly spaced trims the harness asked for
    from rlds.reader import list_episodes

    trims = sorted(
        ep.metadata["demo"]["steering_trim"]
        for ep in list_episodes(tmp_path / "cache" / "episodes-seed0-4x80")
    )
    assert trims == pytest.approx([-0.3, -0.1, 0.1, 0.3])


@pytest.mark.timeout(1200)  # ~5 min on one core: 32 episodes recorded, 600 iterations
def test_memorization_helps_under_a_steering_trim(tmp_path: Path) -> None:
    """A policy trained on trimmed demonstrations drives a trimmed car better with its
    memory written at run time than frozen, and not because freezing hurts everywhere:
    without a trim the frozen policy is as good, and the trim costs the memorizing one less.

    Measured when written (docs/model.md, "Test-time memorization"): mean |cte| under trims
    +-0.15 memorize 0.013 vs frozen 0.027 m (0.48x), no trim 0.013 vs 0.011 m.
    """
    import torch

    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and fight xdist)
    bench = _bench()
    episodes = bench.record(tmp_path, seed=0, episodes=32, steps=300, trim_max=0.3)
    policy = bench.train(episodes, tmp_path / "run", seed=0, iters=600, window=32, frozen_slots=4)
    cte = bench.drive(policy, [0.15, -0.15, 0.0])
    memorize = np.mean([cte["+0.15/memorize"], cte["-0.15/memorize"]])
    frozen = np.mean([cte["+0.15/frozen"], cte["-0.15/frozen"]])
    assert memorize < 0.9 * frozen, cte
    # adaptation to the trim, not a policy that only drives with its memory on
    assert cte["+0.00/frozen"] < 1.5 * cte["+0.00/memorize"], cte
    assert memorize / cte["+0.00/memorize"] < frozen / cte["+0.00/frozen"], cte
