"""Rate limits: at most ``limit`` allowed hits per key in any window, in memory and on Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.rate_limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from tests import billing_seed


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    prefix = request.getfixturevalue("redis_prefix")
    with billing_seed.redis_client(request.getfixturevalue("redis_server_url"), prefix) as client:
        yield RedisRateLimiter(client, prefix)


def test_the_first_limit_hits_are_allowed_and_the_next_refused(limiter: RateLimiter) -> None:
    decisions = [limiter.hit("ip:127.0.0.1", 3, 60.0) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert all(d.retry_after_s == 0 for d in decisions[:3])


def test_a_refusal_says_how_long_until_a_hit_fits(limiter: RateLimiter) -> None:
    limiter.hit("key:abc", 1, 10.0)

    refused = limiter.hit("key:abc", 1, 10.0)

    assert not refused.allowed
    assert 9.0 < refused.retry_after_s <= 10.0


def test_exactly_limit_hits_are_allowed_under_concurrency(limiter: RateLimiter) -> None:
    with ThreadPoolExecutor(32) as pool:
        decisions = list(pool.map(lambda _: limiter.hit("ip:10.0.0.1", 20, 60.0), range(300)))

    assert sum(d.allowed for d in decisions) == 20


def test_keys_are_limited_independently(limiter: RateLimiter) -> None:
    limiter.hit("ip:10.0.0.1", 1, 60.0)

    assert limiter.hit("ip:10.0.0.2", 1, 60.0).allowed


def test_the_window_slides_a_hit_fits_again_once_the_oldest_leaves(limiter: RateLimiter) -> None:
    limiter.hit("ip:10.0.0.3", 2, 0.4)
    time.sleep(0.2)
    limiter.hit("ip:10.0.0.3", 2, 0.4)
    refused = limiter.hit("ip:10.0.0.3", 2, 0.4)
    assert not refused.allowed

    time.sleep(refused.retry_after_s + 0.05)

    assert limiter.hit("ip:10.0.0.3", 2, 0.4).allowed
    # the second hit is still inside the window
    assert not limiter.hit("ip:10.0.0.3", 2, 0.4).allowed


@pytest.mark.parametrize(("limit", "window_s"), [(0, 60.0), (1, 0.0)])
def test_invalid_limits_raise_value_error(
    limiter: RateLimiter, limit: int, window_s: float
) -> None:
    with pytest.raises(ValueError):
        limiter.hit("k", limit, window_s)


def test_refused_hits_do_not_push_back_the_next_allowed_hit() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    limiter.hit("k", 1, 10.0)
    for t in range(1, 10):
        now[0] = float(t)
        assert not limiter.hit("k", 1, 10.0).allowed

    now[0] = 10.0

    assert limiter.hit("k", 1, 10.0).allowed


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    limit=st.integers(1, 5),
    window=st.integers(1, 10),
)
def test_no_window_ever_holds_more_than_limit_hits_and_no_hit_is_refused_needlessly(
    gaps: list[int], limit: int, window: int
) -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    allowed_at: list[float] = []
    for gap in gaps:
        now[0] += gap
        in_window = [t for t in allowed_at if t > now[0] - window]
        decision = limiter.hit("k", limit, window)

        assert decision.allowed is (len(in_window) < limit)
        if decision.allowed:
            allowed_at.append(now[0])
        else:
            # retrying after the advertised wait succeeds (if nobody else hits meanwhile)
            assert 0 < decision.retry_after_s <= window
            oldest_blocking = sorted(in_window)[len(in_window) - limit]
            assert decision.retry_after_s == oldest_blocking + window - now[0]
