"""The sidecar's configuration: one typed, immutable object.

The sidecar's settings (read from the environment in ``billing/settings.py``) become a
:class:`SidecarConfig`; everything in ``billing.api`` reads only this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from billing.webhooks import PROVIDER_PATTERN
from storage.recording_files import Keyring

LIVEKIT_MIN_SECRET_CHARS = 32
MIN_SECRET_CHARS = 16
"""Shared secrets shorter than this are refused: an empty service token would make every
empty ``Authorization: Bearer`` header match."""


@dataclass(frozen=True)
class LiveKitAccess:
    """The LiveKit server browser users join: ``url`` as a browser reaches it (``wss://``),
    the API key and secret tokens are signed with, and the worker's ``agent_name`` a
    room's token dispatches."""

    url: str
    api_key: str
    api_secret: str
    agent_name: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^(wss?|https?)://[^\s/]+", self.url):
            raise ValueError(f"LIVEKIT_URL must look like wss://host, got {self.url!r}")
        if not self.api_key or len(self.api_secret) < LIVEKIT_MIN_SECRET_CHARS:
            raise ValueError(
                f"LIVEKIT_API_KEY and LIVEKIT_API_SECRET (at least {LIVEKIT_MIN_SECRET_CHARS} "
                "characters, as LiveKit's server requires) must be set with LIVEKIT_URL"
            )


@dataclass(frozen=True)
class SidecarConfig:
    """What the sidecar needs to run.

    ``redis_url`` switches leases and rate limits from in-process (one process only) to
    Redis (shared by every replica). ``service_token`` authenticates workers on
    ``/internal`` (``Authorization: Bearer``); ``payment_webhook_secrets`` names the payment
    providers whose webhooks are accepted, each with the secret it signs with (no
    providers: every payment webhook is a 404).

    Rate limits, per ``rate_limit_window_s``: ``rate_limit_per_ip`` requests from one
    client IP, ``rate_limit_per_key`` from one API key, and ``rate_limit_webhook_per_ip``
    payment webhooks from one IP (a budget of their own: providers deliver from few
    addresses, and a tenant's traffic must not delay its payments, nor the reverse).
    Raises ValueError for a short secret, a bad provider name or a non-positive limit.
    """

    database_url: str
    redis_url: str | None
    service_token: str
    notify_webhook_url: str | None
    notify_webhook_secret: str | None
    recordings_dir: Path
    payment_webhook_secrets: Mapping[str, str] = field(default_factory=dict)
    max_body_bytes: int = 64_000
    rate_limit_per_ip: int = 120
    rate_limit_per_key: int = 600
    rate_limit_webhook_per_ip: int = 600
    rate_limit_window_s: float = 60.0
    caller_id_secret: str | None = None
    """Shared with the workers: erasure by caller number (billing.retention) finds calls
    by an HMAC of the number under it; None: it cannot."""
    recording_keyring: Keyring | None = None
    """Opens call recordings (checks uploads, decrypts downloads, re-seals on rotation);
    None: recordings are refused."""
    max_recording_bytes: int = 2 * 1024**3
    retention_sweep_s: float | None = 3600.0
    """How often the serving sidecar deletes recordings past their retention; None:
    never (``sidecar purge-expired`` does it once)."""
    livekit: LiveKitAccess | None = None
    """Where browser users' tokens send them (``/v1/tokens``, the ``/call`` page); None:
    tokens answer 503."""
    lease_ttl_s: float = 30.0
    hold_queue_max: int = 10
    """Phone callers one organisation may have waiting at the concurrency limit; 0: none
    wait (refused at once, as browser users always are)."""
    key_prefix: str = "va:"
    diarization_model_dir: Path | None = None
    """A pyannote pipeline directory; None: the embedding diarizer (storage.diarization)."""
    diarize_workers: int = 1
    """Diarization jobs run at once in this process (without Redis; with it, RQ workers
    run them: ``python agent.py diarize-worker``)."""

    def __post_init__(self) -> None:
        if len(self.service_token) < MIN_SECRET_CHARS:
            raise ValueError(f"service_token must be at least {MIN_SECRET_CHARS} characters")
        for provider, secret in self.payment_webhook_secrets.items():
            if not re.fullmatch(PROVIDER_PATTERN, provider):
                raise ValueError(
                    f"payment provider name {provider!r} must match {PROVIDER_PATTERN}"
                )
            if len(secret) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"the webhook secret of payment provider {provider!r} must be at least "
                    f"{MIN_SECRET_CHARS} characters"
                )
        # frozen means frozen: a caller's dict changed later must not change the config
        object.__setattr__(
            self, "payment_webhook_secrets", MappingProxyType(dict(self.payment_webhook_secrets))
        )
        if self.notify_webhook_url and not self.notify_webhook_secret:
            raise ValueError("notify_webhook_url needs notify_webhook_secret to sign with")
        for name in (
            "max_body_bytes",
            "rate_limit_per_ip",
            "rate_limit_per_key",
            "rate_limit_webhook_per_ip",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("rate_limit_window_s", "lease_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
