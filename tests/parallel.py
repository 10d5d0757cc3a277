"""The fast lane runs on pytest-xdist workers: each gets its share of the cores, and a test that
asserts a wall-clock bound runs alone.

torch (OpenMP) and OpenBLAS start a thread per core in every process and spin while they wait
for work: two workers on two cores each running two spinning threads made the model tests ~25x
slower. The controller caps those pools at cores / workers before it starts the workers, which
inherit the cap (and pass it on to the subprocesses their tests start); a cap already set in the
environment is kept.

A ``timing`` test measures the machine as much as the code: with another worker's test beside it,
its bound would be checked on half the CPU it was written for. Workers therefore share one
reader-writer lock for the session (two ``flock`` files under the session's temporary root, which
every worker's own ``basetemp`` sits in): every test holds it shared, a ``timing`` test holds it
exclusively, so it starts once the other workers' current tests have finished and they wait for
it. The gate file gives a waiting ``timing`` test precedence over tests that have not started.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import pytest


class TimingAlone:
    """pytest plugin for an xdist worker: the lock around each test's setup, call and teardown."""

    def __init__(self, session_root: Path) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._gate = os.open(session_root / "timing-alone.gate", flags, 0o600)
        self._lock = os.open(session_root / "timing-alone.lock", flags, 0o600)

    @contextmanager
    def _held(self, alone: bool) -> Generator[None, None, None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(self._gate, fcntl.LOCK_UN)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        with self._held(alone=item.get_closest_marker("timing") is not None):
            return (yield)

    def pytest_unconfigure(self) -> None:
        os.close(self._gate)
        os.close(self._lock)


THREAD_POOLS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def register(config: pytest.Config) -> None:
    """Share the cores among xdist workers, and on a worker make ``timing`` tests run alone."""
    if not hasattr(config, "workerinput"):
        workers = len(getattr(config.option, "tx", None) or ())  # xdist's -n, resolved
        if workers > 1:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            share = str(max(1, (cores or os.cpu_count() or 1) // workers))
            for var in THREAD_POOLS:
                os.environ.setdefault(var, share)
        return
    if config.option.basetemp is None:
        return
    # xdist gives worker gwN the basetemp <session root>/popen-gwN: the root is shared.
    root = Path(config.option.basetemp).parent
    config.pluginmanager.register(TimingAlone(root), "continuon-timing-alone")
