"""The ledger: billing events subtract from an organisation's balance, payments add to it,
each exactly once however often, and however concurrently, it is delivered.

Every function works inside the caller's transaction (``storage.db.session_scope``) and
never commits: a caller may apply a batch atomically, and its rollback undoes everything.

Exactly once, on both databases:

- a billing event is identified by ``billing_events.idempotency_key`` and a payment by
  ``payments (provider, provider_payment_id)``, both UNIQUE in the schema;
- a delivery first looks the identity up and returns the stored row if it is there
  (no lock taken, nothing written);
- otherwise it locks the organisation row (``SELECT ... FOR UPDATE`` on PostgreSQL; on
  SQLite every write transaction already holds the database lock from ``BEGIN
  IMMEDIATE``), looks again (a concurrent delivery may have committed while we waited),
  and inserts the row inside a SAVEPOINT *before* touching the balance. If the insert
  still hits the UNIQUE constraint, the savepoint is rolled back and the stored row is
  returned, so the losing delivery never reaches the balance;
- the balance moves with one ``UPDATE ... SET balance_minor = balance_minor + :delta
  RETURNING balance_minor``, never a read-modify-write in Python.

Locking the organisation before inserting also means two transactions that apply
overlapping batches for one organisation queue on that one row instead of deadlocking on
each other's uncommitted keys; :func:`apply_events` orders a batch by organisation so
batches spanning organisations cannot deadlock either. PostgreSQL must run at READ
COMMITTED (its default), so the second look sees rows committed while we waited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from billing.audit import SYSTEM_ACTOR, record_audit
from billing.pricing import MAX_CALL_ID_CHARS, EventDraft, UsageLine, price_minor
from billing.webhooks import PaymentNotice
from storage.models import (
    BillingEvent,
    Call,
    Organisation,
    Payment,
    Plan,
    UsageKind,
    UsageRecord,
)

log = logging.getLogger(__name__)

CALL_STATUS_BILLED = "ended"
"""Status of a ``calls`` row the ledger creates because usage arrived for a call the
database has not seen (usage is metered at the end of a call)."""


# column lengths in storage.models, checked here so both databases refuse the same input
_MAX_KEY_CHARS = 200
_MAX_ACTOR_CHARS = 100
_MAX_PROVIDER_CHARS = 50
_MAX_PAYMENT_ID_CHARS = 200


class LedgerError(Exception):
    """An event or payment that cannot be applied as given: unknown organisation, a
    currency that is not the organisation's, a call of another organisation, an invalid
    quantity. The call that raises it has written nothing (earlier calls in the same
    transaction are the caller's to keep or roll back)."""


def apply_event(
    session: Session, draft: EventDraft, *, actor: str = SYSTEM_ACTOR
) -> tuple[BillingEvent, bool]:
    """Price ``draft`` with its organisation's plan and charge it, exactly once.

    Returns ``(event, True)`` when this call applied it: the balance is decremented by the
    price, and a ``billing_events`` row (with ``balance_after_minor``), a ``usage_records``
    row and an ``audit_log`` row are written in the caller's transaction (a ``calls`` row
    too, if the call is unknown). Returns ``(stored event, False)`` and changes nothing if
    an event with ``draft.idempotency_key`` exists, whatever else the draft says (a
    differing one is logged as a warning).

    Raises :class:`LedgerError` (nothing written) for an unknown organisation, a plan whose
    currency is not the organisation's, a call that belongs to another organisation, or an
    invalid key, call id, kind, quantity or actor.
    """
    _check_event(draft, actor)
    existing = _event_by_key(session, draft.idempotency_key)
    if existing is not None:
        return _duplicate_event(existing, draft), False

    org, plan = _lock_organisation(session, draft.organisation_id)
    # looked up again under the lock: a concurrent delivery may have committed meanwhile
    existing = _event_by_key(session, draft.idempotency_key)
    if existing is not None:
        return _duplicate_event(existing, draft), False

    if plan.currency != org.currency:
        raise LedgerError(f"organisation {org.id} has no plan priced in {org.currency}")
    kind = UsageKind(draft.kind)  # checked by _check_event
    try:
        amount_minor = price_minor(plan, kind, draft.quantity)
    except ValueError as exc:  # a negative price in the plan
        raise LedgerError(f"cannot price {draft.idempotency_key!r}: {exc}") from None

    now = datetime.now(UTC)
    event = BillingEvent(
        idempotency_key=draft.idempotency_key,
        organisation_id=draft.organisation_id,
        call_id=draft.call_id,
        kind=kind,
        quantity=draft.quantity,
        amount_minor=amount_minor,
        currency=org.currency,
        balance_after_minor=0,  # set below, once the balance has moved
        created_at=now,
    )
    # the call row goes in with the event, so a losing delivery leaves no trace
    if not _insert_once(
        session, event, before=lambda: _ensure_call(session, draft.call_id, draft.organisation_id)
    ):
        stored = _event_by_key(session, draft.idempotency_key)
        if stored is None:  # the constraint that failed was not the key's
            raise LedgerError(f"billing event {draft.idempotency_key!r} violates a constraint")
        return _duplicate_event(stored, draft), False

    event.balance_after_minor = _add_to_balance(session, draft.organisation_id, -amount_minor)
    session.add(
        UsageRecord(
            organisation_id=draft.organisation_id,
            call_id=draft.call_id,
            kind=kind,
            quantity=draft.quantity,
            recorded_at=now,
        )
    )
    record_audit(
        session,
        organisation_id=draft.organisation_id,
        actor=actor,
        action="billing_event.applied",
        subject=draft.idempotency_key,
        detail={
            "kind": kind.value,
            "quantity": draft.quantity,
            "amount_minor": amount_minor,
            "currency": org.currency,
            "balance_after_minor": event.balance_after_minor,
        },
    )
    session.flush()
    log.info(
        "billing event applied",
        extra={
            "idempotency_key": draft.idempotency_key,
            "organisation_id": draft.organisation_id,
            "amount_minor": amount_minor,
            "balance_after_minor": event.balance_after_minor,
        },
    )
    return event, True


def apply_events(
    session: Session, drafts: Sequence[EventDraft], *, actor: str = SYSTEM_ACTOR
) -> list[tuple[BillingEvent, bool]]:
    """:func:`apply_event` for each draft, in one transaction; results in input order.

    Drafts are applied ordered by organisation (then key), so two concurrent batches lock
    organisations in the same order and cannot deadlock. Raises :class:`LedgerError` as
    :func:`apply_event` does; the caller's rollback then undoes the whole batch.
    """
    order = sorted(
        range(len(drafts)),
        key=lambda i: (drafts[i].organisation_id, drafts[i].idempotency_key),
    )
    results: dict[int, tuple[BillingEvent, bool]] = {}
    for i in order:
        results[i] = apply_event(session, drafts[i], actor=actor)
    return [results[i] for i in range(len(drafts))]


def apply_payment(session: Session, notice: PaymentNotice, *, actor: str) -> tuple[Payment, bool]:
    """Credit a verified payment to its organisation, exactly once.

    Returns ``(payment, True)`` when this call applied it: the balance is incremented and
    a ``payments`` row (with ``balance_after_minor``) and an ``audit_log`` row are written
    in the caller's transaction. Returns ``(stored payment, False)`` and changes nothing if
    ``(notice.provider, notice.provider_payment_id)`` was applied before.

    Raises :class:`LedgerError` (nothing written) for an unknown organisation, a currency
    that is not the organisation's, a non-positive amount, or an invalid id or actor.
    """
    _check_length("actor", actor, _MAX_ACTOR_CHARS)
    _check_length("provider", notice.provider, _MAX_PROVIDER_CHARS)
    _check_length("provider payment id", notice.provider_payment_id, _MAX_PAYMENT_ID_CHARS)
    existing = _payment_by_id(session, notice.provider, notice.provider_payment_id)
    if existing is not None:
        return _duplicate_payment(existing, notice), False

    org, _ = _lock_organisation(session, notice.organisation_id)
    existing = _payment_by_id(session, notice.provider, notice.provider_payment_id)
    if existing is not None:
        return _duplicate_payment(existing, notice), False
    if notice.currency != org.currency:
        raise LedgerError(
            f"payment in {notice.currency} for organisation {org.id} billed in {org.currency}"
        )
    if notice.amount_minor <= 0:
        raise LedgerError(f"payment amount must be positive, got {notice.amount_minor}")

    payment = Payment(
        organisation_id=notice.organisation_id,
        provider=notice.provider,
        provider_payment_id=notice.provider_payment_id,
        amount_minor=notice.amount_minor,
        currency=notice.currency,
        balance_after_minor=0,  # set below, once the balance has moved
        received_at=datetime.now(UTC),
    )
    if not _insert_once(session, payment):
        stored = _payment_by_id(session, notice.provider, notice.provider_payment_id)
        if stored is None:
            raise LedgerError(f"payment {notice.provider_payment_id!r} violates a constraint")
        return _duplicate_payment(stored, notice), False

    payment.balance_after_minor = _add_to_balance(
        session, notice.organisation_id, notice.amount_minor
    )
    record_audit(
        session,
        organisation_id=notice.organisation_id,
        actor=actor,
        action="payment.received",
        subject=notice.provider_payment_id,
        detail={
            "provider": notice.provider,
            "amount_minor": notice.amount_minor,
            "currency": notice.currency,
            "balance_after_minor": payment.balance_after_minor,
        },
    )
    session.flush()
    log.info(
        "payment applied",
        extra={
            "provider": notice.provider,
            "provider_payment_id": notice.provider_payment_id,
            "organisation_id": notice.organisation_id,
            "amount_minor": notice.amount_minor,
            "balance_after_minor": payment.balance_after_minor,
        },
    )
    return payment, True


def balance_minor(session: Session, organisation_id: int) -> tuple[int, str]:
    """The organisation's balance and its currency, as the database has them now.
    Raises :class:`LedgerError` for an unknown organisation."""
    row = session.exec(
        select(Organisation.balance_minor, Organisation.currency).where(
            Organisation.id == organisation_id
        )
    ).first()
    if row is None:
        raise LedgerError(f"unknown organisation {organisation_id}")
    return row[0], row[1]


@dataclass
class MonthlyUsage:
    """What an organisation used and was charged in one calendar month (UTC)."""

    quantities: dict[UsageKind, int]
    """Every kind, zero included, in the kind's unit."""
    amount_minor: int
    currency: str


def monthly_usage(session: Session, organisation_id: int, year: int, month: int) -> MonthlyUsage:
    """Totals of the organisation's billing events created in ``year``-``month`` (UTC).

    Raises :class:`LedgerError` for an unknown organisation and ValueError for a month
    outside 1..12.
    """
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    _, currency = balance_minor(session, organisation_id)
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    rows = session.exec(
        select(
            BillingEvent.kind,
            func.sum(BillingEvent.quantity),
            func.sum(BillingEvent.amount_minor),
        )
        .where(
            BillingEvent.organisation_id == organisation_id,
            BillingEvent.created_at >= start,  # type: ignore[operator]
            BillingEvent.created_at < end,  # type: ignore[operator]
        )
        .group_by(BillingEvent.kind)
    ).all()
    quantities = dict.fromkeys(UsageKind, 0)
    amount_minor = 0
    for kind, quantity, amount in rows:
        quantities[UsageKind(kind)] = int(quantity)
        amount_minor += int(amount)
    return MonthlyUsage(quantities=quantities, amount_minor=amount_minor, currency=currency)


def _check_event(draft: EventDraft, actor: str) -> None:
    _check_length("actor", actor, _MAX_ACTOR_CHARS)
    _check_length("idempotency key", draft.idempotency_key, _MAX_KEY_CHARS)
    _check_length("call id", draft.call_id, MAX_CALL_ID_CHARS)
    try:
        UsageLine(UsageKind(draft.kind), draft.quantity)
    except ValueError as exc:
        raise LedgerError(f"invalid billing event {draft.idempotency_key!r}: {exc}") from None


def _check_length(what: str, value: str, max_chars: int) -> None:
    if not value or len(value) > max_chars:
        raise LedgerError(f"{what} must be 1..{max_chars} characters")


def _lock_organisation(session: Session, organisation_id: int) -> tuple[Organisation, Plan]:
    """The organisation, locked until the transaction ends, and its plan (not locked:
    organisations on one plan must not queue on each other)."""
    row = session.exec(
        select(Organisation, Plan)
        .join(Plan, col(Plan.id) == Organisation.plan_id)
        .where(Organisation.id == organisation_id)
        # rendered on PostgreSQL; on SQLite the transaction holds the database lock already
        .with_for_update(of=Organisation)
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise LedgerError(f"unknown organisation {organisation_id}")
    return row[0], row[1]


def _insert_once(
    session: Session, row: BillingEvent | Payment, *, before: Callable[[], None] | None = None
) -> bool:
    """Run ``before`` and insert ``row`` in one SAVEPOINT. Returns False, with the savepoint
    rolled back and nothing else touched, if the insert violates a constraint (e.g. a
    concurrent delivery won the key); any error from ``before`` also rolls it back."""
    try:
        with session.begin_nested():
            if before is not None:
                before()
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def _add_to_balance(session: Session, organisation_id: int, delta_minor: int) -> int:
    # one atomic statement: concurrent deltas can never overwrite one another
    statement = (
        update(Organisation)
        .where(Organisation.id == organisation_id)  # type: ignore[arg-type]
        .values(balance_minor=Organisation.balance_minor + delta_minor)
        .returning(col(Organisation.balance_minor))
        .execution_options(synchronize_session="fetch")
    )
    return int(session.exec(statement).scalar_one())


def _ensure_call(session: Session, call_id: str, organisation_id: int) -> None:
    """Make sure ``calls`` has ``call_id`` (``usage_records.call_id`` references it) and
    that it is the organisation's; raises LedgerError if it is another's."""
    owner = _call_owner(session, call_id)
    if owner is None:
        values: dict[str, Any] = {
            "id": call_id,
            "organisation_id": organisation_id,
            "status": CALL_STATUS_BILLED,
            "started_at": datetime.now(UTC),
        }
        # ON CONFLICT DO NOTHING: another organisation's transaction may insert it meanwhile
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.exec(postgresql.insert(Call).values(values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            session.exec(sqlite.insert(Call).values(values).on_conflict_do_nothing())
        else:
            raise LedgerError(f"unsupported database {dialect!r}")
        owner = _call_owner(session, call_id)
    if owner != organisation_id:
        raise LedgerError(f"call {call_id!r} belongs to another organisation")


def _call_owner(session: Session, call_id: str) -> int | None:
    return session.exec(select(Call.organisation_id).where(Call.id == call_id)).first()


def _event_by_key(session: Session, key: str) -> BillingEvent | None:
    return session.exec(select(BillingEvent).where(BillingEvent.idempotency_key == key)).first()


def _payment_by_id(session: Session, provider: str, payment_id: str) -> Payment | None:
    return session.exec(
        select(Payment).where(
            Payment.provider == provider, Payment.provider_payment_id == payment_id
        )
    ).first()


def _duplicate_event(stored: BillingEvent, draft: EventDraft) -> BillingEvent:
    # the key decides; a replay that disagrees means the sender recomputed usage: worth a look
    if (stored.organisation_id, stored.call_id, stored.kind, stored.quantity) != (
        draft.organisation_id,
        draft.call_id,
        draft.kind,
        draft.quantity,
    ):
        log.warning(
            "billing event replayed with different contents; the stored one stands",
            extra={
                "idempotency_key": draft.idempotency_key,
                "organisation_id": stored.organisation_id,
            },
        )
    return stored


def _duplicate_payment(stored: Payment, notice: PaymentNotice) -> Payment:
    if (stored.organisation_id, stored.amount_minor, stored.currency) != (
        notice.organisation_id,
        notice.amount_minor,
        notice.currency,
    ):
        log.warning(
            "payment notice replayed with different contents; the stored one stands",
            extra={
                "provider": notice.provider,
                "provider_payment_id": notice.provider_payment_id,
                "organisation_id": stored.organisation_id,
            },
        )
    return stored
