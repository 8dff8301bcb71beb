"""Hold queues: phone callers waiting, in arrival order, for a free slot of their
organisation's concurrency limit.

A waiting caller is an entry (its call id) that its worker keeps alive by asking again
(every second or so, ``ttl_s`` at most apart); an entry not asked about within ``ttl_s``
(its worker died, the caller hung up) drops out, so a queue never blocks on the gone.
Two stores with one contract (:class:`HoldQueue`): :class:`MemoryHoldQueue` for a single
sidecar process and :class:`RedisHoldQueue` for replicas sharing a Redis server (one
order for every worker and sidecar).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis


class HoldQueue(Protocol):
    def take_turn(self, queue: str, entry: str, max_length: int, ttl_s: float) -> int | None:
        """Join ``queue`` at its tail (first call) or stay in it (later calls; the entry is
        kept alive for another ``ttl_s``). Returns the entry's position, 0 at the head, or
        None when the entry is not in the queue and ``max_length`` entries already are."""
        ...

    def leave(self, queue: str, entry: str) -> None:
        """Drop the entry (admitted, or given up); unknown entries do nothing."""
        ...

    def length(self, queue: str) -> int:
        """Live entries waiting in ``queue``."""
        ...


def _check(max_length: int, ttl_s: float) -> None:
    if max_length < 0:
        raise ValueError("max_length cannot be negative")
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


@dataclass
class _Entry:
    order: int
    expires_at: float


class MemoryHoldQueue:
    """Queues in this process's memory; thread-safe. ``clock``: monotonic seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str, dict[str, _Entry]] = {}
        self._arrivals = 0

    def take_turn(self, queue: str, entry: str, max_length: int, ttl_s: float) -> int | None:
        _check(max_length, ttl_s)
        with self._lock:
            now = self._clock()
            entries = self._live(queue, now)
            if entry not in entries:
                if len(entries) >= max_length:
                    return None
                self._arrivals += 1
                entries[entry] = _Entry(self._arrivals, now + ttl_s)
                self._queues[queue] = entries
            else:
                entries[entry].expires_at = now + ttl_s
            mine = entries[entry].order
            return sum(1 for e in entries.values() if e.order < mine)

    def leave(self, queue: str, entry: str) -> None:
        with self._lock:
            entries = self._queues.get(queue)
            if entries is not None:
                entries.pop(entry, None)
                if not entries:
                    del self._queues[queue]

    def length(self, queue: str) -> int:
        with self._lock:
            return len(self._live(queue, self._clock()))

    def _live(self, queue: str, now: float) -> dict[str, _Entry]:
        entries = self._queues.get(queue, {})
        for gone in [k for k, e in entries.items() if e.expires_at <= now]:
            del entries[gone]
        return entries


# Redis layout (every key starts with the store's prefix):
#   {prefix}hold:{queue}        sorted set: entry -> arrival number (the order)
#   {prefix}hold:{queue}:alive  sorted set: entry -> expiry (server ms)
#   {prefix}hold:arrivals       counter giving arrival numbers
# Each operation is one Lua script (atomic across the keys); expiry is Redis's clock.

_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, e in ipairs(gone) do redis.call('ZREM', KEYS[1], e) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
"""

# KEYS: order, alive, arrivals; ARGV: entry, max_length, ttl_ms. Returns position or -1.
_TAKE_TURN = (
    _PRUNE
    + """
local entry, max_length, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], entry) then
  if redis.call('ZCARD', KEYS[1]) >= max_length then return -1 end
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), entry)
end
redis.call('ZADD', KEYS[2], now + ttl, entry)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
redis.call('PEXPIRE', KEYS[2], ttl * 4)
return redis.call('ZRANK', KEYS[1], entry)
"""
)

# KEYS: order, alive. Returns the live length.
_LENGTH = _PRUNE + "\nreturn redis.call('ZCARD', KEYS[1])\n"


class RedisHoldQueue:
    """Queues in Redis, shared by every sidecar using the same server and ``prefix``.
    Redis errors propagate (admission fails closed)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._take_turn = client.register_script(_TAKE_TURN)
        self._length = client.register_script(_LENGTH)

    def take_turn(self, queue: str, entry: str, max_length: int, ttl_s: float) -> int | None:
        _check(max_length, ttl_s)
        keys = [*self._keys(queue), f"{self._prefix}hold:arrivals"]
        position = int(self._take_turn(keys=keys, args=[entry, max_length, _ms(ttl_s)]))
        return None if position < 0 else position

    def leave(self, queue: str, entry: str) -> None:
        order, alive = self._keys(queue)
        pipe = self._client.pipeline()
        pipe.zrem(order, entry)
        pipe.zrem(alive, entry)
        pipe.execute()

    def length(self, queue: str) -> int:
        return int(self._length(keys=list(self._keys(queue))))

    def _keys(self, queue: str) -> tuple[str, str]:
        order = f"{self._prefix}hold:{queue}"
        return order, f"{order}:alive"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
