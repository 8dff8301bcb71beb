"""Shared fixtures: real models loaded once per test session, caller audio helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from agent.wav_io import CALLER_SAMPLE_RATE_HZ, load_caller_audio

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def vad_model():  # type: ignore[no-untyped-def]
    """Real Silero VAD (its ONNX model ships in the plugin's wheel)."""
    from agent.pipeline import load_vad

    return load_vad()


@pytest.fixture(scope="session")
def sample_wav_pcm() -> np.ndarray:
    """The corpus telephone conversation, 16 kHz mono int16."""
    return load_caller_audio(DATA_DIR / "sample.wav")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * CALLER_SAMPLE_RATE_HZ), dtype=np.int16)


@pytest.fixture(scope="session")
def piper_caller():  # type: ignore[no-untyped-def]
    """Renders a caller line with the local Piper voice, as 16 kHz mono int16.

    For domain phrases ("my internet is down") that the real corpus does not contain;
    tests that use it say so.
    """
    from plugins.local_tts import PiperOptions, PiperTTS

    # noiseless: Piper otherwise draws its noise at random, and Whisper tiny.en mishears
    # some renderings ("outage in" as "out of june"), which made whole-call tests flaky
    tts = PiperTTS(PiperOptions.bundled(noise_scale=0.0, noise_w_scale=0.0))

    def render(text: str) -> np.ndarray:
        pcm = np.frombuffer(tts.render_pcm(text), dtype=np.int16).astype(np.float32)
        return soxr.resample(pcm, tts.sample_rate, CALLER_SAMPLE_RATE_HZ).astype(np.int16)

    return render


from tests.api_client import (  # noqa: E402,F401  (the sidecar app)
    shared_database_url,
    shared_sidecar,
    sidecar_api,
)
from tests.loopback.fixtures import *  # noqa: E402,F403  (provider loopback servers)
from tests.pulse import pulse_null_sinks  # noqa: E402,F401  (PulseAudio null sinks)
from tests.services import (  # noqa: E402,F401  (shared fixtures)
    database_url,
    engine,
    postgres_admin_url,
    redis_prefix,
    redis_server_url,
)
