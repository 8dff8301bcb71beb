"""A loopback Deepgram: the streaming ``GET /v1/listen`` WebSocket (linear16 audio in,
``SpeechStarted`` / ``Results`` / ``Metadata`` JSON out).

The "recognizer" is a script: once the client has sent ``utterance_bytes`` of audio louder
than ``speech_rms_threshold`` it has "heard" the next scripted transcript. It announces
``SpeechStarted`` at the first loud chunk, an interim ``Results`` (the first half of the
words, ``is_final`` false) halfway, and the final ``Results`` (``is_final`` and
``speech_final`` true) at the end. Silence does not count, so a session's idle stream does
not trigger it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.loopback import Faults, LoopbackServer


@dataclass
class DeepgramOptions(Faults):
    """The script and the faults; the test may change them while the server runs."""

    transcripts: list[str] = field(default_factory=lambda: ["hello world"])
    """Heard in order, one per utterance; once used up, audio gets no more results."""
    confidence: float = 0.98
    utterance_bytes: int = 32_000
    """Loud audio per utterance: 32 000 bytes is 1 s of 16 kHz 16-bit mono."""
    speech_rms_threshold: float = 100.0
    """A chunk of audio counts as speech when its RMS (16-bit scale) reaches this."""
    final_after_silence_s: float | None = None
    """Send the final result once the speech has been followed by this much silence (as
    real Deepgram's endpointing does), instead of after ``utterance_bytes`` of speech."""


@dataclass
class DeepgramConnection:
    """What one WebSocket connection received."""

    query: dict[str, str]
    authorization: str | None
    audio_bytes: int = 0
    speech_bytes: int = 0
    control: list[str] = field(default_factory=list)
    """The ``type`` of every JSON message: KeepAlive, Finalize, CloseStream."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """The JSON messages this server sent on the connection (garbage not included)."""
    finals: list[str] = field(default_factory=list)
    """Transcripts of the final results sent, garbled ones included."""


@dataclass
class _Utterance:
    transcript: str
    start_s: float
    heard: int = 0
    interim_sent: bool = False
    silence: int = 0
    """Bytes of silence since its last speech."""


class DeepgramServer(LoopbackServer):
    """Deepgram's live transcription WebSocket on 127.0.0.1.

    Pass ``listen_url`` (``base_url + "/v1/listen"``) to ``deepgram.STT(base_url=...)``.
    """

    def __init__(self, options: DeepgramOptions | None = None) -> None:
        self.options = options or DeepgramOptions()
        super().__init__(self.options)
        self.connections: list[DeepgramConnection] = []
        self.rejected = 0
        """WebSocket upgrades refused with the injected ``status``."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the plugin's base_url is this plus ``/v1/listen``)."""
        return self.root_url

    @property
    def listen_url(self) -> str:
        """The value for ``deepgram.STT(base_url=...)`` and ``Settings.deepgram_base_url``."""
        return self.base_url + "/v1/listen"

    @property
    def audio_bytes(self) -> int:
        """Audio bytes received over all connections."""
        return sum(c.audio_bytes for c in self.connections)

    @property
    def control_messages(self) -> list[str]:
        """Control message types received over all connections, in order per connection."""
        return [t for c in self.connections for t in c.control]

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        faults = self._take_faults()
        error = {"err_code": "INTERNAL_SERVER_ERROR", "err_msg": "injected fault"}
        if (early := await self._before_response(request, faults, error)) is not None:
            self.rejected += 1
            return early
        ws = web.WebSocketResponse(heartbeat=None)
        request_id = str(uuid.uuid4())
        # real Deepgram names the request in its upgrade response headers
        ws.headers["dg-request-id"] = request_id
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # the client gave up during the handshake (a slow-first-byte test's timeout)
            return ws
        conn = DeepgramConnection(
            query=dict(request.query), authorization=request.headers.get("Authorization")
        )
        self.connections.append(conn)
        self._track(ws, request)
        try:
            await self._serve(ws, request, conn, faults, request_id)
        finally:
            self._untrack(ws, request)
        return ws

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        conn: DeepgramConnection,
        faults: Faults | None,
        request_id: str,
    ) -> None:
        sample_rate = int(conn.query.get("sample_rate", "16000"))
        channels = int(conn.query.get("channels", "1"))
        bytes_per_s = 2 * sample_rate * channels
        utterance: _Utterance | None = None
        stall_pending = faults is not None and faults.stall_s > 0

        async def send(msg: dict[str, Any]) -> None:
            nonlocal stall_pending
            if stall_pending:
                assert faults is not None
                stall_pending = False
                await asyncio.sleep(faults.stall_s)
            if faults is not None and faults.garbage == "not_json":
                await ws.send_str("{ this is not json")
                return
            if faults is not None and faults.garbage == "wrong_schema":
                msg = {"type": msg["type"], "unexpected": True}
            conn.sent.append(msg)
            await ws.send_str(json.dumps(msg))

        def results(
            u: _Utterance, *, words: list[str], final: bool, **extra: Any
        ) -> dict[str, Any]:
            """A Results message for ``u`` up to now; a final one is also recorded, so a
            test sees it even when garbage replaces it on the wire."""
            end_s = conn.audio_bytes / bytes_per_s
            if final and u.transcript:
                conn.finals.append(u.transcript)
            return _results(
                u.transcript if final else " ".join(words),
                words=words,
                start_s=u.start_s,
                end_s=end_s,
                confidence=self.options.confidence,
                is_final=final,
                request_id=request_id,
                **extra,
            )

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if faults is not None and faults.silent_close:
                    self._drop(request)
                    return
                data: bytes = msg.data
                conn.audio_bytes += len(data)
                endpointing = self.options.final_after_silence_s
                if not self._is_speech(data):
                    if utterance is not None and endpointing is not None:
                        utterance.silence += len(data)
                        if utterance.silence >= endpointing * bytes_per_s:
                            words = utterance.transcript.split()
                            await send(
                                results(utterance, words=words, final=True, speech_final=True)
                            )
                            utterance = None
                    continue
                conn.speech_bytes += len(data)
                if utterance is None:
                    if not self.options.transcripts:
                        continue
                    start_s = (conn.audio_bytes - len(data)) / bytes_per_s
                    utterance = _Utterance(self.options.transcripts.pop(0), start_s)
                    await send({"type": "SpeechStarted", "channel": [0], "timestamp": start_s})
                utterance.heard += len(data)
                utterance.silence = 0
                words = utterance.transcript.split()
                halfway = utterance.heard * 2 >= self.options.utterance_bytes
                if not utterance.interim_sent and halfway:
                    utterance.interim_sent = True
                    half = words[: max(1, len(words) // 2)]
                    await send(results(utterance, words=half, final=False))
                if endpointing is None and utterance.heard >= self.options.utterance_bytes:
                    await send(results(utterance, words=words, final=True, speech_final=True))
                    utterance = None
            elif msg.type == WSMsgType.TEXT:
                kind = _message_type(msg.data)
                conn.control.append(kind)
                if faults is not None and faults.silent_close:
                    self._drop(request)
                    return
                if kind == "Finalize":
                    if utterance is not None:
                        words = utterance.transcript.split()
                        await send(
                            results(
                                utterance,
                                words=words,
                                final=True,
                                speech_final=True,
                                from_finalize=True,
                            )
                        )
                        utterance = None
                    else:
                        # nothing pending: Deepgram still acknowledges with an empty final
                        empty = _Utterance("", conn.audio_bytes / bytes_per_s)
                        await send(results(empty, words=[], final=True, from_finalize=True))
                elif kind == "CloseStream":
                    await send(_metadata(request_id, conn.audio_bytes / bytes_per_s))
                    await ws.close()
                    return
            else:
                return

    def _is_speech(self, data: bytes) -> bool:
        samples = np.frombuffer(data[: len(data) // 2 * 2], dtype=np.int16)
        if samples.size == 0:
            return False
        rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
        return rms >= self.options.speech_rms_threshold


def _message_type(text: str) -> str:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        return "<not json>"
    return str(msg.get("type", "<no type>")) if isinstance(msg, dict) else "<not an object>"


def _results(
    transcript: str,
    *,
    words: list[str],
    start_s: float,
    end_s: float,
    confidence: float,
    is_final: bool,
    request_id: str,
    speech_final: bool = False,
    from_finalize: bool = False,
) -> dict[str, Any]:
    """A ``Results`` message shaped like Deepgram's, words spread evenly over the audio."""
    step = (end_s - start_s) / max(1, len(words))
    word_items = [
        {
            "word": w.lower().strip(".,?!"),
            "start": round(start_s + i * step, 3),
            "end": round(start_s + (i + 1) * step, 3),
            "confidence": confidence,
            "punctuated_word": w,
        }
        for i, w in enumerate(words)
    ]
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round(end_s - start_s, 3),
        "start": round(start_s, 3),
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {"transcript": transcript, "confidence": confidence, "words": word_items}
            ]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": {"name": "loopback", "version": "0", "arch": "loopback"},
            "model_uuid": "00000000-0000-0000-0000-000000000000",
        },
    }


def _metadata(request_id: str, duration_s: float) -> dict[str, Any]:
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": "",
        "created": "1970-01-01T00:00:00.000Z",
        "duration": round(duration_s, 3),
        "channels": 1,
        "models": ["00000000-0000-0000-0000-000000000000"],
    }
