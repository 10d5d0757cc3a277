"""common.backoff: the one back-off rule, and the numbers each retry loop keeps with it."""

from __future__ import annotations

import pytest

from brain.config import ApiConfig, SupervisorConfig
from brain.supervisor import RestartPolicy
from common.backoff import Backoff, BackoffPolicy
from edge_agent.api.auth import BACKOFF_INITIAL_S
from edge_agent.api.limits import ACCEPT_BACKOFF
from edge_agent.uploader import RETRY_BACKOFF


def test_doubles_from_initial_and_stops_at_the_cap() -> None:
    p = BackoffPolicy(initial_s=0.2, max_s=30.0)
    assert [p.delay(n) for n in range(1, 10)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0]
    )
    assert p.delay(0) == p.delay(1) == 0.2  # "no failure yet" waits like the first
    assert p.delay(10**6) == 30.0  # no overflow after a million failures


def test_other_factors() -> None:
    assert [BackoffPolicy(1.0, 10.0, factor=3.0).delay(n) for n in (1, 2, 3)] == [1, 3, 9]
    assert [BackoffPolicy(1.0, 10.0, factor=1.0).delay(n) for n in (1, 50)] == [1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0, "max_s": 1.0},
        {"initial_s": 2.0, "max_s": 1.0},
        {"initial_s": 1.0, "max_s": 2.0, "factor": 0.5},
        {"initial_s": 1.0, "max_s": 2.0, "jitter": 1.5},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="back-off"):
        BackoffPolicy(**kwargs)


def test_jitter_draws_within_the_upper_share_of_the_delay() -> None:
    draws = iter([0.0, 0.999999, 0.5])
    b = Backoff(BackoffPolicy(1.0, 60.0, jitter=0.5), rng=lambda: next(draws))
    assert b.next_delay() == pytest.approx(0.5)  # 1 s, lowest draw: half of it
    assert b.next_delay() == pytest.approx(2.0, abs=1e-5)  # 2 s, highest draw: all of it
    assert b.next_delay() == pytest.approx(3.0)  # 4 s, middle draw: three quarters


def test_counts_failures_and_resets_on_success() -> None:
    b = Backoff(BackoffPolicy(0.05, 2.0))
    assert [b.next_delay() for _ in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert b.failures == 7
    b.reset()
    assert b.failures == 0 and b.next_delay() == 0.05


def test_a_healthy_run_resets_and_a_short_one_does_not() -> None:
    now = [100.0]
    b = Backoff(BackoffPolicy(1.0, 60.0), reset_after_s=30.0, clock=lambda: now[0])
    for expected in (1.0, 2.0, 4.0):
        b.started()
        now[0] += 29.9  # crashed just before it counted as healthy
        assert b.next_delay() == expected
    b.started()
    now[0] += 30.0
    assert b.next_delay() == 1.0  # up 30 s: healthy, back to the first delay
    assert b.next_delay() == 2.0  # failed again without starting: not a healthy run
    with pytest.raises(ValueError, match="reset_after_s"):
        Backoff(BackoffPolicy(1.0, 2.0), reset_after_s=0)


def test_each_user_keeps_its_numbers() -> None:
    # The supervisor's restart policy, from its config keys (0.2 s doubling to 5 s).
    sup = RestartPolicy.from_config(SupervisorConfig())
    assert [sup.delay(n) for n in (1, 2, 3, 4, 5, 6, 100)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )
    # The API's accept() pause after EMFILE (50 ms doubling to 2 s).
    assert (ACCEPT_BACKOFF.initial_s, ACCEPT_BACKOFF.max_s) == (0.05, 2.0)
    # The uploader's retries (0.5 s doubling to 30 s, for the file and the finish request).
    assert [RETRY_BACKOFF.delay(n) for n in (1, 2, 7, 100)] == [0.5, 1.0, 30.0, 30.0]
    # Pairing: 2 s doubling up to api.pairing_lockout_s (300 s by default).
    assert BACKOFF_INITIAL_S == 2.0 and ApiConfig().pairing_lockout_s == 300.0
