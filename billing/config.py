"""The sidecar's configuration: one typed, immutable object.

The application's settings (read from the environment in ``agent/settings.py``) are mapped
onto :class:`SidecarConfig` by the CLI; everything in ``billing.api`` reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIN_SECRET_CHARS = 16
"""Shared secrets shorter than this are refused: an empty service token would make every
empty ``Authorization: Bearer`` header match."""


@dataclass(frozen=True)
class SidecarConfig:
    """What the sidecar needs to run.

    ``redis_url`` switches leases and rate limits from in-process (one process only) to
    Redis (shared by every replica). ``service_token`` authenticates workers on
    ``/internal`` (``Authorization: Bearer``); ``payment_webhook_secret`` verifies the
    payment provider's signatures. Raises ValueError for a short secret or a non-positive
    limit.
    """

    database_url: str
    redis_url: str | None
    service_token: str
    payment_webhook_secret: str
    notify_webhook_url: str | None
    notify_webhook_secret: str | None
    recordings_dir: Path
    max_body_bytes: int = 64_000
    rate_limit_per_ip: int = 120
    rate_limit_per_key: int = 600
    rate_limit_window_s: float = 60.0
    lease_ttl_s: float = 30.0
    key_prefix: str = "va:"

    def __post_init__(self) -> None:
        for name in ("service_token", "payment_webhook_secret"):
            if len(getattr(self, name)) < MIN_SECRET_CHARS:
                raise ValueError(f"{name} must be at least {MIN_SECRET_CHARS} characters")
        if self.notify_webhook_url and not self.notify_webhook_secret:
            raise ValueError("notify_webhook_url needs notify_webhook_secret to sign with")
        for name in ("max_body_bytes", "rate_limit_per_ip", "rate_limit_per_key"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("rate_limit_window_s", "lease_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
