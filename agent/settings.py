"""The worker's settings: environment variables and an optional ``.env`` file (the
sidecar's are ``billing/settings.py``).

Defaults run a whole call on one machine with no keys and no servers. Setting a provider's
key switches that stage to the cloud provider; base URLs are overridable (the tests point
them at loopback servers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from storage.recording_files import Keyring


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # LiveKit server (dev / start / connect)
    livekit_url: str = ""
    livekit_api_key: str = ""
    livekit_api_secret: SecretStr = SecretStr("")
    # empty: LiveKit dispatches every new room to this worker; set it for explicit dispatch
    agent_name: str = ""
    max_concurrent_calls: int = Field(default=10, ge=1)
    sip_outbound_trunk_id: str = ""
    """The trunk ``python agent.py call`` and a warm transfer dial out through
    (``provision-sip`` creates it and prints its id)."""

    # providers: "auto" picks the cloud provider when its key is set, else the local one
    stt_provider: Literal["auto", "local", "deepgram"] = "auto"
    llm_provider: Literal["auto", "local", "openai", "anthropic"] = "auto"
    tts_provider: Literal["auto", "local", "elevenlabs", "openai"] = "auto"

    deepgram_api_key: SecretStr = SecretStr("")
    deepgram_base_url: str = "https://api.deepgram.com/v1/listen"
    deepgram_model: str = "nova-3"

    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4.1-mini"
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_tts_voice: str = "alloy"

    anthropic_api_key: SecretStr = SecretStr("")
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_model: str = "claude-haiku-4-5"

    elevenlabs_api_key: SecretStr = SecretStr("")
    elevenlabs_base_url: str = "https://api.elevenlabs.io/v1"
    elevenlabs_voice_id: str = "EXAVITQu4vr4xnSDxMaL"
    elevenlabs_model: str = "eleven_flash_v2_5"

    # resilience
    llm_first_token_s: float = Field(default=2.0, gt=0)
    """A cloud LLM that has not started its reply within this has failed: the next tier
    answers."""
    stt_no_result_s: float = Field(default=3.0, gt=0)
    """A cloud STT that has heard this long of audible caller audio without a single result
    has failed: the local STT takes over, from the words it had not finalised."""
    stt_min_confidence: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = {
        "deepgram": 0.6,
        "local": 0.415,
    }
    """Per STT provider, the confidence under which a final transcript is held back and
    the caller asked to repeat (see the README for how ``local`` was calibrated)."""
    stt_misses_before_keypad: int = Field(default=3, ge=1)
    """Unsure transcripts in a row after which the agent offers keypad entry."""
    dtmf_timeout_s: float = Field(default=5.0, gt=0)
    """A keypad entry ends with ``#`` or this long after its last key."""
    tts_first_audio_s: float = Field(default=1.5, gt=0)
    """A cloud voice that has not started a sentence's audio within this (or stops for as
    long in the middle of one) has failed: the next voice says the rest."""

    # barge-in (agent/interruption.py)
    interrupt_onset_s: float = Field(default=0.03, ge=0.0)
    """Caller speech this long over the agent pauses its audio (livekit's default: 0.5)."""
    interrupt_confirm_s: float = Field(default=1.2, gt=0.0)
    """The caller still speaking this long after the onset is a real interruption: the
    agent stops for good. Shorter sounds are not: the agent resumes. "Still speaking" is
    the VAD's: Silero hears the end of speech 0.55 s after it, so a 0.5 s "uh-huh" counts
    as speaking for about 1.05 s."""
    interrupt_resume_s: float = Field(default=0.2, gt=0.0)
    """Silence after a short sound over the agent before its sentence resumes (livekit's
    ``false_interruption_timeout``; counted from the VAD's end of speech)."""

    echo_cancellation: bool = True
    """Take the agent's own voice out of the caller's channel (agent/echo.py; WebRTC AEC3)
    before the VAD and the STT hear it. The console has its own (livekit's)."""

    # turn taking
    speculative_stt: bool = True
    """The local Whisper starts on the caller's speech at their first 0.15 s pause instead
    of after the VAD's 0.55 s end of speech (plugins.speculative_stt); false: livekit's
    ``stt.StreamAdapter``."""
    preemptive_tts: bool = True
    """Voice the reply livekit's preemptive generation drafts on the final transcript before
    the turn is committed, so its first audio is ready when it is (a draft the caller talks
    over is dropped, its TTS characters still billed by the provider); false: livekit's
    default, the LLM only."""
    min_endpointing_delay_s: float = Field(default=0.5, ge=0.0)
    max_endpointing_delay_s: float = Field(default=3.0, ge=0.0)
    # the caller cannot barge in during the first seconds of the agent's first reply while
    # a browser's echo canceller adapts; 0 where there is no acoustic echo
    aec_warmup_s: float = Field(default=3.0, ge=0.0)

    # the worker's link to the billing sidecar (the sidecar's own: billing/settings.py)
    sidecar_url: str = ""
    """Where the worker asks for admission and agent profiles and delivers billing events;
    empty = no quotas and no billing (the one-machine default)."""
    sidecar_service_token: SecretStr = SecretStr("")
    """Shared secret the worker presents to the sidecar's /internal routes."""
    default_organisation_id: int | None = None
    """Organisation billed for calls whose job metadata names none (single-tenant set-ups)."""
    hold_max_wait_s: float = Field(default=120.0, gt=0)
    """Longest a phone caller waits on hold (the organisation's concurrency limit reached)
    before hearing that nobody is free; the queue's length is the sidecar's
    ``HOLD_QUEUE_MAX``."""
    admission_fail_open: bool = True
    """When the sidecar cannot be reached: admit the call (and bill it later through the
    outbox) rather than turn callers away."""

    redis_url: str = ""
    """Where a dropped caller's conversation is kept for 5 minutes, shared by every
    worker; empty: a SQLite file under ``data_dir``, shared by this worker's calls."""

    agent_profile: Path | None = None
    """The agent a call runs when the sidecar names none (a YAML file; ``--agent FILE``
    sets it); unset: the built-in Northwind demo."""

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Where ``start``/``dev`` serve the worker's Prometheus metrics (``/metrics``); unset:
    not served. Job processes' metrics are gathered under ``data_dir``/``metrics``."""

    health_port: int | None = Field(default=None, ge=1, le=65535)
    """Where ``start``/``dev`` serve the worker's ``/health`` (``agent/health.py``); unset:
    not served."""
    worker_http_port: int = Field(default=8081, ge=1, le=65535)
    """livekit's own worker endpoint (``/``: registered with the server, ``/worker``); the
    health check reads it."""

    caller_id_secret: SecretStr = SecretStr("")
    """Shared with the sidecar (16+ characters): a call row keeps an HMAC of the caller's
    number under it, so the organisation can have a number's calls erased. Unset: it
    cannot (the row holds only the masked number)."""
    record_calls: bool = False
    """Record every admitted call (caller and agent on two channels, encrypted; see
    README, 'Call recordings'). Needs RECORDING_KEYS and RECORDING_KEY_ID."""
    recording_keys: dict[str, SecretStr] = {}
    """Key id -> base64 of 32 random bytes (``openssl rand -base64 32``); old ids stay so
    old recordings stay readable."""
    recording_key_id: str = ""
    """The key new recordings are sealed with."""

    drain_timeout_s: int = Field(default=600, ge=0)
    """On SIGTERM (``start``): how long live calls may go on before the worker exits
    anyway; 0 waits for them however long. A second SIGTERM exits at once."""

    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] | None = None
    """None: the command's own (JSON for ``start``, text for ``console``, ``dev`` and
    ``simulate``)."""

    def recording_keyring(self) -> Keyring | None:
        """The keys to seal recordings with when ``record_calls`` is on (else None).
        Raises ValueError naming the setting (never a key)."""
        if not self.record_calls:
            return None
        from storage.recording_files import Keyring

        if not self.recording_keys or not self.recording_key_id:
            raise ValueError("RECORD_CALLS needs RECORDING_KEYS and RECORDING_KEY_ID")
        return Keyring.from_settings(
            {k: v.get_secret_value() for k, v in self.recording_keys.items()},
            self.recording_key_id,
        )

    @property
    def recordings_dir(self) -> Path:
        """Where the worker writes recordings until the sidecar has them."""
        return self.data_dir / "recordings" / "pending"

    @property
    def outbox_path(self) -> Path:
        """The worker's billing outbox, shared by its job processes."""
        return self.data_dir / "outbox.db"

    def resolved_stt(self) -> Literal["local", "deepgram"]:
        if self.stt_provider == "auto":
            return "deepgram" if self.deepgram_api_key.get_secret_value() else "local"
        return self.stt_provider

    def resolved_llm(self) -> Literal["local", "openai", "anthropic"]:
        if self.llm_provider == "auto":
            if self.openai_api_key.get_secret_value():
                return "openai"
            return "anthropic" if self.anthropic_api_key.get_secret_value() else "local"
        return self.llm_provider

    def resolved_tts(self) -> Literal["local", "elevenlabs", "openai"]:
        if self.tts_provider == "auto":
            return "elevenlabs" if self.elevenlabs_api_key.get_secret_value() else "local"
        return self.tts_provider

    def livekit_configured(self) -> bool:
        return bool(
            self.livekit_url and self.livekit_api_key and self.livekit_api_secret.get_secret_value()
        )
