"""Import a hardware library only when a driver for it is actually opened.

The runtime must install and run on a laptop or in CI, where picamera2,
pyrealsense2 and the Adafruit/Blinka stack are absent (or, for ``board``, refuse
to import on a machine that is not a known single-board computer).  So no module
in ``brain.hardware`` imports them at import time; drivers call :func:`require`
when they are opened and turn a missing library into :class:`HardwareUnavailable`
whose message tells the robot builder what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from brain.hardware.protocols import HardwareUnavailable

PICAMERA2_HINT = (
    "sudo apt install python3-picamera2 (Pi OS Bookworm) and create the venv with "
    "--system-site-packages so that it sees the system's picamera2 and libcamera"
)
REALSENSE_HINT = "pip install 'continuon-brain[pi]' (pyrealsense2)"
PCA9685_HINT = (
    "pip install 'continuon-brain[pi]' (adafruit-circuitpython-pca9685, adafruit-blinka) "
    "and enable I2C with `sudo raspi-config` (Interface Options > I2C)"
)
EXTENDED_BUS_HINT = (
    "pip install adafruit-extended-bus (needed for an I2C bus other than 1), "
    "and enable that bus in /boot/firmware/config.txt"
)


def require(module_name: str, *, driver: str, install_hint: str) -> ModuleType:
    """Import ``module_name`` or raise HardwareUnavailable naming driver, module and fix.

    Besides ImportError, RuntimeError and OSError are caught too: Blinka's
    ``board`` raises NotImplementedError (a RuntimeError) on unknown boards, and
    a library whose native part is broken can fail with OSError while loading.
    """
    try:
        return importlib.import_module(module_name)
    except (ImportError, RuntimeError, OSError) as exc:
        raise HardwareUnavailable(
            f"{driver} driver: the Python module {module_name!r} cannot be imported "
            f"({type(exc).__name__}: {exc}). To install it: {install_hint}"
        ) from exc
