"""Supervised autonomy: without an operator heartbeat the car holds neutral (not ESTOP)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from brain.capture import SensorHub
from brain.config import SafetyConfig, parse_config
from brain.control.loop import ControlLoop
from brain.control.safety import SafetyLayer
from brain.hardware.protocols import CAR_ACTION_SPEC
from brain.modes import Mode, ModeManager
from edge_agent.control_socket import handle_request
from tests.api_helpers import running_api
from tests.daemon_helpers import make_daemon, sim_config, start_daemon, stop_daemon
from tests.emulation import wall


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class LoggingActuators:
    """The driver boundary: records what would reach the ESC."""

    action_spec = CAR_ACTION_SPEC

    def __init__(self) -> None:
        self.out: list[tuple[str, list[float] | None]] = []

    def write(self, action) -> None:
        self.out.append(("write", [float(v) for v in action]))

    def neutral(self) -> None:
        self.out.append(("neutral", None))


def test_safety_deadman_rule():
    off = SafetyLayer(CAR_ACTION_SPEC, SafetyConfig())
    assert not off.deadman_holds(None, 5.0)
    zero = SafetyLayer(CAR_ACTION_SPEC, SafetyConfig(autonomous_heartbeat_s=0))
    assert not zero.deadman_holds(None, 5.0)  # 0 means off, as documented
    on = SafetyLayer(CAR_ACTION_SPEC, SafetyConfig(autonomous_heartbeat_s=1.0))
    assert on.deadman_holds(None, 5.0)  # never a heartbeat: hold
    assert not on.deadman_holds(4.2, 5.0)
    assert not on.deadman_holds(4.0, 5.0)
    assert on.deadman_holds(3.99, 5.0)


def _loop(tmp_path, heartbeat_s):
    cfg = parse_config(
        sim_config(
            tmp_path,
            **{"safety.autonomous_heartbeat_s": heartbeat_s, "safety.slew_per_s": {}},
        )
    )
    clock = FakeClock()
    modes = ModeManager(clock)
    act = LoggingActuators()
    safety = SafetyLayer(CAR_ACTION_SPEC, cfg.safety)
    loop = ControlLoop(
        cfg,
        modes,
        SensorHub(clock=clock),  # no camera registered: frames are never stale
        act,
        safety,
        expert=lambda: np.array([0.1, 0.6]),
        clock=clock,
    )
    return loop, modes, act, clock


def test_control_loop_holds_neutral_without_heartbeat(tmp_path):
    loop, modes, act, clock = _loop(tmp_path, 1.0)
    modes.set_mode("autonomous")
    loop._tick(clock())
    assert act.out[-1] == ("neutral", None) and loop.last_output.reason == "deadman"
    assert loop.deadman_holding and loop.stats()["deadman"]["holding"]

    loop.heartbeat.beat()
    clock.t += 0.5
    loop._tick(clock())
    assert act.out[-1] == ("write", [0.1, 0.6]) and not loop.deadman_holding

    clock.t += 0.6  # 1.1 s since the heartbeat
    loop._tick(clock())
    assert act.out[-1] == ("neutral", None) and loop.last_output.reason == "deadman"
    assert modes.mode is Mode.AUTONOMOUS  # neutral, not an e-stop: it resumes by itself

    loop.heartbeat.beat()
    clock.t += 0.05
    loop._tick(clock())
    assert act.out[-1][0] == "write"
    assert loop.safety.stats()["deadman"] == 2
    assert loop.safety.interventions == 0  # not the model's fault: no OTA health penalty


def test_deadman_does_not_touch_manual_or_when_off(tmp_path):
    loop, modes, act, clock = _loop(tmp_path, 1.0)
    modes.set_mode("manual")
    loop.teleop.set([0.2, 0.3])
    loop._tick(clock())
    assert act.out[-1] == ("write", [0.2, 0.3])  # teleop has its own watchdog

    loop, modes, act, clock = _loop(tmp_path, None)
    modes.set_mode("autonomous")
    loop._tick(clock())
    assert act.out[-1] == ("write", [0.1, 0.6])


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["frame", "timer"])
def test_daemon_autonomy_stops_when_heartbeats_stop(tmp_path, trigger):
    """The expert drives the sim only while heartbeats arrive (control socket and API)."""

    async def body():
        daemon, act = make_daemon(
            tmp_path,
            **{
                "safety.autonomous_heartbeat_s": 0.5,
                "safety.slew_per_s": {},
                "control.trigger": trigger,
            },
        )
        task = await start_daemon(daemon)
        daemon.brain.set_mode("autonomous")
        await asyncio.sleep(0.8)
        t_beats = time.monotonic()
        holding_before = daemon.brain.telemetry().to_json()["deadman_holding"]
        for _ in range(10):  # 1 s of heartbeats from the CLI's path
            r = handle_request(daemon.brain, {"cmd": "heartbeat"})
            assert r["ok"] and r["result"]["heartbeat_s"] == 0.5
            await asyncio.sleep(0.1)
        t_last = time.monotonic()
        await asyncio.sleep(1.2)
        status = daemon.brain.status().to_json()
        await stop_daemon(daemon, task)
        return act.snapshot(), t_beats, t_last, holding_before, status

    calls, t_beats, t_last, holding_before, status = asyncio.run(body())
    assert holding_before
    before = [k for t, k, _ in calls if t < t_beats - 0.05]
    assert before and all(k == "neutral" for k in before)  # autonomous, but nobody watching
    during = [k for t, k, _ in calls if t_beats + 0.1 < t < t_last]
    assert "write" in during
    after = [(t, k) for t, k, _ in calls if t > t_last + 0.5 + 0.1]  # heartbeat_s + a tick
    assert after and all(k == "neutral" for _, k in after)
    assert status["mode"] == "autonomous" and status["deadman"]["holding"]


@pytest.mark.timeout(60)
@pytest.mark.timing
def test_heartbeat_endpoint_needs_a_token_and_feeds_the_deadman(tmp_path):
    async def body():
        async with running_api(tmp_path, **{"safety.autonomous_heartbeat_s": 1.0}) as api:
            r = await api.client.post("/api/v1/heartbeat", json={})
            assert r.status == 401
            assert api.daemon.control.heartbeat.received == 0
            token = await api.token()
            r = await api.client.post("/api/v1/heartbeat", json={}, headers=api.bearer(token))
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["heartbeat_s"] == 1.0 and body["heartbeat_age_s"] < wall(0.5)
            r = await api.client.post(
                "/api/v1/heartbeat", json={"extra": 1}, headers=api.bearer(token)
            )
            assert r.status == 422 and "extra" in (await r.json())["error"]["message"]
            return api.daemon.control.heartbeat.received

    assert asyncio.run(body()) == 1


def test_cli_heartbeat_goes_through_the_control_socket(tmp_path):
    import yaml

    from brain.cli import main
    from brain.daemon import Daemon
    from edge_agent.control_socket import make_service

    raw = sim_config(tmp_path, **{"safety.autonomous_heartbeat_s": 2.0})
    cfg_path = tmp_path / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))

    async def body():
        daemon = Daemon(parse_config(raw), services=[make_service])
        task = await start_daemon(daemon)
        sock = daemon.config.runtime_dir() / "control.sock"
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.02)
        rc = await asyncio.to_thread(main, ["heartbeat", "--config", str(cfg_path)])
        received = daemon.control.heartbeat.received
        await stop_daemon(daemon, task)
        return rc, received

    rc, received = asyncio.run(body())
    assert rc == 0 and received == 1
