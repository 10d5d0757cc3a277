"""Stand-in for Adafruit Blinka's busio, for tests that run the daemon as a subprocess.

Its I2C bus carries an emulated PCA9685 at 0x40 (tests/pca9685_bus.py) that the
real adafruit_pca9685 library drives.  With FAKE_PCA9685_LOG set, every LEDn
write the chip receives is appended to that file as JSON ({"ch", "counts"}: the
12-bit pulse), so a test can see what the PWM board got after the process is gone.
"""

import json
import os
import time

from tests.pca9685_bus import ALL_LED, LED0, EmulatedI2C, EmulatedPCA9685


class _LoggingPCA9685(EmulatedPCA9685):
    def write(self, data: bytes) -> None:
        super().write(data)
        path = os.environ.get("FAKE_PCA9685_LOG")
        reg = data[0] if data else -1
        if not path or len(data) != 5 or not LED0 <= reg < ALL_LED or (reg - LED0) % 4:
            return
        ch = (reg - LED0) // 4
        event = {"ch": ch, "counts": self.counts(ch), "t": time.monotonic(), "pid": os.getpid()}
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


class I2C(EmulatedI2C):
    def __init__(self, scl, sda, **_kw):
        super().__init__({0x40: _LoggingPCA9685()})


class SPI:
    """Never used here; the Adafruit libraries import it for type annotations."""


class UART:
    """Never used here; the Adafruit libraries import it for type annotations."""
