"""Rate limits: at most ``limit`` hits per key in any ``window_s`` seconds.

The algorithm is a sliding-window log (the times of the allowed hits in the last window).
It is exact: no window of ``window_s`` ever holds more than ``limit`` allowed hits, which
is what "60 requests per minute per key" promises. GCRA would need O(1) memory instead of
O(limit) per key, but with a burst of ``limit`` it lets up to ``2 * limit - 1`` hits into
one window that straddles the burst; and fixed or two-bucket windows are approximate at
their boundaries. Our limits are small (per IP, per API key), so exactness wins. Refused
hits are not recorded, so a client hammering a closed door does not extend its own ban.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float
    """0 when allowed; otherwise how long until a hit would be allowed (if no one else
    takes the slot first)."""


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_s: float) -> RateDecision:
        """Count one hit on ``key`` if fewer than ``limit`` were allowed in the last
        ``window_s`` seconds, and say whether it was allowed.

        Raises ValueError for a limit below 1 or a non-positive window.
        """
        ...


def _check_args(limit: int, window_s: float) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")


_SWEEP_EVERY_CALLS = 10_000
"""How often the memory limiter forgets keys with no hit in their window."""


class MemoryRateLimiter:
    """Rate limits in this process's memory: thread-safe, one process only.

    ``clock`` (monotonic seconds) is injectable so tests can move time without waiting.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}
        self._windows_s: dict[str, float] = {}
        self._calls_since_sweep = 0

    def hit(self, key: str, limit: int, window_s: float) -> RateDecision:
        _check_args(limit, window_s)
        with self._lock:
            now = self._clock()
            self._sweep_now_and_then(now)
            self._windows_s[key] = window_s
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - window_s:
                hits.popleft()
            if len(hits) < limit:
                hits.append(now)
                return RateDecision(True, 0.0)
            # the hit that must leave the window before one more fits (the oldest, unless
            # the limit was lowered since those hits were allowed)
            blocking = hits[len(hits) - limit]
            return RateDecision(False, blocking + window_s - now)

    def _sweep_now_and_then(self, now: float) -> None:
        # one key per client IP: without a sweep, every IP ever seen would stay in memory
        self._calls_since_sweep += 1
        if self._calls_since_sweep < _SWEEP_EVERY_CALLS:
            return
        self._calls_since_sweep = 0
        for key, hits in list(self._hits.items()):
            if not hits or hits[-1] <= now - self._windows_s[key]:
                del self._hits[key], self._windows_s[key]


# KEYS: the key's sorted set (member: unique id, score: server ms of the allowed hit)
# ARGV: window_ms, limit, member. Returns {1, 0} if allowed, else {0, retry_after_ms}.
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {0, math.max(1, tonumber(blocking[2]) + window - now)}
"""


class RedisRateLimiter:
    """Rate limits in Redis, shared by every replica using the same server and ``prefix``.

    One Lua script per hit, timed by the Redis server's clock (replicas' clocks may
    disagree), with millisecond resolution. Redis errors (``redis.RedisError``) propagate;
    the HTTP edge decides whether to fail open or closed.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._hit = client.register_script(_HIT)

    def hit(self, key: str, limit: int, window_s: float) -> RateDecision:
        _check_args(limit, window_s)
        window_ms = max(1, round(window_s * 1000))
        allowed, retry_after_ms = self._hit(
            keys=[f"{self._prefix}rate:{key}"], args=[window_ms, limit, uuid.uuid4().hex]
        )
        return RateDecision(bool(allowed), int(retry_after_ms) / 1000)
