"""Import a hardware library only when a driver for it is actually opened.

The runtime must install and run on a laptop or in CI, where picamera2,
pyrealsense2 and the Adafruit/Blinka stack are absent (or, for ``board``, refuse
to import on a machine that is not a known single-board computer).  So no module
in ``brain.hardware`` imports them at import time; drivers call :func:`require`
when they are opened and turn a library that cannot be imported into
:class:`HardwareUnavailable` whose message tells the robot builder what to do.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from brain.hardware.protocols import HardwareUnavailable

PICAMERA2_HINT = (
    "sudo apt install python3-picamera2 (Pi OS Bookworm) and create the venv with "
    "--system-site-packages so that it sees the system's picamera2 and libcamera"
)
REALSENSE_HINT = (
    "pip install 'continuon-brain[realsense]' where pyrealsense2 has a wheel (x86-64; on "
    "aarch64 only for Python 3.9, 3.10 and 3.12, never 3.11, which is Pi OS Bookworm's "
    "Python); on a Pi 5 build librealsense with its Python bindings "
    "(-DBUILD_PYTHON_BINDINGS=ON) into the venv: see docs/install-pi.md"
)
PCA9685_HINT = (
    "pip install 'continuon-brain[pi]' (adafruit-circuitpython-pca9685, adafruit-blinka), "
    "sudo apt install python3-libgpiod (Blinka's `board` needs gpiod on a Pi 5) "
    "and enable I2C with `sudo raspi-config` (Interface Options > I2C)"
)
EXTENDED_BUS_HINT = (
    "pip install adafruit-extended-bus (needed for an I2C bus other than 1), "
    "and enable that bus in /boot/firmware/config.txt"
)

# What a C extension built against one numpy major version says when loaded with the other.
_NUMPY_ABI_SIGNS = (
    "numpy.dtype size changed",
    "compiled using numpy 1.x",
    "_array_api not found",
    "numpy.core.multiarray failed to import",
    "numpy.core._multiarray_umath",
    "numpy._core.multiarray failed to import",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def numpy_abi_fix(module_name: str, exc: BaseException) -> str | None:
    """The fix for a numpy ABI mismatch behind ``exc``, or None if it is something else.

    apt's python3-picamera2 (and simplejpeg, tflite-runtime) are built against
    Bookworm's numpy 1.24; a numpy 2 in the venv shadows it and their import
    fails with one of these messages, which name neither the package nor the fix.
    """
    text = " ".join(str(e) for e in _chain(exc)).lower()
    if not any(sign in text for sign in _NUMPY_ABI_SIGNS):
        return None
    try:
        import numpy

        version = numpy.__version__
    except Exception:  # numpy itself broken: the generic fix still applies
        version = "unknown"
    if version.split(".")[0] == "1":
        return (
            f"numpy ABI mismatch: numpy in this environment is {version}, but {module_name} "
            "(or a module it loads) was built against numpy 2.x; install the build of "
            f"{module_name} made for numpy 1.x (on a Pi: from apt), see docs/install-pi.md"
        )
    return (
        f"numpy ABI mismatch: numpy in this environment is {version}, but {module_name} "
        "(or a module it loads, e.g. apt's python3-picamera2/simplejpeg) was built against "
        "Bookworm's numpy 1.x: pip install 'numpy<2' in the robot's venv "
        "(and an opencv-python-headless that supports it), see docs/install-pi.md"
    )


def require(module_name: str, *, driver: str, install_hint: str) -> ModuleType:
    """Import ``module_name`` or raise HardwareUnavailable naming driver, module and fix.

    Every Exception is caught, not only ImportError: Blinka's ``board`` raises
    NotImplementedError on unknown boards, a broken native part fails with
    OSError, and a numpy ABI mismatch surfaces as ValueError or AttributeError.
    Whatever it is, the robot cannot use the driver, and the message must say why.
    """
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}"
        abi = numpy_abi_fix(module_name, exc)
        if abi is not None:
            fix = abi
        else:
            fix = f"To install it: {install_hint}"
            missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
            if missing and missing.split(".")[0] != module_name.split(".")[0]:
                fix = f"It needs the module {missing!r}, which is missing. {fix}"
        raise HardwareUnavailable(
            f"{driver} driver: the Python module {module_name!r} cannot be imported ({what}). {fix}"
        ) from exc
