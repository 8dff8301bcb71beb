"""The ledger: billing events subtract from an organisation's balance, payments add to it,
each exactly once however often, and however concurrently, it is delivered.

Every function works inside the caller's transaction (``storage.db.session_scope``) and
never commits: a caller may apply a batch atomically, and its rollback undoes everything.

Exactly once, on both databases:

- a billing event is identified by ``billing_events.idempotency_key`` and a payment by
  ``payments (provider, provider_payment_id)``, both UNIQUE in the schema;
- a delivery first looks the identities up and returns the stored rows it finds (no lock
  taken, nothing written);
- otherwise it locks the organisation row (``SELECT ... FOR UPDATE`` on PostgreSQL; on
  SQLite every write transaction already holds the database lock from ``BEGIN
  IMMEDIATE``), looks again (a concurrent delivery may have committed while we waited),
  and inserts the rows inside a SAVEPOINT *before* touching the balance (events with
  ``ON CONFLICT DO NOTHING``: if any key was taken meanwhile, by another organisation's
  transaction that the lock does not serialise, the savepoint is rolled back and the
  batch looked at again), so a losing delivery never reaches the balance;
- the balance moves with one ``UPDATE ... SET balance_minor = balance_minor + :delta
  RETURNING balance_minor``, never a read-modify-write in Python, and never past
  ``MAX_BALANCE_MINOR`` either side of zero (``billing.pricing``).

Locking the organisation before inserting also means two transactions that apply
overlapping batches for one organisation queue on that one row instead of deadlocking on
each other's uncommitted keys; :func:`apply_event_batch` takes organisations in id order
so batches spanning organisations cannot deadlock either. PostgreSQL must run at READ
COMMITTED (its default), so the second look sees rows committed while we waited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from billing.audit import SYSTEM_ACTOR, audit_values, record_audit
from billing.pricing import (
    MAX_AMOUNT_MINOR,
    MAX_BALANCE_MINOR,
    MAX_BLOCK_PRICE_MINOR,
    MAX_CALL_ID_CHARS,
    CallFacts,
    EventDraft,
    block_price_minor,
    check_quantity,
    price_minor,
)
from billing.webhooks import PaymentNotice
from storage.models import (
    ROW_ID_MAX,
    Agent,
    AuditLog,
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
"""Status of a ``calls`` row the ledger creates for events that say nothing of their call
(events from workers before call facts were sent were metered at the call's end)."""
CALL_STATUS_ACTIVE = "active"
"""Status of a ``calls`` row created from events whose call has not ended yet."""


# column lengths in storage.models, checked here so both databases refuse the same input
_MAX_KEY_CHARS = 200
_MAX_ACTOR_CHARS = 100
_MAX_PROVIDER_CHARS = 50
_MAX_PAYMENT_ID_CHARS = 200


class LedgerError(Exception):
    """An event or payment that cannot be applied as given. ``reason`` is a stable word
    (one of the ``REJECTED_*`` constants) and ``permanent`` says whether delivering it again
    can ever succeed: an unknown organisation, an invalid quantity or a call of another
    organisation never will; a plan priced in the wrong currency may once an operator fixes
    the plan. The call that raises it has written nothing (earlier calls in the same
    transaction are the caller's to keep or roll back)."""

    def __init__(self, message: str, *, reason: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.permanent = permanent


REJECTED_INVALID = "invalid_event"
REJECTED_UNKNOWN_ORGANISATION = "unknown_organisation"
REJECTED_FOREIGN_CALL = "call_of_another_organisation"
REJECTED_AMOUNT_TOO_LARGE = "amount_too_large"
REJECTED_PLAN_MISCONFIGURED = "plan_misconfigured"
REJECTED_BALANCE_OUT_OF_RANGE = "balance_out_of_range"
REJECTED_CURRENCY = "currency_mismatch"


@dataclass(frozen=True)
class EventOutcome:
    """What applying one draft did. Applied: ``event`` is the new row and ``created`` is
    True. Already applied before (or earlier in the same batch): ``event`` is the stored
    row and ``created`` False. Refused: ``error`` says why, and nothing was written for it."""

    event: BillingEvent | None
    created: bool
    error: LedgerError | None = None


_ATTEMPTS = 3
"""How often a batch is retried after losing a race it cannot see before inserting (a
concurrent transaction of *another* organisation taking the same key or call id)."""


def apply_event_batch(
    session: Session, drafts: Sequence[EventDraft], *, actor: str = SYSTEM_ACTOR
) -> list[EventOutcome]:
    """Price each draft with its organisation's plan and charge it, exactly once; one
    outcome per draft, in order. A refused draft writes nothing and does not stop the
    others; nothing is committed (the caller's transaction holds it all).

    An applied event decrements its organisation's balance by its price and writes a
    ``billing_events`` row (with ``balance_after_minor``), a ``usage_records`` row and an
    ``audit_log`` row (and a ``calls`` row for an unknown call). A draft whose key was
    applied before changes nothing, whatever else it says (a differing one is logged).

    Set-based, so a batch costs about ten statements, however many events and
    organisations it holds: the known keys in one query, then the batch's organisations
    locked in one (in id order, so concurrent batches cannot deadlock), the keys looked up
    again under the locks, the calls checked, the rows inserted in bulk inside a
    SAVEPOINT, and each balance moved once. Raises :class:`LedgerError` only for an
    invalid ``actor`` (the caller's own bug).
    """
    _check_length("actor", actor, _MAX_ACTOR_CHARS, reason=REJECTED_INVALID)
    outcomes: list[EventOutcome | None] = [None] * len(drafts)
    first_of_key: dict[str, int] = {}
    for i, draft in enumerate(drafts):
        try:
            _check_event(draft)
        except LedgerError as exc:
            outcomes[i] = EventOutcome(None, False, exc)
            continue
        first_of_key.setdefault(draft.idempotency_key, i)

    known = _events_by_keys(session, list(first_of_key))
    pending: list[int] = []
    for key, i in first_of_key.items():
        stored = known.get(key)
        if stored is not None:
            outcomes[i] = EventOutcome(_duplicate_event(stored, drafts[i]), False)
        else:
            pending.append(i)
    if pending:
        applied = _apply_unknown(session, [drafts[i] for i in pending], actor)
        for i, outcome in zip(pending, applied, strict=True):
            outcomes[i] = outcome

    for i, draft in enumerate(drafts):
        if outcomes[i] is None:  # a key repeated in the batch: the first one's result
            first = outcomes[first_of_key[draft.idempotency_key]]
            assert first is not None
            outcomes[i] = EventOutcome(first.event, False, first.error)
    return [outcome for outcome in outcomes if outcome is not None]


def apply_event(
    session: Session, draft: EventDraft, *, actor: str = SYSTEM_ACTOR
) -> tuple[BillingEvent, bool]:
    """:func:`apply_event_batch` for one draft: ``(event, True)`` when this call applied
    it, ``(stored event, False)`` when it had been. Raises :class:`LedgerError` (nothing
    written) when it is refused."""
    (outcome,) = apply_event_batch(session, [draft], actor=actor)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.event is not None
    return outcome.event, outcome.created


def apply_events(
    session: Session, drafts: Sequence[EventDraft], *, actor: str = SYSTEM_ACTOR
) -> list[tuple[BillingEvent, bool]]:
    """All of ``drafts`` or none: as :func:`apply_event_batch`, but raises the first
    refusal's :class:`LedgerError`, and the caller's rollback then undoes the batch."""
    results: list[tuple[BillingEvent, bool]] = []
    for outcome in apply_event_batch(session, drafts, actor=actor):
        if outcome.error is not None:
            raise outcome.error
        assert outcome.event is not None
        results.append((outcome.event, outcome.created))
    return results


def _apply_unknown(session: Session, drafts: list[EventDraft], actor: str) -> list[EventOutcome]:
    """Apply drafts with unique keys that were not known a moment ago."""
    for _ in range(_ATTEMPTS):
        organisations = _lock_organisations(session, {d.organisation_id for d in drafts})
        outcomes = _price_under_lock(session, organisations, drafts)
        accepted = [o.event for o in outcomes if o.created and o.event is not None]
        agents = _call_agents(session, drafts)
        facts = _call_facts([d for d, o in zip(drafts, outcomes, strict=True) if o.created])
        if not accepted or _insert_events(session, accepted, agents, facts):
            break
        # lost a race to another organisation's transaction: look again
    else:
        raise LedgerError(
            "billing events kept losing races to concurrent batches",
            reason=REJECTED_INVALID,
            permanent=False,
        )
    if accepted:
        _write_usage_and_audit(session, accepted, actor)
        deltas: dict[int, int] = {}
        for event in accepted:
            deltas[event.organisation_id] = (
                deltas.get(event.organisation_id, 0) - event.amount_minor
            )
        _add_to_balances(session, deltas)
        for event in accepted:
            log.info(
                "billing event applied",
                extra={
                    "idempotency_key": event.idempotency_key,
                    "organisation_id": event.organisation_id,
                    "amount_minor": event.amount_minor,
                    "balance_after_minor": event.balance_after_minor,
                },
            )
    return outcomes


def _price_under_lock(
    session: Session,
    organisations: dict[int, tuple[Organisation, Plan]],
    drafts: list[EventDraft],
) -> list[EventOutcome]:
    """Each draft's outcome if it were inserted now: duplicates (looked up again under the
    locks), refusals, and for the rest a priced, unsaved event (``created``) carrying its
    organisation's running ``balance_after_minor``."""
    stored = _events_by_keys(session, [d.idempotency_key for d in drafts])
    owners = _call_owners(session, {d.call_id for d in drafts})
    balances = {org_id: org.balance_minor for org_id, (org, _) in organisations.items()}
    now = datetime.now(UTC)
    outcomes: list[EventOutcome] = []
    for draft in drafts:
        existing = stored.get(draft.idempotency_key)
        if existing is not None:
            outcomes.append(EventOutcome(_duplicate_event(existing, draft), False))
            continue
        try:
            org, plan = _organisation_of(organisations, draft.organisation_id)
            amount_minor = _price(org, plan, draft)
            if owners.get(draft.call_id, draft.organisation_id) != draft.organisation_id:
                raise LedgerError(
                    f"call {draft.call_id!r} belongs to another organisation",
                    reason=REJECTED_FOREIGN_CALL,
                    permanent=True,
                )
            balance_after = _bounded_balance(balances[draft.organisation_id] - amount_minor)
        except LedgerError as exc:
            outcomes.append(EventOutcome(None, False, exc))
            continue
        balances[draft.organisation_id] = balance_after
        event = BillingEvent(
            idempotency_key=draft.idempotency_key,
            organisation_id=draft.organisation_id,
            call_id=draft.call_id,
            kind=UsageKind(draft.kind),
            quantity=draft.quantity,
            amount_minor=amount_minor,
            currency=org.currency,
            balance_after_minor=balance_after,
            created_at=now,
        )
        outcomes.append(EventOutcome(event, True))
    return outcomes


def _organisation_of(
    organisations: dict[int, tuple[Organisation, Plan]], organisation_id: int
) -> tuple[Organisation, Plan]:
    found = organisations.get(organisation_id)
    if found is None:
        raise LedgerError(
            f"unknown organisation {organisation_id}",
            reason=REJECTED_UNKNOWN_ORGANISATION,
            permanent=True,
        )
    return found


def _price(org: Organisation, plan: Plan, draft: EventDraft) -> int:
    if plan.currency != org.currency:
        raise LedgerError(
            f"organisation {org.id} has no plan priced in {org.currency}",
            reason=REJECTED_CURRENCY,
            permanent=False,
        )
    kind = UsageKind(draft.kind)  # checked by _check_event
    if not 0 <= block_price_minor(plan, kind) <= MAX_BLOCK_PRICE_MINOR:
        raise LedgerError(
            f"plan {plan.name!r} prices {kind.value} outside 0..{MAX_BLOCK_PRICE_MINOR}",
            reason=REJECTED_PLAN_MISCONFIGURED,
            permanent=False,
        )
    try:
        return price_minor(plan, kind, draft.quantity)
    except ValueError as exc:  # the amount is above MAX_AMOUNT_MINOR
        raise LedgerError(
            f"cannot price {draft.idempotency_key!r}: {exc}",
            reason=REJECTED_AMOUNT_TOO_LARGE,
            permanent=True,
        ) from None


def _bounded_balance(balance_minor: int) -> int:
    if not -MAX_BALANCE_MINOR <= balance_minor <= MAX_BALANCE_MINOR:
        raise LedgerError(
            f"the balance would leave -{MAX_BALANCE_MINOR}..{MAX_BALANCE_MINOR} minor units",
            reason=REJECTED_BALANCE_OUT_OF_RANGE,
            permanent=False,
        )
    return balance_minor


def _call_agents(session: Session, drafts: list[EventDraft]) -> dict[str, int]:
    """The agent each call was answered by, for the calls this batch may create: only an
    agent of the call's own organisation (another's is logged and left out: the usage is
    still billed, to the organisation the event names)."""
    named = {d.call_id: (d.agent_id, d.organisation_id) for d in drafts if d.agent_id}
    if not named:
        return {}
    owners = dict(
        session.exec(
            select(Agent.id, Agent.organisation_id).where(
                col(Agent.id).in_(sorted({agent for agent, _ in named.values()}))
            )
        ).all()
    )
    agents: dict[str, int] = {}
    for call_id, (agent_id, organisation_id) in named.items():
        assert agent_id is not None
        if owners.get(agent_id) == organisation_id:
            agents[call_id] = agent_id
        else:
            log.warning(
                "billing event names an agent of another organisation; not recorded",
                extra={"call_id": call_id, "organisation_id": organisation_id},
            )
    return agents


def _call_facts(drafts: list[EventDraft]) -> dict[str, CallFacts]:
    """Per call, what its events say of it; an event that reports the end wins."""
    facts: dict[str, CallFacts] = {}
    for draft in drafts:
        if draft.call is not None and (
            draft.call_id not in facts or draft.call.ended_at is not None
        ):
            facts[draft.call_id] = draft.call
    return facts


def _call_row(
    call_id: str, org_id: int, agent_id: int | None, facts: CallFacts | None
) -> dict[str, Any]:
    if facts is None:
        return {
            "id": call_id,
            "organisation_id": org_id,
            "agent_id": agent_id,
            "status": CALL_STATUS_BILLED,
            "started_at": datetime.now(UTC),
            "caller_number_masked": None,
            "dialled_number": None,
            "caller_number_hash": None,
            "sip_call_id": None,
            "direction": None,
            "ended_at": None,
        }
    return {"id": call_id, "organisation_id": org_id, "agent_id": agent_id,
            "status": facts.status or CALL_STATUS_ACTIVE,
            "started_at": datetime.fromtimestamp(facts.started_at, UTC),
            "caller_number_masked": facts.caller_number_masked,
            "dialled_number": facts.dialled_number,
            "caller_number_hash": facts.caller_number_hash,
            "sip_call_id": facts.sip_call_id, "direction": facts.direction,
            "ended_at": _utc(facts.ended_at)}  # fmt: skip


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _record_call_ends(session: Session, facts: dict[str, CallFacts], calls: dict[str, int]) -> None:
    """Calls already in the database whose events now report their end (or, for a row
    made before the facts arrived, their caller and number), in one executemany
    statement: a field the events leave out keeps what the row holds."""
    if not facts:
        return
    table = Call.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        table.update()
        .where(
            table.c.id == bindparam("call_id"),
            table.c.organisation_id == bindparam("org_id"),
        )
        .values(
            caller_number_masked=func.coalesce(
                table.c.caller_number_masked,
                bindparam("caller", type_=table.c.caller_number_masked.type),
            ),
            dialled_number=func.coalesce(
                table.c.dialled_number, bindparam("dialled", type_=table.c.dialled_number.type)
            ),
            caller_number_hash=func.coalesce(
                table.c.caller_number_hash,
                bindparam("caller_hash", type_=table.c.caller_number_hash.type),
            ),
            sip_call_id=func.coalesce(
                table.c.sip_call_id, bindparam("sip_call_id", type_=table.c.sip_call_id.type)
            ),
            direction=func.coalesce(
                table.c.direction, bindparam("direction", type_=table.c.direction.type)
            ),
            ended_at=func.coalesce(
                bindparam("ended_at", type_=table.c.ended_at.type), table.c.ended_at
            ),
            status=func.coalesce(bindparam("status", type_=table.c.status.type), table.c.status),
        ),
        [
            {
                "call_id": call_id,
                "org_id": calls[call_id],
                "caller": call.caller_number_masked,
                "dialled": call.dialled_number,
                "caller_hash": call.caller_number_hash,
                "sip_call_id": call.sip_call_id,
                "direction": call.direction,
                "ended_at": _utc(call.ended_at),
                "status": call.status,
            }
            for call_id, call in sorted(facts.items())
        ],
    )


def _insert_events(
    session: Session,
    events: list[BillingEvent],
    agents: dict[str, int],
    facts: dict[str, CallFacts],
) -> bool:
    """Insert the unknown calls (with their agents and facts) and the events in one
    SAVEPOINT, each in one bulk statement, and record the ends of known calls; False,
    with it rolled back, if another transaction took one of the keys or call ids
    meanwhile."""
    calls = {event.call_id: event.organisation_id for event in events}
    with session.begin_nested() as savepoint:
        # asked for inside the block: that is what emits the SAVEPOINT (lazily); a
        # connection taken before would run these statements outside it
        connection = session.connection()
        connection.execute(
            _insert_ignoring_conflicts(session, Call),
            [
                _call_row(call_id, org_id, agents.get(call_id), facts.get(call_id))
                for call_id, org_id in sorted(calls.items())
            ],
        )
        owners = _call_owners(session, set(calls))
        inserted: dict[str, int] = {}
        if all(owners.get(call_id) == org_id for call_id, org_id in calls.items()):
            rows = connection.execute(
                _insert_ignoring_conflicts(session, BillingEvent).returning(
                    col(BillingEvent.idempotency_key), col(BillingEvent.id)
                ),
                [_event_values(event) for event in events],
            ).all()
            inserted = {key: event_id for key, event_id in rows}
        if len(inserted) != len(events):
            savepoint.rollback()
            return False
        _record_call_ends(session, {c: f for c, f in facts.items() if c in calls}, calls)
    for event in events:
        event.id = inserted[event.idempotency_key]
    return True


def _event_values(event: BillingEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in BillingEvent.model_fields if name != "id"}


def _write_usage_and_audit(session: Session, events: list[BillingEvent], actor: str) -> None:
    connection = session.connection()
    connection.execute(
        insert(UsageRecord),
        [
            {
                "organisation_id": event.organisation_id,
                "call_id": event.call_id,
                "kind": event.kind,
                "quantity": event.quantity,
                "recorded_at": event.created_at,
            }
            for event in events
        ],
    )
    connection.execute(
        insert(AuditLog),
        [
            audit_values(
                organisation_id=event.organisation_id,
                actor=actor,
                action="billing_event.applied",
                subject=event.idempotency_key,
                detail={
                    "kind": UsageKind(event.kind).value,
                    "quantity": event.quantity,
                    "amount_minor": event.amount_minor,
                    "currency": event.currency,
                    "balance_after_minor": event.balance_after_minor,
                },
            )
            for event in events
        ],
    )


def apply_payment(session: Session, notice: PaymentNotice, *, actor: str) -> tuple[Payment, bool]:
    """Credit a verified payment to its organisation, exactly once.

    Returns ``(payment, True)`` when this call applied it: the balance is incremented and
    a ``payments`` row (with ``balance_after_minor``) and an ``audit_log`` row are written
    in the caller's transaction. Returns ``(stored payment, False)`` and changes nothing if
    ``(notice.provider, notice.provider_payment_id)`` was applied before.

    Raises :class:`LedgerError` (nothing written) for an unknown organisation, a currency
    that is not the organisation's, a non-positive amount, or an invalid id or actor.
    """
    for what, value, max_chars in (
        ("actor", actor, _MAX_ACTOR_CHARS),
        ("provider", notice.provider, _MAX_PROVIDER_CHARS),
        ("provider payment id", notice.provider_payment_id, _MAX_PAYMENT_ID_CHARS),
    ):
        _check_length(what, value, max_chars, reason=REJECTED_INVALID)
    existing = _payment_by_id(session, notice.provider, notice.provider_payment_id)
    if existing is not None:
        return _duplicate_payment(existing, notice), False

    locked = _lock_organisation(session, notice.organisation_id)
    if locked is None:
        raise LedgerError(
            f"unknown organisation {notice.organisation_id}",
            reason=REJECTED_UNKNOWN_ORGANISATION,
            permanent=True,
        )
    org, _ = locked
    existing = _payment_by_id(session, notice.provider, notice.provider_payment_id)
    if existing is not None:
        return _duplicate_payment(existing, notice), False
    if notice.currency != org.currency:
        raise LedgerError(
            f"payment in {notice.currency} for organisation {org.id} billed in {org.currency}",
            reason=REJECTED_CURRENCY,
            permanent=True,
        )
    if not 0 < notice.amount_minor <= MAX_AMOUNT_MINOR:
        raise LedgerError(
            f"payment amount must be 1..{MAX_AMOUNT_MINOR}, got {notice.amount_minor}",
            reason=REJECTED_INVALID,
            permanent=True,
        )
    _bounded_balance(org.balance_minor + notice.amount_minor)

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
            raise LedgerError(
                f"payment {notice.provider_payment_id!r} violates a constraint",
                reason=REJECTED_INVALID,
                permanent=False,
            )
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
        raise LedgerError(
            f"unknown organisation {organisation_id}",
            reason=REJECTED_UNKNOWN_ORGANISATION,
            permanent=True,
        )
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


def _check_event(draft: EventDraft) -> None:
    _check_length("idempotency key", draft.idempotency_key, _MAX_KEY_CHARS, reason=REJECTED_INVALID)
    _check_length("call id", draft.call_id, MAX_CALL_ID_CHARS, reason=REJECTED_INVALID)
    try:
        organisation_id = draft.organisation_id
        if isinstance(organisation_id, bool) or not isinstance(organisation_id, int):
            raise ValueError("organisation id must be an integer")
        if not 1 <= organisation_id <= ROW_ID_MAX:
            raise ValueError(f"organisation id must be 1..{ROW_ID_MAX}")
        check_quantity(UsageKind(draft.kind), draft.quantity)
    except ValueError as exc:
        raise LedgerError(
            f"invalid billing event {draft.idempotency_key!r}: {exc}",
            reason=REJECTED_INVALID,
            permanent=True,
        ) from None


def _check_length(what: str, value: str, max_chars: int, *, reason: str) -> None:
    # NUL: PostgreSQL text cannot hold it, and both databases must refuse the same input
    if not isinstance(value, str) or not value or len(value) > max_chars or "\x00" in value:
        message = f"{what} must be 1..{max_chars} characters, none of them NUL"
        raise LedgerError(message, reason=reason, permanent=True)


def _lock_organisation(session: Session, organisation_id: int) -> tuple[Organisation, Plan] | None:
    """The organisation, locked until the transaction ends, and its plan; None if it does
    not exist."""
    return _lock_organisations(session, {organisation_id}).get(organisation_id)


def _lock_organisations(
    session: Session, organisation_ids: set[int]
) -> dict[int, tuple[Organisation, Plan]]:
    """The organisations that exist among ``organisation_ids``, locked until the
    transaction ends in id order (so two transactions never wait on each other in
    opposite orders), each with its plan (not locked: organisations on one plan must not
    queue on each other)."""
    rows = session.exec(
        select(Organisation, Plan)
        .join(Plan, col(Plan.id) == Organisation.plan_id)
        .where(col(Organisation.id).in_(sorted(organisation_ids)))
        .order_by(col(Organisation.id))
        # rendered on PostgreSQL; on SQLite the transaction holds the database lock already
        .with_for_update(of=Organisation)
        .execution_options(populate_existing=True)
    ).all()
    return {org.id: (org, plan) for org, plan in rows if org.id is not None}


def _insert_once(session: Session, row: Payment) -> bool:
    """Insert ``row`` in a SAVEPOINT. Returns False, with the savepoint rolled back and
    nothing else touched, if the insert violates a constraint (e.g. a concurrent delivery
    won the key)."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def _insert_ignoring_conflicts(session: Session, model: type[SQLModel]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database {dialect!r}")


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


def _add_to_balances(session: Session, deltas: dict[int, int]) -> None:
    """Move each organisation's balance by its delta, in one executemany statement; the
    callers hold the organisations' locks and have checked the bounds."""
    table = Organisation.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        table.update()
        .where(table.c.id == bindparam("organisation_id"))
        .values(balance_minor=table.c.balance_minor + bindparam("delta_minor")),
        [
            {"organisation_id": org_id, "delta_minor": delta}
            for org_id, delta in sorted(deltas.items())
        ],
    )


def _call_owners(session: Session, call_ids: set[str]) -> dict[str, int]:
    """The organisation of each of ``call_ids`` that ``calls`` holds."""
    if not call_ids:
        return {}
    rows = session.exec(
        select(Call.id, Call.organisation_id).where(col(Call.id).in_(sorted(call_ids)))
    ).all()
    return {call_id: owner for call_id, owner in rows}


def _events_by_keys(session: Session, keys: list[str]) -> dict[str, BillingEvent]:
    if not keys:
        return {}
    rows = session.exec(
        select(BillingEvent).where(col(BillingEvent.idempotency_key).in_(keys))
    ).all()
    return {event.idempotency_key: event for event in rows}


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
