import math

import numpy as np
import pytest

from brain.config import SafetyConfig
from brain.control.safety import SafetyLayer
from brain.hardware.protocols import CAR_ACTION_SPEC, ActionSpec


def layer(**kw):
    return SafetyLayer(CAR_ACTION_SPEC, SafetyConfig(**kw))


def test_motion_not_allowed_gives_neutral():
    s = layer()
    out = s.filter(np.array([0.5, 0.5]), command_t=0.0, now=0.0, motion_allowed=False)
    assert out.neutral and out.reason == "no_motion"
    assert np.array_equal(out.action, [0.0, 0.0])


def test_watchdog_after_timeout():
    s = layer(teleop_timeout_ms=250)
    ok = s.filter(np.array([0.2, 0.3]), command_t=1.0, now=1.24, motion_allowed=True)
    assert not ok.neutral
    late = s.filter(np.array([0.2, 0.3]), command_t=1.0, now=1.26, motion_allowed=True)
    assert late.neutral and late.reason == "watchdog"
    assert s.stats()["watchdog"] == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(bad):
    s = layer()
    out = s.filter(np.array([0.1, bad]), command_t=0.0, now=0.0, motion_allowed=True)
    assert out.neutral and out.reason == "non_finite"


def test_wrong_size_rejected():
    s = layer()
    out = s.filter(np.array([0.1, 0.2, 0.3]), command_t=0.0, now=0.0, motion_allowed=True)
    assert out.neutral


def test_clamps_to_configured_limits():
    s = layer(limits={"throttle": (-0.3, 0.4)})
    out = s.filter(np.array([3.0, 0.9]), command_t=0.0, now=0.0, motion_allowed=True)
    assert np.allclose(out.action, [1.0, 0.4]) and out.clamped
    out = s.filter(np.array([-3.0, -0.9]), command_t=0.0, now=0.0, motion_allowed=True)
    assert np.allclose(out.action, [-1.0, -0.3])


def test_limits_outside_range_rejected():
    with pytest.raises(ValueError, match="does not overlap"):
        layer(limits={"throttle": (2.0, 3.0)})


def test_slew_limits_away_from_neutral_only():
    s = layer(slew_per_s={"throttle": 2.0})
    s.filter(None, command_t=None, now=0.0, motion_allowed=True)  # neutral at t=0
    a = s.filter(np.array([0.0, 1.0]), command_t=0.1, now=0.1, motion_allowed=True)
    assert a.slewed and a.action[1] == pytest.approx(0.2)
    b = s.filter(np.array([0.0, 1.0]), command_t=0.2, now=0.2, motion_allowed=True)
    assert b.action[1] == pytest.approx(0.4)
    # slowing down is immediate
    c = s.filter(np.array([0.0, 0.05]), command_t=0.21, now=0.21, motion_allowed=True)
    assert c.action[1] == pytest.approx(0.05) and not c.slewed
    # reversing crosses neutral and restarts the ramp from it
    d = s.filter(np.array([0.0, -1.0]), command_t=0.31, now=0.31, motion_allowed=True)
    assert d.action[1] == pytest.approx(-0.2)


def test_neutral_is_immediate_after_motion():
    s = layer(slew_per_s={"throttle": 0.5})
    s.filter(np.array([0.0, 0.0]), command_t=0.0, now=0.0, motion_allowed=True)
    for i in range(1, 40):
        s.filter(np.array([0.0, 1.0]), command_t=i * 0.05, now=i * 0.05, motion_allowed=True)
    out = s.filter(None, command_t=None, now=2.0, motion_allowed=True)
    assert out.neutral and out.action[1] == 0.0


def test_arm_neutral_holds_last_position_and_slews_both_ways():
    spec = ActionSpec(
        names=("base", "elbow"),
        low=(10.0, 15.0),
        high=(170.0, 165.0),
        neutral=(math.nan, math.nan),
    )
    s = SafetyLayer(spec, SafetyConfig(), default_slew_per_s={"base": 60.0, "elbow": 60.0})
    first = s.filter(np.array([90.0, 90.0]), command_t=0.0, now=0.0, motion_allowed=True)
    assert np.allclose(first.action, [90, 90])
    out = s.filter(np.array([10.0, 120.0]), command_t=0.1, now=0.1, motion_allowed=True)
    assert np.allclose(out.action, [84.0, 96.0])
    held = s.filter(None, command_t=None, now=0.2, motion_allowed=False)
    assert held.neutral and np.allclose(held.action, [84.0, 96.0])
