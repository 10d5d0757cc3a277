"""The companion app shows that the episode-writer process died and was restarted.

The real daemon and Robot API of the browser tests: the writer process is SIGKILLed while
recording; the Recording card says so, and the car is still driven.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.test_webapp_browser import (  # noqa: F401 - fixtures used by name
    browser,
    by_id,
    js_problems,
    main_screen,
    no_js_errors,
    robot,
    wait_until,
)

# Headless Chromium, as the rest of the browser tests (tests/test_webapp_browser.py).
pytestmark = pytest.mark.integration


def test_writer_restart_shown_in_the_app(main_screen, robot):  # noqa: F811
    b = main_screen
    rec = lambda: robot.brain.status().to_json()["recording"]  # noqa: E731
    try:
        robot.brain.start_recording()
        robot.brain.set_mode("autonomous")
        wait_until(lambda: rec()["steps_written"] > 5, "steps being recorded", 30)
        os.kill(rec()["writer_process"]["pid"], signal.SIGKILL)
        wait_until(lambda: rec()["writer_process"]["restarts"] == 1, "the writer restart", 15)
        info = by_id(b, "record-info")
        wait_until(
            lambda: "episode writer restarted 1 time(s) (was killed by SIGKILL)" in info.text,
            "the restart in the app",
            15,
        )
        assert robot.mode() == "autonomous"  # the car is still driven
    finally:
        robot.brain.stop_recording()
        robot.brain.set_mode("idle")
