"""Admin notifications: one row per (organisation, kind, period), then one signed webhook
after the commit, retried a bounded number of times.

Runs on SQLite and PostgreSQL; the webhook goes to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from billing.notify import Notifier
from storage.db import session_scope
from storage.models import AuditLog, Notification, Role, User
from tests.billing_seed import seed_org

SECRET = "notify-secret-for-tests"
FAST_RETRIES_S = (0.05, 0.1, 0.2)
DELIVERY_TIMEOUT_S = 10.0


@dataclass
class ReceivedRequest:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next of
    ``statuses`` (200 once they run out)."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    lock = threading.Lock()
    state: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(ReceivedRequest(dict(self.headers.items()), body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = WebhookReceiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/billing")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def seed_org_with_admins(engine: Engine) -> tuple[int, list[str]]:
    """An organisation with two admins and one viewer; returns its id and admin emails."""
    with session_scope(engine) as session:
        org, _, admins = seed_org(session, admins=2)
        assert org.id is not None
        session.add(User(organisation_id=org.id, email="viewer@example.com", role=Role.viewer))
        return org.id, sorted(a.email for a in admins)


def notification_rows(engine: Engine, organisation_id: int) -> list[Notification]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(Notification).where(Notification.organisation_id == organisation_id)
            ).all()
        )


def notify(
    engine: Engine, notifier: Notifier, organisation_id: int, period: str = "2026-11"
) -> bool:
    """Notify in a transaction of its own; True if this call inserted the row."""
    with session_scope(engine) as session:
        row = notifier.notify_admins_once(
            session, organisation_id, "monthly_minutes_exhausted", period, "Minutes used up."
        )
        return row is not None


def test_a_notification_is_recorded_and_posted_signed_to_the_webhook(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, admin_emails = seed_org_with_admins(engine)
    notifier = Notifier(receiver.url, SECRET)

    before = int(time.time())
    assert notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    [request] = receiver.requests
    assert json.loads(request.body) == {
        "organisation_id": org_id,
        "kind": "monthly_minutes_exhausted",
        "period": "2026-11",
        "message": "Minutes used up.",
        "admins": admin_emails,
    }
    timestamp, signature = request.headers["X-Signature"].split(",")
    t = timestamp.removeprefix("t=")
    assert before <= int(t) <= time.time()
    expected = hmac.new(
        SECRET.encode(), f"{t}.voice-agent.".encode() + request.body, hashlib.sha256
    )
    assert signature == f"v1={expected.hexdigest()}"
    [row] = notification_rows(engine, org_id)
    assert row.dedupe_key == f"{org_id}:monthly_minutes_exhausted:2026-11"
    assert row.delivery_attempts == 1
    assert row.delivered_at is not None


def test_the_same_organisation_kind_and_period_is_notified_once(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(receiver.url, SECRET)

    assert notify(engine, notifier, org_id)
    assert not notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert len(notification_rows(engine, org_id)) == 1
    assert len(receiver.requests) == 1


def test_a_new_period_notifies_again(engine: Engine) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(None, None)

    assert notify(engine, notifier, org_id, period="2026-11")
    assert notify(engine, notifier, org_id, period="2026-12")

    assert len(notification_rows(engine, org_id)) == 2


def test_concurrent_duplicates_lose_cleanly_one_row_and_one_webhook(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(receiver.url, SECRET)

    with ThreadPoolExecutor(20) as pool:
        inserted = list(pool.map(lambda _: notify(engine, notifier, org_id), range(20)))
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert sum(inserted) == 1
    assert len(notification_rows(engine, org_id)) == 1
    assert len(receiver.requests) == 1


def test_the_losing_transaction_stays_usable(engine: Engine) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(None, None)
    notify(engine, notifier, org_id)

    with session_scope(engine) as session:
        again = notifier.notify_admins_once(
            session, org_id, "monthly_minutes_exhausted", "2026-11", "again"
        )
        assert again is None
        session.add(AuditLog(organisation_id=org_id, actor="system", action="t", subject="s"))

    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditLog)).one() == 1


def test_a_rolled_back_transaction_records_and_sends_nothing(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(receiver.url, SECRET)

    with pytest.raises(RuntimeError), session_scope(engine) as session:
        notifier.notify_admins_once(session, org_id, "balance_exhausted", "2026-11", "Empty.")
        raise RuntimeError("the admission failed after notifying")
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert notification_rows(engine, org_id) == []
    assert receiver.requests == []


def test_a_released_savepoint_is_not_the_commit_that_sends_the_webhook(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    notifier = Notifier(receiver.url, SECRET)

    with pytest.raises(RuntimeError), session_scope(engine) as session:
        notifier.notify_admins_once(session, org_id, "balance_exhausted", "2026-11", "Empty.")
        with session.begin_nested():
            session.add(AuditLog(organisation_id=org_id, actor="system", action="t", subject="s"))
        assert notifier.drain(0) and receiver.requests == []  # nothing started yet
        raise RuntimeError("the transaction fails after the savepoint")
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert receiver.requests == []


def test_a_failed_delivery_is_retried_until_it_succeeds(
    engine: Engine, receiver: WebhookReceiver
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    receiver.statuses = [500, 503]
    notifier = Notifier(receiver.url, SECRET, retry_delays_s=FAST_RETRIES_S)

    notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert len(receiver.requests) == 3
    [row] = notification_rows(engine, org_id)
    assert row.delivery_attempts == 3
    assert row.delivered_at is not None


def test_delivery_gives_up_after_three_attempts(engine: Engine, receiver: WebhookReceiver) -> None:
    org_id, _ = seed_org_with_admins(engine)
    receiver.statuses = [500] * 10
    notifier = Notifier(receiver.url, SECRET, retry_delays_s=FAST_RETRIES_S)

    notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert len(receiver.requests) == 3
    [row] = notification_rows(engine, org_id)
    assert row.delivery_attempts == 3
    assert row.delivered_at is None


def test_an_unreachable_webhook_counts_its_attempts(engine: Engine) -> None:
    org_id, _ = seed_org_with_admins(engine)
    # port 9 (discard) on loopback: nothing listens, so every connection is refused
    notifier = Notifier("http://127.0.0.1:9/hook", SECRET, retry_delays_s=FAST_RETRIES_S)

    notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    [row] = notification_rows(engine, org_id)
    assert row.delivery_attempts == 3
    assert row.delivered_at is None


def test_retries_wait_1_then_2_seconds_by_default(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id, _ = seed_org_with_admins(engine)
    waits: list[float] = []
    monkeypatch.setattr("billing.notify.time.sleep", waits.append)
    notifier = Notifier("http://127.0.0.1:9/hook", SECRET, http_post=lambda url, body, h: 500)

    notify(engine, notifier, org_id)
    assert notifier.drain(DELIVERY_TIMEOUT_S)

    assert waits == [1.0, 2.0]


def test_without_a_webhook_the_notification_is_still_recorded(engine: Engine) -> None:
    org_id, _ = seed_org_with_admins(engine)

    assert notify(engine, Notifier(None, None), org_id)

    [row] = notification_rows(engine, org_id)
    assert row.delivered_at is None and row.delivery_attempts == 0


def test_a_webhook_without_a_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        Notifier("http://127.0.0.1:9/hook", None)
