"""The sidecar's rate limits over one limiter: per client IP, per API key, and per client
IP for the payment webhook (a budget of its own).

The IP limits are checked in middleware, before any work; the key limit once the key has
authenticated (``deps.authenticated``), so only the key's holder spends its budget: a
request that merely names a key's (public) prefix with a wrong secret counts against its
IP, never against the key.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from redis import RedisError

from billing.api.metrics import SidecarMetrics
from billing.config import SidecarConfig
from storage.rate_limits import RateLimiter

logger = logging.getLogger(__name__)

LimitName = Literal["ip", "key", "webhook"]


class RateLimits:
    """Checks a hit against the configured limit for its kind. Blocking (the limiter may
    call Redis): async callers run it in a thread."""

    def __init__(
        self, limiter: RateLimiter, config: SidecarConfig, metrics: SidecarMetrics
    ) -> None:
        self._limiter = limiter
        self._window_s = config.rate_limit_window_s
        self._limits: dict[LimitName, int] = {
            "ip": config.rate_limit_per_ip,
            "key": config.rate_limit_per_key,
            "webhook": config.rate_limit_webhook_per_ip,
        }
        self._metrics = metrics

    def retry_after_s(self, name: LimitName, subject: str) -> int | None:
        """Count one request by ``subject`` (an IP address, a key prefix); None if it is
        within the limit, else the whole seconds to wait (at least 1). If the limiter
        fails (Redis down) the request is let through: an outage of the rate limiter must
        not become an outage of the API."""
        try:
            decision = self._limiter.hit(f"{name}:{subject}", self._limits[name], self._window_s)
        except RedisError as exc:
            self._metrics.rate_limiter_errors.inc()
            logger.warning(
                "rate limiter unavailable; request let through", extra={"error": repr(exc)}
            )
            return None
        if decision.allowed:
            return None
        self._metrics.rate_limited.labels(name).inc()
        return max(1, math.ceil(decision.retry_after_s))
