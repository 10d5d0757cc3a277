"""Running a long-lived blocking loop on its own thread as one asyncio task.

The supervisor restarts tasks, not threads; this bridges the two: the task
lives exactly as long as the thread, a crash in the thread surfaces as the
task's exception, and cancelling the task asks the thread to stop and waits
for it (bounded), so a shutdown never leaves a driver half-closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


async def run_thread(
    name: str, body: Callable[[], None], stop: Callable[[], None], join_timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def target() -> None:
        try:
            body()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    try:
        await asyncio.shield(done)
    finally:
        stop()
        if t.is_alive():
            await asyncio.to_thread(t.join, join_timeout_s)


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
