"""A loopback OpenAI: ``POST /v1/chat/completions`` (streamed as server-sent events) and
``POST /v1/audio/speech`` (a 24 kHz 16-bit mono tone as ``audio/pcm``).

Chat replies follow a script: the configured text in chunks, or, when a tool call is
configured, that call first and the text once the request carries the tool's output. Every
stream ends with a usage chunk and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.loopback import Faults, LoopbackServer, tone, tone_samples_for_text

SPEECH_SAMPLE_RATE_HZ = 24_000


@dataclass
class ToolCallScript:
    """One function call the model "decides" to make."""

    name: str
    arguments: dict[str, Any]


@dataclass
class OpenAIOptions(Faults):
    """The script and the faults; the test may change them while the server runs."""

    reply_chunks: list[str] = field(default_factory=lambda: ["Hello", " from", " loopback."])
    """The assistant's text, one SSE chunk per item."""
    tool_call: ToolCallScript | None = None
    """Called whenever the request's last message is not a tool result."""
    prompt_tokens: int | None = None
    """Reported input tokens; None estimates them from the request (4 characters a token)."""
    completion_tokens: int | None = None
    """Reported output tokens; None counts the streamed chunks."""
    chunk_delay_s: float = 0.0
    """Pause between SSE chunks, to look like a model generating."""
    ms_per_char: float = 30.0
    """Speech length: this much tone per character of input text."""
    tone_hz: float = 440.0
    honor_sse_speech: bool = False
    """Answer ``stream_format: "sse"`` speech requests as OpenAI does (``speech.audio.delta``
    events); by default every speech request gets a plain ``audio/pcm`` body, as
    OpenAI-compatible servers do."""


class OpenAIServer(LoopbackServer):
    """OpenAI's chat-completions and speech endpoints on 127.0.0.1.

    Pass ``base_url`` (it ends in ``/v1``) to ``openai.LLM`` and ``openai.TTS``.
    """

    def __init__(self, options: OpenAIOptions | None = None) -> None:
        self.options = options or OpenAIOptions()
        super().__init__(self.options)
        self.chat_requests: list[dict[str, Any]] = []
        """JSON bodies of every chat-completions request, faulted ones included."""
        self.speech_requests: list[dict[str, Any]] = []
        """JSON bodies of every speech request, faulted ones included."""
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the value for the plugins' and Settings' base_url."""
        return self.root_url + "/v1"

    @property
    def speech_texts(self) -> list[str]:
        """The ``input`` of every speech request, in order."""
        return [str(r.get("input", "")) for r in self.speech_requests]

    def tool_outputs(self) -> list[str]:
        """Contents of the ``tool`` messages in every chat request, in order."""
        return [
            str(m.get("content", ""))
            for r in self.chat_requests
            for m in r.get("messages", [])
            if m.get("role") == "tool"
        ]

    def speech_pcm(self, text: str) -> bytes:
        """Exactly the audio bytes this server speaks for ``text``."""
        n = tone_samples_for_text(text, SPEECH_SAMPLE_RATE_HZ, self.options.ms_per_char)
        return tone(n, SPEECH_SAMPLE_RATE_HZ, freq_hz=self.options.tone_hz).tobytes()

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)

    # -- chat completions -----------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chat_requests.append(body)
        faults = self._take_faults()
        if (early := await self._before_response(request, faults, _error_body())) is not None:
            return early
        if not body.get("stream"):
            return web.json_response(
                _error_body("the loopback server only streams (set stream=true)"), status=400
            )

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.headers["x-request-id"] = f"req_loopback_{len(self.chat_requests)}"
        await resp.prepare(request)
        if faults is not None and faults.stall_s > 0:
            await asyncio.sleep(faults.stall_s)

        async def event(payload: str) -> None:
            await resp.write(f"data: {payload}\n\n".encode())
            if self.options.chunk_delay_s > 0:
                await asyncio.sleep(self.options.chunk_delay_s)

        if faults is not None and faults.garbage is not None:
            await event("{ this is not json" if faults.garbage == "not_json" else '{"oops": 1}')
            await event("[DONE]")
            await resp.write_eof()
            return resp

        completion_id = f"chatcmpl-loopback{next(self._ids)}"
        model = str(body.get("model", "loopback"))
        messages = body.get("messages", [])
        deltas = self._script(messages)
        await event(_chunk(completion_id, model, {"role": "assistant", "content": ""}))
        limit = len(deltas) - 1
        if faults is not None and faults.drop_after_fraction is not None:
            limit = int(limit * faults.drop_after_fraction)
        for delta in deltas[:limit]:
            await event(_chunk(completion_id, model, delta))
        if limit < len(deltas) - 1:
            self._drop(request)  # a stream that dies mid-reply
            return resp
        finish_reason = deltas[-1]["finish_reason"]
        await event(_chunk(completion_id, model, {}, finish_reason=finish_reason))
        # the plugin always asks for usage (stream_options.include_usage); OpenAI sends it
        # last, with no choices
        prompt_tokens = self.options.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = max(1, len(json.dumps(messages)) // 4)
        completion_tokens = self.options.completion_tokens
        if completion_tokens is None:
            completion_tokens = len(deltas) - 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        await event(_chunk(completion_id, model, None, usage=usage))
        await event("[DONE]")
        await resp.write_eof()
        return resp

    def _script(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The deltas to stream; the last item only carries the finish reason."""
        answered_tool = bool(messages) and messages[-1].get("role") == "tool"
        call = self.options.tool_call
        if call is not None and not answered_tool:
            args = json.dumps(call.arguments)
            # OpenAI streams the name first, then the arguments in fragments
            pieces = [args[i : i + 8] for i in range(0, len(args), 8)] or [""]
            call_id = f"call_loopback{next(self._ids)}"
            deltas: list[dict[str, Any]] = [
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            ]
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces
            ]
            return [*deltas, {"finish_reason": "tool_calls"}]
        text = [{"content": chunk} for chunk in self.options.reply_chunks]
        return [*text, {"finish_reason": "stop"}]

    async def _models(self, request: web.Request) -> web.Response:
        # the LLM plugin's prewarm lists models
        model = {"id": "loopback", "object": "model", "created": 0, "owned_by": "loopback"}
        return web.json_response({"object": "list", "data": [model]})

    # -- speech -----------------------------------------------------------------------

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.speech_requests.append(body)
        faults = self._take_faults()
        if (early := await self._before_response(request, faults, _error_body())) is not None:
            return early
        fmt = body.get("response_format", "mp3")
        sse = self.options.honor_sse_speech and body.get("stream_format") == "sse"
        if fmt != "pcm" and not sse:
            return web.json_response(
                _error_body(f"the loopback server speaks only pcm, not {fmt!r}"), status=400
            )

        content_type = "text/event-stream" if sse else "audio/pcm"
        if faults is not None and faults.garbage is not None:
            content_type = "text/event-stream" if sse else "application/json"
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        if faults is not None and faults.stall_s > 0:
            await asyncio.sleep(faults.stall_s)
        if faults is not None and faults.garbage is not None:
            junk = "{ this is not json" if faults.garbage == "not_json" else '{"oops": 1}'
            await resp.write((f"data: {junk}\n\n" if sse else junk).encode())
            await resp.write_eof()
            return resp

        pcm = self.speech_pcm(str(body.get("input", "")))
        step = SPEECH_SAMPLE_RATE_HZ // 10 * 2  # 100 ms per write, like a streamed body
        if not sse:
            if await self._write_streamed(request, resp, pcm, faults, piece_bytes=step):
                await resp.write_eof()
            return resp
        for i in range(0, len(pcm), step):
            piece = pcm[i : i + step]
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        tokens = len(str(body.get("input", ""))) // 4 + 1
        done = {
            "type": "speech.audio.done",
            "usage": {
                "input_tokens": tokens,
                "output_tokens": len(pcm) // 2 // 480,
                "total_tokens": tokens + len(pcm) // 2 // 480,
            },
        }
        await resp.write(f"data: {json.dumps(done)}\n\n".encode())
        await resp.write_eof()
        return resp


def _chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any] | None,
    *,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> str:
    """One ``chat.completion.chunk`` as JSON; ``delta=None`` makes the choice-less usage chunk."""
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    )
    return json.dumps(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_loopback",
            "choices": choices,
            "usage": usage,
        }
    )


def _error_body(message: str = "injected fault") -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
