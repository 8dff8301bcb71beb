"""Fixtures for the sidecar HTTP API: the app on a migrated test database, a client, and a
seeder that writes organisations, members with keys, agents, calls and recordings.

tests/conftest.py imports these fixtures for every test module.
``sidecar_api`` is per test (on SQLite and on PostgreSQL, like ``engine``);
``shared_sidecar`` is per module, for the many small HTTP checks that each seed their own
rows and so need no empty database.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, SQLModel, select

from billing.api.app import create_app
from billing.config import SidecarConfig
from billing.keys import issue_key
from storage.db import make_engine
from storage.models import (
    ApiKey,
    Call,
    DiarizationJob,
    Organisation,
    Recording,
    Role,
    User,
    Voiceprint,
)
from tests.billing_seed import seed_agent, seed_org
from tests.services import migrated_database

SERVICE_TOKEN = "test-service-token-0123456789"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"
PAYMENT_PROVIDERS = {
    "acmepay": WEBHOOK_SECRET,
    # the same secret under another name: the signature still tells them apart
    "sharedpay": WEBHOOK_SECRET,
    "otherpay": "other-webhook-secret-0123456789",
}
SERVICE_HEADERS = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
ROOMY_PLAN: dict[str, Any] = {
    "max_agents": 100_000,
    "max_concurrent_calls": 1_000,
    "monthly_minutes": 1_000_000,
    "price_per_minute_minor": 10,
}
"""Plan limits the tests never reach unless they lower them, and a price of 10 cents a
call minute (everything else free)."""


def make_config(database_url: str, recordings_dir: Path, **overrides: Any) -> SidecarConfig:
    """A test configuration: in-process leases and rate limits, and rate limits so high
    that only tests about rate limits (which lower them) ever meet them."""
    config = SidecarConfig(
        database_url=database_url,
        redis_url=None,
        service_token=SERVICE_TOKEN,
        payment_webhook_secrets=PAYMENT_PROVIDERS,
        notify_webhook_url=None,
        notify_webhook_secret=None,
        recordings_dir=recordings_dir,
        rate_limit_per_ip=1_000_000,
        rate_limit_per_key=1_000_000,
        retention_sweep_s=None,  # a test sweeps when it means to (test_retention)
    )
    return replace(config, **overrides)


def billing_event(
    organisation_id: int,
    call_id: str,
    quantity: int,
    *,
    kind: str = "call_seconds",
    sequence: int = 0,
) -> dict[str, Any]:
    """One event as ``POST /internal/billing-events`` takes it (the outbox's JSON)."""
    return {
        "idempotency_key": f"{call_id}:{kind}:{sequence}",
        "organisation_id": organisation_id,
        "call_id": call_id,
        "kind": kind,
        "quantity": quantity,
    }


@dataclass(frozen=True)
class Member:
    """A user of an organisation with a working API key."""

    organisation_id: int
    user_id: int
    role: Role
    key_id: int
    key_prefix: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


class Seeder:
    """Writes test rows straight to the database (not through the API under test)."""

    def __init__(self, engine: Engine, recordings_dir: Path) -> None:
        self.engine = engine
        self.recordings_dir = recordings_dir

    def organisation(self, **plan: Any) -> int:
        """An organisation (no users yet) on a plan of its own: :data:`ROOMY_PLAN`'s
        limits and prices, overridden by ``plan`` (any :class:`Plan` field)."""
        with Session(self.engine) as session:
            org, _, _ = seed_org(session, admins=0, **{**ROOMY_PLAN, **plan})
            session.commit()
            assert org.id is not None
            return org.id

    def member(self, organisation_id: int, role: Role) -> Member:
        with Session(self.engine) as session:
            user = User(
                organisation_id=organisation_id,
                email=f"user-{uuid.uuid4().hex[:10]}@example.com",
                role=role,
            )
            session.add(user)
            session.flush()
            api_key, plaintext = issue_key(session, user)
            session.commit()
            assert user.id is not None and api_key.id is not None
            return Member(organisation_id, user.id, role, api_key.id, api_key.prefix, plaintext)

    def agent(
        self, organisation_id: int, owner_user_id: int, *, phone_number: str | None = None
    ) -> int:
        with Session(self.engine) as session:
            org = session.get(Organisation, organisation_id)
            owner = session.get(User, owner_user_id)
            assert org is not None and owner is not None
            agent = seed_agent(session, org, owner, phone_number=phone_number)
            session.commit()
            assert agent.id is not None
            return agent.id

    def call(self, organisation_id: int, agent_id: int | None) -> str:
        call_id = f"call-{uuid.uuid4().hex[:12]}"
        with Session(self.engine) as session:
            session.add(Call(id=call_id, organisation_id=organisation_id, agent_id=agent_id))
            session.commit()
        return call_id

    def recording(self, organisation_id: int, call_id: str, content: bytes = b"") -> int:
        """A recording row and its file (relative to ``recordings_dir``)."""
        content = content or f"RIFF audio of {call_id}".encode()
        relative = Path(f"org-{organisation_id}") / f"{call_id}.wav"
        path = self.recordings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        with Session(self.engine) as session:
            recording = Recording(
                organisation_id=organisation_id,
                call_id=call_id,
                path=str(relative),
                size_bytes=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
            )
            session.add(recording)
            session.commit()
            assert recording.id is not None
            return recording.id

    def diarization_job(self, organisation_id: int, recording_id: int) -> int:
        """A queued diarization job of the recording."""
        with Session(self.engine) as session:
            job = DiarizationJob(organisation_id=organisation_id, recording_id=recording_id)
            session.add(job)
            session.commit()
            assert job.id is not None
            return job.id

    def voiceprint(self, organisation_id: int, name: str) -> int:
        """An enrolled voice (an embedding of zeros but one)."""
        embedding = bytes(4 * 255) + b"\x00\x00\x80\x3f"  # float32 1.0 last
        with Session(self.engine) as session:
            row = Voiceprint(organisation_id=organisation_id, name=name, embedding=embedding)
            session.add(row)
            session.commit()
            assert row.id is not None
            return row.id

    def count(self, model: type[SQLModel], **where: Any) -> int:
        """Rows of ``model`` matching ``where`` (column=value)."""
        with Session(self.engine) as session:
            query = select(func.count()).select_from(model)
            for column, value in where.items():
                query = query.where(getattr(model, column) == value)
            return int(session.exec(query).one())

    def get(self, model: type[SQLModel], ident: Any) -> Any:
        with Session(self.engine) as session:
            return session.get(model, ident)

    def key_row(self, member: Member) -> ApiKey:
        row = self.get(ApiKey, member.key_id)
        assert row is not None
        return row

    def balance(self, organisation_id: int) -> int:
        org = self.get(Organisation, organisation_id)
        assert org is not None
        return int(org.balance_minor)


@dataclass
class SidecarApi:
    """An app under test, entered (lifespan started) in ``client``."""

    app: FastAPI
    client: TestClient
    config: SidecarConfig
    engine: Engine
    seed: Seeder


@pytest.fixture
def sidecar_api(engine: Engine, database_url: str, tmp_path: Path) -> Iterator[SidecarApi]:
    """The sidecar on this test's own database (SQLite, then PostgreSQL)."""
    config = make_config(database_url, tmp_path / "recordings")
    app = create_app(config, engine=engine)
    with TestClient(app) as client:
        yield SidecarApi(app, client, config, engine, Seeder(engine, config.recordings_dir))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database shared by one module's tests (SQLite, then PostgreSQL)."""
    with migrated_database(request.param, request, tmp_path_factory.mktemp("api-db")) as url:
        yield url


@pytest.fixture(scope="module")
def shared_sidecar(
    shared_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarApi]:
    """The sidecar on :func:`shared_database_url`, for one module's tests."""
    engine = make_engine(shared_database_url)
    config = make_config(shared_database_url, tmp_path_factory.mktemp("recordings"))
    app = create_app(config, engine=engine)
    try:
        with TestClient(app) as client:
            yield SidecarApi(app, client, config, engine, Seeder(engine, config.recordings_dir))
    finally:
        engine.dispose()


@contextmanager
def serving(app: FastAPI, port: int = 0) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (on ``port``, else a free one) in a thread;
    yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
