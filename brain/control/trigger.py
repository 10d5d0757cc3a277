"""When the next control tick is due: on a timer, or on each new camera frame.

A timer tick takes whatever frame is newest, so a frame waits up to a whole
period for it; a frame-triggered tick starts as soon as the frame is there.
Both are kept here as one small, clock-free rule so that a test can step it
with a fake clock, and the loop only asks "when?" and says "ticked".

Frame mode is a rate limiter in the GCRA form (a token bucket in one number):
``tat`` is the theoretical time of the next tick, advanced by one period per
tick.  A new frame may start a tick up to ``tolerance`` (half a period) before
``tat``: a camera running at the control rate, whose frames arrive a few
milliseconds early or late, gets a tick on every frame, while a faster camera
that cannot be slowed to the control rate still gets ticks at the control rate
on average (the newest frame wins, the others are counted as frames without a
tick).  With no new frame the tick falls due ``tolerance`` after ``tat`` and
then every period, so the teleop watchdog, the deadman and the neutral writes
keep running when the camera stalls or dies.  Those fallback ticks do not move
``tat``: a frame that was merely late is ticked at once when it comes, and the
next one on time, not half a period later.
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
        self.tat = start  # the next frame tick's theoretical time
        self.fallback_at = start + self.tolerance  # the next tick without a frame

    def due(self, frame_arrival: float | None) -> float:
        """When the next tick should start; ``frame_arrival``: a new, unticked frame's arrival."""
        if self.trigger == "timer":
            return self.tat
        if frame_arrival is None:
            return self.fallback_at
        return min(self.fallback_at, max(frame_arrival, self.tat - self.tolerance))

    def ticked(self, start: float, on_frame: bool) -> None:
        """A tick started at ``start`` (``on_frame``: it had a new frame); set the next one."""
        if self.trigger == "timer":
            self.tat += self.period
        elif on_frame:
            self.tat = max(self.tat, start) + self.period
            self.fallback_at = self.tat + self.tolerance
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
