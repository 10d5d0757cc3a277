"""The running daemon holds only what the robot needs (issue 18, deliverable 3).

The real `python -m brain.cli run` process on the sim reports the top-level
packages it imported (`continuon stats` → ``process.packages``); they must be a
subset of an allowlist, and nothing of the cloud side or of training may be
among them, although the `continuon.cli` entry points (with `cloud_jobs`'
pipeline) are installed in this environment.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from brain.cli import BUILTIN_COMMANDS, _wants_plugins, build_parser
from edge_agent.control_socket import request
from tests.daemon_helpers import sim_config, spawn_daemon

ROOT = Path(__file__).resolve().parent.parent

#: Top-level non-stdlib packages the sim daemon may import: ours, the libraries
#: DESIGN.md names for the robot, and what those import themselves.
ALLOWED = frozenset(
    {
        # Python's own site hook (Debian's python3 ships one; pi-check's root has it)
        "sitecustomize",
        # ours
        "brain",
        "edge_agent",
        "rlds",
        "common",
        # the robot's own libraries
        "numpy",
        "cv2",
        "yaml",
        "pydantic",
        "psutil",
        "aiohttp",
        "zeroconf",
        "aiomqtt",
        "google_crc32c",
        # what they import
        "aiohappyeyeballs",
        "aiosignal",
        "annotated_types",
        "attr",
        "backports",
        "cython_runtime",
        "frozenlist",
        "idna",
        "ifaddr",
        "multidict",
        "paho",
        "propcache",
        "pydantic_core",
        "socks",
        "typing_extensions",
        "typing_inspection",
        "yarl",
    }
)

#: Never in the daemon: the cloud side, training, and (without a model) onnxruntime.
FORBIDDEN = ("cloud_jobs", "torch", "peft", "onnx", "onnxruntime", "tensorflow", "transformers")


@pytest.mark.integration  # the real daemon as a subprocess (`continuon run`)
def test_running_daemon_imports_only_allowlisted_packages(tmp_path):
    proc, sock, ctl = spawn_daemon(tmp_path, sim_config(tmp_path), stderr=subprocess.PIPE)
    try:
        # drive a little so that lazily imported paths (recording, teleop) are loaded too
        assert request(ctl, {"cmd": "mode", "mode": "manual"})["ok"]
        assert request(ctl, {"cmd": "record", "action": "start"})["ok"]
        for _ in range(10):
            request(ctl, {"cmd": "teleop", "action": [0.2, 0.3]})
            time.sleep(0.05)
        assert request(ctl, {"cmd": "record", "action": "stop"})["ok"]
        proc_info = request(ctl, {"cmd": "stats"})["result"]["process"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            sock.close()
    packages = set(proc_info["packages"])
    assert {"brain", "edge_agent", "rlds", "numpy"} <= packages  # the report is real
    assert not packages & set(FORBIDDEN), sorted(packages & set(FORBIDDEN))
    assert packages <= ALLOWED, f"not on the allowlist: {sorted(packages - ALLOWED)}"
    assert proc_info["rss_mb"] > 0 and proc_info["modules"] > len(packages)


def test_builtin_commands_are_parsed_without_plugins():
    """`continuon run` never loads a plug-in module; other commands and --help still list them."""
    assert not _wants_plugins(["run", "--config", "x.yaml"])
    assert _wants_plugins(["status"]) and _wants_plugins(["--help"]) and _wants_plugins([])
    assert "run" in BUILTIN_COMMANDS
    code = (
        "import sys\n"
        "from brain.cli import build_parser\n"
        "p = build_parser(plugins=False)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('cloud_jobs', 'torch'))\n"
        "assert not bad, bad\n"
        "build_parser()\n"  # with plug-ins: the pipeline's registration stays cheap too
        "assert 'cloud_jobs.pipeline.run' not in sys.modules\n"
        "assert 'cloud_jobs.pipeline.cli' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    help_text = build_parser().format_help()
    assert "pipeline" in help_text and "status" in help_text
