"""The actuator check: without --move it writes nothing; with it, a slow sweep ending at neutral.

Every path out of a movement sequence writes neutral (a ``finally``), and the
real drivers write it once more when they close.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from brain.config import ArmActuatorsConfig, CarActuatorsConfig
from brain.hwcheck.context import CheckContext
from brain.hwcheck.results import CheckResult, Skip, result, simulated_skip
from brain.hwcheck.system import FAIL, PASS, WARN


def check_actuators(ctx: CheckContext) -> CheckResult:
    act = ctx.config.hardware.actuators
    if ctx.sim:
        if isinstance(act, ArmActuatorsConfig):
            raise Skip("the simulated robot is a car: this config's arm has no simulated twin")
        robot = ctx.robot()
        if not ctx.move:
            names = ", ".join(robot.actuators.action_spec.names)
            return result(
                PASS,
                f"simulated actuators ({names}) present; nothing written "
                "(add --move to exercise them)",
                moved=False,
            )
        return _move_sim_car(ctx, robot)
    if act.driver == "sim":
        raise simulated_skip("the actuators are", "hardware.actuators.driver")
    from brain.hardware.pca9685 import require_driver_modules

    require_driver_modules(act.pca9685)  # the daemon's driver, not just a bus scanner
    try:
        probe = ctx.i2c_probe()
    except (OSError, ValueError, RuntimeError) as exc:
        raise Skip(f"the I2C bus could not be scanned (see the i2c check): {exc}") from exc
    if not probe["found"]:
        raise Skip(
            f"no PCA9685 answers at {probe['address']} on I2C bus {probe['bus']} "
            "(see the i2c check): nothing to exercise"
        )
    if not ctx.move:
        return result(
            PASS,
            f"PCA9685 answers at {probe['address']}; nothing written "
            "(add --move, wheels off the ground, to exercise the actuators)",
            moved=False,
            **probe,
        )
    if isinstance(act, CarActuatorsConfig):
        return _move_real_car(ctx, act)
    return _move_real_arm(ctx, act)


def _limit(ctx: CheckContext, name: str, lo: float, hi: float) -> tuple[float, float]:
    """The safety layer's clamp for ``name`` intersected with [lo, hi]."""
    lim = ctx.config.safety.limits.get(name)
    if lim is None:
        return lo, hi
    return max(lo, lim[0]), min(hi, lim[1])


def car_sequence(ctx: CheckContext) -> list[tuple[str, float, float, float]]:
    """(phase, steering, throttle, hold seconds): a slow steering sweep, then a small pulse.

    Steering goes centre→left→centre→right→centre in steps of 0.1, throttle
    stays at neutral; then throttle gets a short small forward pulse (at most
    0.2, within the safety limits) and returns to neutral.
    """
    s_lo, s_hi = _limit(ctx, "steering", -1.0, 1.0)
    _, t_hi = _limit(ctx, "throttle", -1.0, 1.0)
    pulse = max(0.0, min(0.2, t_hi))
    dt = ctx.move_step_s
    seq: list[tuple[str, float, float, float]] = []

    def ramp(phase: str, a: float, b: float) -> None:
        steps = max(1, round(abs(b - a) / 0.1))
        for k in range(1, steps + 1):
            seq.append((phase, a + (b - a) * k / steps, 0.0, dt))

    ramp("steer-left", 0.0, s_lo)
    ramp("steer-center", s_lo, 0.0)
    ramp("steer-right", 0.0, s_hi)
    ramp("steer-center", s_hi, 0.0)
    seq.append(("settle", 0.0, 0.0, 0.3))
    seq.append(("throttle-pulse", 0.0, pulse, 0.5))
    seq.append(("neutral", 0.0, 0.0, 0.0))
    return seq


def _run_car_sequence(
    ctx: CheckContext, actuators: Any, observe: Callable[[str], None] | None = None
) -> list[tuple[str, float, float]]:
    """Write the car sequence; neutral in a ``finally`` whatever happens."""
    written: list[tuple[str, float, float]] = []
    try:
        for phase, steer, throttle, hold in car_sequence(ctx):
            actuators.write(np.array([steer, throttle], dtype=np.float64))
            written.append((phase, steer, throttle))
            end = ctx.clock() + hold
            while True:
                if observe is not None:
                    observe(phase)
                left = end - ctx.clock()
                if left <= 0:
                    break
                ctx.sleep(min(left, 0.02))
    finally:
        actuators.neutral()
    return written


def _move_real_car(ctx: CheckContext, cfg: CarActuatorsConfig) -> CheckResult:
    from brain.hardware.pca9685 import PCA9685Car

    ctx.say(
        "hw-check --move: arming the ESC and moving steering and throttle now; "
        "the wheels must be off the ground"
    )
    car = PCA9685Car(cfg)
    pulses: list[dict[str, int]] = []
    try:
        car.start()  # opens the board, writes neutral, waits arm_seconds for the ESC
        written = _run_car_sequence(
            ctx, car, observe=lambda _p: pulses.append(dict(car.last_pulses_us))
        )
    finally:
        car.close()  # writes neutral again, then releases the bus
    end = dict(car.last_pulses_us)
    steer_us = sorted({p["steering"] for p in pulses if "steering" in p})
    thr_us = max((p.get("throttle", 0) for p in pulses), default=0)
    neutral = {"steering": cfg.steering.center_us, "throttle": cfg.throttle.neutral_us}
    details = {
        "moved": True,
        "steps": len(written),
        "steering_us_range": [steer_us[0], steer_us[-1]] if steer_us else None,
        "throttle_pulse_us": thr_us,
        "final_pulses_us": end,
        "neutral_pulses_us": neutral,
    }
    if end != neutral:
        return result(FAIL, f"did not end at neutral: last pulses {end}", **details)
    return result(
        PASS,
        f"steering swept {details['steering_us_range']} us, throttle pulsed to {thr_us} us, "
        f"ended at neutral {neutral}; confirm by eye that the wheels turned and spun",
        **details,
    )


def read_pulse_us(board: Any, channel: int) -> float | None:
    """The pulse a PCA9685 channel is putting out now (None: no pulse, or unreadable)."""
    us = board.get_pulse_us(channel)
    return float(us) if us else None


def _move_real_arm(ctx: CheckContext, cfg: ArmActuatorsConfig) -> CheckResult:
    """Nudge each joint whose position is known 5 degrees and back; leave the arm as found.

    The arm's ``on_stop`` is not applied at the end: nothing stopped, and
    releasing joints this check never touched could let the arm sag.  Each
    joint ends at the pulse it had (also when a write fails half-way, best effort).
    """
    from brain.hardware.pca9685 import PCA9685Arm, PwmBoard

    ctx.say("hw-check --move: moving each arm joint a few degrees and back; keep clear of the arm")
    board = PwmBoard.open(cfg.pca9685)
    arm = PCA9685Arm(cfg, open_board=lambda _cfg: board)
    moved: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    restore: tuple[int, float] | None = None  # (channel, start pulse) of the joint in motion
    try:
        arm.start()
        n = len(cfg.joints)
        for i, joint in enumerate(cfg.joints):
            us = read_pulse_us(board, joint.channel)
            if us is None:
                skipped[joint.name] = "no pulse on its channel (position unknown)"
                continue
            here = joint.min_deg + (us - joint.min_us) * (joint.max_deg - joint.min_deg) / (
                joint.max_us - joint.min_us
            )
            lo, hi = joint.soft_limits
            if not lo <= here <= hi:
                skipped[joint.name] = f"at {here:.0f} deg, outside its soft limits [{lo:g}, {hi:g}]"
                continue
            delta = 5.0 if here + 5.0 <= hi else -5.0
            step = max(0.5, min(1.0, joint.max_speed_deg_s * ctx.move_step_s))
            path = [*np.arange(step, abs(delta) + 1e-9, step)]
            path = path + path[-2::-1] + [0.0]
            restore = (joint.channel, us)
            for offset in path:
                action = np.full(n, math.nan)
                action[i] = here + math.copysign(offset, delta)
                arm.write(action)
                ctx.sleep(ctx.move_step_s)
            restore = None
            moved[joint.name] = [here, here + delta]
    finally:
        try:
            if restore is not None:
                board.set_pulse_us(*restore)
        finally:
            board.close()
    details = {"moved": True, "joints": moved, "not_moved": skipped}
    parts = [f"moved {k} {a:.0f}->{b:.0f}->{a:.0f} deg" for k, (a, b) in moved.items()]
    if skipped:
        parts.append("not moved: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if any("no pulse" in v for v in skipped.values()):
        parts.append(
            "a joint without a pulse would jump to its first command, so it is left alone: "
            "command the arm once (e.g. from the app), then run again"
        )
    return result(WARN if skipped else PASS, "; ".join(parts), **details)


def sim_car_state(robot: Any) -> tuple[float, float]:
    """(steering angle in rad, speed in m/s) of the simulated car right now."""
    state = robot.state
    return float(state.steer_actual), float(state.speed)


def _move_sim_car(ctx: CheckContext, robot: Any) -> CheckResult:
    act = robot.actuators
    samples: dict[str, list[tuple[float, float]]] = {}

    def observe(phase: str) -> None:
        samples.setdefault(phase, []).append(sim_car_state(robot))

    ctx.actuators_touched = True
    act.start()
    written = _run_car_sequence(ctx, act, observe=observe)
    # The car coasts after the pulse: watch it slow down (drag brake + rolling resistance).
    peak = max((v for _, v in samples.get("throttle-pulse", [])), default=0.0)
    deadline = ctx.clock() + 3.0
    while True:
        steer_now, speed_now = sim_car_state(robot)
        if speed_now <= 0.5 * peak or ctx.clock() >= deadline:
            break
        ctx.sleep(0.02)
    left = min(
        (s for s, _ in samples.get("steer-left", []) + samples.get("steer-right", [])), default=0.0
    )
    right = max(
        (s for s, _ in samples.get("steer-left", []) + samples.get("steer-right", [])), default=0.0
    )
    last = getattr(act, "last_command", None)
    last_list = None if last is None else [float(x) for x in np.asarray(last).reshape(-1)]
    details = {
        "moved": True,
        "steps": len(written),
        "steer_min_deg": math.degrees(left),
        "steer_max_deg": math.degrees(right),
        "peak_speed_mps": peak,
        "speed_after_mps": speed_now,
        "final_steer_deg": math.degrees(steer_now),
        "last_command": last_list,
    }
    problems = []
    if not (left < -math.radians(2) and right > math.radians(2)):
        problems.append("the steering did not follow the sweep")
    if peak < 0.05:
        problems.append("the car did not speed up during the throttle pulse")
    elif speed_now > 0.5 * peak:
        problems.append("the car did not slow down after the pulse")
    if last_list is not None and any(abs(x) > 1e-9 for x in last_list):
        problems.append(f"did not end at neutral (last command {last_list})")
    if problems:
        return result(FAIL, "; ".join(problems), **details)
    return result(
        PASS,
        f"sim car steered {math.degrees(left):.0f}..{math.degrees(right):.0f} deg, "
        f"sped up to {peak:.2f} m/s and slowed to {speed_now:.2f} m/s; ended at neutral",
        **details,
    )
