"""The TTS chain's last tier: an agent's fixed lines, rendered once by the local voice.

When every voice has failed, the caller still hears something true: a fixed line the
reply contains (the greeting, the goodbye, the trouble line: rendered ahead, cached for
the process) or, for any other sentence, the trouble line once per call ("I'm having
trouble right now ..."), then short silences. A sentence is looked up the way the session
cuts it (livekit's blingfire sentence tokenizer), case and spacing ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from livekit.agents import APIConnectOptions, tokenize, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

from plugins.local_tts import PiperTTS

log = logging.getLogger("plugins.phrasebook")

SILENCE_S = 0.1

_RENDERED: dict[tuple[str, str], bytes] = {}
"""(voice model, normalised sentence) -> 16-bit PCM at the voice's rate; per process."""
_RENDER_LOCK = threading.Lock()


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences as the session cuts a reply for its TTS."""
    return [s for s in tokenize.blingfire.SentenceTokenizer().tokenize(text) if s.strip()]


class PhrasebookTTS(tts.TTS):
    """``lines``: the fixed lines to render; ``trouble_line``: said once per call for a
    sentence the book does not hold (it is rendered too)."""

    def __init__(self, voice: PiperTTS, lines: Iterable[str], *, trouble_line: str) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=voice.sample_rate,
            num_channels=1,
        )
        self._voice = voice
        self.trouble_line = trouble_line
        self._sentences = [s for line in (*lines, trouble_line) for s in sentences(line)]
        self._trouble_said = False

    @property
    def model(self) -> str:
        return f"phrasebook/{self._voice.model}"

    @property
    def provider(self) -> str:
        return "phrasebook"

    @property
    def ready(self) -> bool:
        return all((self._voice.model, _key(s)) in _RENDERED for s in self._sentences)

    def prepare(self) -> None:
        """Render the sentences not rendered yet (blocking; run it in a thread). Each is
        rendered once per process, whichever call asks first."""
        for sentence in self._sentences:
            key = (self._voice.model, _key(sentence))
            with _RENDER_LOCK:
                if key in _RENDERED:
                    continue
            pcm = self._voice.render_pcm(sentence)
            with _RENDER_LOCK:
                _RENDERED[key] = pcm

    def audio_for(self, text: str) -> bytes:
        """The PCM this tier speaks for ``text``."""
        pcm = _RENDERED.get((self._voice.model, _key(text)))
        if pcm is not None:
            return pcm
        if not self._trouble_said:
            trouble = [
                _RENDERED.get((self._voice.model, _key(s))) for s in sentences(self.trouble_line)
            ]
            if all(part is not None for part in trouble):
                self._trouble_said = True
                log.warning("no voice is left: saying the trouble line", extra={"text": text})
                return b"".join(part for part in trouble if part is not None)
        return bytes(2 * int(self.sample_rate * SILENCE_S))

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> PhrasebookStream:
        return PhrasebookStream(tts=self, input_text=text, conn_options=conn_options)


class PhrasebookStream(tts.ChunkedStream):
    def __init__(
        self, *, tts: PhrasebookTTS, input_text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._book = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._book.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(self._book.audio_for(self._input_text))
        output_emitter.flush()
