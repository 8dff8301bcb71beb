"""Seed rows for billing tests (an organisation on a plan with its admins, its agents and
its call usage) and the ``lease_store`` fixture (in memory and on the real Redis).

Every seed helper adds to the given session and flushes (ids are set) but never commits: the
caller's ``session_scope`` does. Read what you need (ids) before the session closes, since
committed rows expire.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from sqlmodel import Session

from storage.leases import LeaseStore, MemoryLeaseStore, RedisLeaseStore
from storage.models import Agent, Call, Organisation, Plan, Role, UsageKind, UsageRecord, User

PLAN_DEFAULTS: dict[str, Any] = {
    "currency": "USD",
    "max_agents": 5,
    "max_concurrent_calls": 10,
    "monthly_minutes": 1000,
}


def seed_org(
    session: Session,
    *,
    balance_minor: int = 0,
    admins: int = 1,
    name: str | None = None,
    **plan_kwargs: Any,
) -> tuple[Organisation, Plan, list[User]]:
    """A new plan (``PLAN_DEFAULTS`` overridden by ``plan_kwargs``, any :class:`Plan`
    field), an organisation on it and ``admins`` admin users ``admin<i>@<org>.example``.
    Names are unique per call, so a test may seed several organisations."""
    unique = uuid.uuid4().hex[:8]
    plan = Plan(**{"name": f"plan-{unique}", **PLAN_DEFAULTS, **plan_kwargs})
    session.add(plan)
    session.flush()
    assert plan.id is not None
    organisation = Organisation(
        name=name or f"org-{unique}",
        plan_id=plan.id,
        currency=plan.currency,
        balance_minor=balance_minor,
    )
    session.add(organisation)
    session.flush()
    assert organisation.id is not None
    users = [
        User(
            organisation_id=organisation.id,
            email=f"admin{i}@org-{unique}.example",
            role=Role.admin,
        )
        for i in range(admins)
    ]
    session.add_all(users)
    session.flush()
    return organisation, plan, users


def seed_agent(
    session: Session,
    org: Organisation,
    owner: User,
    *,
    phone_number: str | None = None,
    cap: int | None = None,
) -> Agent:
    """An agent of ``org`` owned by ``owner``, reached on ``phone_number`` (if any) by at
    most ``cap`` concurrent calls (``max_concurrent_calls_per_number``; None: no cap)."""
    assert org.id is not None and owner.id is not None
    agent = Agent(
        organisation_id=org.id,
        owner_user_id=owner.id,
        name=f"agent-{uuid.uuid4().hex[:8]}",
        phone_number=phone_number,
        max_concurrent_calls_per_number=cap,
    )
    session.add(agent)
    session.flush()
    return agent


def seed_call_seconds(
    session: Session, org: Organisation, seconds: int, *, recorded_at: datetime | None = None
) -> UsageRecord:
    """A finished call of ``org`` and its ``call_seconds`` usage record at ``recorded_at``
    (default now, UTC)."""
    assert org.id is not None
    at = recorded_at or datetime.now(UTC)
    call = Call(
        id=f"seed-{uuid.uuid4().hex}",
        organisation_id=org.id,
        started_at=at,
        ended_at=at,
        status="ended",
    )
    session.add(call)
    session.flush()
    record = UsageRecord(
        organisation_id=org.id,
        call_id=call.id,
        kind=UsageKind.call_seconds,
        quantity=seconds,
        recorded_at=at,
    )
    session.add(record)
    session.flush()
    return record


@contextmanager
def redis_client(url: str, prefix: str) -> Iterator[redis.Redis]:
    """A client on ``url``; every key under ``prefix`` is deleted when the block ends."""
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["memory", "redis"])
def lease_store(request: pytest.FixtureRequest) -> Iterator[LeaseStore]:
    """Each test runs on a :class:`MemoryLeaseStore` and on a :class:`RedisLeaseStore`
    (real Redis, a prefix of its own)."""
    if request.param == "memory":
        yield MemoryLeaseStore()
        return
    prefix = request.getfixturevalue("redis_prefix")
    with redis_client(request.getfixturevalue("redis_server_url"), prefix) as client:
        yield RedisLeaseStore(client, prefix)
