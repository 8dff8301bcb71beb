"""A loopback Anthropic: ``POST /v1/messages`` streamed as server-sent events, as the
Messages API streams them (``message_start``, a content block per text or tool use with
its deltas, ``message_delta`` with the usage, ``message_stop``), and ``GET /v1/models``
for the plugin's prewarm.

Replies follow a script like the loopback OpenAI's: the configured text in chunks, or,
when a tool call is configured, that call first and the text once the request carries the
tool's result.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.loopback import Faults, LoopbackServer
from tests.loopback.openai_server import ToolCallScript


@dataclass
class AnthropicOptions(Faults):
    """The script and the faults; the test may change them while the server runs."""

    reply_chunks: list[str] = field(
        default_factory=lambda: ["Hello", " from", " the loopback", " Claude."]
    )
    """The assistant's text, one ``text_delta`` per item."""
    tool_call: ToolCallScript | None = None
    """Called whenever the request's last message carries no tool result."""
    chunk_delay_s: float = 0.0
    """Pause between events, to look like a model generating."""


class AnthropicServer(LoopbackServer):
    """Anthropic's Messages API on 127.0.0.1; pass ``base_url`` to the SDK's client."""

    def __init__(self, options: AnthropicOptions | None = None) -> None:
        self.options = options or AnthropicOptions()
        super().__init__(self.options)
        self.message_requests: list[dict[str, Any]] = []
        """JSON bodies of every messages request, faulted ones included."""
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the SDK adds ``/v1/messages`` itself."""
        return self.root_url

    def tool_results(self) -> list[str]:
        """The content of every ``tool_result`` block in every request, in order."""
        return [
            str(block.get("content", ""))
            for r in self.message_requests
            for m in r.get("messages", [])
            if isinstance(m.get("content"), list)
            for block in m["content"]
            if block.get("type") == "tool_result"
        ]

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.message_requests.append(body)
        faults = self._take_faults()
        error = {"type": "error", "error": {"type": "api_error", "message": "injected fault"}}
        if (early := await self._before_response(request, faults, error)) is not None:
            return early
        if not body.get("stream"):
            error["error"] = {"type": "invalid_request_error", "message": "stream only"}
            return web.json_response(error, status=400)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.headers["request-id"] = f"req_loopback_{len(self.message_requests)}"
        await resp.prepare(request)
        if faults is not None and faults.stall_s > 0:
            await asyncio.sleep(faults.stall_s)

        async def event(name: str, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await resp.write(f"event: {name}\ndata: {data}\n\n".encode())
            if self.options.chunk_delay_s > 0:
                await asyncio.sleep(self.options.chunk_delay_s)

        if faults is not None and faults.garbage is not None:
            junk = "{ this is not json" if faults.garbage == "not_json" else {"oops": 1}
            await event("message_start", junk)
            await resp.write_eof()
            return resp

        message_id = f"msg_loopback{next(self._ids)}"
        input_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": str(body.get("model", "loopback")),
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        answered_tool = _last_carries_tool_result(body.get("messages", []))
        call = self.options.tool_call
        if call is not None and not answered_tool:
            block = {
                "type": "tool_use",
                "id": f"toolu_loopback{next(self._ids)}",
                "name": call.name,
                "input": {},
            }
            args = json.dumps(call.arguments)
            deltas = [
                {"type": "input_json_delta", "partial_json": args[i : i + 8]}
                for i in range(0, len(args), 8)
            ]
            stop_reason = "tool_use"
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": t} for t in self.options.reply_chunks]
            stop_reason = "end_turn"
        if not deltas and block["type"] == "text":
            # an empty reply: no content block at all
            await self._finish(event, stop_reason, 0)
            await resp.write_eof()
            return resp

        await event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        limit = len(deltas)
        if faults is not None and faults.drop_after_fraction is not None:
            limit = int(len(deltas) * faults.drop_after_fraction)
        for delta in deltas[:limit]:
            await event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        if limit < len(deltas):
            self._drop(request)  # a stream that dies mid-reply
            return resp
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await self._finish(event, stop_reason, len(deltas))
        await resp.write_eof()
        return resp

    @staticmethod
    async def _finish(event: Any, stop_reason: str, output_tokens: int) -> None:
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await event("message_stop", {"type": "message_stop"})

    async def _models(self, request: web.Request) -> web.Response:
        model = {"type": "model", "id": "loopback", "display_name": "Loopback", "created_at": ""}
        return web.json_response(
            {"data": [model], "has_more": False, "first_id": "loopback", "last_id": "loopback"}
        )


def _last_carries_tool_result(messages: list[dict[str, Any]]) -> bool:
    if not messages or not isinstance(messages[-1].get("content"), list):
        return False
    return any(block.get("type") == "tool_result" for block in messages[-1]["content"])
