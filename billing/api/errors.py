"""Typed HTTP errors: raise one of these anywhere under a route and the client gets its
status and a JSON body ``{"detail": message}`` (plus ``"reason"`` when there is one, a
stable machine-readable word such as a quota name)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis import RedisError
from sqlalchemy.exc import DataError, OperationalError

from billing.webhooks import WebhookError

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error response's body."""

    detail: str
    reason: str | None = None


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """FastAPI's answer to a request its parameters or body schema refuse (422)."""

    detail: list[ValidationIssue]


class ApiError(Exception):
    """An error with an HTTP status; ``message`` is safe to show the caller."""

    status_code: ClassVar[int] = 500

    def __init__(
        self, message: str, *, reason: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.headers = dict(headers or {})


class Unauthorized(ApiError):
    """No valid credential (401)."""

    status_code = 401


class Forbidden(ApiError):
    """A valid credential whose role may not do this (403)."""

    status_code = 403


class NotFound(ApiError):
    """No such resource *for this caller*: another organisation's ids are not found,
    never forbidden, so ids reveal nothing across tenants (404)."""

    status_code = 404


class Conflict(ApiError):
    """The request clashes with the current state: a quota, a duplicate, the last admin
    (409)."""

    status_code = 409


class Unprocessable(ApiError):
    """Well-formed but unacceptable content (422)."""

    status_code = 422


class UnsupportedMediaType(ApiError):
    """Content of a kind the route does not take (415)."""

    status_code = 415


class TooManyRequests(ApiError):
    """Over a rate limit; the ``Retry-After`` header says when to retry (429)."""

    status_code = 429


class ServiceUnavailable(ApiError):
    """A dependency (database, Redis) is down; retry later (503)."""

    status_code = 503


def error_response(
    status_code: int,
    message: str,
    *,
    reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=message, reason=reason).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


RETRY_AFTER_S = "5"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.message, reason=exc.reason, headers=exc.headers)


async def _webhook_error(_request: Request, exc: Exception) -> JSONResponse:
    # the webhook module chose the status (413, 401, 400, 422) and a message safe to show
    assert isinstance(exc, WebhookError)
    return error_response(exc.status_code, exc.message)


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    # the database refused a value it cannot hold (PostgreSQL: a NUL character in text);
    # the client's to fix, so 422, in the shape of every other validation error
    logger.warning(
        "request value refused by the database",
        extra={"path": request.url.path, "error": type(getattr(exc, "orig", exc)).__name__},
    )
    issue = ValidationIssue(
        loc=["request"],
        msg="a value cannot be stored (text must not contain NUL characters)",
        type="value_error",
    )
    return JSONResponse(ValidationErrorBody(detail=[issue]).model_dump(), status_code=422)


async def _dependency_down(request: Request, exc: Exception) -> JSONResponse:
    # a lost database or Redis is the operator's problem, not the client's: 503 (the
    # client retries) rather than 500, and the exception type only, never a DSN
    logger.error(
        "dependency unavailable",
        extra={"path": request.url.path, "error": type(exc).__name__},
        exc_info=exc,
    )
    return error_response(
        503, "a backing service is unavailable; retry later", headers={"Retry-After": RETRY_AFTER_S}
    )


def install_error_handlers(app: FastAPI) -> None:
    """Turn :class:`ApiError` and :class:`WebhookError` into their status, a value the
    database cannot store into 422, and database or Redis outages into 503."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(WebhookError, _webhook_error)
    app.add_exception_handler(OperationalError, _dependency_down)
    app.add_exception_handler(RedisError, _dependency_down)


COMMON_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "missing, invalid or revoked X-API-Key"},
    403: {"model": ErrorBody, "description": "the key's role may not do this"},
    429: {"model": ErrorBody, "description": "rate limited; see Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such resource in your organisation"}
}
CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorBody, "description": "conflicts with the current state"}
}

APP_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "malformed request (e.g. a body that is not UTF-8)"},
    413: {"model": ErrorBody, "description": "request body too large"},
    429: {"model": ErrorBody, "description": "rate limited (per IP, per key); see Retry-After"},
    500: {"model": ErrorBody, "description": "internal error (logged)"},
    503: {"model": ErrorBody, "description": "the database or Redis is unavailable; retry"},
}
"""What any route can answer, whatever it does: the middleware's and the error handlers'
statuses (every route is behind the body limit and a rate limit)."""
