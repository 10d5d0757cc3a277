"""Benchmark: OTA verify + stage time, hot-swap time, and ticks missed during an install.

A real signed repository (cloud_jobs.publish, python-tuf) on a local directory holds a
~10 MB bundle (a small policy plus an unused 10 MB initializer, so that hashing, copying
and fsync see a realistic size).  Measured, in this process:

``stage_s``       ``Updater.install(file)`` without a policy runner: sha256 against the signed
                  TUF target, unpack into the inactive slot with per-file hashes and fsync,
                  re-verify, state file -> staged.  Median of ``--repeat`` runs.
``switch_s``      load + warm-up + smoke test of the new model (off the control thread).
``swap_ms``       ``PolicyRunner.swap`` from the call to the new model being in place.
``ticks_missed``  ticks of a 50 Hz control thread (deadline scheduled, one inference per
                  tick on camera-sized frames) that got no action or started a period late,
                  during the whole install: stage, switch, swap, health window, commit.

    python bench/ota.py --json bench/results/ota.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brain.ota.state import StateStore
from brain.ota.trust import TrustedRepository, init_trust
from brain.ota.updater import Updater
from brain.policy import PolicyRunner
from tests.ota_helpers import ACTIONS, HW, make_bundle, ota_config, seed_committed


class ControlThread:
    """A 50 Hz loop like the daemon's: absolute deadlines, one inference per tick."""

    def __init__(self, runner: PolicyRunner, rate_hz: float):
        self.runner = runner
        self.period = 1.0 / rate_hz
        self.ticks = 0
        self.no_action = 0
        self.late = 0
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bench-control", daemon=True)
        rng = np.random.default_rng(0)
        self._frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(8)]

    def start(self) -> None:
        self._t.start()

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - nxt > self.period:  # a whole period late: that tick was missed
                missed = int((now - nxt) / self.period)
                self.late += missed
                nxt += missed * self.period
            res = self.runner.infer(self._frames[self.ticks % 8], now)
            self.ticks += 1
            if res is None:
                self.no_action += 1
            elif not self.versions or self.versions[-1] != res.model_version:
                self.versions.append(res.model_version)
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def build_world(tmp: Path, size_mb: float) -> dict[str, Path]:
    from cloud_jobs.publish.keys import KeyStore
    from cloud_jobs.publish.repository import Repository, publish_bundle

    v1 = make_bundle(tmp / "b" / "v1.tar", "1.0.0", 1, height=120, width=160)
    v2 = make_bundle(
        tmp / "b" / "v2.tar", "2.0.0", 2, bias=0.3, pad_mb=size_mb, height=120, width=160
    )
    repo = tmp / "repo"
    publish_bundle(Repository.create(repo, KeyStore.init(tmp / "keys")), v2)
    template = tmp / "template"
    seed_committed(template, v1, "A")
    init_trust(template / "metadata", (repo / "metadata" / "1.root.json").read_bytes())
    return {"v2": v2, "repo": repo, "template": template}


def make_updater(root: Path, repo: Path, policy: PolicyRunner | None, window_s: float, **kw):
    return Updater(
        root,
        ota_config(repository_url=str(repo), health_window_s=window_s),
        hardware_id=HW,
        action_names=tuple(ACTIONS),
        policy=policy,
        repository=lambda src: TrustedRepository(
            root / "metadata", src or str(repo), root / "downloads"
        ),
        **kw,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rate-hz", type=float, default=50.0)
    ap.add_argument("--window-s", type=float, default=2.0, help="health window of the trial")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    try:
        w = build_world(tmp, args.size_mb)
        bundle_mb = w["v2"].stat().st_size / 2**20

        # 1. verify + stage, no policy runner (what `continuon ota install` does offline)
        stage = []
        for i in range(args.repeat):
            root = tmp / f"stage{i}"
            shutil.copytree(w["template"], root)
            up = make_updater(root, w["repo"], None, args.window_s)
            t0 = time.perf_counter()
            res = asyncio.run(up.install(w["v2"]))
            stage.append(time.perf_counter() - t0)
            assert res["phase"] == "staged", res

        # 2. a whole install while a 50 Hz control thread drives on the old model
        root = tmp / "live"
        shutil.copytree(w["template"], root)
        runner = PolicyRunner(None, deadline_s=0.6 / args.rate_hz).start()
        marks: dict[str, float] = {}
        up = make_updater(
            root,
            w["repo"],
            runner,
            args.window_s,
            on_step=lambda name: marks.setdefault(name, time.perf_counter()),
        ).open()
        runner.swap(up.load_active()).wait(5)
        real_swap = runner.swap
        swap_ms: list[float] = []

        def timed_swap(model):
            t0 = time.monotonic()
            ticket = real_swap(model)
            ticket.wait(5)
            swap_ms.append((ticket.t_applied - t0) * 1000.0)
            return ticket

        runner.swap = timed_swap  # type: ignore[method-assign]
        ctl = ControlThread(runner, args.rate_hz)
        ctl.start()
        time.sleep(0.5)
        before = (ctl.ticks, ctl.no_action, ctl.late)
        t0 = time.perf_counter()
        res = asyncio.run(up.check())
        total_s = time.perf_counter() - t0
        after = (ctl.ticks, ctl.no_action, ctl.late)
        time.sleep(0.2)
        ctl.stop()
        runner.close()
        up.close()
        assert res["result"] == "committed 2.0.0", res
        assert StateStore(root).load().committed.version == "2.0.0"
        ticks = after[0] - before[0]
        no_action = after[1] - before[1]
        late = after[2] - before[2]
        out = {
            "bundle_mb": round(bundle_mb, 2),
            "stage_s": round(statistics.median(stage), 4),
            "stage_s_all": [round(x, 4) for x in stage],
            "install_total_s": round(total_s, 3),
            "download_verify_stage_s": round(marks["switch"] - marks["download"], 4),
            "switch_s": round(marks["trial"] - marks["switch"], 4),
            "swap_ms": round(swap_ms[0], 3),
            "rate_hz": args.rate_hz,
            "ticks_during_install": ticks,
            "ticks_missed": no_action + late,
            "ticks_no_action": no_action,
            "ticks_late": late,
            "versions_driven": ctl.versions,
            "health_window_s": args.window_s,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "note": "shared, noisy machine (other jobs running); in-process control thread",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"OTA install of a {out['bundle_mb']} MB bundle ({args.rate_hz:g} Hz control thread)")
    for key in (
        "stage_s",
        "download_verify_stage_s",
        "switch_s",
        "swap_ms",
        "ticks_during_install",
        "ticks_missed",
    ):
        print(f"  {key:24s} {out[key]}")
    print(f"  driven by: {' -> '.join(out['versions_driven'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
