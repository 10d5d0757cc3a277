"""A file-logging stand-in for adafruit_pca9685, for tests that run the daemon as a subprocess.

Put this directory first on PYTHONPATH and set FAKE_PCA9685_LOG: every
duty_cycle written by our real driver is appended to that file as JSON, so a
test can see what would have reached the PWM board after the process is gone.
"""

import json
import os
import time


class _Channel:
    def __init__(self, board, index):
        self._board = board
        self._index = index
        self._duty = 0

    @property
    def duty_cycle(self):
        return self._duty

    @duty_cycle.setter
    def duty_cycle(self, value):
        self._duty = int(value)
        self._board._log({"ch": self._index, "duty": self._duty})


class PCA9685:
    def __init__(self, i2c, *, address=0x40, **_kw):
        self.address = address
        self.frequency = 1526
        self.channels = [_Channel(self, i) for i in range(16)]
        self._log({"open": address})

    def _log(self, event):
        path = os.environ.get("FAKE_PCA9685_LOG")
        if path:
            event["t"] = time.monotonic()
            event["pid"] = os.getpid()
            with open(path, "a") as f:
                f.write(json.dumps(event) + "\n")

    def deinit(self):
        self._log({"deinit": True})
