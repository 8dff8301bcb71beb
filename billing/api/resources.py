"""What one sidecar application holds for its lifetime: the engine, the Redis client, the
lease store, the rate limiter, the admission controller, the notifier and the metrics.

Built when the app is created (so an app served through ``httpx.ASGITransport``, which
runs no lifespan, works too) and closed by the app's lifespan on shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from starlette.applications import Starlette

from billing.admission import AdmissionController
from billing.api.metrics import SidecarMetrics
from billing.api.rate_limits import RateLimits
from billing.api.workers import LiveWorkers
from billing.config import SidecarConfig
from billing.notify import Notifier
from storage.db import make_engine
from storage.diarization_jobs import JobContext, JobQueue, RqJobQueue, ThreadJobQueue
from storage.hold_queue import HoldQueue, MemoryHoldQueue, RedisHoldQueue
from storage.leases import LeaseStore, MemoryLeaseStore, RedisLeaseStore
from storage.rate_limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
"""Connect and read timeout for Redis: a lost Redis must fail a request fast (admission
fails closed, rate limits fail open), not hang it."""
NOTIFIER_DRAIN_S = 5.0
"""How long shutdown waits for admin notifications still being delivered."""


@dataclass
class SidecarResources:
    config: SidecarConfig
    engine: Engine
    redis: redis.Redis | None
    leases: LeaseStore
    rate_limits: RateLimits
    notifier: Notifier
    admissions: AdmissionController
    metrics: SidecarMetrics
    workers: LiveWorkers
    jobs: JobQueue | None = None
    """Where diarization jobs go (storage.diarization_jobs); None without recording keys."""

    def close(self) -> None:
        """Let notifications in flight finish (briefly), close Redis, dispose the engine."""
        if not self.notifier.drain(NOTIFIER_DRAIN_S):
            logger.warning("shutting down with admin notifications still being delivered")
        if self.jobs is not None:
            self.jobs.close()
        if self.redis is not None:
            self.redis.close()
        self.engine.dispose()


def attach_resources(app: Starlette, resources: SidecarResources) -> None:
    """Make ``resources`` what :func:`resources_of` returns for ``app``."""
    app.state.resources = resources


def resources_of(app: Starlette) -> SidecarResources:
    """The resources attached to ``app`` (by ``create_app``)."""
    resources: SidecarResources = app.state.resources
    return resources


def build_resources(config: SidecarConfig, *, engine: Engine | None = None) -> SidecarResources:
    """Everything the app needs, from ``config``; ``engine`` overrides the one
    ``config.database_url`` would make (tests pass theirs). Connects lazily: nothing here
    touches the database or Redis."""
    engine = engine if engine is not None else make_engine(config.database_url)
    client: redis.Redis | None = None
    leases: LeaseStore
    rate_limiter: RateLimiter
    if config.redis_url is None:
        leases, rate_limiter = MemoryLeaseStore(), MemoryRateLimiter()
        hold_queue: HoldQueue = MemoryHoldQueue()
    else:
        # one client (one connection pool) for leases and rate limits, closed on shutdown
        client = redis.Redis.from_url(
            config.redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
        )
        leases = RedisLeaseStore(client, config.key_prefix)
        hold_queue = RedisHoldQueue(client, config.key_prefix)
        rate_limiter = RedisRateLimiter(client, config.key_prefix)
    logger.info(
        "sidecar resources ready",
        extra={"shared_state": "redis" if client is not None else "in-process"},
    )
    notifier = Notifier(config.notify_webhook_url, config.notify_webhook_secret)
    metrics = SidecarMetrics(lease_ttl_s=config.lease_ttl_s)
    # a worker heart-beats its leases every few seconds; two lease TTLs without a word
    # from it means it is gone
    workers = LiveWorkers(liveness_s=2 * config.lease_ttl_s, shared_leases=client is not None)
    metrics.live_workers.set_function(workers.count)
    return SidecarResources(
        config=config,
        engine=engine,
        redis=client,
        leases=leases,
        rate_limits=RateLimits(rate_limiter, config, metrics),
        notifier=notifier,
        admissions=AdmissionController(
            engine,
            leases,
            lease_ttl_s=config.lease_ttl_s,
            notifier=notifier,
            hold_queue=hold_queue,
            hold_queue_max=config.hold_queue_max,
        ),
        metrics=metrics,
        workers=workers,
        jobs=_job_queue(config, engine, client),
    )


def _job_queue(
    config: SidecarConfig, engine: Engine, client: redis.Redis | None
) -> JobQueue | None:
    """RQ on Redis when there is Redis (diarize-worker processes run the jobs), else a
    thread pool here; None without recording keys (no recording can be opened)."""
    if config.recording_keyring is None:
        return None
    if client is not None:
        return RqJobQueue(client, config.key_prefix)
    context = JobContext(
        engine, config.recordings_dir, config.recording_keyring, config.diarization_model_dir
    )
    return ThreadJobQueue(context, workers=config.diarize_workers)
