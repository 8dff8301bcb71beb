"""Concurrency leases: a call holds one slot in each of its scopes (the organisation, the
dialled number) for as long as its worker keeps heart-beating it.

A lease expires ``ttl_s`` after it was taken or last heart-beaten, so a worker that dies
mid-call leaks nothing: its slots are free again one TTL later. Two stores with one
contract (:class:`LeaseStore`): :class:`MemoryLeaseStore` for a single process and
:class:`RedisLeaseStore` for many workers sharing a Redis server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseScope:
    """One counter a lease takes a slot in, e.g. ``LeaseScope("org:12", 5)``."""

    key: str
    limit: int
    """Most live leases the scope holds at once; 0 refuses every lease."""


class LeaseStore(Protocol):
    """Leases with a time to live, shared by every caller of the same store."""

    def acquire(self, lease_id: str, scopes: Sequence[LeaseScope], ttl_s: float) -> str | None:
        """All-or-nothing: take one slot in every scope, or none.

        Returns None on success, else the key of the first scope (in the given order) that
        is full. Re-acquiring a live ``lease_id`` is idempotent: it returns None, takes no
        second slot, keeps the scopes of the first acquire and extends the TTL.

        Raises ValueError for no scopes, a repeated scope key, a negative limit or a
        non-positive TTL.
        """
        ...

    def heartbeat(self, lease_id: str, ttl_s: float) -> bool:
        """Extend a live lease to expire ``ttl_s`` from now; False if it expired or is
        unknown (an expired lease is never revived: re-acquire it instead)."""
        ...

    def release(self, lease_id: str) -> None:
        """Free the lease's slots; releasing an unknown or expired lease does nothing."""
        ...

    def active(self, scope_key: str) -> int:
        """Live leases in the scope; expired ones do not count."""
        ...


def _check_acquire_args(scopes: Sequence[LeaseScope], ttl_s: float) -> None:
    if not scopes:
        raise ValueError("a lease needs at least one scope")
    if len({s.key for s in scopes}) != len(scopes):
        raise ValueError("a lease cannot take two slots in the same scope")
    if any(s.limit < 0 for s in scopes):
        raise ValueError("a scope limit cannot be negative")
    _check_ttl(ttl_s)


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


@dataclass
class _MemoryLease:
    scope_keys: tuple[str, ...]
    expires_at: float


class MemoryLeaseStore:
    """Leases in this process's memory: thread-safe, but not shared between processes.

    ``clock`` (monotonic seconds) is injectable so tests can expire leases without waiting.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, _MemoryLease] = {}
        self._scopes: dict[str, set[str]] = {}

    def acquire(self, lease_id: str, scopes: Sequence[LeaseScope], ttl_s: float) -> str | None:
        _check_acquire_args(scopes, ttl_s)
        with self._lock:
            now = self._clock()
            existing = self._live_lease(lease_id, now)
            if existing is not None:
                existing.expires_at = now + ttl_s
                return None
            for scope in scopes:
                if self._count_live(scope.key, now) >= scope.limit:
                    return scope.key
            keys = tuple(s.key for s in scopes)
            self._leases[lease_id] = _MemoryLease(keys, now + ttl_s)
            for key in keys:
                self._scopes.setdefault(key, set()).add(lease_id)
            return None

    def heartbeat(self, lease_id: str, ttl_s: float) -> bool:
        _check_ttl(ttl_s)
        with self._lock:
            now = self._clock()
            lease = self._live_lease(lease_id, now)
            if lease is None:
                return False
            lease.expires_at = now + ttl_s
            return True

    def release(self, lease_id: str) -> None:
        with self._lock:
            self._drop(lease_id)

    def active(self, scope_key: str) -> int:
        with self._lock:
            return self._count_live(scope_key, self._clock())

    # the helpers below expect self._lock to be held

    def _live_lease(self, lease_id: str, now: float) -> _MemoryLease | None:
        lease = self._leases.get(lease_id)
        if lease is not None and lease.expires_at <= now:
            self._drop(lease_id)
            return None
        return lease

    def _count_live(self, scope_key: str, now: float) -> int:
        members = self._scopes.get(scope_key, set())
        for lease_id in [m for m in members if self._leases[m].expires_at <= now]:
            self._drop(lease_id)
        return len(self._scopes.get(scope_key, ()))

    def _drop(self, lease_id: str) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        for key in lease.scope_keys:
            members = self._scopes[key]
            members.discard(lease_id)
            if not members:
                del self._scopes[key]


# Redis layout (every key starts with the store's prefix):
#   {prefix}scope:{scope_key}  sorted set: lease_id -> expiry (server ms); the key itself
#                              expires with its longest-lived member, so idle scopes vanish
#   {prefix}lease:{lease_id}   set of the scope *Redis keys* the lease holds, expiring with
#                              the lease, so heartbeat and release need only the lease id
# Expiry is "score <= server TIME", never a client clock: workers' clocks may disagree.
# In Redis Cluster, give the prefix a hash tag ("{va}:") so all keys share one slot; the
# heartbeat and release scripts reach keys named inside the lease record.

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Returns true if the lease record names live slots (all of them), else removes whatever
# is left of it and returns false.
_LIVE_OR_DROP = """
local function live_or_drop(record, lease_id, now)
  local held = redis.call('SMEMBERS', record)
  if #held == 0 then return false end
  for _, scope in ipairs(held) do
    local score = redis.call('ZSCORE', scope, lease_id)
    if not score or tonumber(score) <= now then
      for _, s in ipairs(held) do redis.call('ZREM', s, lease_id) end
      redis.call('DEL', record)
      return false
    end
  end
  return true
end

local function extend(record, lease_id, expires, ttl)
  for _, scope in ipairs(redis.call('SMEMBERS', record)) do
    redis.call('ZADD', scope, 'XX', expires, lease_id)
    if redis.call('PTTL', scope) < ttl then redis.call('PEXPIRE', scope, ttl) end
  end
  redis.call('PEXPIRE', record, ttl)
end
"""

# KEYS: lease record, scope keys...; ARGV: lease_id, ttl_ms, limits...
# Returns 0 on success, else the 1-based index of the first full scope.
_ACQUIRE = (
    _NOW_MS
    + _LIVE_OR_DROP
    + """
local lease_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local expires = now + ttl
if live_or_drop(KEYS[1], lease_id, now) then
  extend(KEYS[1], lease_id, expires, ttl)
  return 0
end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 1]) then return i - 1 end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], expires, lease_id)
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  redis.call('SADD', KEYS[1], KEYS[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""
)

# KEYS: lease record; ARGV: lease_id, ttl_ms. Returns 1 if extended, 0 if not live.
_HEARTBEAT = (
    _NOW_MS
    + _LIVE_OR_DROP
    + """
if not live_or_drop(KEYS[1], ARGV[1], now) then return 0 end
extend(KEYS[1], ARGV[1], now + tonumber(ARGV[2]), tonumber(ARGV[2]))
return 1
"""
)

# KEYS: lease record; ARGV: lease_id.
_RELEASE = """
for _, scope in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('ZREM', scope, ARGV[1])
end
redis.call('DEL', KEYS[1])
return 0
"""

# KEYS: scope key. Returns the number of live members.
_ACTIVE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


def _ttl_ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisLeaseStore:
    """Leases in Redis, shared by every worker using the same server and ``prefix``.

    Each operation is one Lua script, so it is atomic across all of a lease's scopes.
    Redis errors (``redis.RedisError``) propagate: admission must fail closed, not guess.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(_RELEASE)
        self._active = client.register_script(_ACTIVE)

    def acquire(self, lease_id: str, scopes: Sequence[LeaseScope], ttl_s: float) -> str | None:
        _check_acquire_args(scopes, ttl_s)
        keys = [self._lease_key(lease_id), *(self._scope_key(s.key) for s in scopes)]
        args: list[str | int] = [lease_id, _ttl_ms(ttl_s), *(s.limit for s in scopes)]
        full_index = int(self._acquire(keys=keys, args=args))
        return None if full_index == 0 else scopes[full_index - 1].key

    def heartbeat(self, lease_id: str, ttl_s: float) -> bool:
        _check_ttl(ttl_s)
        extended = self._heartbeat(
            keys=[self._lease_key(lease_id)], args=[lease_id, _ttl_ms(ttl_s)]
        )
        return bool(int(extended))

    def release(self, lease_id: str) -> None:
        self._release(keys=[self._lease_key(lease_id)], args=[lease_id])

    def active(self, scope_key: str) -> int:
        return int(self._active(keys=[self._scope_key(scope_key)]))

    def _lease_key(self, lease_id: str) -> str:
        return f"{self._prefix}lease:{lease_id}"

    def _scope_key(self, scope_key: str) -> str:
        return f"{self._prefix}scope:{scope_key}"
