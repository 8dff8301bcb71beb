"""The sidecar's HTTP application: routers, middleware, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import Engine

from billing.api.errors import APP_RESPONSES, install_error_handlers
from billing.api.middleware import (
    BodySizeLimitMiddleware,
    RateLimitMiddleware,
    RequestMetricsMiddleware,
    SecurityHeadersMiddleware,
    UnhandledErrorMiddleware,
)
from billing.api.resources import SidecarResources, attach_resources, build_resources
from billing.api.routes import (
    admissions,
    agents,
    audit_log,
    balance,
    billing_events,
    call_page,
    calls,
    diarization,
    erasures,
    health,
    keys,
    metrics,
    notifications,
    organisation,
    payments,
    recordings,
    tokens,
    usage,
    users,
    workers,
)
from billing.config import SidecarConfig
from billing.internal_api import RECORDINGS_UPLOAD_PATH
from billing.retention import purge_expired_recordings

logger = logging.getLogger(__name__)

ROUTERS = (
    organisation.router,
    users.router,
    keys.router,
    agents.router,
    agents.internal_router,
    calls.router,
    erasures.router,
    tokens.router,
    call_page.router,
    usage.router,
    balance.router,
    audit_log.router,
    notifications.router,
    recordings.router,
    recordings.internal_router,
    diarization.router,
    payments.router,
    admissions.router,
    billing_events.router,
    workers.router,
    health.router,
    metrics.router,
)


def create_app(config: SidecarConfig, *, engine: Engine | None = None) -> FastAPI:
    """The sidecar app for ``config``. ``engine`` replaces the one ``config.database_url``
    would make; either way the app disposes it on shutdown, with its Redis client.

    Nothing connects until the first request, so creating an app never fails for a
    database or Redis that is down (``/health`` says so instead).
    """
    resources = build_resources(config, engine=engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        every_s = resources.config.retention_sweep_s
        sweeping = (
            asyncio.create_task(_sweep_recordings(resources, every_s), name="retention")
            if every_s
            else None
        )
        yield
        if sweeping is not None:
            sweeping.cancel()
        logger.info("sidecar shutting down")
        # blocking: waits briefly for notifications in flight, closes pools
        await anyio.to_thread.run_sync(resources.close)

    app = FastAPI(
        title="Voice agent sidecar",
        summary="Quotas, billing, API keys and recordings for the voice agent.",
        version="1",
        lifespan=lifespan,
        redoc_url=None,
        responses=APP_RESPONSES,
    )
    attach_resources(app, resources)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # the last added runs first: metrics see every response (429s and 413s included),
    # security headers go on every response, then rate limits and the body limit before
    # any route work, and innermost an unhandled error becomes a JSON 500 that all the
    # others still see
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=config.max_body_bytes,
        larger={
            RECORDINGS_UPLOAD_PATH: config.max_recording_bytes,
            "/v1/recordings": config.max_recording_bytes,  # uploads of one's own audio
            "/v1/voiceprints": diarization.VOICEPRINT_MAX_BYTES,  # an enrolment clip
        },
    )
    app.add_middleware(RateLimitMiddleware, limits=resources.rate_limits, config=config)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=resources.metrics)
    return app


async def _sweep_recordings(resources: SidecarResources, every_s: float) -> None:
    """The retention sweep (billing.retention), hourly while the sidecar serves."""
    while True:
        try:
            await anyio.to_thread.run_sync(
                purge_expired_recordings, resources.engine, resources.config.recordings_dir
            )
        except Exception:  # a database blip: the next sweep tries again
            logger.exception("retention sweep failed")
        await asyncio.sleep(every_s)
