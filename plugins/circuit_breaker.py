"""Circuit breakers per provider, shared by every call of a worker process.

A breaker is ``closed`` (requests go through) until ``failure_threshold`` failures happen
within ``window_s``; then it is ``open`` for ``open_s`` (requests skip the provider at
once, costing a turn nothing); after that one request is let through as a ``half_open``
probe: its success closes the breaker, its failure opens it again (a probe that never
reports back, its call gone, is given up after ``open_s``: another may go). A ``Retry-After`` from
a provider (429) opens it for as long as the provider asked (the longer of the two when
the failure also trips it).

State changes are Prometheus metrics (labels: the provider's kind and stage, a bounded set)
and log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from prometheus_client import Counter, Gauge

log = logging.getLogger("plugins.circuit_breaker")

BreakerState = Literal["closed", "open", "half_open"]
_STATE_VALUE: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}

BREAKER_STATE = Gauge(
    "voice_agent_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
    ["provider"],
)
BREAKER_TRANSITIONS = Counter(
    "voice_agent_breaker_transitions_total",
    "Circuit breaker state changes per provider.",
    ["provider", "state"],
)


class CircuitBreaker:
    """Thread-safe; ``clock`` gives monotonic seconds (injected in tests)."""

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int = 5,
        window_s: float = 60.0,
        open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or window_s <= 0 or open_s <= 0:
            raise ValueError("failure_threshold >= 1, window_s > 0 and open_s > 0")
        self.provider = provider
        self._threshold = failure_threshold
        self._window_s = window_s
        self._open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._state: BreakerState = "closed"
        self._open_until = 0.0
        self._asked_until = 0.0
        """Until when the provider asked us to wait (its ``Retry-After``)."""
        self._probing = False
        self._probe_started = 0.0
        BREAKER_STATE.labels(provider).set(0)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state == "open" and self._clock() >= self._open_until:
                return "half_open"
            return self._state

    @property
    def open_for_s(self) -> float:
        """Seconds before an open breaker lets its probe through (0 when not open)."""
        with self._lock:
            return max(0.0, self._open_until - self._clock()) if self._state == "open" else 0.0

    def asked_to_wait(self, seconds: float) -> None:
        """The provider answered with ``Retry-After: seconds`` (read off the HTTP response
        where the plugin's error does not carry it); the failure it reports applies it."""
        with self._lock:
            self._asked_until = max(self._asked_until, self._clock() + seconds)

    def allow(self) -> bool:
        """May a request go to the provider now? In ``half_open``, exactly one caller gets
        True (the probe) until it reports back."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open" and self._clock() < self._open_until:
                return False
            if self._probing and self._clock() - self._probe_started < self._open_s:
                return False  # one probe at a time (one that never reported is given up)
            self._probing, self._probe_started = True, self._clock()
            self._set("half_open")
            return True

    def record_success(self) -> None:
        with self._lock:
            self._probing = False
            self._failures.clear()
            if self._state != "closed":
                self._set("closed")

    def record_failure(self, *, retry_after_s: float | None = None) -> None:
        """A failed request; ``retry_after_s`` (a provider's ``Retry-After``, or the one it
        gave in ``asked_to_wait``) opens the breaker for as long as it asked."""
        with self._lock:
            now = self._clock()
            if self._asked_until > now:
                retry_after_s = max(retry_after_s or 0.0, self._asked_until - now)
            self._asked_until = 0.0
            was_probe = self._probing
            self._probing = False
            self._failures.append(now)
            while self._failures and self._failures[0] <= now - self._window_s:
                self._failures.popleft()
            tripped = was_probe or len(self._failures) >= self._threshold
            if not tripped and retry_after_s is None:
                return
            # tripped: open_s (or longer if the provider asked); a Retry-After alone: as
            # long as the provider asked, no longer (it told us when it is back)
            open_s = max(self._open_s if tripped else 0.0, retry_after_s or 0.0)
            self._open_until = max(self._open_until, now + open_s)
            if self._state != "open":
                self._set("open")

    def _set(self, state: BreakerState) -> None:
        self._state = state
        BREAKER_STATE.labels(self.provider).set(_STATE_VALUE[state])
        BREAKER_TRANSITIONS.labels(self.provider, state).inc()
        log.log(
            logging.WARNING if state == "open" else logging.INFO,
            "circuit breaker %s",
            state,
            extra={"provider": self.provider, "breaker": state},
        )


_BREAKERS: dict[tuple[str, str], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(provider: str, endpoint: str) -> CircuitBreaker:
    """The process-wide breaker of ``provider`` (e.g. ``llm/openai``, the metrics' label) at
    ``endpoint`` (its base URL: another URL is another service): every call of the worker
    process shares it."""
    with _BREAKERS_LOCK:
        key = (provider, endpoint)
        if key not in _BREAKERS:
            _BREAKERS[key] = CircuitBreaker(provider)
        return _BREAKERS[key]
