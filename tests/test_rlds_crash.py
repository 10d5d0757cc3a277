"""THE crash test: a recorder process is SIGKILLed at random moments, again and again.

The child records short episodes back to back (images, depth, fsync every few
ms) and, after each ``close()`` returns, appends the committed episode's id,
seed and step count to a side log.  The parent kills it after a seeded random
delay, runs ``recover()``, and checks that

* every episode the child logged as committed is there, complete, and reads back
  bit-exact (actions, floats, depth, the stored JPEG bytes) against what the child
  was given (steps are a pure function of (seed, index));
* nothing is left interrupted: the killed episode is recovered (its steps a
  prefix of what was appended, validating cleanly) or discarded into .discarded/
  and reported;
* all committed episodes from earlier trials are untouched (same sha256).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlds import images
from rlds.reader import list_episodes, list_interrupted
from rlds.recovery import recover
from rlds.validate import validate_episode
from tests.rlds_helpers import make_step

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 24
MIN_STEPS = 5

CHILD = r"""
import os, random, sys
sys.path.insert(0, sys.argv[4])
from tests.rlds_helpers import make_step
from rlds.writer import EpisodeWriter

root, seed, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
print("ready", flush=True)
while True:
    ep_seed = rng.getrandbits(31)
    n = rng.randint(2, 25)
    w = EpisodeWriter(root, {"seed": ep_seed, "depth_scale": 0.001}, fsync_interval_s=0.005)
    frames = {}
    for i in range(n):
        w.append(make_step(ep_seed, i, frames))
    info = w.close(terminal=ep_seed % 2 == 0)
    line = f'{{"episode_id": "{info.episode_id}", "seed": {ep_seed}, "n": {n}}}\n'
    os.write(fd, line.encode())
"""


def _check_steps(ep, seed: int, n: int, *, complete: bool) -> None:
    steps = list(ep.steps())
    assert len(steps) == n
    for i, s in enumerate(steps):
        want = make_step(seed, i)
        assert s.index == i
        assert s.action.tobytes() == np.asarray(want.action, np.float64).tobytes()
        assert np.float64(s.t).tobytes() == np.float64(want.t).tobytes()
        assert np.float64(s.reward).tobytes() == np.float64(want.reward).tobytes()
        assert s.timestamps == want.timestamps and s.extra == want.extra
        np.testing.assert_array_equal(s.observation["depth"], want.observation["depth"])
        assert s.encoded["image"] == images.encode_jpeg(want.observation["image"], 90)
        assert s.is_first == (i == 0) and s.is_last == (i == n - 1)
        if complete:
            assert s.is_terminal == (i == n - 1 and seed % 2 == 0)
        else:
            assert not s.is_terminal


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    root = tmp_path / "episodes"
    log = tmp_path / "committed.log"
    rnd = random.Random(20261122)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    known: dict[str, str] = {}  # episode id -> steps_sha256 of every committed episode so far
    outcomes: dict[str, int] = {}
    t_start = time.monotonic()

    for trial in range(TRIALS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(trial), str(log), str(ROOT)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0.0, 0.35))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

        assert len(list_interrupted(root)) <= 1  # only the episode being written
        reports = recover(root, min_steps=MIN_STEPS)
        assert list_interrupted(root) == []
        for r in reports:
            assert r.action in ("recovered", "discarded", "finished-commit"), r
            outcomes[r.action] = outcomes.get(r.action, 0) + 1
            if r.action == "discarded":
                assert r.path.parent == root / ".discarded" and r.path.is_dir()
                assert r.num_steps < MIN_STEPS

        logged = [json.loads(line) for line in log.read_text().splitlines()]
        by_id = {e.episode_id: e for e in list_episodes(root)}
        for entry in logged:  # nothing committed is ever lost ...
            ep = by_id.get(entry["episode_id"])
            assert ep is not None, f"trial {trial}: committed episode {entry} is gone"
            assert ep.status == "complete" and not ep.truncated
            if entry["episode_id"] not in known:  # ... and it reads back bit-exact
                _check_steps(ep, entry["seed"], entry["n"], complete=True)
        for eid, ep in by_id.items():
            if eid in known:  # ... nor ever modified afterwards
                assert ep.metadata["steps_sha256"] == known[eid]
                continue
            if ep.status == "recovered":
                assert ep.truncated and ep.num_steps >= MIN_STEPS
                _check_steps(ep, ep.metadata["seed"], ep.num_steps, complete=False)
                report = validate_episode(ep.path)
                assert report.ok, report.render()
            elif eid not in {e["episode_id"] for e in logged}:
                # committed, but killed before the child could log it: still intact
                _check_steps(ep, ep.metadata["seed"], ep.num_steps, complete=True)
            known[eid] = ep.metadata["steps_sha256"]

    elapsed = time.monotonic() - t_start
    print(f"crash test: {TRIALS} kills in {elapsed:.1f} s, {len(known)} episodes, {outcomes}")
    assert len(known) > TRIALS  # the children did commit episodes between kills
    assert outcomes.get("recovered", 0) + outcomes.get("discarded", 0) >= TRIALS // 2
