"""The RateLimits port's contract, against every adapter in RATE_LIMIT_ADAPTERS: burst, refill,
Retry-After, keys independent, time passed in. The token bucket's own arithmetic at the end."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.domain.ratelimit import RateLimiter, TokenBucket
from tests.contract.conftest import MakeLimits


def test_a_full_bucket_allows_the_burst_then_refuses(make_limits: MakeLimits) -> None:
    limiter = make_limits(2.0, 3)
    assert [limiter.take("k", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k", 100.0)
    assert wait == pytest.approx(0.5)  # one token at 2/s
    assert limiter.take("k", 100.5) == 0.0
    assert limiter.take("k", 100.5) > 0


def test_refill_is_capped_at_the_burst(make_limits: MakeLimits) -> None:
    limiter = make_limits(10.0, 2)
    limiter.take("k", 0.0)
    # an hour idle buys two tokens, not 36000
    assert [limiter.take("k", 3600.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("k", 3600.0) > 0


def test_keys_have_their_own_buckets(make_limits: MakeLimits) -> None:
    limiter = make_limits(1.0, 1)
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0
    assert limiter.take("b", 0.0) > 0
    assert limiter.take("a", 1.0) == 0.0


def test_a_cost_takes_that_many_tokens(make_limits: MakeLimits) -> None:
    limiter = make_limits(1.0, 5)
    assert limiter.take("k", 0.0, cost=4) == 0.0
    assert limiter.take("k", 0.0, cost=2) == pytest.approx(1.0)
    assert limiter.take("k", 0.0, cost=1) == 0.0


def test_a_clock_going_back_mints_nothing_for_a_key(make_limits: MakeLimits) -> None:
    limiter = make_limits(1.0, 1)
    assert limiter.take("k", 100.0) == 0.0
    assert limiter.take("k", 50.0) > 0
    assert limiter.take("k", 100.0) > 0
    assert limiter.take("k", 101.0) == 0.0


def test_a_refused_request_takes_no_token() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, tokens=0.0, updated=0.0)
    for _ in range(10):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_a_clock_going_back_mints_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, tokens=0.0, updated=100.0)
    assert bucket.take(50.0) > 0
    assert bucket.take(100.0) > 0  # no credit for the 50 s "gap" it went back over
    assert bucket.take(101.0) == 0.0


def test_bad_parameters_are_refused(make_limits: MakeLimits) -> None:
    with pytest.raises(ValueError):
        make_limits(0, 1)
    with pytest.raises(ValueError):
        make_limits(1, 0)


def test_the_memory_limiter_counts_its_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    limiter.take("a", 0.0)
    limiter.take("b", 0.0)
    assert len(limiter) == 2


# The factory makes a fresh limiter per example; the fixture only names where.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    make_limits: MakeLimits, rate: float, burst: int, steps: list[float]
) -> None:
    limiter = make_limits(rate, burst)
    now, allowed = 0.0, 0
    for dt in steps:
        now += dt
        wait = limiter.take("k", now)
        if wait == 0.0:
            allowed += 1
        else:
            # the promised wait is honest: after it, one request goes through
            assert wait <= 1 / rate + 1e-9
    assert allowed <= burst + rate * now + 1e-6
