"""Supervisor: restart backoff, crash-loop limit, finishing, stopping, real SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from brain.config import SupervisorConfig
from brain.supervisor import RestartPolicy, Supervisor
from tests.waiting import wait_until_async

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(20)


def policy(**kw: float) -> RestartPolicy:
    base = dict(
        backoff_initial_s=0.01,
        backoff_max_s=0.04,
        backoff_factor=2.0,
        crash_loop_limit=100,
        crash_loop_window_s=60.0,
    )
    base.update(kw)
    return RestartPolicy(**base)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def restart_delays(caplog: pytest.LogCaptureFixture, name: str) -> list[float]:
    return [
        r.fields["restart_in_s"]
        for r in caplog.records
        if r.name == "brain.supervisor"
        and getattr(r, "fields", {}).get("task") == name
        and "restart_in_s" in r.fields
    ]


# ----------------------------------------------------------------------------- policy


def test_policy_delays_grow_and_cap() -> None:
    p = RestartPolicy(backoff_initial_s=0.2, backoff_max_s=5.0, crash_loop_limit=5)
    assert [p.delay(n) for n in range(1, 8)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert p.delay(10_000) == 5.0  # no overflow after a very long crash history
    assert p.reset_after_s == 5.0


def test_policy_from_config_and_validation() -> None:
    cfg = SupervisorConfig(
        backoff_initial_s=0.5, backoff_max_s=8.0, crash_loop_limit=3, crash_loop_window_s=30.0
    )
    p = RestartPolicy.from_config(cfg)
    assert (p.backoff_initial_s, p.backoff_max_s, p.crash_loop_limit, p.crash_loop_window_s) == (
        0.5,
        8.0,
        3,
        30.0,
    )
    assert p.backoff_factor == 2.0
    with pytest.raises(ValueError):
        RestartPolicy(backoff_initial_s=1.0, backoff_max_s=0.5)
    with pytest.raises(ValueError):
        RestartPolicy(crash_loop_limit=0)


# ----------------------------------------------------------------------------- restarts


def test_crashing_task_restarts_with_growing_capped_delays(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="brain.supervisor")
    starts: list[float] = []

    async def main() -> Supervisor:
        sup = Supervisor(policy(backoff_initial_s=0.02, backoff_max_s=0.08))

        async def flaky() -> None:
            starts.append(time.monotonic())
            raise RuntimeError(f"crash {len(starts)}")

        sup.add("flaky", flaky)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: len(starts) >= 6, every=0.002)
        sup.stop()
        async with asyncio.timeout(2):
            await run
        return sup

    sup = asyncio.run(main())
    expected = [0.02, 0.04, 0.08, 0.08, 0.08]
    assert restart_delays(caplog, "flaky")[:5] == pytest.approx(expected)
    gaps = [b - a for a, b in itertools.pairwise(starts)][:5]
    for gap, want in zip(gaps, expected, strict=True):
        assert gap >= want - 0.003, (gaps, expected)
    # Capped: had the delay kept doubling, the 5th gap would be 0.32 s.
    assert gaps[4] < 0.25, gaps
    st = sup.status()["flaky"]
    assert st.state == "stopped"
    assert st.restarts >= 5
    assert st.last_error is not None and st.last_error.startswith("RuntimeError: crash")
    # Every crash is logged with its traceback.
    crash_logs = [r for r in caplog.records if "crashed; restarting" in r.getMessage()]
    assert len(crash_logs) >= 5
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in crash_logs)


def test_backoff_resets_after_a_long_healthy_run(caplog) -> None:
    caplog.set_level(logging.INFO, logger="brain.supervisor")
    clock = FakeClock()
    runs = 0

    async def main() -> None:
        sup = Supervisor(policy(), clock=clock)

        async def task() -> None:
            nonlocal runs
            runs += 1
            if runs == 4:
                clock.now += 0.05  # ran longer than backoff_max_s (0.04) before crashing
            raise ValueError("x")

        sup.add("t", task)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: runs >= 6, every=0.002)
        sup.stop()
        await run

    asyncio.run(main())
    assert restart_delays(caplog, "t")[:5] == pytest.approx([0.01, 0.02, 0.04, 0.01, 0.02])


# ----------------------------------------------------------------------------- crash loop


def test_crash_loop_gives_up_and_keeps_other_tasks_running() -> None:
    calls: list[tuple[str, BaseException]] = []
    raised: list[BaseException] = []
    good_ticks = 0

    async def main() -> Supervisor:
        given_up = asyncio.Event()

        def on_crash_loop(name: str, exc: BaseException) -> None:
            calls.append((name, exc))
            given_up.set()

        sup = Supervisor(
            policy(crash_loop_limit=3, crash_loop_window_s=10.0), on_crash_loop=on_crash_loop
        )

        async def bad() -> None:
            exc = OSError(f"sensor gone {len(raised)}")
            raised.append(exc)
            raise exc

        async def good() -> None:
            nonlocal good_ticks
            while True:
                good_ticks += 1
                await asyncio.sleep(0.005)

        sup.add("bad", bad)
        sup.add("good", good)
        run = asyncio.create_task(sup.run())
        async with asyncio.timeout(5):
            await given_up.wait()
        ticks_at_failure = good_ticks
        await asyncio.sleep(0.2)  # several backoff periods: no further restart may happen
        assert good_ticks > ticks_at_failure + 5
        status = sup.status()
        assert status["good"].state == "running"
        assert status["bad"].state == "failed"
        assert status["bad"].crashes_in_window == 3
        assert status["bad"].restarts == 2
        assert status["bad"].last_error == "OSError: sensor gone 2"
        sup.stop()
        await run
        return sup

    sup = asyncio.run(main())
    assert len(raised) == 3
    assert len(calls) == 1
    assert calls[0][0] == "bad"
    assert calls[0][1] is raised[-1]
    assert sup.status()["bad"].state == "failed"  # a stop does not hide the failure
    assert sup.status()["good"].state == "stopped"


def test_crashes_older_than_the_window_do_not_count() -> None:
    clock = FakeClock()
    runs = 0
    calls: list[str] = []

    async def main() -> None:
        sup = Supervisor(
            policy(crash_loop_limit=3, crash_loop_window_s=10.0),
            on_crash_loop=lambda name, exc: calls.append(name),
            clock=clock,
        )

        async def task() -> None:
            nonlocal runs
            runs += 1
            if runs == 2:
                clock.now += 11.0  # crash 1 falls out of the window
            raise ValueError("x")

        sup.add("t", task)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: bool(calls), every=0.002)
        await asyncio.sleep(0.1)
        sup.stop()
        await run

    asyncio.run(main())
    assert runs == 4  # crashes 2, 3, 4 are the three inside the window
    assert calls == ["t"]


def test_on_crash_loop_error_does_not_break_the_supervisor() -> None:
    async def main() -> Supervisor:
        def boom(name: str, exc: BaseException) -> None:
            raise RuntimeError("callback bug")

        sup = Supervisor(policy(crash_loop_limit=1), on_crash_loop=boom)

        async def bad() -> None:
            raise ValueError("x")

        sup.add("bad", bad)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: sup.status()["bad"].state == "failed", every=0.002)
        sup.stop()
        await run
        return sup

    assert asyncio.run(main()).status()["bad"].state == "failed"


# ----------------------------------------------------------------------------- finishing


def test_returning_task_is_finished_not_restarted() -> None:
    starts = 0
    calls: list[str] = []

    async def main() -> Supervisor:
        sup = Supervisor(policy(), on_crash_loop=lambda n, e: calls.append(n))

        async def once() -> None:
            nonlocal starts
            starts += 1

        sup.add("once", once)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: sup.status()["once"].state == "finished", every=0.002)
        await asyncio.sleep(0.1)
        sup.stop()
        await run
        return sup

    sup = asyncio.run(main())
    assert starts == 1
    assert sup.status()["once"].state == "finished"
    assert sup.status()["once"].restarts == 0
    assert calls == []


def test_restart_false_fails_on_first_crash() -> None:
    starts = 0
    calls: list[tuple[str, BaseException]] = []

    async def main() -> Supervisor:
        sup = Supervisor(policy(), on_crash_loop=lambda n, e: calls.append((n, e)))

        async def fragile() -> None:
            nonlocal starts
            starts += 1
            raise KeyError("calibration")

        sup.add("fragile", fragile, restart=False)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: bool(calls), every=0.002)
        await asyncio.sleep(0.1)
        sup.stop()
        await run
        return sup

    sup = asyncio.run(main())
    assert starts == 1
    assert len(calls) == 1
    assert calls[0][0] == "fragile" and isinstance(calls[0][1], KeyError)
    st = sup.status()["fragile"]
    assert (st.state, st.restarts, st.crashes_in_window) == ("failed", 0, 1)


def test_cancelled_error_raised_by_the_task_itself_is_a_crash() -> None:
    starts = 0

    async def main() -> Supervisor:
        sup = Supervisor(policy())

        async def confused() -> None:
            nonlocal starts
            starts += 1
            fut = asyncio.get_running_loop().create_future()
            fut.cancel()
            await fut  # CancelledError although nobody cancelled this task

        sup.add("confused", confused)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: starts >= 2, every=0.002)
        sup.stop()
        await run
        return sup

    sup = asyncio.run(main())
    assert sup.status()["confused"].last_error == "CancelledError"


def test_add_during_run_and_duplicate_names() -> None:
    async def main() -> None:
        sup = Supervisor(policy())
        flag = asyncio.Event()

        async def forever() -> None:
            await asyncio.sleep(3600)

        async def late() -> None:
            flag.set()
            await asyncio.sleep(3600)

        sup.add("a", forever)
        with pytest.raises(ValueError):
            sup.add("a", forever)
        run = asyncio.create_task(sup.run())
        await asyncio.sleep(0.01)
        sup.add("late", late)
        async with asyncio.timeout(2):
            await flag.wait()
        assert sup.status()["late"].state == "running"
        assert sup.status()["late"].started_at is not None
        sup.stop()
        await run
        with pytest.raises(RuntimeError):
            sup.add("after", forever)

    asyncio.run(main())


# ----------------------------------------------------------------------------- stopping


def test_stop_cancels_everything_and_run_returns() -> None:
    cancelled: list[str] = []
    hooks: list[str] = []

    async def main() -> Supervisor:
        sup = Supervisor(
            policy(backoff_initial_s=5.0, backoff_max_s=5.0),
            on_started=lambda: hooks.append("started"),
            on_stopping=lambda: hooks.append("stopping"),
        )

        async def worker(name: str) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        async def crasher() -> None:
            raise RuntimeError("x")  # then sits in a 5 s backoff

        sup.add("w1", lambda: worker("w1"))
        sup.add("w2", lambda: worker("w2"))
        sup.add("crasher", crasher)
        run = asyncio.create_task(sup.run())
        await wait_until_async(lambda: sup.status()["crasher"].state == "backoff", every=0.002)
        assert hooks == ["started"]
        t0 = time.monotonic()
        sup.stop()
        async with asyncio.timeout(1):
            await run
        assert time.monotonic() - t0 < 0.5
        return sup

    sup = asyncio.run(main())
    assert sorted(cancelled) == ["w1", "w2"]
    assert hooks == ["started", "stopping"]
    assert {n: s.state for n, s in sup.status().items()} == {
        "w1": "stopped",
        "w2": "stopped",
        "crasher": "stopped",
    }
    assert sup.abandoned == ()


def test_task_cleanup_within_timeout_is_awaited() -> None:
    cleaned = False

    async def main() -> None:
        sup = Supervisor(policy())

        async def actuator() -> None:
            nonlocal cleaned
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.1)  # e.g. drive outputs to neutral
                cleaned = True
                raise

        sup.add("actuator", actuator)
        run = asyncio.create_task(sup.run())
        await asyncio.sleep(0.02)
        sup.stop()
        await run
        assert sup.abandoned == ()

    asyncio.run(main())
    assert cleaned


def test_stubborn_task_is_abandoned_within_shutdown_timeout(caplog) -> None:
    caplog.set_level(logging.INFO, logger="brain.supervisor")

    async def main() -> tuple[float, Supervisor]:
        sup = Supervisor(policy())

        async def stubborn() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(3)  # swallows the cancel, bounded so that the test ends
            return

        async def polite() -> None:
            await asyncio.sleep(3600)

        sup.add("stubborn", stubborn)
        sup.add("polite", polite)
        run = asyncio.create_task(sup.run(shutdown_timeout_s=0.3))
        await asyncio.sleep(0.02)
        t0 = time.monotonic()
        sup.stop()
        await run
        return time.monotonic() - t0, sup

    elapsed, sup = asyncio.run(main())  # asyncio.run cancels the abandoned task again
    assert 0.29 <= elapsed < 0.8
    assert sup.abandoned == ("stubborn",)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "abandoned" in r.message]
    assert len(errors) == 1 and "stubborn" in errors[0].message


def test_cancelling_run_stops_tasks_and_propagates() -> None:
    cancelled = False

    async def main() -> Supervisor:
        nonlocal cancelled
        sup = Supervisor(policy())

        async def worker() -> None:
            nonlocal cancelled
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled = True
                raise

        sup.add("w", worker)
        run = asyncio.create_task(sup.run())
        await asyncio.sleep(0.02)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return sup

    sup = asyncio.run(main())
    assert cancelled
    assert sup.status()["w"].state == "stopped"


def test_stop_before_run_and_from_another_thread() -> None:
    async def early() -> None:
        sup = Supervisor(policy())
        sup.add("w", lambda: asyncio.sleep(3600))
        sup.stop()
        async with asyncio.timeout(1):
            await sup.run()
        assert sup.status()["w"].started_at is None

    async def threaded() -> None:
        sup = Supervisor(policy())
        sup.add("w", lambda: asyncio.sleep(3600))
        timer = threading.Timer(0.05, sup.stop)
        timer.start()
        try:
            async with asyncio.timeout(2):
                await sup.run()
        finally:
            timer.cancel()
        assert sup.status()["w"].state == "stopped"

    asyncio.run(early())
    asyncio.run(threaded())


# ----------------------------------------------------------------------------- real SIGTERM

CHILD = textwrap.dedent(
    """
    import asyncio

    from brain.logs import setup_logging
    from brain.sdnotify import SdNotifier
    from brain.supervisor import RestartPolicy, Supervisor, install_signal_handlers


    async def worker() -> None:
        while True:
            await asyncio.sleep(0.01)


    async def main() -> None:
        notifier = SdNotifier()
        assert notifier.enabled
        sup = Supervisor(
            RestartPolicy(backoff_initial_s=0.05, backoff_max_s=1.0),
            on_started=notifier.ready,
            on_stopping=notifier.stopping,
        )
        sup.add("worker", worker)
        install_signal_handlers(asyncio.get_running_loop(), sup)
        await sup.run(shutdown_timeout_s=1.0)


    setup_logging("INFO", "text")
    asyncio.run(main())
    """
)


def test_real_sigterm_sends_ready_then_stopping_and_exits_zero(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # AF_UNIX paths are limited to ~108 bytes: keep the socket in a short directory.
    with tempfile.TemporaryDirectory(prefix="cb-", dir="/tmp") as short:
        sock_path = os.path.join(short, "notify.sock")
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(sock_path)
        rx.settimeout(10)
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = sock_path
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(key, None)
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            first = rx.recv(4096)
            assert first.split(b"\n")[0] == b"READY=1", first
            assert proc.poll() is None
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            second = rx.recv(4096)
            assert second.split(b"\n")[0] == b"STOPPING=1", second
            rc = proc.wait(timeout=2)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            rx.close()
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert rc == 0, out
        assert elapsed < 2.0
        assert "received SIGTERM; stopping" in out
