"""The sidecar's Prometheus metrics, in a registry of their own per application (never
the global one: tests and embedders create many apps in one process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GrantedLeases:
    """Leases this process granted or extended and that were neither released nor let
    expire (no heartbeat for ``ttl_s``): the value of ``sidecar_leases_active``.

    Per process: with several replicas behind a balancer, sum the gauge over them (a lease
    whose heartbeats moved to another replica counts twice for at most one TTL).
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._expires_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def granted(self, lease_id: str) -> None:
        """The lease was admitted or heart-beaten just now."""
        with self._lock:
            self._expires_at[lease_id] = self._clock() + self._ttl_s

    def gone(self, lease_id: str) -> None:
        """The lease was released, or its heartbeat found it expired."""
        with self._lock:
            self._expires_at.pop(lease_id, None)

    def count(self) -> int:
        """Live leases; forgets expired ones (so a crashed worker's leak nothing here)."""
        with self._lock:
            now = self._clock()
            for lease_id in [k for k, t in self._expires_at.items() if t <= now]:
                del self._expires_at[lease_id]
            return len(self._expires_at)


class SidecarMetrics:
    """Every metric the sidecar exports. Label values come from fixed sets (route
    templates, usage kinds, currencies, quota reasons, outcomes), never from raw input."""

    def __init__(self, *, lease_ttl_s: float) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.http_requests = Counter(
            "sidecar_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_request_seconds = Histogram(
            "sidecar_http_request_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.rate_limited = Counter(
            "sidecar_rate_limited_requests",
            "Requests refused with 429, by the limit that refused them (ip or key).",
            ["limit"],
            registry=registry,
        )
        self.rate_limiter_errors = Counter(
            "sidecar_rate_limiter_errors",
            "Rate-limit checks that failed (Redis down); such requests are let through.",
            registry=registry,
        )
        self.billing_amount_minor = Counter(
            "sidecar_billing_amount_minor",
            "Amounts charged by newly applied billing events, in minor units.",
            ["kind", "currency"],
            registry=registry,
        )
        self.billing_events = Counter(
            "sidecar_billing_events",
            "Billing events received from workers: applied, duplicate or rejected.",
            ["outcome"],
            registry=registry,
        )
        self.payment_amount_minor = Counter(
            "sidecar_payment_amount_minor",
            "Amounts credited by newly applied payments, in minor units.",
            ["currency"],
            registry=registry,
        )
        self.payment_webhook_seconds = Histogram(
            "sidecar_payment_webhook_seconds",
            "Time to handle a payment webhook delivery, whatever its outcome.",
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.payment_webhooks = Counter(
            "sidecar_payment_webhooks",
            "Payment webhook deliveries by outcome (applied, duplicate, rejected) and status.",
            ["outcome", "status"],
            registry=registry,
        )
        self.quota_rejections = Counter(
            "sidecar_quota_rejections",
            "Admissions and agent creations refused by a quota, by reason.",
            ["reason"],
            registry=registry,
        )
        self.admissions_queued = Counter(
            "sidecar_admissions_queued",
            "Admission answers that put or kept a phone caller on hold (202), by whether the "
            "caller was at the head of the queue.",
            ["at_head"],
            registry=registry,
        )
        self.leases = GrantedLeases(lease_ttl_s)
        self.leases_active = Gauge(
            "sidecar_leases_active",
            "Call leases granted or extended by this sidecar process, not released or expired.",
            registry=registry,
        )
        self.leases_active.set_function(self.leases.count)
        self.live_workers = Gauge(
            "sidecar_live_workers",
            "Workers that sent a heartbeat to this sidecar process recently.",
            registry=registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
