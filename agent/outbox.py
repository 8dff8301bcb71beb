"""The worker's billing outbox: usage events are written to a local SQLite file first and
delivered to the sidecar afterwards, so a sidecar or database outage loses nothing.

Delivery is at least once: an event stays pending until the sidecar has applied it (or
had it already), and the sidecar applies each ``idempotency_key`` once (``billing.ledger``),
so a batch re-sent after a lost answer bills nothing twice. An event the sidecar rejects
for good is set aside in the file, never resent and never deleted, for an operator.

The file is shared by every process of a worker (each LiveKit job runs in its own process
and writes its own events; one sender, on the main process's sidecar link, delivers them):
SQLite's file locks make that safe, and ``BEGIN IMMEDIATE`` keeps two writers from
deadlocking.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx
from pydantic import ValidationError

from agent.sidecar_client import SidecarClient, SidecarUnavailable
from billing.internal_api import (
    BillingEventResult,
    BillingEventsOut,
    CallFactsIn,
)
from billing.pricing import EventDraft
from storage.models import UsageKind

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
DELIVERED_RETENTION_S = 7 * 24 * 3600.0
"""Delivered keys are kept this long so a late duplicate ``add`` is still ignored."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    created_at REAL NOT NULL,
    rejected_at REAL,
    rejection TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_at, next_attempt_at);
"""
# columns added since the first release, for outbox files made before them
_ADDED_COLUMNS = {"rejected_at": "REAL", "rejection": "TEXT"}
_PENDING = "delivered_at IS NULL AND rejected_at IS NULL"


_Outcome = Literal["retry", "refused"]


def backoff_s(attempts: int) -> float:
    """Wait before the next try after ``attempts`` failed ones: 1, 2, 4, 8 ... 60 s."""
    return min(BACKOFF_BASE_S * 2 ** min(max(attempts - 1, 0), 16), BACKOFF_MAX_S)


class Outbox:
    """Billing events waiting for delivery, in their own SQLite file (WAL).

    Safe to share between threads (one connection behind a lock) and between processes
    (each opens its own :class:`Outbox` on the same path). ``clock`` gives unix seconds;
    it is wall time because due times outlive the process.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        # autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns, so an added event survives a power cut
        self._db.execute("PRAGMA synchronous=FULL")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            for column, sql_type in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {sql_type}")

    def add(self, drafts: Sequence[EventDraft]) -> int:
        """Store ``drafts`` for delivery; returns how many were new. Durable on return
        (committed and synced). A key already in the outbox, pending or delivered in the
        last :data:`DELIVERED_RETENTION_S`, is ignored."""
        now = self._clock()
        rows = [(d.idempotency_key, _encode(d), now, now) for d in drafts]
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox"
                " (idempotency_key, payload, next_attempt_at, created_at) VALUES (?, ?, ?, ?)",
                rows,
            )
            added = db.total_changes - before
        if added:
            log.debug("billing events queued", extra={"added": added, "offered": len(rows)})
        return added

    def due(self, limit: int = 100, *, now: float | None = None) -> list[EventDraft]:
        """Up to ``limit`` pending events whose next attempt is due, oldest due first."""
        at = self._clock() if now is None else now
        with self._lock:
            rows = self._db.execute(
                f"SELECT payload FROM outbox WHERE {_PENDING} AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, rowid LIMIT ?",
                (at, limit),
            ).fetchall()
        return [_decode(payload) for (payload,) in rows]

    def mark_delivered(self, keys: Sequence[str]) -> None:
        """Record that the sidecar accepted ``keys``; they are never offered again. Drops
        delivered rows older than :data:`DELIVERED_RETENTION_S`."""
        now = self._clock()
        with self._transaction() as db:
            db.executemany(
                "UPDATE outbox SET delivered_at = ? WHERE idempotency_key = ?"
                " AND delivered_at IS NULL",
                [(now, key) for key in keys],
            )
            db.execute("DELETE FROM outbox WHERE delivered_at < ?", (now - DELIVERED_RETENTION_S,))

    def mark_failed(self, keys: Sequence[str], *, now: float | None = None) -> None:
        """Count a failed attempt for each of ``keys`` and put its next one off by
        :func:`backoff_s` (1, 2, 4, 8 ... capped at 60 s after ``now``)."""
        at = self._clock() if now is None else now
        with self._transaction() as db:
            for key in keys:
                row = db.execute(
                    f"SELECT attempts FROM outbox WHERE idempotency_key = ? AND {_PENDING}",
                    (key,),
                ).fetchone()
                if row is None:
                    continue
                attempts = row[0] + 1
                db.execute(
                    "UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE idempotency_key = ?",
                    (attempts, at + backoff_s(attempts), key),
                )

    def mark_rejected(self, key: str, reason: str) -> None:
        """Set ``key`` aside: the sidecar refused it for good (an unknown organisation, an
        impossible quantity), so sending it again can never succeed. It is kept, never
        offered again and never deleted, for an operator (:meth:`rejected`)."""
        with self._transaction() as db:
            db.execute(
                f"UPDATE outbox SET rejected_at = ?, rejection = ? WHERE idempotency_key = ?"
                f" AND {_PENDING}",
                (self._clock(), reason[:500], key),
            )

    def pending_count(self) -> int:
        """How many events are waiting for delivery, due or not (rejected ones excluded)."""
        with self._lock:
            (count,) = self._db.execute(f"SELECT COUNT(*) FROM outbox WHERE {_PENDING}").fetchone()
        return int(count)

    def rejected(self) -> list[tuple[EventDraft, str]]:
        """The events the sidecar refused for good, oldest first, with its reasons."""
        with self._lock:
            rows = self._db.execute(
                "SELECT payload, rejection FROM outbox WHERE rejected_at IS NOT NULL"
                " ORDER BY rejected_at, rowid"
            ).fetchall()
        return [(_decode(payload), reason or "") for payload, reason in rows]

    def attempts(self, key: str) -> int | None:
        """Failed attempts so far for ``key`` (None if unknown): for operators and tests."""
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM outbox WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        """Close the file; the outbox must not be used afterwards."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


class OutboxSender:
    """Delivers an :class:`Outbox` to the sidecar's ``POST /internal/billing-events``.

    Answers and what they do to a batch:

    - 2xx: each event by its own result: ``applied`` or ``duplicate`` is delivered; a
      ``rejected`` one that is ``permanent`` is set aside (:meth:`Outbox.mark_rejected`,
      logged as an error; kept, because it is money, but never sent again), any other
      rejection is retried with backoff. A 2xx without one result per event is retried
      whole (the sidecar deduplicates, so nothing is billed twice);
    - network error, timeout, 5xx, 408 or 429: failed, retried with backoff;
    - 401 or 403: the service token is wrong for every event: failed, retried with
      backoff, logged as an error so an operator fixes the token;
    - any other 4xx (the sidecar refuses the batch as a whole, e.g. too large): the batch
      is split and each event sent alone; an event refused so on its own is set aside.
    """

    def __init__(self, outbox: Outbox, client: SidecarClient, *, batch_size: int = 100) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self._outbox = outbox
        self._client = client
        self._batch_size = batch_size

    async def deliver_once(self, *, now: float | None = None) -> int:
        """Send one batch of due events (due at ``now``; default: the outbox's clock);
        returns how many the sidecar accepted (applied or already had). Never raises for
        a failed delivery: the events stay pending and are retried (or, refused for good,
        are set aside)."""
        batch = self._outbox.due(self._batch_size, now=now)
        if not batch:
            return 0
        outcome = await self._post(batch)
        if isinstance(outcome, list):
            return self._settle(batch, outcome)
        if outcome == "refused" and len(batch) > 1:
            return sum([await self._deliver_alone(draft) for draft in batch])
        if outcome == "refused":
            self._outbox.mark_rejected(batch[0].idempotency_key, "refused by the sidecar")
            return 0
        self._outbox.mark_failed([d.idempotency_key for d in batch])
        return 0

    async def run(self, stop: threading.Event, *, poll_s: float = 1.0) -> None:
        """Deliver until ``stop`` is set: back to back while full batches go through,
        otherwise every ``poll_s``. Never raises; an unexpected error is logged and the
        loop goes on after ``poll_s``."""
        while not stop.is_set():
            try:
                delivered = await self.deliver_once()
            except Exception:
                log.exception("outbox delivery failed unexpectedly")
                delivered = 0
            if delivered < self._batch_size:
                await asyncio.sleep(poll_s)

    async def flush(self, timeout_s: float) -> int:
        """At shutdown: offer every pending event once more, backoff or not, batch after
        batch while the sidecar takes them, for at most ``timeout_s``. Returns how many
        are still pending (kept on disk for the next start)."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.deliver_once(now=math.inf) > 0:
                    pass
        except TimeoutError:
            log.warning("outbox flush timed out", extra={"timeout_s": timeout_s})
        left = self._outbox.pending_count()
        log.log(
            logging.WARNING if left else logging.INFO,
            "outbox flushed",
            extra={"pending": left},
        )
        return left

    async def _deliver_alone(self, draft: EventDraft) -> int:
        outcome = await self._post([draft])
        if isinstance(outcome, list):
            return self._settle([draft], outcome)
        if outcome == "refused":
            self._outbox.mark_rejected(draft.idempotency_key, "refused by the sidecar")
        else:
            self._outbox.mark_failed([draft.idempotency_key])
        return 0

    def _settle(self, batch: Sequence[EventDraft], results: list[BillingEventResult]) -> int:
        delivered: list[str] = []
        failed: list[str] = []
        for draft, result in zip(batch, results, strict=True):
            key = draft.idempotency_key
            if result.status in ("applied", "duplicate"):
                delivered.append(key)
            elif result.permanent:
                log.error(
                    "sidecar rejected a billing event for good; set aside for an operator",
                    extra={"idempotency_key": key, "reason": result.reason},
                )
                self._outbox.mark_rejected(key, f"{result.reason}: {result.detail}")
            else:
                log.warning(
                    "sidecar could not apply a billing event yet; kept for retry",
                    extra={"idempotency_key": key, "reason": result.reason},
                )
                failed.append(key)
        if delivered:
            self._outbox.mark_delivered(delivered)
        if failed:
            self._outbox.mark_failed(failed)
        return len(delivered)

    async def _post(self, batch: Sequence[EventDraft]) -> _Outcome | list[BillingEventResult]:
        """The per-event results of a processed batch, "retry" (the same batch may pass
        later) or "refused" (a 4xx about the batch's contents)."""
        body = {"events": [_as_json(d) for d in batch]}  # BillingEventsIn
        try:
            response = await self._client.send_billing_events(body)
        except SidecarUnavailable as exc:
            log.warning(
                "sidecar unreachable; billing events kept for retry",
                extra={"events": len(batch), "error": str(exc)},
            )
            return "retry"
        status = response.status_code
        extra = {"events": len(batch), "status": status, "body": response.text[:500]}
        if 200 <= status < 300:
            results = _results_of(response, len(batch))
            if results is None:
                log.error("sidecar answered without a result per event; kept", extra=extra)
                return "retry"
            log.debug("billing events delivered", extra={"events": len(batch)})
            return results
        if status in (401, 403):
            log.error("sidecar refused the service token; billing events kept", extra=extra)
            return "retry"
        if 400 <= status < 500 and status not in (408, 429):
            if len(batch) == 1:
                extra["idempotency_key"] = batch[0].idempotency_key
            log.error("sidecar refused billing events", extra=extra)
            return "refused"
        log.warning("sidecar failed; billing events kept for retry", extra=extra)
        return "retry"


def _results_of(response: httpx.Response, expected: int) -> list[BillingEventResult] | None:
    try:
        results = BillingEventsOut.model_validate_json(response.content).results
    except ValidationError:
        return None
    return results if len(results) == expected else None


def _as_json(draft: EventDraft) -> dict[str, object]:
    body: dict[str, object] = {
        "idempotency_key": draft.idempotency_key,
        "organisation_id": draft.organisation_id,
        "call_id": draft.call_id,
        "kind": UsageKind(draft.kind).value,
        "quantity": draft.quantity,
    }
    if draft.agent_id is not None:
        body["agent_id"] = draft.agent_id
    if draft.call is not None:
        body["call"] = CallFactsIn.from_facts(draft.call).model_dump(mode="json")
    return body


def _encode(draft: EventDraft) -> str:
    return json.dumps(_as_json(draft), sort_keys=True)


def _decode(payload: str) -> EventDraft:
    fields = json.loads(payload)
    return EventDraft(
        idempotency_key=fields["idempotency_key"],
        organisation_id=int(fields["organisation_id"]),
        call_id=fields["call_id"],
        kind=UsageKind(fields["kind"]),
        quantity=int(fields["quantity"]),
        agent_id=fields.get("agent_id"),  # absent in events queued before agents were sent
        call=CallFactsIn.model_validate(fields["call"]).to_facts() if fields.get("call") else None,
    )
