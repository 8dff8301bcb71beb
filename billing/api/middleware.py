"""ASGI middleware: request metrics, security headers, rate limits and the body size limit.

Pure ASGI (not ``BaseHTTPMiddleware``): they wrap ``send`` and ``receive`` and never buffer
a body, so a streamed recording download stays streamed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing.api.deps import service_token_matches
from billing.api.errors import error_response
from billing.api.metrics import SidecarMetrics
from billing.api.rate_limits import LimitName, RateLimits
from billing.config import SidecarConfig

logger = logging.getLogger(__name__)

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})

_API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # an API answers JSON or files: nothing in a response may load or run anything
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    # responses carry tenant data: no shared or browser cache may keep them
    "Cache-Control": "no-store",
}
# Swagger UI (FastAPI's /docs page) loads its script and stylesheet from jsDelivr, starts
# with an inline script and fetches /openapi.json; allow exactly that on the docs pages
_DOCS_HEADERS = {
    **_API_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src https://cdn.jsdelivr.net 'unsafe-inline'; "
        "style-src https://cdn.jsdelivr.net 'unsafe-inline'; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}


class SecurityHeadersMiddleware:
    """Adds :data:`_API_HEADERS` (or the docs pages' variant) to every HTTP response,
    leaving any header a route set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = _DOCS_HEADERS if scope["path"] in DOCS_PATHS else _API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnhandledErrorMiddleware:
    """Turns any exception a route lets escape into a JSON 500 (``ErrorBody``), answered
    from inside the other middleware, so it carries the security headers and is counted,
    and the connection stays usable. Starlette's own last resort answers plain text from
    outside every user middleware, then re-raises, and the server resets the connection.
    The exception is logged with its traceback; the client learns nothing of it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "unhandled error", extra={"path": scope["path"], "method": scope["method"]}
            )
            if response_started:  # too late for a status: the server ends the response
                raise
            await error_response(500, "internal error; it has been logged")(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts every response by method, route template (not the raw path: ids would make
    unbounded label sets) and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: SidecarMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_request_seconds.labels(method, route).observe(
                time.perf_counter() - started
            )


WEBHOOK_PATH_PREFIX = "/v1/payments/webhook/"


class RateLimitMiddleware:
    """At most ``rate_limit_per_ip`` requests per client IP in each
    ``rate_limit_window_s`` (payment webhooks: ``rate_limit_webhook_per_ip``, counted
    apart); beyond that, 429 with Retry-After. (The per-key limit is checked once the key
    has authenticated: see ``billing.api.rate_limits``.)

    Workers calling ``/internal`` with the right service token are not limited: they are
    ours, and a busy worker's heartbeats and billing events must never be dropped. The
    client IP is the connection's peer: behind a load balancer, run uvicorn with
    ``--proxy-headers --forwarded-allow-ips`` set to the balancer's address.
    """

    def __init__(self, app: ASGIApp, limits: RateLimits, config: SidecarConfig) -> None:
        self.app = app
        self.limits = limits
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_trusted_worker(scope):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        name: LimitName = "webhook" if scope["path"].startswith(WEBHOOK_PATH_PREFIX) else "ip"
        retry_after_s = await anyio.to_thread.run_sync(self.limits.retry_after_s, name, ip)
        if retry_after_s is not None:
            response = error_response(
                429,
                "rate limit exceeded for this IP address",
                reason=f"rate_limit_{name}",
                headers={"Retry-After": str(retry_after_s)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _is_trusted_worker(self, scope: Scope) -> bool:
        if not scope["path"].startswith("/internal/"):
            return False
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and service_token_matches(self.config, token)


class BodySizeLimitMiddleware:
    """Refuses request bodies larger than ``max_body_bytes`` with 413, before reading them:
    a larger ``Content-Length`` is answered at once, without calling the app; a body
    without one (chunked) is counted as it streams in, and the read that crosses the limit
    raises a 413 ``HTTPException`` (FastAPI passes it through its body parsing, and the
    app's exception handling answers it).

    FastAPI has ``FastAPI(max_body_size=...)``, but it answers from outside the user
    middleware, so its 413 would miss the security headers and the request metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        *,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._larger = dict(larger or {})
        """Path prefix -> its own limit (recording uploads)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next(
            (n for prefix, n in self._larger.items() if scope["path"].startswith(prefix)),
            self.max_body_bytes,
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not declared.isdigit():
            await error_response(400, "invalid Content-Length header")(scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._message(limit))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:
            # read outside a route (no exception handler on the way): answer here
            if exc.status_code != 413 or response_started:
                raise
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        await error_response(413, self._message(limit))(scope, receive, send)

    def _message(self, limit: int) -> str:
        return f"request body larger than {limit} bytes"
