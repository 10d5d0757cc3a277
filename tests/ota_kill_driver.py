"""A fork server for the SIGKILL tests of the OTA updater (tests/test_ota_killtests.py).

Why a fork server: each trial needs a fresh process to kill, and starting Python with
onnxruntime costs most of a second.  This process imports everything once, creates no
onnxruntime session and no thread itself, and forks one child per install (which is
SIGKILLed at a random point) and one per "restart" (boot recovery, then checks).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.

    {"op": "install", "root": R, "archive": A, "repo": D, "mode": "check"|"file",
     "step": S, "delay": s}
        -> {"killed": bool, "rc": int|null, "steps": [...]}
    {"op": "restart", "root": R}
        -> {"parsed": bool, "phase_before": P, "phase": P, "committed": V, ...}
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from brain.bundle.manifest import read_manifest
from brain.bundle.unpack import verify_bundle_dir
from brain.ota.state import StateError, StateStore
from brain.ota.updater import Updater
from brain.policy import PolicyRunner
from tests.ota_helpers import ACTIONS, HW, H, W, ota_config

STEPS_FILE = "steps.log"


def repository(root: Path, repo: str):
    """The real TUF client over the local repository directory (trust layer included)."""
    from brain.ota.trust import TrustedRepository

    return lambda source: TrustedRepository(root / "metadata", source or repo, root / "downloads")


# ----------------------------------------------------------------------------- children


def _drive(runner: PolicyRunner, stop: threading.Event) -> None:
    rng = np.random.default_rng(os.getpid())
    while not stop.is_set():
        runner.infer(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), time.monotonic())
        time.sleep(0.005)


def install_child(req: dict) -> None:
    """Boot like the daemon, then install; SIGKILL ourselves ``delay`` s into ``step``."""
    root = Path(req["root"])
    log = open(root / STEPS_FILE, "a", buffering=1)  # noqa: SIM115 - lives until the kill

    def on_step(name: str) -> None:
        log.write(name + "\n")
        if name != req["step"]:
            return
        if req["delay"] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Timer(req["delay"], os.kill, (os.getpid(), signal.SIGKILL)).start()

    runner = PolicyRunner(None, deadline_s=0.5).start()
    up = Updater(
        root,
        ota_config(repository_url=req["repo"]),
        hardware_id=HW,
        action_names=tuple(ACTIONS),
        policy=runner,
        repository=repository(root, req["repo"]),
        on_step=on_step,
        poll_s=0.01,
    ).open()
    model = up.load_active()
    runner.swap(model).wait(5)
    stop = threading.Event()
    threading.Thread(target=_drive, args=(runner, stop), daemon=True).start()
    if req["mode"] == "check":
        asyncio.run(up.check())
    else:
        asyncio.run(up.install(Path(req["archive"])))
    log.write("done\n")
    os._exit(0)


def restart_child(req: dict, out_fd: int) -> None:
    """Boot recovery on the same directory, then check what the robot would run."""
    root = Path(req["root"])
    res: dict = {}
    try:
        try:
            before = StateStore(root).load()
            res.update(parsed=True, phase_before=before.phase)
        except StateError as exc:
            res.update(parsed=False, parse_error=str(exc))
        up = Updater(root, ota_config(), hardware_id=HW, action_names=tuple(ACTIONS)).open()
        st = up.state
        res["phase"] = st.phase
        res["committed"] = st.committed.version if st.committed else None
        res["candidate"] = st.candidate.version if st.candidate else None
        res["failed"] = [f.version for f in st.failed]
        res["release_counter"] = st.release_counter
        if st.committed is not None:
            d = up.slots.path(st.committed.slot)
            res["verified"] = verify_bundle_dir(d).version
            res["loaded"] = up.load_active().version
        if st.candidate is not None:
            res["candidate_verified"] = verify_bundle_dir(up.slots.path(st.candidate.slot)).version
        res["leftovers"] = sorted(
            p.name for p in up.slots.dir.iterdir() if p.name not in ("A", "B")
        )
        res["manifest_in_slots"] = {
            s: read_manifest(up.slots.path(s)).version
            for s in ("A", "B")
            if (up.slots.path(s) / "edge_manifest.json").exists()
        }
        up.close()
        StateStore(root).load()  # what recovery wrote parses too
    except Exception:
        res["error"] = traceback.format_exc()
    os.write(out_fd, json.dumps(res).encode())
    os._exit(0)


# ----------------------------------------------------------------------------- server


def _wait(pid: int, timeout: float) -> tuple[int | None, int | None]:
    """(exit code, signal) of the child; kill it if it outlives ``timeout``."""
    t_end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return None, os.WTERMSIG(status)
            return os.WEXITSTATUS(status), None
        if time.monotonic() > t_end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, -1
        time.sleep(0.002)


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "install":
            pid = os.fork()
            if pid == 0:
                try:
                    install_child(req)
                except BaseException:
                    traceback.print_exc()
                    os._exit(3)
            rc, sig = _wait(pid, 20.0)
            steps = (Path(req["root"]) / STEPS_FILE).read_text().split()
            reply = {"killed": sig == signal.SIGKILL, "rc": rc, "sig": sig, "steps": steps}
        elif req["op"] == "restart":
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                restart_child(req, w)
            os.close(w)
            rc, sig = _wait(pid, 20.0)
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            os.close(r)
            reply = json.loads(data) if data else {"error": f"restart child rc={rc} sig={sig}"}
        else:
            reply = {"error": f"unknown op {req['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
