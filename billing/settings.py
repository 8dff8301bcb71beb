"""The sidecar's settings: environment variables and an optional ``.env`` file, read by
``python agent.py sidecar`` and turned into the immutable :class:`SidecarConfig` the app
runs on. (The worker has its own, ``agent/settings.py``; both read ``SIDECAR_SERVICE_TOKEN``,
the secret they share.)"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.config import LiveKitAccess, SidecarConfig
from storage.recording_files import Keyring


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = "sqlite:///data/voice_agent.db"
    redis_url: str | None = None
    """Counters, leases and rate limits; without it they live in the sidecar's process."""
    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = Field(default=8700, ge=1, le=65535)
    sidecar_service_token: SecretStr = SecretStr("")
    """Shared secret the workers present to the /internal routes."""
    payment_webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    """Payment providers whose webhooks the sidecar accepts, each with its own signing
    secret, as JSON: ``PAYMENT_WEBHOOK_SECRETS='{"stripe": "whsec_..."}'``."""
    sidecar_rate_limit_per_ip: int = Field(default=120, ge=1)
    sidecar_rate_limit_per_key: int = Field(default=600, ge=1)
    sidecar_rate_limit_webhook_per_ip: int = Field(default=600, ge=1)
    sidecar_rate_limit_window_s: float = Field(default=60.0, gt=0)
    livekit_url: str = ""
    """The LiveKit server as browsers reach it (wss://...); set with the key and secret
    to mint browser users' tokens."""
    livekit_api_key: str = ""
    livekit_api_secret: SecretStr = SecretStr("")
    agent_name: str = ""
    """The worker's AGENT_NAME, dispatched into a browser user's room."""
    caller_id_secret: SecretStr = SecretStr("")
    """The workers' CALLER_ID_SECRET: erasure by caller number needs it."""
    recording_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Key id -> base64 of 32 bytes: the same keys as the workers' (README, 'Call
    recordings')."""
    recording_key_id: str = ""
    hold_queue_max: int = Field(default=10, ge=0, le=1000)
    """Phone callers one organisation may have waiting when its concurrency limit is
    reached (``HOLD_QUEUE_MAX``); 0: refuse at once."""
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr = SecretStr("")
    diarization_model_dir: Path | None = None
    """A pyannote pipeline directory (``config.yaml`` naming local checkpoints); unset:
    the embedding diarizer (``setup.sh --diarization``)."""
    diarize_workers: int = Field(default=1, ge=1, le=16)
    """Diarization jobs run at once inside the sidecar (without ``REDIS_URL``)."""

    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] | None = None
    """None: JSON."""

    def config(self) -> SidecarConfig:
        """The app's configuration. Raises ValueError for a short secret, a bad provider
        name or a webhook URL without its secret."""
        return SidecarConfig(
            database_url=self.database_url,
            redis_url=self.redis_url,
            service_token=self.sidecar_service_token.get_secret_value(),
            payment_webhook_secrets={
                provider: secret.get_secret_value()
                for provider, secret in self.payment_webhook_secrets.items()
            },
            notify_webhook_url=self.notify_webhook_url,
            notify_webhook_secret=self.notify_webhook_secret.get_secret_value() or None,
            recordings_dir=self.data_dir / "recordings",
            rate_limit_per_ip=self.sidecar_rate_limit_per_ip,
            rate_limit_per_key=self.sidecar_rate_limit_per_key,
            rate_limit_webhook_per_ip=self.sidecar_rate_limit_webhook_per_ip,
            rate_limit_window_s=self.sidecar_rate_limit_window_s,
            hold_queue_max=self.hold_queue_max,
            diarization_model_dir=self.diarization_model_dir,
            diarize_workers=self.diarize_workers,
            caller_id_secret=self.caller_id_secret.get_secret_value() or None,
            recording_keyring=Keyring.from_settings(
                {k: v.get_secret_value() for k, v in self.recording_keys.items()},
                self.recording_key_id,
            )
            if self.recording_keys
            else None,
            livekit=LiveKitAccess(
                url=self.livekit_url,
                api_key=self.livekit_api_key,
                api_secret=self.livekit_api_secret.get_secret_value(),
                agent_name=self.agent_name,
            )
            if self.livekit_url
            else None,
        )
