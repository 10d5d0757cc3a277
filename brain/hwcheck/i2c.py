"""The I2C check: is the configured PCA9685 on its bus?  Reads only, writes nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.config import PCA9685Config
from brain.hardware.lazy import EXTENDED_BUS_HINT, PCA9685_HINT, require
from brain.hardware.protocols import HardwareUnavailable
from brain.hwcheck.results import CheckResult, Skip, result, simulated_skip
from brain.hwcheck.system import FAIL, PASS

if TYPE_CHECKING:
    from brain.hwcheck.context import CheckContext


SMBUS_HINT = "pip install smbus2 (or the [pi] extra for busio/board)"


def probe_i2c(
    cfg: PCA9685Config, *, dev_dir: Path = Path("/dev"), sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Look for a device at ``cfg.address`` on ``cfg.i2c_bus``; reads only, writes nothing.

    Uses busio/board (bus 1) or adafruit_extended_bus (other buses) to scan the
    bus, else smbus2 to read one byte at the address.  Raises HardwareUnavailable
    when the bus device node or every I2C library is missing: the PCA9685 is
    configured, so a bus that cannot be reached means a car that cannot drive.
    Returns ``{"bus", "address", "found", "addresses" (None for a single-address
    probe), "method"}``.
    """
    node = dev_dir / f"i2c-{cfg.i2c_bus}"
    if not node.exists():
        raise HardwareUnavailable(
            f"no I2C bus: {node} does not exist (enable I2C with `sudo raspi-config`, "
            "Interface Options > I2C, and reboot)"
        )
    missing: list[str] = []
    try:
        if cfg.i2c_bus == 1:
            board = require("board", driver="i2c scan", install_hint=PCA9685_HINT)
            busio = require("busio", driver="i2c scan", install_hint=PCA9685_HINT)
            addresses = _scan(busio.I2C(board.SCL, board.SDA), sleep)
            method = "busio"
        else:
            ext = require(
                "adafruit_extended_bus", driver="i2c scan", install_hint=EXTENDED_BUS_HINT
            )
            addresses = _scan(ext.ExtendedI2C(cfg.i2c_bus), sleep)
            method = "adafruit_extended_bus"
        return {
            "bus": cfg.i2c_bus,
            "address": f"0x{cfg.address:02x}",
            "found": cfg.address in addresses,
            "addresses": [f"0x{a:02x}" for a in sorted(addresses)],
            "method": method,
        }
    except HardwareUnavailable as exc:
        missing.append(str(exc))
    try:
        smbus2 = require("smbus2", driver="i2c scan", install_hint=SMBUS_HINT)
    except HardwareUnavailable as exc:
        missing.append(str(exc))
        raise HardwareUnavailable(
            f"no I2C library to scan {node} with ({'; '.join(missing)})"
        ) from exc
    with smbus2.SMBus(cfg.i2c_bus) as bus:
        try:
            bus.read_byte(cfg.address)
            found = True
        except OSError:
            found = False
    return {
        "bus": cfg.i2c_bus,
        "address": f"0x{cfg.address:02x}",
        "found": found,
        "addresses": None,
        "method": "smbus2",
    }


def _scan(i2c: Any, sleep: Callable[[float], None]) -> list[int]:
    try:
        for _ in range(100):
            if i2c.try_lock():
                break
            sleep(0.01)
        else:
            raise RuntimeError("the I2C bus stayed locked by someone else for 1 s")
        try:
            return [int(a) for a in i2c.scan()]
        finally:
            i2c.unlock()
    finally:
        deinit = getattr(i2c, "deinit", None)
        if deinit is not None:
            with contextlib.suppress(Exception):
                deinit()


def check_i2c(ctx: CheckContext) -> CheckResult:
    act = ctx.config.hardware.actuators
    if ctx.sim:
        raise Skip("running against the simulated robot (--sim): its PWM board is simulated")
    if act.driver == "sim":
        raise simulated_skip("the PWM board is", "hardware.actuators.driver")
    bus = act.pca9685.i2c_bus
    try:
        probe = ctx.i2c_probe()
    except HardwareUnavailable:
        raise  # FAIL with the bus's own message (node missing, no I2C library)
    except (OSError, ValueError, RuntimeError) as exc:
        return result(FAIL, f"cannot scan I2C bus {bus}: {type(exc).__name__}: {exc}", bus=bus)
    where = f"{probe['address']} on I2C bus {probe['bus']}"
    if probe["found"]:
        return result(PASS, f"PCA9685 answers at {where}", **probe)
    seen = probe["addresses"]
    others = f" (devices seen: {', '.join(seen) or 'none'})" if seen is not None else ""
    return result(
        FAIL,
        f"no device at {where}{others}: check wiring, power (VCC and V+) and the address "
        f"jumpers; `i2cdetect -y {probe['bus']}` lists what answers",
        **probe,
    )
