"""Continuon Brain: the robot-side runtime (supervisor, hardware, control, policy)."""

__version__ = "0.1.0"
