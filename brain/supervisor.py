"""The daemon's task supervisor: restart with backoff, crash-loop limit, bounded shutdown.

Every long-lived part of the brain (sensor capture, control loop, recorder,
updater, services) runs as a named task under one :class:`Supervisor`.

Restart rule
    A task that raises is restarted after a delay: ``backoff_initial_s``, then
    multiplied by ``backoff_factor`` after every further consecutive crash, capped
    at ``backoff_max_s``.  A run that lasted at least ``backoff_reset_after_s``
    (default: ``backoff_max_s``) before crashing is considered to have been
    healthy: the delay starts again from ``backoff_initial_s``.

Crash-loop rule
    When a task has crashed ``crash_loop_limit`` times within the last
    ``crash_loop_window_s`` seconds it is not restarted any more: it is marked
    ``failed`` and ``on_crash_loop(name, exc)`` is called, where the daemon latches
    ESTOP so that the robot rests in a safe mode instead of restarting forever.
    The other tasks keep running.  A task added with ``restart=False`` is failed
    (and reported the same way) on its first crash.

A task that returns is ``finished`` and not restarted.  Cancellation from
outside is a stop, never a crash; a ``CancelledError`` that a task raises while
nobody cancelled it (an awaited future was cancelled elsewhere) is a crash.

Structure: like :class:`asyncio.TaskGroup`, every task belongs to :meth:`Supervisor.run`
and is cancelled and awaited before it returns -- but within ``shutdown_timeout_s``:
a task that ignores cancellation longer is abandoned with an ERROR log (and listed
in :attr:`Supervisor.abandoned`) so that the daemon still exits before systemd's
stop timeout.  TaskGroup itself waits without bound, hence the own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from brain.logs import log_fields
from common.backoff import BackoffPolicy

if TYPE_CHECKING:
    from brain.config import SupervisorConfig

log = logging.getLogger(__name__)

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "TaskState",
    "TaskStatus",
    "install_signal_handlers",
]

TaskState = Literal["running", "backoff", "finished", "failed", "stopped"]
_TERMINAL: frozenset[str] = frozenset({"finished", "failed", "stopped"})


@dataclass(frozen=True)
class RestartPolicy:
    """How crashed tasks are restarted; see the module docstring for the rules."""

    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    backoff_factor: float = 2.0
    crash_loop_limit: int = 5
    crash_loop_window_s: float = 60.0
    backoff_reset_after_s: float | None = None  # None: backoff_max_s

    def __post_init__(self) -> None:
        if not self.backoff_initial_s > 0:
            raise ValueError("backoff_initial_s must be > 0")
        if not self.backoff_max_s >= self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if not self.backoff_factor >= 1.0:
            raise ValueError("backoff_factor must be >= 1")
        if self.crash_loop_limit < 1:
            raise ValueError("crash_loop_limit must be >= 1")
        if not self.crash_loop_window_s > 0:
            raise ValueError("crash_loop_window_s must be > 0")
        if self.backoff_reset_after_s is not None and not self.backoff_reset_after_s > 0:
            raise ValueError("backoff_reset_after_s must be > 0")

    @classmethod
    def from_config(cls, cfg: SupervisorConfig) -> RestartPolicy:
        return cls(
            backoff_initial_s=cfg.backoff_initial_s,
            backoff_max_s=cfg.backoff_max_s,
            crash_loop_limit=cfg.crash_loop_limit,
            crash_loop_window_s=cfg.crash_loop_window_s,
        )

    @property
    def reset_after_s(self) -> float:
        """A run at least this long before its crash resets the backoff."""
        return (
            self.backoff_max_s if self.backoff_reset_after_s is None else self.backoff_reset_after_s
        )

    def delay(self, consecutive_crashes: int) -> float:
        """Delay before the restart that follows the ``consecutive_crashes``-th crash (1-based)."""
        rule = BackoffPolicy(self.backoff_initial_s, self.backoff_max_s, self.backoff_factor)
        return rule.delay(consecutive_crashes)


@dataclass(frozen=True)
class TaskStatus:
    """A snapshot of one task.

    ``state``: ``running``; ``backoff`` (crashed, waiting to restart); ``finished``
    (returned); ``failed`` (crash loop, or a crash with ``restart=False``);
    ``stopped`` (not running because of a stop, or not started yet).
    ``started_at`` is the supervisor's clock (monotonic) at the latest start.
    """

    state: TaskState
    restarts: int
    crashes_in_window: int
    last_error: str | None
    started_at: float | None


@dataclass(eq=False)
class _Entry:
    name: str
    factory: Callable[[], Awaitable[None]]
    restart: bool
    state: TaskState = "stopped"
    restarts: int = 0
    consecutive: int = 0
    crash_times: deque[float] = field(default_factory=deque)
    last_error: str | None = None
    started_at: float | None = None
    runner: asyncio.Task[None] | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs named asyncio tasks with restart policy; see the module docstring.

    ``on_crash_loop(name, exc)`` is called (on the event loop) when a task is
    given up.  ``on_started()`` is called once the initial tasks have been
    started (send READY=1 there), ``on_stopping()`` once when shutdown begins
    (send STOPPING=1 there).  Exceptions from these callbacks are logged, never
    propagated.  ``clock`` (monotonic seconds) is used for ``started_at``, run
    durations and the crash window; restart delays are slept on the event loop.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        on_crash_loop: Callable[[str, BaseException], None] | None = None,
        on_started: Callable[[], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._on_crash_loop = on_crash_loop
        self._on_started = on_started
        self._on_stopping = on_stopping
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event = asyncio.Event()
        self._stop_requested = False
        self._run_called = False
        self._running = False
        self._stopping = False
        self._abandoned: list[str] = []

    # ------------------------------------------------------------------ public

    def add(
        self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = True
    ) -> None:
        """Register a task: ``factory()`` is called for every (re)start.

        Before :meth:`run` the task starts with it; during run() it starts at once
        (call from the event loop's thread).  A name may be reused only once its
        previous task is finished, failed or stopped.
        """
        if self._stopping or self._stop_requested:
            raise RuntimeError(f"cannot add task {name!r}: the supervisor is stopping")
        if self._run_called and not self._running:
            raise RuntimeError(f"cannot add task {name!r}: the supervisor has already run")
        old = self._entries.get(name)
        if old is not None and (
            old.runner is None or old.state not in _TERMINAL or self._is_alive(old)
        ):
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = _Entry(name=name, factory=factory, restart=restart)
        self._entries[name] = entry
        if self._running:
            self._spawn(entry)

    def stop(self) -> None:
        """Ask run() to stop every task and return.

        Idempotent; safe from ``loop.add_signal_handler`` callbacks, from the loop's
        own thread and from other threads.
        """
        self._stop_requested = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._stop_event.set()
        else:
            # RuntimeError: the loop closed between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop_event.set)

    async def run(self, *, shutdown_timeout_s: float = 2.0) -> None:
        """Run all tasks until :meth:`stop` (returns normally) or cancellation (re-raised).

        On the way out every task is cancelled and awaited for at most
        ``shutdown_timeout_s``; tasks still running then are abandoned (ERROR log).
        A supervisor runs once.
        """
        if self._run_called:
            raise RuntimeError("Supervisor.run() can be called only once")
        self._run_called = True
        self._loop = asyncio.get_running_loop()
        try:
            if self._stop_requested:
                log.info("supervisor stopped before it started")
                return
            self._running = True
            for entry in list(self._entries.values()):
                self._spawn(entry)
            log.info(
                "supervisor running %d task(s)",
                len(self._entries),
                extra=log_fields(tasks=list(self._entries)),
            )
            self._call_hook("on_started", self._on_started)
            await self._stop_event.wait()
            log.info("supervisor stopping")
        finally:
            await self._shutdown(shutdown_timeout_s)

    def status(self) -> dict[str, TaskStatus]:
        """A snapshot of every task, by name, in the order they were added.

        Meant for the event loop's thread (the API handlers run there).
        """
        now = self._clock()
        window = self.policy.crash_loop_window_s
        return {
            e.name: TaskStatus(
                state=e.state,
                restarts=e.restarts,
                crashes_in_window=sum(1 for t in tuple(e.crash_times) if now - t < window),
                last_error=e.last_error,
                started_at=e.started_at,
            )
            for e in self._entries.values()
        }

    @property
    def running(self) -> bool:
        """True between the start of run() and the beginning of its shutdown."""
        return self._running and not self._stopping

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def abandoned(self) -> tuple[str, ...]:
        """Tasks that ignored cancellation past the shutdown timeout."""
        return tuple(self._abandoned)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _is_alive(entry: _Entry) -> bool:
        return entry.runner is not None and not entry.runner.done()

    def _spawn(self, entry: _Entry) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._supervise(entry), name=entry.name)
        entry.runner = task
        self._runners.add(task)
        task.add_done_callback(self._runner_done)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        self._runners.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in the supervisor itself, not in the task
            log.error("supervisor runner for %r failed", task.get_name(), exc_info=exc)

    def _call_hook(self, what: str, hook: Callable[[], None] | None) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:
            log.exception("supervisor %s callback failed", what)

    async def _supervise(self, entry: _Entry) -> None:
        """One task's life: start, watch, back off, restart -- until done or cancelled."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            entry.state = "running"
            entry.started_at = self._clock()
            if entry.restarts:
                log.info(
                    "task %r restarted (restart %d)",
                    entry.name,
                    entry.restarts,
                    extra=log_fields(task=entry.name, restarts=entry.restarts),
                )
            else:
                log.debug("task %r started", entry.name, extra=log_fields(task=entry.name))
            try:
                await entry.factory()
            except asyncio.CancelledError as cancelled:
                if me.cancelling() or self._stopping or self._stop_requested:
                    entry.state = "stopped"
                    raise
                exc: BaseException = cancelled  # raised by the task itself: a crash
            except Exception as error:
                exc = error
            else:
                if self._stopping or me.cancelling():
                    entry.state = "stopped"
                else:
                    entry.state = "finished"
                    log.info("task %r finished", entry.name, extra=log_fields(task=entry.name))
                return

            if self._stopping or me.cancelling():
                # Crashed while being cancelled (e.g. in its clean-up): report, never restart.
                entry.state = "stopped"
                entry.last_error = _describe(exc)
                log.error(
                    "task %r failed while stopping",
                    entry.name,
                    exc_info=exc,
                    extra=log_fields(task=entry.name),
                )
                return

            delay = self._record_crash(entry, exc)
            if delay is None:
                return
            entry.state = "backoff"
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                entry.state = "stopped"
                raise
            entry.restarts += 1

    def _record_crash(self, entry: _Entry, exc: BaseException) -> float | None:
        """Book one crash; the restart delay, or None when the task is given up."""
        policy = self.policy
        now = self._clock()
        ran_for = now - entry.started_at if entry.started_at is not None else 0.0
        if ran_for >= policy.reset_after_s:
            entry.consecutive = 0
        entry.consecutive += 1
        entry.crash_times.append(now)
        while entry.crash_times and now - entry.crash_times[0] >= policy.crash_loop_window_s:
            entry.crash_times.popleft()
        in_window = len(entry.crash_times)
        entry.last_error = _describe(exc)

        if not entry.restart or in_window >= policy.crash_loop_limit:
            entry.state = "failed"
            reason = (
                "restart disabled"
                if not entry.restart
                else f"{in_window} crashes within {policy.crash_loop_window_s:g} s"
            )
            log.critical(
                "task %r crashed and is given up (%s)",
                entry.name,
                reason,
                exc_info=exc,
                extra=log_fields(
                    task=entry.name,
                    crashes_in_window=in_window,
                    ran_for_s=round(ran_for, 3),
                    error=entry.last_error,
                ),
            )
            if self._on_crash_loop is not None:
                try:
                    self._on_crash_loop(entry.name, exc)
                except Exception:
                    log.exception("on_crash_loop callback failed for task %r", entry.name)
            return None

        delay = policy.delay(entry.consecutive)
        log.error(
            "task %r crashed; restarting in %.3f s",
            entry.name,
            delay,
            exc_info=exc,
            extra=log_fields(
                task=entry.name,
                restart_in_s=delay,
                crashes_in_window=in_window,
                ran_for_s=round(ran_for, 3),
                error=entry.last_error,
            ),
        )
        return delay

    async def _shutdown(self, timeout_s: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._running:
            self._call_hook("on_stopping", self._on_stopping)
        pending = [t for t in self._runners if not t.done()]
        for task in pending:
            task.cancel()
        still: set[asyncio.Task[None]] = set()
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            name = task.get_name()
            self._abandoned.append(name)
            entry = self._entries.get(name)
            if entry is not None and entry.runner is task:
                entry.state = "stopped"
            log.error(
                "task %r ignored cancellation for %.1f s; abandoned so that the daemon can exit",
                name,
                timeout_s,
                extra=log_fields(task=name, shutdown_timeout_s=timeout_s),
            )
        for entry in self._entries.values():
            if entry.state in ("running", "backoff"):
                entry.state = "stopped"
        self._running = False
        log.info("supervisor stopped", extra=log_fields(abandoned=list(self._abandoned)))


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    supervisor: Supervisor,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Callable[[], None]:
    """SIGTERM and SIGINT call ``supervisor.stop()`` (the signal is logged).

    Must be called from the main thread (a rule of ``loop.add_signal_handler``).
    Returns a function that removes the handlers again.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_signal_handlers() must be called from the main thread")

    def handle(sig: signal.Signals) -> None:
        if supervisor.stop_requested:
            log.warning("received %s again; already stopping", sig.name)
        else:
            log.info("received %s; stopping", sig.name, extra=log_fields(signal=sig.name))
        supervisor.stop()

    for sig in signals:
        loop.add_signal_handler(sig, handle, sig)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return remove
