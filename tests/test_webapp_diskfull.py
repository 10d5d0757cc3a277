"""The companion app shows why recording stopped when the robot's disk fills, until space is back.

The real daemon and Robot API of the browser tests, with a 4 MiB tmpfs mounted over its
episodes directory for the length of the test: the disk really fills.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.test_recording_diskfull import fill
from tests.test_webapp_browser import (  # noqa: F401 - fixtures used by name
    browser,
    by_id,
    js_problems,
    main_screen,
    no_js_errors,
    robot,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_recording_fault_shown_until_space_is_back(main_screen, robot):  # noqa: F811
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    b = main_screen
    root = robot.daemon.recorder.root
    old_floor = robot.daemon.recorder.budget.min_free_bytes
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        fill(root, 300 * 1024)
        robot.daemon.recorder.budget.min_free_bytes = 0  # the 500 MB floor would stop it first
        robot.brain.start_recording()
        robot.brain.set_mode("autonomous")
        wait_until(lambda: robot.brain.status().to_json()["recording"]["fault"], "the fault", 30)
        fault = by_id(b, "record-fault")
        wait_until(fault.is_displayed, "the fault line in the app")
        assert "disk is full" in fault.text and "truncated" in fault.text, fault.text
        assert by_id(b, "record-btn").get_attribute("aria-pressed") == "false"
        assert robot.mode() == "autonomous"  # the car is still driven

        (root / "filler").unlink()
        wait_until(lambda: not fault.is_displayed(), "the fault line to go", 10)
        assert "last error" in by_id(b, "record-info").text
    finally:
        robot.brain.set_mode("idle")
        robot.daemon.recorder.budget.min_free_bytes = old_floor
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
