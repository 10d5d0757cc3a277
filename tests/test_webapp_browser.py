"""The companion web app in a real headless Chromium against the real daemon and Robot API.

One daemon (simulated donkey car, real control loop, real aiohttp Robot API on a free loopback
port, real control socket for `continuon pair`) and one browser serve the whole module; the
tests run in file order and each leaves the robot in a state the next one can start from.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser_helpers import (
    DESKTOP,
    LANDSCAPE_PHONE,
    PHONE,
    SMALL_PHONE,
    Browser,
    missing_browser,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

WEBAPP = Path(__file__).resolve().parent.parent / "edge_agent" / "webapp"


class RobotUnderTest:
    """The real daemon on the sim, run on its own event loop thread.

    The daemon installs SIGTERM/SIGINT handlers, which asyncio only allows on the main thread;
    here its loop runs on a helper thread (the browser needs the main one), so signal handler
    installation is a no-op on that loop. Everything else is the production daemon.
    """

    def __init__(self) -> None:
        from edge_agent.api.service import make_service as api_service
        from edge_agent.control_socket import make_service as socket_service
        from tests.daemon_helpers import make_daemon

        # A short directory: the control socket's path must fit in sockaddr_un.
        self.tmp = Path(tempfile.mkdtemp(prefix="cwa-"))
        self.daemon, self.actuators = make_daemon(
            self.tmp,
            services=[socket_service, api_service],
            # supervised autonomy on, as on the real robots: the open app is the deadman
            **{"api.port": 0, "api.host": "127.0.0.1", "safety.autonomous_heartbeat_s": 1.0},
        )
        self.cfg = self.daemon.config
        self.brain = self.daemon.brain
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="daemon", daemon=True)
        self._thread.start()
        if not self._ready.wait(20) or self._error:
            raise RuntimeError(f"the daemon did not start: {self._error!r}")

    def _run(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler = lambda *a, **k: None  # type: ignore[method-assign]
            loop.remove_signal_handler = lambda *a, **k: True  # type: ignore[method-assign]
            self.loop = loop
            task = asyncio.create_task(self.daemon.run())
            try:
                await self.daemon.wait_ready(10)
                endpoint = self.runtime_dir / "api.json"
                for _ in range(200):
                    if endpoint.exists() and (self.socket_path).exists():
                        break
                    await asyncio.sleep(0.05)
                self.port = json.loads(endpoint.read_text())["port"]
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                self.daemon.request_stop("test setup failed")
                await task
                return
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    @property
    def runtime_dir(self) -> Path:
        return self.cfg.runtime_dir()

    @property
    def socket_path(self) -> Path:
        from edge_agent.control_socket import socket_path

        return socket_path(self.cfg)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def ctl(self, payload: dict) -> Any:
        """What `continuon pair` / `continuon tokens` do: a request on the control socket."""
        from edge_agent.control_socket import request

        answer = request(self.socket_path, payload)
        assert answer.get("ok"), answer
        return answer["result"]

    def mode(self) -> str:
        return self.brain.status().to_json()["mode"]

    def stop(self) -> None:
        if getattr(self, "loop", None) is not None:
            self.loop.call_soon_threadsafe(self.daemon.request_stop, "test done")
        self._thread.join(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def robot():
    r = RobotUnderTest()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def browser():
    why = missing_browser()
    if why is not None:
        pytest.skip(f"no headless Chromium: {why}")
    b = Browser()
    b.viewport(*PHONE)
    yield b
    b.close()


@pytest.fixture(scope="module")
def js_problems():
    """Console errors and uncaught exceptions seen by any test of the module."""
    return []


@pytest.fixture()
def no_js_errors(browser, js_problems):
    yield
    collect_js_problems(browser, js_problems)
    assert js_problems == [], f"JavaScript errors in the page: {js_problems}"


def collect_js_problems(browser: Browser, sink: list) -> None:
    for entry in browser.console():
        # 'network' entries are HTTP errors the app handled (a wrong code is a 401 by design);
        # exceptions and console.error calls are bugs.
        if entry["level"] == "SEVERE" and entry.get("source") != "network":
            sink.append(entry["message"])
    try:
        errors = browser.js("return window.continuonErrors || []")
    except Exception:
        errors = []
    sink.extend(f"uncaught: {e}" for e in errors)


def by_id(browser: Browser, element_id: str):
    return browser.driver.find_element("id", element_id)


def shown(browser: Browser, element_id: str) -> bool:
    return by_id(browser, element_id).is_displayed()


def clear_toast(browser: Browser) -> None:
    browser.js("const t = document.getElementById('toast'); t.hidden = true; t.dataset.kind = '';")


def pair_through_ui(browser: Browser, robot: RobotUnderTest) -> None:
    code = robot.ctl({"cmd": "pair"})["code"]
    box = by_id(browser, "pair-code")
    box.clear()
    box.send_keys(code)
    by_id(browser, "pair-name").send_keys("test phone")
    by_id(browser, "pair-submit").click()
    wait_until(lambda: shown(browser, "main-screen"), "the main screen after pairing")


@pytest.fixture()
def main_screen(browser, robot, no_js_errors):
    """The app, paired and on its main screen (pairs again if an earlier test failed early)."""
    if not browser.driver.current_url.startswith(robot.url):
        browser.driver.get(robot.url)
    wait_until(lambda: shown(browser, "pair-screen") or shown(browser, "main-screen"), "a screen")
    if shown(browser, "pair-screen"):
        pair_through_ui(browser, robot)
    wait_until(lambda: by_id(browser, "link").text == "online", "the teleop link")
    return browser


ESTOP_RECT = """
const b = document.getElementById('estop');
const r = b.getBoundingClientRect();
const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
const hit = document.elementFromPoint(cx, cy);
return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width,
        height: r.height, vw: window.innerWidth, vh: window.innerHeight,
        position: getComputedStyle(b).position, onTop: hit === b || b.contains(hit),
        scrollY: window.scrollY, maxScroll: document.documentElement.scrollHeight - innerHeight,
        overflowX: document.documentElement.scrollWidth - innerWidth};
"""


def assert_estop_in_view(browser: Browser, where: str) -> dict:
    r = browser.js(ESTOP_RECT)
    assert r["position"] == "fixed", where
    assert r["width"] >= 72 and r["height"] >= 72, f"{where}: e-stop too small: {r}"
    assert r["left"] >= 0 and r["top"] >= 0, f"{where}: e-stop off screen: {r}"
    assert r["right"] <= r["vw"] and r["bottom"] <= r["vh"], f"{where}: e-stop off screen: {r}"
    assert r["onTop"], f"{where}: something covers the e-stop: {r}"
    assert r["overflowX"] <= 0, f"{where}: the page is wider than the screen: {r}"
    return r


# ---------------------------------------------------------------------------------- tests


def test_webapp_files_are_packaged():
    """A robot installed from a wheel (systemd/install.sh) gets every file of the app."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((WEBAPP.parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    for f in WEBAPP.iterdir():
        assert any(fnmatch.fnmatch(f.name, p) for p in patterns), f"{f.name} would not be installed"


def test_pairing_code_flows_to_main_screen(browser, robot, no_js_errors):
    browser.viewport(*PHONE)
    browser.driver.get(robot.url)
    wait_until(lambda: shown(browser, "pair-screen"), "the pairing screen")
    assert not shown(browser, "main-screen")
    assert_estop_in_view(browser, "pairing screen")
    # /health is public: the pairing screen names the robot before any code is typed
    wait_until(lambda: "sim-donkey-01" in by_id(browser, "pair-robot").text, "the robot's name")

    code = robot.ctl({"cmd": "pair"})["code"]
    wrong = f"{(int(code.replace('-', '')) + 1) % 10**12:012d}"
    by_id(browser, "pair-code").send_keys(wrong)
    by_id(browser, "pair-submit").click()
    wait_until(lambda: by_id(browser, "pair-error").text, "the wrong-code message")
    assert "wrong pairing code" in by_id(browser, "pair-error").text  # the API's own message
    assert not shown(browser, "main-screen")

    box = by_id(browser, "pair-code")
    box.clear()
    box.send_keys(code)
    by_id(browser, "pair-name").send_keys("test phone")
    by_id(browser, "pair-submit").click()
    wait_until(lambda: shown(browser, "main-screen"), "the main screen")
    assert not shown(browser, "pair-screen")

    token = browser.js("return localStorage.getItem('continuon.token')")
    assert token and len(token) >= 40
    tokens = robot.ctl({"cmd": "tokens", "action": "list"})
    assert [t["name"] for t in tokens] == ["test phone"]
    wait_until(lambda: by_id(browser, "robot-id").text == "sim-donkey-01", "the robot id")
    wait_until(lambda: by_id(browser, "link").text == "online", "the teleop link")

    # The token survives a reload: no second pairing.
    browser.driver.refresh()
    wait_until(lambda: shown(browser, "main-screen"), "the main screen after a reload")
    assert not shown(browser, "pair-screen")


def test_everything_comes_from_the_robot(main_screen, robot):
    """Offline LAN: no CDN, no fonts, no analytics; every resource is served by the robot."""
    urls = main_screen.js("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = robot.url.rstrip("/")
    assert any(u.endswith("/static/app.js") for u in urls), urls
    assert all(u.startswith((origin + "/", origin.replace("http", "ws", 1))) for u in urls), urls
    for f in WEBAPP.iterdir():
        text = f.read_text()
        assert "https://" not in text and "//cdn" not in text, f"{f.name} links outside the robot"


@pytest.mark.parametrize("size", [PHONE, SMALL_PHONE, LANDSCAPE_PHONE, DESKTOP])
def test_estop_always_in_view(main_screen, size):
    b = main_screen
    b.viewport(*size, mobile=size != DESKTOP)
    try:
        time.sleep(0.1)  # one layout after the resize
        top = assert_estop_in_view(b, f"{size} at the top")
        # Driving needs no scrolling: camera and stick are both in the first screenful.
        for part in ("camera", "joystick"):
            r = b.js("return document.getElementById(arguments[0]).getBoundingClientRect()", part)
            assert r["top"] >= 0 and r["bottom"] <= top["vh"] + 1, f"{size}: {part} below the fold"
        assert top["maxScroll"] > 0, "the page should be long enough to scroll"
        for frac in (0.5, 1.0):
            b.js("window.scrollTo(0, arguments[0])", int(top["maxScroll"] * frac))
            time.sleep(0.05)
            r = assert_estop_in_view(b, f"{size} scrolled {frac:.0%}")
            assert r["scrollY"] > 0
            # fixed: the same place on screen wherever the page is scrolled
            assert abs(r["top"] - top["top"]) < 1 and abs(r["left"] - top["left"]) < 1
    finally:
        b.js("window.scrollTo(0, 0)")
        b.viewport(*PHONE)


def test_estop_button_latches_the_robot(main_screen, robot):
    b = main_screen
    b.js("window.scrollTo(0, document.documentElement.scrollHeight)")  # far from the top
    assert robot.mode() != "estop"
    by_id(b, "estop").click()
    wait_until(lambda: robot.mode() == "estop", "ESTOP on the robot", timeout=2)
    assert robot.brain.status().to_json()["estop_reason"]
    with pytest.raises(Exception, match="latched"):
        robot.brain.set_mode("manual")  # latched: only a reset leaves it

    wait_until(lambda: shown(b, "estop-banner"), "the e-stop banner")
    assert by_id(b, "mode-badge").text.lower() == "estop"
    b.js("document.getElementById('reset-btn').scrollIntoView({block: 'center'})")
    by_id(b, "reset-btn").click()
    wait_until(lambda: robot.mode() == "idle", "IDLE after reset")
    wait_until(lambda: not shown(b, "estop-banner"), "the banner to go")
    b.js("window.scrollTo(0, 0)")


def test_mode_switch_and_joystick_drive_the_car(main_screen, robot):
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    b = main_screen
    d = b.driver
    d.find_element("css selector", "#mode-switch [data-mode=manual]").click()
    wait_until(lambda: robot.mode() == "manual", "MANUAL on the robot")
    wait_until(lambda: by_id(b, "mode-badge").text.lower() == "manual", "the mode badge")

    pad = by_id(b, "joystick")
    b.js("arguments[0].scrollIntoView({block: 'center'})", pad)
    radius = pad.size["width"] / 2
    assert radius > 60, "the stick should be thumb-sized on a phone"
    # A finger on the stick: up and to the right, held for a second, then lifted.
    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    gesture = ActionBuilder(d, mouse=finger, duration=100)
    off = int(radius * 0.6)
    gesture.pointer_action.move_to(pad).pointer_down().move_to(pad, off, -off)
    gesture.pointer_action.pause(1.2).pointer_up()
    latch = robot.daemon.control.teleop  # the latest command the robot received
    n_start = latch.received
    t_start = time.monotonic()
    gesture.perform()
    t_up = time.monotonic()
    n_up = latch.received
    time.sleep(0.6)  # longer than the robot's 250 ms watchdog
    calls = robot.actuators.snapshot()

    # A steady stream while held (the app sends ~25 Hz; the API takes up to 50 Hz) ...
    rate = (n_up - n_start) / (t_up - t_start)
    assert 12 <= rate <= 50, f"{rate:.1f} commands/s while the stick was held"
    # ... then one zero command on release, and silence.
    cmd, _ = latch.get()
    assert cmd is not None and np.allclose(cmd, 0.0), f"last command {cmd} is not neutral"
    assert latch.received - n_up <= 2, "the app kept sending after the finger was lifted"

    held = [(t, k, a) for t, k, a in calls if t_start <= t <= t_up - 0.15]
    moving = [a for _, k, a in held if k == "write" and a[0] > 0.2 and a[1] > 0.2]
    assert moving, f"no steering right + throttle forward reached the actuators: {held[-5:]}"
    # While the finger is down the app streams steadily: no watchdog stop in between.
    t_first = next(t for t, k, a in held if k == "write" and a[1] > 0.2)
    assert all(k == "write" for t, k, _ in held if t >= t_first), "the watchdog cut in mid-drive"

    def neutral(call) -> bool:
        _, kind, action = call
        return kind == "neutral" or np.allclose(action, 0.0, atol=1e-6)

    after = [c for c in calls if c[0] > t_up + 0.3]
    assert after and all(neutral(c) for c in after), f"not neutral after release: {after[:5]}"
    assert by_id(b, "knob").get_attribute("style").replace(" ", "").endswith("translate(0%,0%);")


FAKE_PAD = """
window.__pad = {
  id: 'Test pad (STANDARD GAMEPAD)', index: 0, connected: true, mapping: 'standard',
  axes: [0, 0, 0, 0], buttons: Array.from({length: 17}, () => ({pressed: false, value: 0})),
};
Object.defineProperty(navigator, 'getGamepads', {configurable: true, value: () => [__pad]});
window.dispatchEvent(new Event('gamepadconnected'));
"""
NO_PAD = """
Object.defineProperty(navigator, 'getGamepads', {configurable: true, value: () => []});
window.dispatchEvent(new Event('gamepaddisconnected'));
"""


def test_gamepad_drives_and_its_b_button_stops(main_screen, robot):
    """The Gamepad API is the hardware boundary here: the page sees a scripted standard pad."""
    b = main_screen
    robot.brain.set_mode("manual")
    latch = robot.daemon.control.teleop
    b.js(FAKE_PAD)
    try:
        wait_until(lambda: "Test pad" in by_id(b, "gamepad-status").text, "the pad to be seen")
        # left stick left, right trigger half way
        b.js("__pad.axes[0] = -0.6; __pad.buttons[7].value = 0.5;")

        def driving():
            cmd, _ = latch.get()
            return cmd is not None and cmd[0] < -0.3 and cmd[1] > 0.3

        wait_until(driving, "the pad's command at the robot")
        t0 = time.monotonic()
        wait_until(
            lambda: any(
                k == "write" and a[0] < -0.2 and a[1] > 0.2
                for t, k, a in robot.actuators.snapshot()
                if t > t0
            ),
            "the pad's command at the actuators",
        )
        b.js("__pad.axes[0] = 0; __pad.buttons[7].value = 0;")  # sticks at rest
        wait_until(lambda: np.allclose(latch.get()[0], 0.0), "a zero command on release")

        b.js("__pad.buttons[1].pressed = true; __pad.buttons[1].value = 1;")  # B / circle
        wait_until(lambda: robot.mode() == "estop", "ESTOP from the pad's B button", timeout=2)
    finally:
        b.js(NO_PAD)
        if robot.mode() == "estop":
            robot.brain.reset_estop()
    wait_until(lambda: by_id(b, "gamepad-status").text == "no gamepad", "the pad to go")


def test_open_app_keeps_supervised_autonomy_driving(main_screen, robot):
    """With safety.autonomous_heartbeat_s = 1 s, the car drives autonomously only while the app
    (open, visible) sends heartbeats."""
    control = robot.daemon.control
    before = control.heartbeat.received
    robot.brain.set_mode("autonomous")
    try:
        wait_until(lambda: control.heartbeat.received >= before + 3, "heartbeats", timeout=8)
        wait_until(lambda: not control.deadman_holding, "the deadman to let go", timeout=3)
        time.sleep(1.5)  # longer than the window: only continued heartbeats keep it driving
        dm = robot.brain.status().to_json()["deadman"]
        assert not dm["holding"] and dm["heartbeat_age_s"] < 1.0, dm
        assert robot.brain.telemetry().to_json()["neutral"] is False  # the sim's expert drives
    finally:
        robot.brain.set_mode("idle")
    sent = control.heartbeat.received
    time.sleep(1.0)
    assert control.heartbeat.received - sent <= 1  # not in idle


def test_camera_view_shows_frames(main_screen, robot):
    b = main_screen
    frames = lambda: int(by_id(b, "camera").get_attribute("data-frames") or 0)  # noqa: E731
    wait_until(lambda: frames() > 0, "a first camera frame")
    first = frames()
    time.sleep(1.0)
    assert frames() >= first + 5, "the camera view is not live (api.camera_max_fps is 15)"
    pixels = b.js(
        """
        const c = document.getElementById('camera');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0, s = 0, s2 = 0;
        for (let i = 0; i < d.length; i += 4) {
          const v = d[i] + d[i + 1] + d[i + 2];
          n++; s += v; s2 += v * v;
        }
        return {w: c.width, h: c.height, mean: s / n, std: Math.sqrt(s2 / n - (s / n) ** 2)};
        """
    )
    cam = robot.cfg.hardware.camera
    assert (pixels["w"], pixels["h"]) == (cam.width, cam.height)
    assert pixels["std"] > 10, f"the camera view is blank: {pixels}"
    assert "fps" in by_id(b, "camera-info").text


def test_record_toggle_starts_and_stops_recording(main_screen, robot):
    b = main_screen
    if robot.mode() != "manual":
        robot.brain.set_mode("manual")
    btn = by_id(b, "record-btn")
    b.js("arguments[0].scrollIntoView({block: 'center'})", btn)
    before = {e.episode_id for e in robot.brain.list_episodes()}

    btn.click()
    wait_until(lambda: robot.brain.status().to_json()["recording"]["armed"], "recording armed")
    wait_until(lambda: btn.get_attribute("aria-pressed") == "true", "the toggle to show it")
    wait_until(
        lambda: robot.brain.status().to_json()["recording"]["steps_written"] > 5,
        "steps being recorded",
    )
    wait_until(lambda: "recording" in by_id(b, "record-info").text, "the recording line")

    btn.click()
    wait_until(
        lambda: not robot.brain.status().to_json()["recording"]["armed"], "recording disarmed"
    )
    wait_until(lambda: btn.get_attribute("aria-pressed") == "false", "the toggle to show it")
    new = wait_until(
        lambda: {e.episode_id for e in robot.brain.list_episodes()} - before,
        "the committed episode",
    )
    (episode_id,) = new
    row = f"#episodes-list li[data-id='{episode_id}']"
    wait_until(lambda: b.driver.find_elements("css selector", row), "the episode in the list")
    robot.brain.set_mode("idle")


def test_episode_export_and_delete(main_screen, robot):
    b = main_screen
    episodes = robot.brain.list_episodes()
    assert episodes, "the recording test should have left an episode"
    episode_id = episodes[0].episode_id
    row = f"#episodes-list li[data-id='{episode_id}']"

    export = by_id(b, "episodes-export")
    b.js("arguments[0].scrollIntoView({block: 'center'})", export)
    clear_toast(b)
    export.click()
    toast = by_id(b, "toast")
    wait_until(lambda: "Export done" in toast.text, "the export to finish", timeout=30)
    assert toast.get_attribute("data-kind") == "info", toast.text
    assert "rlds" in robot.brain.list_episodes()[0].exports
    wait_until(
        lambda: "exported: rlds" in b.driver.find_element("css selector", row).text,
        "the export mark in the list",
    )

    delete = b.driver.find_element("css selector", f"{row} button")
    delete.click()  # first tap only arms it
    time.sleep(0.3)
    assert episode_id in {e.episode_id for e in robot.brain.list_episodes()}
    assert delete.text == "Sure?"
    delete.click()
    wait_until(
        lambda: episode_id not in {e.episode_id for e in robot.brain.list_episodes()},
        "the episode to be deleted on the robot",
    )
    wait_until(lambda: not b.driver.find_elements("css selector", row), "the row to go")


def panel_rows(browser: Browser, dl_id: str) -> dict[str, str]:
    """A key/value panel as {label: text}."""
    return browser.js(
        """
        const out = {};
        for (const dt of document.querySelectorAll('#' + arguments[0] + ' dt'))
          out[dt.textContent] = dt.nextElementSibling.textContent;
        return out;
        """,
        dl_id,
    )


def test_health_and_update_panels_render(main_screen, robot):
    b = main_screen
    health = wait_until(lambda: panel_rows(b, "health-info"), "the health panel")
    assert health.get("robot") == "sim-donkey-01"
    assert {"memory", "disk", "control loop"} <= set(health), health
    assert health["control loop"].startswith("ok")

    updates = wait_until(lambda: panel_rows(b, "update-info"), "the update panel")
    status = robot.brain.update_status().to_json()
    if status.get("available") is False:
        assert "not available" in updates["state"]
        return
    assert updates.get("phase") == status["phase"], updates
    # Nothing to roll back to on a fresh robot: the button says so by being off.
    rollback = by_id(b, "update-rollback")
    assert rollback.is_enabled() == bool(status.get("previous"))

    # Side-loading something that is not a bundle: it reaches the updater, which refuses it,
    # and the app shows the robot's reason.
    upload = by_id(b, "update-file")
    wait_until(upload.is_enabled, "the file input")
    junk = Path(tempfile.mkdtemp(prefix="cwa-")) / "not-a-bundle.tar"
    try:
        junk.write_bytes(b"this is not an update bundle")
        upload.send_keys(str(junk))
        wait_until(lambda: by_id(b, "update-upload").is_enabled(), "the install button")
        b.js("document.getElementById('update-upload').scrollIntoView({block: 'center'})")
        clear_toast(b)
        by_id(b, "update-upload").click()
        toast = by_id(b, "toast")
        wait_until(lambda: toast.get_attribute("data-kind") == "error", "the refusal", 10)
    finally:
        shutil.rmtree(junk.parent, ignore_errors=True)
    after = robot.brain.update_status().to_json()
    assert after["last_error"] and "bundle" in toast.text.lower(), (toast.text, after)
    assert after["committed"] == status["committed"]  # nothing was installed
    wait_until(lambda: panel_rows(b, "update-info").get("last error"), "the error in the panel")


def test_training_panel_shows_progress_and_refusals(main_screen, robot):
    b = main_screen
    training = wait_until(lambda: panel_rows(b, "training-info"), "the training panel")
    status = robot.brain.training_status().to_json()
    if status.get("available") is False:
        assert "not available" in training["state"]
        return
    assert training["state"] == status["state"], training
    # The trainer refuses to start while the robot may drive; the app shows its reason.
    robot.brain.set_mode("manual")
    try:
        start = by_id(b, "training-start")
        wait_until(start.is_enabled, "the start button")
        b.js("arguments[0].scrollIntoView({block: 'center'})", start)
        clear_toast(b)
        start.click()
        toast = by_id(b, "toast")
        wait_until(lambda: toast.get_attribute("data-kind") == "error", "the refusal")
        assert "manual" in toast.text, toast.text
        assert robot.brain.training_status().to_json()["state"] == status["state"]
    finally:
        robot.brain.set_mode("idle")


def test_revoked_token_returns_to_pairing(main_screen, robot):
    b = main_screen
    (tok,) = robot.ctl({"cmd": "tokens", "action": "list"})
    robot.ctl({"cmd": "tokens", "action": "revoke", "token_id": tok["token_id"]})
    wait_until(lambda: shown(b, "pair-screen"), "the pairing screen after revocation")
    assert "Pair again" in by_id(b, "pair-error").text
    assert b.js("return localStorage.getItem('continuon.token')") is None
    assert_estop_in_view(b, "pairing screen after revocation")
