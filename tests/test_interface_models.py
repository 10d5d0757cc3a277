"""BrainInterface returns typed models (brain/interface_models.py), and their JSON is the wire's.

The declared return of every method is checked with typing.get_type_hints (no dicts), then
the real daemon on the sim robot is called through every method and each value checked
against its declaration; the JSON the network sends (``to_json``) keeps the keys, order and
value types that the web app, the MQTT telemetry and the control socket have always read.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from brain.interface import BrainInterface, CameraFrame, CommandError
from brain.interface_models import (
    BrainStats,
    ModeChange,
    Reply,
    UpdateResult,
    UpdateStatus,
)
from tests.daemon_helpers import make_daemon, start_daemon, stop_daemon
from tests.emulation import wall
from tests.network_helpers import record_episodes
from tests.waiting import wait_until_async

METHODS = sorted(
    name
    for name, member in inspect.getmembers(BrainInterface)
    if not name.startswith("_") and inspect.isfunction(member)
)


def _return_type(name: str) -> Any:
    return typing.get_type_hints(getattr(BrainInterface, name))["return"]


def _parts(tp: Any) -> list[Any]:
    """The types a declaration is made of: the members of a union, the item of a list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(tp) for p in _parts(a)]
    if origin is list:
        return [origin, *(p for a in typing.get_args(tp) for p in _parts(a))]
    return [tp]


def _conforms(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def test_every_method_declares_a_typed_return_never_a_dict():
    assert len(METHODS) >= 20, METHODS  # the introspection found the interface
    for name in METHODS:
        ret = _return_type(name)
        for part in _parts(ret):
            assert typing.get_origin(part) is not dict and part is not dict, (name, ret)
            assert part in (list, type(None), CameraFrame) or (
                isinstance(part, type) and issubclass(part, Reply)
            ), (name, ret)


async def _exercise(brain: BrainInterface, tmp_path: Path) -> tuple[dict[str, Any], dict]:
    got: dict[str, Any] = {}
    refused: dict[str, Exception] = {}

    async def call(name: str, *args: Any) -> None:
        try:
            result = getattr(brain, name)(*args)
            got[name] = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            refused[name] = exc

    await call("status")
    await call("stats")
    await call("reset_stats")
    await call("telemetry")
    await call("latest_frame")
    await call("heartbeat")
    await call("set_mode", "manual", "test")
    await call("teleop", [0.0, 0.0])
    await call("start_recording", ["typed"])
    await call("stop_recording")
    await call("estop", "test")
    await call("reset_estop")
    await call("list_episodes")
    await call("export_episodes", {"format": "rlds"})
    assert "list_episodes" in got, refused
    victim = next(e.episode_id for e in got["list_episodes"] if e.status == "complete")
    await call("delete_episode", victim)
    await call("training_status")
    await call("start_training", {})  # refused: the sim has no base model to fine-tune
    await call("stop_training")
    await call("update_status")
    await call("check_update")  # refused: no repository configured
    await call("install_update", tmp_path / "no-such-bundle.tar")
    await call("rollback_update")  # refused: nothing committed to go back to
    return got, refused


def test_the_sim_daemon_returns_what_it_declares(tmp_path):
    async def body():
        daemon, _ = make_daemon(tmp_path)
        record_episodes(daemon.config.episodes_dir(), 2)
        task = await start_daemon(daemon)
        try:  # the sim renders its textures before the first frame
            await wait_until_async(lambda: daemon.sensors.latest()[0], "a camera frame", wall(10))
            return await _exercise(daemon.brain, tmp_path)
        finally:
            await stop_daemon(daemon, task)

    got, refused = asyncio.run(body())
    assert set(got) | set(refused) == set(METHODS)
    # The refusals are the documented ones (nothing to train from, no repository, no bundle).
    assert set(refused) <= {"start_training", "check_update", "install_update", "rollback_update"}
    assert isinstance(refused["start_training"], CommandError), refused
    assert "update_status" in got and "training_status" in got  # the real updater and trainer
    for name, value in got.items():
        assert _conforms(value, _return_type(name)), (name, type(value), _return_type(name))
    assert got["latest_frame"] is not None and got["status"].recording is not None
    assert got["update_status"].available and got["training_status"].available
    # Wire shape: what the web app, the control socket and MQTT have always read.
    status = got["status"].to_json()
    assert list(status) == [
        "robot_id",
        "robot_kind",
        "software_version",
        "mode",
        "flags",
        "estop_reason",
        "autopilot",
        "model_version",
        "uptime_s",
        "control_running",
        "tasks",
        "recording",
        "deadman",
    ]
    assert isinstance(status["tasks"]["control"]["restarts"], int)
    # what goes to the LAN names no directory of the robot (the recorder's root once did)
    for name in ("status", "stats", "telemetry"):
        assert str(tmp_path) not in json.dumps(got[name].to_json()), name
    tel = got["telemetry"].to_json()
    assert list(tel) == [
        "t",
        "mode",
        "estop_reason",
        "action",
        "neutral",
        "ticks",
        "model_version",
        "recording",
        "deadman_holding",
        "sim",
    ]
    assert list(tel["sim"]) == ["cte_m", "speed_mps", "laps", "on_track"]
    assert isinstance(tel["sim"]["laps"], int) and isinstance(tel["ticks"], int)
    stats = got["stats"].to_json()
    assert list(stats) == ["control", "sensors", "policy", "process", "recording", "sim"]
    assert got["set_mode"].to_json() == {"from": "idle", "to": "manual"}
    assert got["reset_estop"].to_json() == {"from": "estop", "to": "idle"}
    assert got["delete_episode"].to_json() == {"deleted": got["delete_episode"].deleted}
    assert list(got["update_status"].to_json())[:3] == ["available", "phase", "busy"]
    for name, value in got.items():  # every reply is plain JSON, and reads back as itself
        if isinstance(value, Reply):
            wire = json.loads(json.dumps(value.to_json()))
            assert type(value).model_validate(wire) == value, name


def test_optional_sections_are_absent_not_null_and_numbers_keep_their_type():
    assert UpdateStatus(available=False).to_json() == {"available": False}
    bare = BrainStats(control={}, sensors={}, policy=None, process={"rss_mb": 50})
    assert bare.to_json() == {
        "control": {},
        "sensors": {},
        "policy": None,
        "process": {"rss_mb": 50},
    }
    # "from" is a Python keyword: the field is from_, the wire key stays "from".
    assert ModeChange.model_validate({"from": "idle", "to": "manual"}).to_json() == {
        "from": "idle",
        "to": "manual",
    }
    res = UpdateResult.model_validate(
        {"result": "up to date", "available": True, "phase": "idle", "release_counter": 3}
    )
    assert list(res.to_json()) == ["result", "available", "phase", "release_counter"]
    assert json.dumps(res.to_json()["release_counter"]) == "3"  # an int stays an int
    with pytest.raises(ValueError, match="unknown_key"):
        UpdateStatus.model_validate({"available": True, "unknown_key": 1})
    with pytest.raises(ValueError):  # strict: no "1" -> 1 coercion behind the wire's back
        UpdateStatus.model_validate({"available": True, "release_counter": "1"})
