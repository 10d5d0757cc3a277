"""An I2C bus with a PCA9685 on it, modelled at register level for the real Adafruit library.

The bus has the ``busio.I2C`` interface that adafruit_bus_device uses (try_lock,
unlock, writeto, readfrom_into, writeto_then_readfrom, scan, deinit); the chip
follows the NXP PCA9685 datasheet where it matters to a driver:

- MODE1 powers up as 0x11 (SLEEP set): no output until the oscillator is woken;
- PRE_SCALE can only be written while SLEEP is set (other writes are ignored);
- register auto-increment (MODE1 AI, 0x20) decides whether a multi-byte write
  fills consecutive registers or rewrites one;
- LEDn_ON/OFF (0x06 + 4n) with the full-on / full-off bits (bit 4 of the high
  bytes), and ALL_LED_ON/OFF (0xFA..0xFD) writing every channel at once;
- the output pulse is (OFF - ON) mod 4096 counts of a period set by PRE_SCALE
  from the 25 MHz oscillator.

Every register write is logged in order, so tests can assert sequences.
"""

from __future__ import annotations

import errno
import importlib
import sys
import types
from dataclasses import dataclass, field
from typing import Any

MODE1, MODE2, LED0, ALL_LED, PRE_SCALE = 0x00, 0x01, 0x06, 0xFA, 0xFE
SLEEP, AI, RESTART = 0x10, 0x20, 0x80
OSC_HZ = 25_000_000


def prescale_for(freq_hz: float) -> int:
    """The datasheet's PRE_SCALE for an update rate: round(osc / (4096 * rate)) - 1."""
    return round(OSC_HZ / (4096 * freq_hz)) - 1


def counts_for(us: float, freq_hz: float) -> int:
    """The 12-bit pulse a driver asking for ``us`` at ``freq_hz`` leaves in LEDn (4096 = on)."""
    duty = max(0, min(0xFFFF, round(us / (1e6 / freq_hz) * 0xFFFF)))
    if duty == 0xFFFF:
        return 4096
    return 0 if duty < 0x10 else duty >> 4


@dataclass
class EmulatedPCA9685:
    regs: bytearray = field(default_factory=lambda: bytearray(256))
    writes: list[tuple[int, int]] = field(default_factory=list)  # (register, value) in order
    transfers: list[tuple[int, bytes]] = field(default_factory=list)  # (first register, data)
    #: Channels whose LED registers fail to write (an I2C error), as a flaky cable would.
    fail_channels: set[int] = field(default_factory=set)
    pointer: int = 0

    def __post_init__(self) -> None:
        self.regs[MODE1] = 0x11  # power-on: SLEEP | ALLCALL
        self.regs[MODE2] = 0x04
        self.regs[PRE_SCALE] = 0x1E  # 200 Hz
        for ch in range(16):
            self.regs[LED0 + 4 * ch + 3] = 0x10  # LEDn full off

    # -------------------------------------------------------------- bus side

    def write(self, data: bytes) -> None:
        if not data:
            return  # an address probe
        ch = (data[0] - LED0) // 4
        if len(data) > 1 and LED0 <= data[0] < ALL_LED and ch in self.fail_channels:
            raise OSError(errno.EREMOTEIO, f"Remote I/O error (channel {ch})")
        if len(data) > 1:
            self.transfers.append((data[0], bytes(data[1:])))
        self.pointer = data[0]
        for value in data[1:]:
            self._store(self.pointer, value)
            if self.regs[MODE1] & AI:
                self.pointer = (self.pointer + 1) & 0xFF

    def read(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(n):
            out.append(self.regs[self.pointer])
            if self.regs[MODE1] & AI:
                self.pointer = (self.pointer + 1) & 0xFF
        return bytes(out)

    def _store(self, reg: int, value: int) -> None:
        self.writes.append((reg, value))
        if reg == PRE_SCALE:
            if self.regs[MODE1] & SLEEP:
                self.regs[PRE_SCALE] = value
            return
        if ALL_LED <= reg < PRE_SCALE:
            for ch in range(16):
                self.regs[LED0 + 4 * ch + (reg - ALL_LED)] = value
            return
        if reg == MODE1:
            value &= ~RESTART & 0xFF  # RESTART reads back 0 once the restart is done
        self.regs[reg] = value

    # -------------------------------------------------------------- what a scope would see

    @property
    def sleeping(self) -> bool:
        return bool(self.regs[MODE1] & SLEEP)

    @property
    def frequency_hz(self) -> float:
        return OSC_HZ / (4096 * (self.regs[PRE_SCALE] + 1))

    def led(self, ch: int) -> tuple[int, int]:
        """(ON, OFF) register values of a channel, 13 bits each (bit 12 = full on/off)."""
        b = self.regs[LED0 + 4 * ch : LED0 + 4 * ch + 4]
        return b[0] | b[1] << 8, b[2] | b[3] << 8

    def pulse_us(self, ch: int) -> float | None:
        """The pulse on a channel's pin; None when there is none (asleep or full off)."""
        on, off = self.led(ch)
        if self.sleeping or off & 0x1000:
            return None
        period_us = 1e6 / self.frequency_hz
        if on & 0x1000:
            return period_us
        counts = ((off & 0xFFF) - (on & 0xFFF)) % 4096
        return counts / 4096 * period_us

    def counts(self, ch: int) -> int:
        """The channel's pulse in 12-bit counts as the registers hold it (0 off, 4096 on)."""
        on, off = self.led(ch)
        if off & 0x1000:
            return 0
        if on & 0x1000:
            return 4096
        return ((off & 0xFFF) - (on & 0xFFF)) % 4096

    def channel_writes(self) -> list[tuple[int, int]]:
        """(channel, counts) of every LEDn write in order, as :meth:`counts` decodes them."""
        out = []
        for reg, data in self.transfers:
            if LED0 <= reg < ALL_LED and (reg - LED0) % 4 == 0 and len(data) == 4:
                on, off = data[0] | data[1] << 8, data[2] | data[3] << 8
                value = 0 if off & 0x1000 else 4096 if on & 0x1000 else (off - on) % 4096
                out.append(((reg - LED0) // 4, value))
        return out

    def led_writes(self, ch: int) -> list[tuple[int, int]]:
        base = LED0 + 4 * ch
        return [(r, v) for r, v in self.writes if base <= r < base + 4]


class EmulatedI2C:
    """busio.I2C with the given chips; an absent address fails as Linux's i2c-dev does."""

    def __init__(self, chips: dict[int, EmulatedPCA9685]):
        self.chips = chips
        self.locked = False
        self.deinited = False
        self.transfers = 0

    def try_lock(self) -> bool:
        if self.locked:
            return False
        self.locked = True
        return True

    def unlock(self) -> None:
        self.locked = False

    def _chip(self, address: int) -> EmulatedPCA9685:
        assert self.locked, "I2C transfer without holding the bus lock"
        assert not self.deinited, "I2C transfer after deinit"
        self.transfers += 1
        chip = self.chips.get(address)
        if chip is None:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return chip

    def writeto(self, address: int, buffer: bytes, *, start: int = 0, end: int | None = None):
        self._chip(address).write(bytes(buffer[start:end]))

    def readfrom_into(self, address: int, buffer, *, start: int = 0, end: int | None = None):
        end = len(buffer) if end is None else end
        buffer[start:end] = self._chip(address).read(end - start)

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: bytes,
        buffer_in,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        chip = self._chip(address)
        chip.write(bytes(buffer_out[out_start:out_end]))
        in_end = len(buffer_in) if in_end is None else in_end
        buffer_in[in_start:in_end] = chip.read(in_end - in_start)

    def scan(self) -> list[int]:
        assert self.locked
        return sorted(self.chips)

    def deinit(self) -> None:
        self.deinited = True


class BlinkaStandIn:
    """``board``, ``busio`` and ``adafruit_extended_bus`` whose buses are :class:`EmulatedI2C`.

    Installed in ``sys.modules`` for code that opens the bus itself (hw-check's
    probe, ``PwmBoard.open(cfg)``); the real ``adafruit_pca9685`` does the rest.
    Every bus opened reaches the same chips, as on one physical I2C bus.
    """

    def __init__(self, addresses: tuple[int, ...] = (0x40,)):
        self.chips = {a: EmulatedPCA9685() for a in addresses}
        self.buses: list[tuple[tuple[Any, ...], EmulatedI2C]] = []

    def chip(self, address: int = 0x40) -> EmulatedPCA9685:
        return self.chips[address]

    def _open(self, how: tuple[Any, ...]) -> EmulatedI2C:
        bus = EmulatedI2C(self.chips)
        self.buses.append((how, bus))
        return bus

    def install(self, monkeypatch: Any) -> BlinkaStandIn:
        board = types.ModuleType("board")
        board.SCL, board.SDA = "SCL-pin", "SDA-pin"
        busio = types.ModuleType("busio")
        busio.I2C = lambda scl, sda: self._open(("busio", scl, sda))
        ext = types.ModuleType("adafruit_extended_bus")
        ext.ExtendedI2C = lambda n: self._open(("extended", n))
        # The real library, even where a test blocked it before.  It must first be imported
        # with the real busio: adafruit_bus_device evaluates `i2c: I2C` annotations that
        # come from `from busio import I2C` at import time.
        for name in ("board", "busio", "adafruit_pca9685"):
            if name in sys.modules and sys.modules[name] is None:
                monkeypatch.delitem(sys.modules, name)
        importlib.import_module("adafruit_pca9685")
        for name, mod in (("board", board), ("busio", busio), ("adafruit_extended_bus", ext)):
            monkeypatch.setitem(sys.modules, name, mod)
        return self
