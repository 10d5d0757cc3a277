"""When the next control tick is due: on a timer, or on each new camera frame.

A timer tick takes whatever frame is newest, so a frame waits up to a whole
period for it; a frame-triggered tick starts as soon as the frame is there.
Both are kept here as one small, clock-free rule so that a test can step it
with a fake clock, and the loop only asks "when?" and says "ticked".

Frame mode limits the tick rate on the frames' own capture times (a GCRA, a
token bucket in one number): ``tat`` is the capture time the next ticked frame
is expected at, one period after the last ticked frame's.  A frame captured up
to ``tolerance`` (half a period) before ``tat`` is ticked as soon as it
arrives; an earlier one waits for as long as it is early, and is replaced if a
newer frame comes meanwhile (the newest wins, the others are counted as frames
without a tick).  So a camera at the control rate gets a tick on every frame
however its render or readout time varies, and a camera that cannot be slowed
to the control rate (a RealSense has no 50 fps mode) still gets ticks at the
control rate on average.  Capture times, not arrival or tick times, because
they are the sensor's own regular clock: a schedule kept on arrival times would
ratchet up to the slowest render ever seen and then hold back every faster one.

With no new frame the tick falls due ``tolerance`` after the next frame was
expected, then every period, so the teleop watchdog, the deadman and the
neutral writes keep running when the camera stalls or dies.
"""

from __future__ import annotations

from typing import Literal

Trigger = Literal["frame", "timer"]


class TickSchedule:
    """Deadlines for one control loop; all times are on the loop's (injected) clock."""

    def __init__(self, trigger: Trigger, period: float, start: float) -> None:
        self.trigger: Trigger = trigger
        self.period = period
        self.tolerance = period / 2
        self.tat = start  # timer: the next deadline; frame: the next frame's capture time
        self._tat_set = trigger == "timer"
        self.fallback_at = start + self.tolerance  # frame mode: the next tick without a frame

    def due(self, frame: tuple[float, float] | None) -> float:
        """When the next tick should start.

        ``frame``: (arrival, capture time) of the newest frame no tick has taken yet.
        """
        if self.trigger == "timer":
            return self.tat
        if frame is None:
            return self.fallback_at
        arrival, t_capture = frame
        early = (self.tat - self.tolerance) - t_capture if self._tat_set else 0.0
        return min(self.fallback_at, arrival + max(0.0, early))

    def ticked(self, start: float, t_capture: float | None) -> None:
        """A tick started at ``start``; ``t_capture``: its new frame's capture time, if any."""
        if self.trigger == "timer":
            self.tat += self.period
            return
        if t_capture is not None:
            base = max(self.tat, t_capture) if self._tat_set else t_capture
            self.tat = base + self.period
            self._tat_set = True
            self.fallback_at = start + self.period + self.tolerance
        else:
            self.fallback_at = start + self.period

    def finished(self, end: float, due: float) -> tuple[bool, int]:
        """A tick that was due at ``due`` ended at ``end``: (overran?, deadlines skipped).

        A timer tick overruns when it ends after the next deadline; the deadlines it
        ran past are dropped, not fired back to back.  A frame tick overruns when it
        took longer than a period after it was due (the next frame is waiting).
        """
        if self.trigger == "timer":
            if end <= self.tat:
                return False, 0
            missed = int((end - self.tat) // self.period) + 1
            self.tat += missed * self.period
            return True, missed
        return end - due > self.period, 0
