"""The retry policy (broker/queue/policy.py): schedule, limits, config errors; pure."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ConfigError
from broker.queue.policy import GiveUp, RetryAt, RetryPolicy

T0 = 1_800_000_000.0


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.initial_s, p.factor, p.max_interval_s, p.max_attempts, p.max_age_s, p.jitter) == (
        1.0,
        2.0,
        300.0,
        0,
        86400.0,
        0.2,
    )


def test_schedule_without_jitter_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(initial_s=1, factor=2, max_interval_s=300, jitter=0)
    assert [p.delay(n, 0.99) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300,
    ]  # fmt: skip
    assert p.delay(10_000, 0.5) == 300  # no overflow far out


def test_jitter_only_shortens() -> None:
    p = RetryPolicy(initial_s=10, factor=3, max_interval_s=100, jitter=0.2)
    assert p.delay(1, 0.0) == 10
    assert p.delay(1, 0.5) == pytest.approx(9)
    assert p.delay(5, 0.999999) == pytest.approx(80, rel=1e-5)


def test_max_attempts_gives_up() -> None:
    p = RetryPolicy(max_attempts=3, jitter=0)
    assert p.decide(1, T0, T0, 0) == RetryAt(T0 + 1)
    assert p.decide(2, T0, T0 + 1, 0) == RetryAt(T0 + 3)
    decision = p.decide(3, T0, T0 + 3, 0)
    assert isinstance(decision, GiveUp) and "3 attempts" in decision.reason


def test_max_age_moves_the_last_retry_to_the_deadline_then_gives_up() -> None:
    p = RetryPolicy(initial_s=60, factor=1, max_interval_s=60, max_age_s=100, jitter=0)
    assert p.decide(1, T0, T0 + 10, 0) == RetryAt(T0 + 70)
    assert p.decide(2, T0, T0 + 70, 0) == RetryAt(T0 + 100)  # not T0 + 130
    decision = p.decide(3, T0, T0 + 100, 0)
    assert isinstance(decision, GiveUp) and "max_age_s 100" in decision.reason


def test_zero_limits_mean_unlimited() -> None:
    p = RetryPolicy(max_attempts=0, max_age_s=0, jitter=0)
    assert p.decide(10_000, T0, T0 + 10**9, 0) == RetryAt(T0 + 10**9 + 300)


def test_from_mapping() -> None:
    p = RetryPolicy.from_mapping({"initial_s": 2, "max_attempts": 5, "jitter": 0})
    assert p == RetryPolicy(initial_s=2.0, max_attempts=5, jitter=0.0)
    assert RetryPolicy.from_mapping(None) == RetryPolicy()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"initial": 1}, "destinations.pacs.retry.initial: unknown key"),
        ({"factor": "2"}, "destinations.pacs.retry.factor: found '2'; expected a number"),
        ({"factor": 0.5}, "destinations.pacs.retry: factor: found 0.5; expected a number >= 1"),
        ({"max_attempts": 1.5}, "max_attempts: found 1.5; expected a whole number"),
        (
            {"max_interval_s": 1, "initial_s": 5},
            "max_interval_s: found 1.0; expected a number >= initial_s",
        ),
        ({"jitter": 2}, "jitter: found 2.0; expected a fraction from 0 to 1"),
        ({"max_age_s": -1}, "max_age_s: found -1.0"),
        ([1], "destinations.pacs.retry: found list; expected a mapping"),
    ],
)
def test_config_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy.from_mapping(data, "destinations.pacs.retry")  # type: ignore[arg-type]
    assert message in str(info.value)


policies = st.builds(
    RetryPolicy,
    initial_s=st.floats(0.001, 100),
    factor=st.floats(1, 10),
    max_interval_s=st.just(1000.0),
    max_attempts=st.integers(0, 50),
    max_age_s=st.sampled_from([0.0, 60.0, 3600.0, 86400.0]),
    jitter=st.floats(0, 1),
)


@given(policies, st.integers(1, 2000), st.floats(0, 1, exclude_max=True))
def test_delay_is_bounded_and_monotonic_before_jitter(p: RetryPolicy, n: int, rand: float) -> None:
    base = p.base_delay(n)
    assert p.initial_s <= base <= p.max_interval_s or math.isclose(base, p.max_interval_s)
    assert base >= p.base_delay(max(1, n - 1))
    delay = p.delay(n, rand)
    assert base * (1 - p.jitter) - 1e-9 <= delay <= base + 1e-9


@given(policies, st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=80))
def test_a_failing_entry_always_ends_dead_within_its_limits(
    p: RetryPolicy, rands: list[float]
) -> None:
    """Simulate an entry that fails every attempt: retries move forward in time, never past
    the deadline, and the policy gives up exactly at max_attempts or max_age_s."""
    now = T0
    for attempts, rand in enumerate(rands, start=1):
        decision = p.decide(attempts, T0, now, rand)
        if isinstance(decision, GiveUp):
            assert (p.max_attempts and attempts >= p.max_attempts) or (
                p.max_age_s and now >= T0 + p.max_age_s
            )
            return
        assert decision.at >= now
        if p.max_age_s:
            assert decision.at <= T0 + p.max_age_s
        assert not p.max_attempts or attempts < p.max_attempts
        now = decision.at
