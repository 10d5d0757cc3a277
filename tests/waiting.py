"""Polling until a condition holds, for tests that watch a real daemon, process or broker.

One copy, so that every timeout fails the same way: an ``AssertionError`` naming what was awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    pred: Callable[[], T], what: str = "condition", timeout: float = 5.0, every: float = 0.05
) -> T:
    """Poll ``pred`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


async def wait_until_async(
    pred: Callable[[], T], what: str = "condition", timeout: float = 5.0, every: float = 0.02
) -> T:
    """``wait_until`` for code on an event loop: sleeps with ``asyncio.sleep`` so the loop runs."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
