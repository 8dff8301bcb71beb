"""A loopback ElevenLabs: the multi-context text-to-speech WebSocket
(``/v1/text-to-speech/{voice_id}/multi-stream-input``) and the HTTP streaming endpoint
(``POST /v1/text-to-speech/{voice_id}/stream``).

Speech is a tone, ``ms_per_char`` per character, in the ``output_format`` the client asks
for: ``pcm_<rate>`` as raw 16-bit mono, ``mp3_<rate>_<kbps>`` encoded with LAME (through
PyAV). On the WebSocket, text buffered in a context is spoken when the client flushes or
closes the context; closing it also sends ``isFinal``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import av
from aiohttp import WSMsgType, web

from tests.loopback import Faults, LoopbackServer, tone, tone_samples_for_text


@dataclass
class ElevenLabsOptions(Faults):
    """The script and the faults; the test may change them while the server runs."""

    ms_per_char: float = 30.0
    tone_hz: float = 440.0
    message_ms: int = 200
    """Audio per WebSocket message: longer speech arrives in several messages."""


@dataclass
class ElevenLabsContext:
    """One synthesis context on a WebSocket: what it was asked to say."""

    context_id: str
    text: str = ""
    """All text received for the context (the init packet's single space stripped)."""
    flushes: int = 0
    closed: bool = False
    audio_bytes: int = 0
    """Encoded audio bytes sent for the context."""


@dataclass
class ElevenLabsConnection:
    """What one WebSocket connection received."""

    voice_id: str
    query: dict[str, str]
    api_key: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    contexts: dict[str, ElevenLabsContext] = field(default_factory=dict)


class _Voice:
    """Turns text into audio bytes of one output format, keeping state across calls so one
    context's audio is one continuous stream (a single MP3 bitstream, an unbroken tone)."""

    def __init__(self, output_format: str, options: ElevenLabsOptions) -> None:
        parts = output_format.split("_")
        if parts[0] not in ("pcm", "mp3") or len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"unsupported output_format {output_format!r}")
        self.sample_rate = int(parts[1])
        self._options = options
        self._position = 0
        self._encoder: Any = None
        if parts[0] == "mp3":
            kbps = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 128
            self._encoder = av.CodecContext.create("libmp3lame", "w")
            self._encoder.sample_rate = self.sample_rate
            self._encoder.layout = "mono"
            self._encoder.format = "s16p"
            self._encoder.bit_rate = kbps * 1000

    @property
    def mime_type(self) -> str:
        return "audio/mpeg" if self._encoder is not None else "audio/pcm"

    def samples_for(self, text: str) -> int:
        return tone_samples_for_text(text, self.sample_rate, self._options.ms_per_char)

    def speak(self, text: str) -> bytes:
        """Audio for ``text``, continuing where the previous call ended."""
        n = self.samples_for(text)
        start = self._position
        pcm = tone(n, self.sample_rate, freq_hz=self._options.tone_hz, start_sample=start)
        self._position += n
        if self._encoder is None:
            return pcm.tobytes()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16p", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = start
        return b"".join(bytes(p) for p in self._encoder.encode(frame))

    def finish(self) -> bytes:
        """Whatever the encoder still holds (MP3 only)."""
        if self._encoder is None:
            return b""
        return b"".join(bytes(p) for p in self._encoder.encode(None))


class ElevenLabsServer(LoopbackServer):
    """ElevenLabs' text-to-speech endpoints on 127.0.0.1.

    Pass ``base_url`` (it ends in ``/v1``) to ``elevenlabs.TTS(base_url=...)``.
    """

    def __init__(self, options: ElevenLabsOptions | None = None) -> None:
        self.options = options or ElevenLabsOptions()
        super().__init__(self.options)
        self.connections: list[ElevenLabsConnection] = []
        self.http_requests: list[dict[str, Any]] = []
        """JSON bodies of the HTTP ``/stream`` requests."""
        self.rejected = 0
        """WebSocket upgrades refused (the injected ``status``, an unknown output format)."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the value for the plugin's and Settings' base_url."""
        return self.root_url + "/v1"

    @property
    def contexts(self) -> list[ElevenLabsContext]:
        """Every context on every connection, in the order they were opened."""
        return [ctx for c in self.connections for ctx in c.contexts.values()]

    @property
    def texts(self) -> list[str]:
        """The text of every context, whitespace-normalized, in the order they were opened."""
        return [" ".join(ctx.text.split()) for ctx in self.contexts]

    def expected_pcm(self, text: str, sample_rate: int) -> bytes:
        """The raw audio a ``pcm_<sample_rate>`` context speaks for ``text`` in one flush."""
        n = tone_samples_for_text(text, sample_rate, self.options.ms_per_char)
        return tone(n, sample_rate, freq_hz=self.options.tone_hz).tobytes()

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._multi)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._stream)

    # -- HTTP streaming ----------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.http_requests.append(body)
        faults = self._take_faults()
        if (early := await self._before_response(request, faults, _error_body())) is not None:
            return early
        try:
            voice = _Voice(request.query.get("output_format", "mp3_44100_128"), self.options)
        except ValueError as exc:
            return web.json_response(_error_body(str(exc)), status=422)
        garbage = faults is not None and faults.garbage is not None
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json" if garbage else voice.mime_type}
        )
        await resp.prepare(request)
        if faults is not None and faults.stall_s > 0:
            await asyncio.sleep(faults.stall_s)
        if garbage:
            await resp.write(b"{ this is not audio")
        else:
            audio = voice.speak(str(body.get("text", ""))) + voice.finish()
            piece = max(1, len(audio) // 10)  # streamed in ten writes
            if not await self._write_streamed(request, resp, audio, faults, piece_bytes=piece):
                return resp
        await resp.write_eof()
        return resp

    # -- multi-context WebSocket ---------------------------------------------------------

    async def _multi(self, request: web.Request) -> web.StreamResponse:
        faults = self._take_faults()
        if (early := await self._before_response(request, faults, _error_body())) is not None:
            self.rejected += 1
            return early
        output_format = request.query.get("output_format", "mp3_44100_128")
        try:
            _Voice(output_format, self.options)
        except ValueError as exc:
            self.rejected += 1
            return web.json_response(_error_body(str(exc)), status=422)

        ws = web.WebSocketResponse(heartbeat=None)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # the client gave up during the handshake (a slow-first-byte test's timeout)
            return ws
        conn = ElevenLabsConnection(
            voice_id=request.match_info["voice_id"],
            query=dict(request.query),
            api_key=request.headers.get("xi-api-key"),
        )
        self.connections.append(conn)
        self._track(ws, request)
        try:
            await self._serve(ws, request, conn, output_format, faults)
        finally:
            self._untrack(ws, request)
        return ws

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        conn: ElevenLabsConnection,
        output_format: str,
        faults: Faults | None,
    ) -> None:
        voices: dict[str, _Voice] = {}
        pending: dict[str, str] = {}  # text not yet spoken, per context
        clock_ms: dict[str, float] = {}  # alignment clock, per context
        stall_pending = faults is not None and faults.stall_s > 0

        async def send(msg: dict[str, Any]) -> None:
            nonlocal stall_pending
            if stall_pending:
                assert faults is not None
                stall_pending = False
                await asyncio.sleep(faults.stall_s)
            if faults is not None and faults.garbage == "not_json":
                await ws.send_str("{ this is not json")
            elif faults is not None and faults.garbage == "wrong_schema":
                await ws.send_str(json.dumps({"unexpected": True}))
            else:
                await ws.send_str(json.dumps(msg))

        async def speak(ctx: ElevenLabsContext, text: str, *, final: bool) -> None:
            voice = voices[ctx.context_id]
            audio = voice.speak(text) if text.strip() else b""
            if final:
                audio += voice.finish()
            ctx.audio_bytes += len(audio)
            start_ms = clock_ms.get(ctx.context_id, 0.0)
            duration_ms = voice.samples_for(text) / voice.sample_rate * 1000
            clock_ms[ctx.context_id] = start_ms + duration_ms
            alignment = _alignment(text, start_ms, duration_ms)
            step = self._message_bytes(voice, audio)
            for i in range(0, len(audio), step):
                msg: dict[str, Any] = {
                    "audio": base64.b64encode(audio[i : i + step]).decode(),
                    "context_id": ctx.context_id,
                }
                if i == 0 and alignment is not None:
                    # timing for the whole text rides on its first audio message
                    msg["normalizedAlignment"] = alignment
                    msg["alignment"] = alignment
                await send(msg)

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                return
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await ws.close(code=1007, message=b"invalid JSON")
                return
            conn.messages.append(data)
            if faults is not None and faults.silent_close:
                self._drop(request)
                return
            if data.get("close_socket"):
                await ws.close()
                return
            context_id = str(data.get("context_id", ""))
            if context_id not in conn.contexts:
                conn.contexts[context_id] = ElevenLabsContext(context_id)
                voices[context_id] = _Voice(output_format, self.options)
                pending[context_id] = ""
            ctx = conn.contexts[context_id]
            if ctx.closed:
                continue
            text = data.get("text")
            if isinstance(text, str):
                ctx.text += text
                pending[context_id] += text
            if data.get("flush"):
                ctx.flushes += 1
                text_now, pending[context_id] = pending[context_id], ""
                await speak(ctx, text_now, final=False)
            if data.get("close_context"):
                ctx.closed = True
                text_now, pending[context_id] = pending[context_id], ""
                await speak(ctx, text_now, final=True)
                await send({"isFinal": True, "context_id": context_id})
        # the client went away: nothing to answer

    def _message_bytes(self, voice: _Voice, audio: bytes) -> int:
        if voice.mime_type == "audio/pcm":
            return max(2, voice.sample_rate * self.options.message_ms // 1000 * 2)
        return max(1, len(audio))  # an encoded chunk is sent whole


def _alignment(text: str, start_ms: float, duration_ms: float) -> dict[str, Any] | None:
    """Character timing in ElevenLabs' shape: every character of ``text``, spaces included,
    gets an equal share of the audio, counted from the context's start."""
    if not text.strip():
        return None
    step = duration_ms / len(text)
    return {
        "chars": list(text),
        "charStartTimesMs": [round(start_ms + i * step) for i in range(len(text))],
        "charDurationsMs": [round(step)] * len(text),
    }


def _error_body(message: str = "injected fault") -> dict[str, Any]:
    return {"detail": {"status": "internal_error", "message": message}}
