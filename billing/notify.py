"""Notifications to an organisation's admins: a ``notifications`` row (the event) and a
signed webhook POST once that row is committed.

"Once" is a database constraint, not a check: the row's ``dedupe_key`` is UNIQUE, so of
any number of concurrent notifiers for the same (organisation, kind, period) exactly one
inserts it and only that one sends the webhook.

The webhook body is JSON ``{"organisation_id", "kind", "period", "message", "admins"}``
signed like the payment webhooks we receive (:func:`billing.webhooks.sign`):
``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``; receivers
recompute it and reject stale timestamps.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import httpx
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, col, select

from billing.webhooks import SIGNATURE_HEADER, sign
from storage.db import session_scope
from storage.models import Notification, Role, User

logger = logging.getLogger(__name__)

HttpPost = Callable[[str, bytes, Mapping[str, str]], int]
"""POSTs ``(url, body, headers)`` and returns the HTTP status; raises on a transport error."""

DEFAULT_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0)
DEFAULT_MAX_ATTEMPTS = 3
SENDER_NAME = "voice-agent"
"""What the notification's signature names as its sender (the signed bytes are
``<t>.voice-agent.<body>``, the scheme payment providers use with us)."""
POST_TIMEOUT_S = 5.0


def _httpx_post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
    return httpx.post(url, content=body, headers=dict(headers), timeout=POST_TIMEOUT_S).status_code


class Notifier:
    """Records admin notifications and delivers them to one webhook.

    Without ``webhook_url`` the rows are still recorded (they are the event) and nothing
    is sent. Delivery runs in a background daemon thread: attempt, then retry after each
    of ``retry_delays_s`` up to ``max_attempts`` attempts in all; every attempt is
    counted in ``delivery_attempts`` and a 2xx answer sets ``delivered_at``.

    Raises ValueError when a webhook URL comes without a secret to sign with.
    """

    def __init__(
        self,
        webhook_url: str | None,
        webhook_secret: str | None,
        *,
        http_post: HttpPost | None = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if webhook_url and not webhook_secret:
            raise ValueError("a notification webhook needs a secret to sign its requests")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._url = webhook_url or None
        self._secret = (webhook_secret or "").encode()
        self._post = http_post or _httpx_post
        self._retry_delays_s = tuple(retry_delays_s)
        self._max_attempts = max_attempts
        self._clock = clock
        self._deliveries: set[threading.Thread] = set()
        self._deliveries_lock = threading.Lock()

    def notify_admins_once(
        self, session: Session, organisation_id: int, kind: str, period: str, message: str
    ) -> Notification | None:
        """Record a notification for (organisation, kind, period) unless one exists.

        Returns the new row, or None if this (organisation, kind, period) was already
        notified (including by a concurrent transaction that committed first). The insert
        runs in a SAVEPOINT, so losing the race leaves ``session``'s transaction usable.
        The webhook is sent only after ``session``'s transaction commits; a rollback sends
        nothing. Database errors other than the duplicate propagate.
        """
        row = Notification(
            organisation_id=organisation_id,
            kind=kind,
            dedupe_key=f"{organisation_id}:{kind}:{period}",
            message=message,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            logger.info(
                "notification already sent",
                extra={"organisation_id": organisation_id, "kind": kind, "period": period},
            )
            return None
        logger.info(
            "admins notified",
            extra={"organisation_id": organisation_id, "kind": kind, "period": period},
        )
        if self._url is not None:
            admins = session.exec(
                select(User.email)
                .where(User.organisation_id == organisation_id, User.role == Role.admin)
                .order_by(col(User.email))
            ).all()
            payload = {
                "organisation_id": organisation_id,
                "kind": kind,
                "period": period,
                "message": message,
                "admins": list(admins),
            }
            notification_id = row.id
            assert notification_id is not None  # the SAVEPOINT flushed the row
            engine = session.get_bind().engine
            _after_commit(session, lambda: self._start_delivery(engine, notification_id, payload))
        return row

    def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for deliveries in flight; True if none is left.

        For tests and for shutdown (flush before exit)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._deliveries_lock:
                pending = [t for t in self._deliveries if t.is_alive()]
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pending[0].join(remaining)

    def _start_delivery(
        self, engine: Engine, notification_id: int, payload: dict[str, object]
    ) -> None:
        thread = threading.Thread(
            target=self._deliver,
            args=(engine, notification_id, payload),
            name=f"notify-{notification_id}",
            daemon=True,
        )
        with self._deliveries_lock:
            self._deliveries = {t for t in self._deliveries if t.is_alive()}
            self._deliveries.add(thread)
        thread.start()

    def _deliver(self, engine: Engine, notification_id: int, payload: dict[str, object]) -> None:
        assert self._url is not None
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        log_extra = {"notification_id": notification_id, "kind": payload["kind"]}
        for attempt in range(1, self._max_attempts + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, SENDER_NAME, body, timestamp),
            }
            try:
                status = self._post(self._url, body, headers)
                delivered = 200 <= status < 300
                outcome = f"http {status}"
            except (httpx.HTTPError, OSError) as exc:
                delivered = False
                outcome = type(exc).__name__
            self._record_attempt(engine, notification_id, attempt, delivered)
            if delivered:
                logger.info("notification delivered", extra={**log_extra, "attempt": attempt})
                return
            logger.warning(
                "notification delivery failed",
                extra={**log_extra, "attempt": attempt, "outcome": outcome},
            )
            if attempt < self._max_attempts:
                time.sleep(self._retry_delay_s(attempt))
        logger.error("notification undelivered", extra={**log_extra, "attempts": attempt})

    def _retry_delay_s(self, failed_attempts: int) -> float:
        """The wait after the ``failed_attempts``-th failure; the last delay repeats."""
        if not self._retry_delays_s:
            return 0.0
        return self._retry_delays_s[min(failed_attempts, len(self._retry_delays_s)) - 1]

    def _record_attempt(
        self, engine: Engine, notification_id: int, attempt: int, delivered: bool
    ) -> None:
        try:
            with session_scope(engine) as session:
                row = session.get(Notification, notification_id)
                if row is None:
                    return
                row.delivery_attempts = attempt
                if delivered:
                    row.delivered_at = datetime.now(UTC)
                session.add(row)
        except SQLAlchemyError:
            # the POST happened (or not) regardless; losing the bookkeeping must not stop
            # the retries
            logger.exception(
                "could not record a notification delivery attempt",
                extra={"notification_id": notification_id, "attempt": attempt},
            )


# Deliveries wait in ``session.info`` for the end of the root transaction they were made in:
# after_commit also fires when a SAVEPOINT is released, and a rollback must send nothing.
_PENDING = "billing.notify.pending"
_COMMITTED_ROOT = "billing.notify.committed_root"


def _after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the current root transaction of ``session`` commits."""
    root = session.get_transaction()
    assert root is not None  # a row was just flushed, so a transaction is open
    pending = session.info.get(_PENDING)
    if pending is None:
        # registered once per session and never removed: SQLAlchemy cannot remove a
        # listener while dispatching it, and a session lives for one request anyway
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _on_commit)
        event.listen(session, "after_transaction_end", _on_transaction_end)
    pending.append((root, callback))


def _on_commit(session: Session) -> None:
    if session.get_nested_transaction() is None:
        session.info[_COMMITTED_ROOT] = session.get_transaction()


def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    committed = session.info.pop(_COMMITTED_ROOT, None) is transaction
    pending: list[tuple[SessionTransaction, Callable[[], None]]] = session.info[_PENDING]
    ready = [callback for root, callback in pending if root is transaction]
    pending[:] = [(root, callback) for root, callback in pending if root is not transaction]
    if committed:
        for callback in ready:
            callback()
