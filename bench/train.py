"""Training throughput of the ``pi5`` policy on CPU: one process, and two DDP processes.

Writes small synthetic episodes (160x120 frames, so the cache builds in moments),
then runs ``cloud_jobs train`` with ``configs/train/pi5.yaml`` (data pointed at
them, a few steps, no evaluation) as real subprocesses:

* 1 process with the config's ``threads`` (1 in pi5.yaml), and 1 using every core,
* ``torchrun --standalone --nproc_per_node=2`` with ``cores // 2`` threads each.

``samples_per_s`` is frames (window steps) per second over the steady-state steps
(the first two are warm-up), ``peak_rss_mb`` the largest resident set of the
single training process (config's threads), ``ddp2_speedup`` the two-process
global rate over that one-process rate.

    python bench/train.py --steps 8 --json bench/results/train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlds.types import StepInput  # noqa: E402
from rlds.writer import EpisodeWriter  # noqa: E402


def write_episodes(root: Path, episodes: int, steps: int) -> None:
    h, w = 120, 160
    for e in range(episodes):
        rng = np.random.default_rng(e)
        meta = {"robot_id": "bench", "sim": {"track": "oval"}, "rate_hz": 20.0}
        with EpisodeWriter(root, meta, fsync_interval_s=60) as wr:
            x = w / 2
            for i in range(steps):
                x = float(np.clip(x + rng.normal(0, 3), 10, w - 10))
                img = rng.integers(40, 80, (h, w, 3), dtype=np.uint8)
                img[:, int(x) - 4 : int(x) + 4] = 220
                steer = (x - w / 2) / (w / 2)
                wr.append(StepInput(t=i / 20, action=[steer, 0.5], observation={"image": img}))


def _peak_rss(proc: subprocess.Popen[Any], out: dict[str, float]) -> None:
    """Poll the process tree's largest single RSS until it exits."""
    peak = 0.0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [ps, *ps.children(recursive=True)]
                for p in procs:
                    peak = max(peak, p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)
    except psutil.Error:
        pass
    out["peak_rss_mb"] = peak


def run(cmd: list[str], cfg: Path, run_dir: Path) -> tuple[dict[str, Any], float]:
    full = [*cmd, "train", "--config", str(cfg), "--run-dir", str(run_dir)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(full, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    rss: dict[str, float] = {}
    t = threading.Thread(target=_peak_rss, args=(proc, rss))
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({proc.returncode}):\n{err[-3000:]}")
    recs = [json.loads(x) for x in (run_dir / "metrics.ndjson").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in recs if r.get("kind") == "train" and r["step"] > 2]
    return {"samples_per_s": statistics.median(rates), "records": len(rates)}, rss.get(
        "peak_rss_mb", 0.0
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps per run (>= 4)")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--episode-steps", type=int, default=200)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "train" / "pi5.yaml")
    ap.add_argument("--no-ddp", action="store_true", help="skip the two-process run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        data = tmp / "episodes"
        write_episodes(data, args.episodes, args.episode_steps)
        base = yaml.safe_load(args.config.read_text())
        base["data"]["sources"] = [{"path": str(data)}]
        base["data"]["holdout"] = {"fraction": 0.0}
        base["data"]["cache_dir"] = str(tmp / "cache")
        base["device"] = "cpu"
        base["train"].update(
            steps=args.steps,
            log_every=1,
            eval_every=None,
            checkpoint_every=10**6,
            max_minutes=None,
            progress="off",
        )

        def config(name: str, threads: int) -> Path:
            cfg = {**base, "name": name, "threads": threads}
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            return path

        py = [sys.executable, "-m", "cloud_jobs"]
        threads = int(base.get("threads") or cores)  # as the config ships
        one, rss = run(py, config("one", threads), tmp / "run-one")
        results: dict[str, Any] = {
            "samples_per_s": round(one["samples_per_s"], 1),
            "peak_rss_mb": round(rss, 1),
            "threads": threads,
            "batch_size": base["train"]["batch_size"],
            "window": base["train"]["window"],
        }
        print(
            f"pi5 train, 1 process x {threads} thread(s): {results['samples_per_s']:.1f} "
            f"samples/s (frames; batch {results['batch_size']} x T {results['window']}), "
            f"peak RSS {results['peak_rss_mb']:.0f} MB"
        )
        if cores != threads:
            alt, _ = run(py, config("all", cores), tmp / "run-all")
            results["samples_per_s_all_cores"] = round(alt["samples_per_s"], 1)
            print(f"pi5 train, 1 process x {cores} threads: {alt['samples_per_s']:.1f} samples/s")
        if not args.no_ddp:
            torchrun = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "cloud_jobs",
            ]
            two, rss2 = run(torchrun, config("two", max(1, cores // 2)), tmp / "run-two")
            results["ddp2_samples_per_s"] = round(two["samples_per_s"], 1)
            results["ddp2_peak_rss_mb_per_process"] = round(rss2, 1)
            results["ddp2_speedup"] = round(two["samples_per_s"] / one["samples_per_s"], 3)
            print(
                f"pi5 train, 2 DDP processes x {max(1, cores // 2)} threads (gloo): "
                f"{results['ddp2_samples_per_s']:.1f} samples/s global, "
                f"speed-up {results['ddp2_speedup']:.2f}x"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        import torch

        doc = {
            "bench": "train",
            "machine": {
                "platform": platform.platform(),
                "cpus": cores,
                "torch": torch.__version__,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            },
            "params": {"steps": args.steps, "config": str(args.config)},
            **results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
