"""Loopback stand-ins for the cloud providers, speaking their real wire protocols on 127.0.0.1.

Each server (Deepgram, OpenAI, Anthropic, ElevenLabs) is an aiohttp application on a random
free port. It answers from a script, records what the client sent, and can inject the faults a real
provider shows: a refused connection, an HTTP error status, a slow first byte, a silent
close, and garbage frames. The shared pieces live here: :class:`Faults`, the
:class:`LoopbackServer` life cycle, and the deterministic :func:`tone` the TTS servers speak.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import numpy as np
from aiohttp import web

Garbage = Literal["not_json", "wrong_schema"]

LOOPBACK_HOST = "127.0.0.1"


@dataclass
class Faults:
    """Faults a test can switch on at any time.

    A request (HTTP) or connection (WebSocket) takes the faults when it starts, unless
    ``fault_count`` has run out. A WebSocket connection that took them keeps reading
    ``garbage`` and ``silent_close`` live, so a test can switch those mid-connection.
    """

    refuse: bool = False
    """``base_url`` points at a port nobody listens on (read it after setting this)."""
    status: int | None = None
    """Answer with this HTTP status and a provider-style JSON error body (WebSocket:
    the upgrade is refused with it)."""
    retry_after: str | None = None
    """Sent as the ``Retry-After`` header with ``status`` (seconds or an HTTP date)."""
    first_byte_delay_s: float = 0.0
    """Wait this long before the response starts (HTTP status line, WebSocket handshake)."""
    stall_s: float = 0.0
    """Wait this long after the headers or handshake before the first body chunk or message."""
    silent_close: bool = False
    """Read the request (WebSocket: accept and read the first client message), then drop the
    TCP connection without a byte of response or a close frame."""
    garbage: Garbage | None = None
    """Send this instead of every scripted message or body: ``"not_json"`` (unparseable
    text) or ``"wrong_schema"`` (valid JSON the client does not expect)."""
    drop_after_fraction: float | None = None
    """Send this fraction (0-1) of a streamed body (a TTS endpoint's audio, an LLM's reply
    chunks), then drop the TCP connection: a stream that dies mid-utterance."""
    fault_count: int | None = None
    """How many more requests or connections get the faults; ``None`` means all of them.
    Counts down, so a test can fail the first attempt and let a retry through."""


class LoopbackServer:
    """An aiohttp server on 127.0.0.1 and a random free port; subclasses add the routes.

    Use as ``async with Server() as server:`` or call :meth:`start` and :meth:`aclose`.
    """

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._unused_port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._transports: set[asyncio.BaseTransport] = set()

    # -- life cycle -----------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port; returns self once connections are accepted."""
        if self._runner is not None:
            return self
        app = web.Application()
        self._add_routes(app)
        # a short shutdown timeout: a test's server must not hold the suite for 60 s
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK_HOST, 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._unused_port = _unused_port()
        return self

    async def aclose(self) -> None:
        """Close open WebSockets and connections and stop listening; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for ws in list(self._sockets):
            # a client blocked on receive() must see a close, not a hang; a client that
            # never answers the close frame must not hang the test either
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(ws.close(code=1001), timeout=1.0)
        for transport in list(self._transports):
            transport.close()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` of this server, or of an unused port while ``refuse``."""
        if self._port is None or self._unused_port is None:
            raise RuntimeError("server not started")
        port = self._unused_port if self._faults.refuse else self._port
        return f"http://{LOOPBACK_HOST}:{port}"

    # -- faults ---------------------------------------------------------------------

    def _take_faults(self) -> Faults | None:
        """The faults for the request that is starting now, or None if it runs clean."""
        f = self._faults
        if f.fault_count is not None:
            if f.fault_count <= 0:
                return None
            f.fault_count -= 1
        return f

    async def _before_response(
        self, request: web.Request, faults: Faults | None, error_body: Mapping[str, object]
    ) -> web.StreamResponse | None:
        """Apply the faults that act before any response byte: the slow first byte, the
        error status and the silent close. Returns the response to send instead of the
        scripted one, or None to go on."""
        if faults is None:
            return None
        if faults.first_byte_delay_s > 0:
            await asyncio.sleep(faults.first_byte_delay_s)
        if faults.status is not None:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
            return web.json_response(dict(error_body), status=faults.status, headers=headers)
        if faults.silent_close and not request.headers.get("Upgrade"):
            await request.read()
            self._drop(request)
            # aiohttp writes nothing to a closed transport; the client sees a bare EOF
            return web.Response()
        return None

    async def _write_streamed(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        body: bytes,
        faults: Faults | None,
        *,
        piece_bytes: int,
    ) -> bool:
        """Write ``body`` in pieces of ``piece_bytes`` (a streamed response); with
        ``drop_after_fraction``, stop after that much and drop the connection. Returns
        False when it dropped (the response must not be ended)."""
        limit = len(body)
        if faults is not None and faults.drop_after_fraction is not None:
            limit = int(len(body) * faults.drop_after_fraction)
        for i in range(0, limit, piece_bytes):
            await resp.write(body[i : min(i + piece_bytes, limit)])
        if limit < len(body):
            self._drop(request)
            return False
        return True

    def _drop(self, request: web.Request) -> None:
        """Close the TCP connection under ``request`` without a response or close frame."""
        if request.transport is not None:
            request.transport.abort()

    def _track(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._sockets.add(ws)
        if request.transport is not None:
            self._transports.add(request.transport)

    def _untrack(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._sockets.discard(ws)
        if request.transport is not None:
            self._transports.discard(request.transport)


def _unused_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago and has no listener now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK_HOST, 0))
        return int(s.getsockname()[1])


def tone(
    num_samples: int,
    sample_rate: int,
    *,
    freq_hz: float = 440.0,
    amplitude: float = 0.3,
    start_sample: int = 0,
) -> np.ndarray:
    """``num_samples`` of a sine as 16-bit mono, starting at ``start_sample`` of an endless
    tone: consecutive calls with advancing ``start_sample`` join without a click, and equal
    arguments give byte-identical audio."""
    n = np.arange(start_sample, start_sample + num_samples, dtype=np.float64)
    wave = amplitude * np.sin(2 * np.pi * freq_hz * n / sample_rate)
    return np.round(wave * 32767).astype(np.int16)


def tone_samples_for_text(text: str, sample_rate: int, ms_per_char: float) -> int:
    """How many samples the TTS servers speak for ``text``: ``ms_per_char`` per character
    of the stripped text, so longer text gives proportionally longer audio."""
    return int(len(text.strip()) * ms_per_char / 1000 * sample_rate)
