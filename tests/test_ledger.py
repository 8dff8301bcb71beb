"""The ledger applies every billing event and payment exactly once, on SQLite and on
PostgreSQL, however often and however concurrently it is delivered."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, update
from sqlmodel import Session, select

from billing.ledger import (
    REJECTED_AMOUNT_TOO_LARGE,
    REJECTED_BALANCE_OUT_OF_RANGE,
    REJECTED_FOREIGN_CALL,
    REJECTED_INVALID,
    REJECTED_UNKNOWN_ORGANISATION,
    LedgerError,
    apply_event,
    apply_event_batch,
    apply_events,
    apply_payment,
    balance_minor,
    monthly_usage,
)
from billing.pricing import (
    MAX_BALANCE_MINOR,
    MAX_BLOCK_PRICE_MINOR,
    MAX_QUANTITY,
    CallFacts,
    EventDraft,
    price_minor,
)
from billing.webhooks import PaymentNotice
from storage.db import session_scope
from storage.models import (
    AuditLog,
    BillingEvent,
    Call,
    Organisation,
    Payment,
    Plan,
    UsageKind,
    UsageRecord,
)
from tests.billing_seed import seed_org

T = TypeVar("T")

PRICES: dict[str, Any] = {
    "price_per_minute_minor": 100,
    "price_per_stt_minute_minor": 30,
    "price_per_1k_llm_input_tokens_minor": 5,
    "price_per_1k_llm_output_tokens_minor": 15,
    "price_per_1k_tts_characters_minor": 20,
}
THREADS_TIMEOUT_S = 120


def seed_organisation(
    engine: Engine, *, balance_minor: int = 0, currency: str = "USD", plan_currency: str = ""
) -> int:
    """A new organisation billed in ``currency`` on a new plan priced at :data:`PRICES` in
    ``plan_currency`` (default the same); returns its id."""
    with session_scope(engine) as session:
        org, _, _ = seed_org(
            session,
            balance_minor=balance_minor,
            admins=0,
            currency=plan_currency or currency,
            **PRICES,
        )
        org.currency = currency
        session.flush()
        assert org.id is not None
        return org.id


def plan_of(engine: Engine, organisation_id: int) -> Plan:
    with Session(engine) as session:
        org = session.get(Organisation, organisation_id)
        assert org is not None
        plan = session.get(Plan, org.plan_id)
        assert plan is not None
        return plan


def draft(
    organisation_id: int,
    *,
    call_id: str = "job-1",
    kind: UsageKind = UsageKind.call_seconds,
    quantity: int = 90,
    sequence: int = 0,
) -> EventDraft:
    return EventDraft(f"{call_id}:{kind}:{sequence}", organisation_id, call_id, kind, quantity)


def notice(
    organisation_id: int, payment_id: str = "pi_1", amount_minor: int = 5000
) -> PaymentNotice:
    return PaymentNotice("stripe", payment_id, organisation_id, amount_minor, "USD")


def count(engine: Engine, model: type, organisation_id: int) -> int:
    with Session(engine) as session:
        return session.exec(
            select(func.count()).select_from(model).where(model.organisation_id == organisation_id)  # type: ignore[attr-defined]
        ).one()


def balance(engine: Engine, organisation_id: int) -> int:
    with Session(engine) as session:
        return balance_minor(session, organisation_id)[0]


def writes(engine: Engine, organisation_id: int) -> tuple[int, ...]:
    """Everything the ledger could have written for the organisation."""
    return (
        balance(engine, organisation_id),
        *(
            count(engine, model, organisation_id)
            for model in (BillingEvent, UsageRecord, Payment, AuditLog, Call)
        ),
    )


def run_concurrently(functions: list[Callable[[], T]]) -> list[T]:
    """Start every function on its own thread at once; their results, in order. Re-raises
    the first exception."""
    barrier = threading.Barrier(len(functions))
    results: list[T | None] = [None] * len(functions)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=THREADS_TIMEOUT_S)
            results[i] = functions[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=THREADS_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def apply_in_own_transaction(engine: Engine, event: EventDraft) -> tuple[int, bool]:
    with session_scope(engine) as session:
        row, applied = apply_event(session, event)
        assert row.id is not None
        return row.id, applied


def pay_in_own_transaction(engine: Engine, payment: PaymentNotice) -> tuple[int, bool]:
    with session_scope(engine) as session:
        row, applied = apply_payment(session, payment, actor="webhook:stripe")
        assert row.id is not None
        return row.id, applied


def test_an_event_is_charged_at_its_plans_price(engine):
    org = seed_organisation(engine, balance_minor=1000)
    with session_scope(engine) as session:
        event, applied = apply_event(session, draft(org, quantity=90))
        assert applied
        assert (event.amount_minor, event.currency, event.balance_after_minor) == (150, "USD", 850)
    assert balance(engine, org) == 850


def test_an_event_records_its_usage_and_an_audit_row(engine):
    org = seed_organisation(engine)
    with session_scope(engine) as session:
        apply_event(session, draft(org, kind=UsageKind.tts_characters, quantity=1500))
    with Session(engine) as session:
        usage = session.exec(select(UsageRecord)).one()
        audit = session.exec(select(AuditLog)).one()
    assert (usage.organisation_id, usage.call_id, usage.kind, usage.quantity) == (
        org,
        "job-1",
        UsageKind.tts_characters,
        1500,
    )
    assert (audit.actor, audit.action, audit.subject) == (
        "system",
        "billing_event.applied",
        "job-1:tts_characters:0",
    )


def test_an_event_for_an_unknown_call_creates_the_call_row(engine):
    org = seed_organisation(engine)
    with session_scope(engine) as session:
        apply_event(session, draft(org, call_id="job-new"))
    with Session(engine) as session:
        call = session.get(Call, "job-new")
    assert call is not None
    assert call.organisation_id == org


def test_call_facts_make_the_row_and_the_last_events_close_it(engine):
    org = seed_organisation(engine)
    started = CallFacts(started_at=1_780_000_000.0, caller_number_masked="+*******4321",
                        dialled_number="+15550100")  # fmt: skip
    ended = replace(started, ended_at=1_780_000_095.0, status="ended")
    with session_scope(engine) as session:
        apply_event(session, replace(draft(org, call_id="job-facts", sequence=0), call=started))
    with Session(engine) as session:
        call = session.get(Call, "job-facts")
        assert call is not None and (call.status, call.ended_at) == ("active", None)
        assert call.caller_number_masked == "+*******4321" and call.dialled_number == "+15550100"
    with session_scope(engine) as session:
        apply_event(session, replace(draft(org, call_id="job-facts", sequence=1), call=ended))
    with Session(engine) as session:
        call = session.get(Call, "job-facts")
        assert call is not None and call.status == "ended"
        assert call.ended_at is not None
        assert call.ended_at.replace(tzinfo=UTC).timestamp() == 1_780_000_095.0
        assert call.started_at.replace(tzinfo=UTC).timestamp() == 1_780_000_000.0
        assert call.caller_number_masked == "+*******4321"


def test_facts_fill_a_row_made_by_events_without_them_and_never_blank_it(engine):
    org = seed_organisation(engine)
    facts = CallFacts(started_at=1_780_000_000.0, caller_number_masked="+*******4321")
    with session_scope(engine) as session:
        apply_event(session, draft(org, call_id="job-old", sequence=0))
        apply_event(session, replace(draft(org, call_id="job-old", sequence=1), call=facts))
        apply_event(
            session, replace(draft(org, call_id="job-old", sequence=2), call=CallFacts(1.0))
        )
    with Session(engine) as session:
        call = session.get(Call, "job-old")
        assert call is not None and call.caller_number_masked == "+*******4321"


def test_applying_an_event_twice_returns_the_first_result_and_charges_once(engine):
    org = seed_organisation(engine, balance_minor=1000)
    with session_scope(engine) as session:
        first, first_applied = apply_event(session, draft(org))
        first_id = first.id
    with session_scope(engine) as session:
        again, again_applied = apply_event(session, draft(org))
        assert (again.id, again.balance_after_minor) == (first_id, 850)
    assert (first_applied, again_applied) == (True, False)
    assert writes(engine, org) == (850, 1, 1, 0, 1, 1)


def test_a_replay_with_different_contents_changes_nothing(engine):
    org = seed_organisation(engine, balance_minor=1000)
    with session_scope(engine) as session:
        apply_event(session, draft(org, quantity=90))
    before = writes(engine, org)
    with session_scope(engine) as session:
        stored, applied = apply_event(session, draft(org, quantity=9000))
        assert (stored.quantity, applied) == (90, False)
    assert writes(engine, org) == before


def test_a_rolled_back_transaction_leaves_no_trace_and_the_event_can_be_applied_later(engine):
    org = seed_organisation(engine, balance_minor=1000)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        apply_event(session, draft(org))
        raise RuntimeError("the request failed after applying")
    assert writes(engine, org) == (1000, 0, 0, 0, 0, 0)
    with session_scope(engine) as session:
        assert apply_event(session, draft(org))[1] is True
    assert balance(engine, org) == 850


def test_an_event_for_an_unknown_organisation_is_refused(engine):
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_event(session, draft(424242))


def test_an_event_for_a_call_of_another_organisation_is_refused_and_writes_nothing(engine):
    owner = seed_organisation(engine, balance_minor=1000)
    other = seed_organisation(engine, balance_minor=1000)
    with session_scope(engine) as session:
        apply_event(session, draft(owner, call_id="job-owned"))
    before = writes(engine, other)
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_event(session, draft(other, call_id="job-owned", sequence=1))
    assert writes(engine, other) == before


def test_a_plan_priced_in_another_currency_is_refused_and_writes_nothing(engine):
    org = seed_organisation(engine, balance_minor=1000, currency="EUR", plan_currency="USD")
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_event(session, draft(org))
    assert writes(engine, org) == (1000, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        EventDraft("job-1:call_seconds:0", 0, "job-1", UsageKind.call_seconds, -1),
        EventDraft("", 0, "job-1", UsageKind.call_seconds, 1),
        EventDraft("k" * 201, 0, "job-1", UsageKind.call_seconds, 1),
        EventDraft("job-1:call_seconds:0", 0, "j" * 65, UsageKind.call_seconds, 1),
        EventDraft("job-1:minutes:0", 0, "job-1", "minutes", 1),  # type: ignore[arg-type]
    ],
    ids=["negative-quantity", "empty-key", "long-key", "long-call-id", "unknown-kind"],
)
def test_an_invalid_event_is_refused_and_writes_nothing(engine, bad):
    org = seed_organisation(engine, balance_minor=1000)
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_event(
            session, EventDraft(bad.idempotency_key, org, bad.call_id, bad.kind, bad.quantity)
        )
    assert writes(engine, org) == (1000, 0, 0, 0, 0, 0)


def test_a_batch_applies_its_good_events_and_refuses_each_bad_one_with_a_reason(engine):
    org = seed_organisation(engine, balance_minor=1000)
    other = seed_organisation(engine, balance_minor=1000)
    with session_scope(engine) as session:
        apply_event(session, draft(other, call_id="job-of-other"))
    batch = [
        draft(org, sequence=0),
        draft(org, quantity=MAX_QUANTITY[UsageKind.call_seconds] + 1, sequence=1),
        draft(424242, call_id="job-x"),
        draft(org, call_id="job-of-other", sequence=1),
        draft(org, sequence=2),
        draft(org, sequence=0),  # repeated in the batch: the first one's result
    ]
    with session_scope(engine) as session:
        outcomes = apply_event_batch(session, batch)
    assert [o.created for o in outcomes] == [True, False, False, False, True, False]
    assert [o.error.reason if o.error else None for o in outcomes] == [
        None,
        REJECTED_INVALID,
        REJECTED_UNKNOWN_ORGANISATION,
        REJECTED_FOREIGN_CALL,
        None,
        None,
    ]
    assert all(o.error.permanent for o in outcomes if o.error)
    assert outcomes[5].event is not None and outcomes[5].event.id == outcomes[0].event.id  # type: ignore[union-attr]
    assert [o.event.balance_after_minor for o in (outcomes[0], outcomes[4])] == [850, 700]  # type: ignore[union-attr]
    assert writes(engine, org) == (700, 2, 2, 0, 2, 1)


def test_a_batch_of_one_organisation_moves_the_balance_once_by_the_sum(engine):
    org = seed_organisation(engine, balance_minor=0)
    batch = [draft(org, call_id=f"job-{i % 3}", sequence=i) for i in range(50)]
    with session_scope(engine) as session:
        outcomes = apply_event_batch(session, batch)
    assert [o.event.balance_after_minor for o in outcomes] == [-150 * (i + 1) for i in range(50)]  # type: ignore[union-attr]
    assert writes(engine, org) == (-150 * 50, 50, 50, 0, 50, 3)


def price_output_tokens_at_the_maximum(engine: Engine, organisation_id: int) -> None:
    with session_scope(engine) as session:
        session.exec(
            update(Plan)
            .where(Plan.id == plan_of(engine, organisation_id).id)  # type: ignore[arg-type]
            .values(price_per_1k_llm_output_tokens_minor=MAX_BLOCK_PRICE_MINOR)
        )


def test_amounts_beyond_32_bits_are_charged_and_credited_exactly(engine):
    org = seed_organisation(engine, balance_minor=0)
    price_output_tokens_at_the_maximum(engine, org)
    big = 10**12  # > 2**31 and the largest payment
    with session_scope(engine) as session:
        apply_payment(session, notice(org, "pi_big", big), actor="webhook:stripe")
        apply_payment(session, notice(org, "pi_big_2", big), actor="webhook:stripe")
    with session_scope(engine) as session:
        event, _ = apply_event(
            session, draft(org, kind=UsageKind.llm_output_tokens, quantity=10**6)
        )
    assert event.amount_minor == 10**12
    assert balance(engine, org) == 10**12
    with Session(engine) as session:
        stored = session.exec(select(BillingEvent).where(BillingEvent.organisation_id == org)).one()
        assert (stored.amount_minor, stored.balance_after_minor) == (10**12, 10**12)
        assert type(stored.balance_after_minor) is int


def test_an_event_whose_amount_would_overflow_is_refused_for_good(engine):
    org = seed_organisation(engine, balance_minor=0)
    price_output_tokens_at_the_maximum(engine, org)
    with session_scope(engine) as session:
        (outcome,) = apply_event_batch(
            session, [draft(org, kind=UsageKind.llm_output_tokens, quantity=10**9)]
        )
    assert outcome.error is not None
    assert (outcome.error.reason, outcome.error.permanent) == (REJECTED_AMOUNT_TOO_LARGE, True)
    assert writes(engine, org) == (0, 0, 0, 0, 0, 0)


def test_a_balance_never_leaves_its_bounds(engine):
    org = seed_organisation(engine, balance_minor=MAX_BALANCE_MINOR - 10)
    with pytest.raises(LedgerError) as refused, session_scope(engine) as session:
        apply_payment(session, notice(org, "pi_over", 11), actor="webhook:stripe")
    assert refused.value.reason == REJECTED_BALANCE_OUT_OF_RANGE
    with session_scope(engine) as session:
        apply_payment(session, notice(org, "pi_fits", 10), actor="webhook:stripe")
    assert balance(engine, org) == MAX_BALANCE_MINOR


def test_a_payment_credits_the_balance_and_is_audited(engine):
    org = seed_organisation(engine, balance_minor=100)
    with session_scope(engine) as session:
        payment, applied = apply_payment(session, notice(org), actor="webhook:stripe")
        assert applied
        assert payment.balance_after_minor == 5100
    with Session(engine) as session:
        audit = session.exec(select(AuditLog)).one()
    assert (audit.actor, audit.action, audit.subject) == (
        "webhook:stripe",
        "payment.received",
        "pi_1",
    )
    assert balance(engine, org) == 5100


def test_a_payment_delivered_twice_is_credited_once(engine):
    org = seed_organisation(engine)
    with session_scope(engine) as session:
        first, _ = apply_payment(session, notice(org), actor="webhook:stripe")
        first_id = first.id
    with session_scope(engine) as session:
        again, applied = apply_payment(session, notice(org), actor="webhook:stripe")
        assert (again.id, applied) == (first_id, False)
    assert writes(engine, org) == (5000, 0, 0, 1, 1, 0)


def test_a_payment_in_another_currency_is_refused_and_writes_nothing(engine):
    org = seed_organisation(engine, balance_minor=100)
    euros = PaymentNotice("stripe", "pi_eur", org, 5000, "EUR")
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_payment(session, euros, actor="webhook:stripe")
    assert writes(engine, org) == (100, 0, 0, 0, 0, 0)


def test_a_payment_for_an_unknown_organisation_is_refused(engine):
    with pytest.raises(LedgerError), session_scope(engine) as session:
        apply_payment(session, notice(424242), actor="webhook:stripe")


def test_the_balance_of_an_unknown_organisation_is_a_ledger_error(engine):
    with Session(engine) as session, pytest.raises(LedgerError):
        balance_minor(session, 424242)


def test_the_balance_comes_with_its_currency(engine):
    org = seed_organisation(engine, balance_minor=-20, currency="GBP")
    with Session(engine) as session:
        assert balance_minor(session, org) == (-20, "GBP")


def test_monthly_usage_totals_the_months_events_only(engine):
    org = seed_organisation(engine)
    tokens = draft(org, kind=UsageKind.llm_input_tokens, quantity=2000)
    events = [
        (draft(org, quantity=60, sequence=0), datetime(2026, 10, 31, 23, 59, tzinfo=UTC)),
        (draft(org, quantity=120, sequence=1), datetime(2026, 11, 1, 0, 0, tzinfo=UTC)),
        (tokens, datetime(2026, 11, 30, 23, 59, tzinfo=UTC)),
        (draft(org, quantity=60, sequence=2), datetime(2026, 12, 1, 0, 0, tzinfo=UTC)),
    ]
    with session_scope(engine) as session:
        for event, created_at in events:
            apply_event(session, event)
            # back-date the row: the ledger stamps events with the time they arrive
            session.exec(
                update(BillingEvent)
                .where(BillingEvent.idempotency_key == event.idempotency_key)  # type: ignore[arg-type]
                .values(created_at=created_at)
            )
    with Session(engine) as session:
        november = monthly_usage(session, org, 2026, 11)
        december = monthly_usage(session, org, 2026, 12)
    assert november.quantities == {
        UsageKind.call_seconds: 120,
        UsageKind.stt_audio_ms: 0,
        UsageKind.llm_input_tokens: 2000,
        UsageKind.llm_output_tokens: 0,
        UsageKind.tts_characters: 0,
    }
    assert (november.amount_minor, november.currency) == (200 + 10, "USD")
    assert (december.quantities[UsageKind.call_seconds], december.amount_minor) == (60, 100)


def test_apply_events_returns_results_in_the_order_given(engine):
    org = seed_organisation(engine)
    batch = [draft(org, sequence=2), draft(org, sequence=0), draft(org, sequence=1)]
    with session_scope(engine) as session:
        results = apply_events(session, batch)
        assert [event.idempotency_key for event, _ in results] == [d.idempotency_key for d in batch]


def test_200_concurrent_deliveries_of_one_payment_credit_it_exactly_once(engine):
    org = seed_organisation(engine)
    outcomes = run_concurrently(
        [lambda: pay_in_own_transaction(engine, notice(org, "pi_retried"))] * 200
    )
    assert len({payment_id for payment_id, _ in outcomes}) == 1
    assert sum(applied for _, applied in outcomes) == 1
    assert writes(engine, org) == (5000, 0, 0, 1, 1, 0)


def test_200_concurrent_applies_of_20_events_charge_each_once(engine):
    org = seed_organisation(engine, balance_minor=0)
    events = [
        draft(org, call_id=f"job-{i % 4}", kind=list(UsageKind)[i % 5], quantity=1000 + 37 * i)
        for i in range(20)
    ]
    plan = plan_of(engine, org)
    expected = -sum(price_minor(plan, e.kind, e.quantity) for e in events)
    deliveries = events * 10
    random.Random(7).shuffle(deliveries)
    outcomes = run_concurrently(
        [lambda e=e: apply_in_own_transaction(engine, e) for e in deliveries]  # type: ignore[misc]
    )
    assert sum(applied for _, applied in outcomes) == 20
    assert writes(engine, org) == (expected, 20, 20, 0, 20, 4)


def test_one_key_raced_by_two_organisations_is_charged_to_one_and_leaves_no_trace_on_the_other(
    engine,
):
    # the organisation locks do not serialise these: only the UNIQUE key decides
    orgs = [
        seed_organisation(engine, balance_minor=1000),
        seed_organisation(engine, balance_minor=1000),
    ]
    contenders = [
        EventDraft("shared-key", org, f"job-of-{org}", UsageKind.call_seconds, 60) for org in orgs
    ]
    run_concurrently(
        [lambda e=e: apply_in_own_transaction(engine, e) for e in contenders * 50]  # type: ignore[misc]
    )
    outcomes = sorted(writes(engine, org) for org in orgs)
    assert outcomes == [(900, 1, 1, 0, 1, 1), (1000, 0, 0, 0, 0, 0)]


def test_concurrent_overlapping_batches_across_organisations_do_not_deadlock(engine):
    orgs = [seed_organisation(engine), seed_organisation(engine)]
    events = [draft(org, call_id=f"job-{org}", sequence=i) for org in orgs for i in range(10)]

    def apply_shuffled_batch(seed: int) -> int:
        batch = events[:]
        random.Random(seed).shuffle(batch)
        with session_scope(engine) as session:
            return sum(applied for _, applied in apply_events(session, batch))

    applied = run_concurrently([lambda s=s: apply_shuffled_batch(s) for s in range(8)])  # type: ignore[misc]
    assert sum(applied) == 20
    for org in orgs:
        assert balance(engine, org) == -10 * 150


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[UsageKind, int]], list[int], list[int]]:
    """Some events and payments, and an order to deliver them in: each at least once,
    some several times, interleaved at random."""
    events = draw(
        st.lists(
            st.tuples(st.sampled_from(UsageKind), st.integers(0, 600_000)), min_size=1, max_size=6
        )
    )
    payments = draw(st.lists(st.integers(1, 10**6), max_size=3))
    items = len(events) + len(payments)
    repeats = draw(st.lists(st.integers(0, items - 1), max_size=items))
    order = draw(st.permutations(list(range(items)) + repeats))
    return events, payments, list(order)


@settings(
    max_examples=50,
    deadline=None,
    # one database per test run; each example makes its own organisation
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=deliveries())
def test_any_interleaving_and_duplication_gives_the_same_balance_and_rows(engine, case):
    events, payments, order = case
    org = seed_organisation(engine, balance_minor=1000)
    plan = plan_of(engine, org)
    call_id = f"job-{org}"
    drafts = [
        draft(org, call_id=call_id, kind=k, quantity=q, sequence=i)
        for i, (k, q) in enumerate(events)
    ]
    notices = [notice(org, f"pi_{org}_{i}", amount) for i, amount in enumerate(payments)]
    for item in order:
        with session_scope(engine) as session:
            if item < len(drafts):
                apply_event(session, drafts[item])
            else:
                apply_payment(session, notices[item - len(drafts)], actor="webhook:stripe")
    charged = sum(price_minor(plan, k, q) for k, q in events)
    assert balance(engine, org) == 1000 + sum(payments) - charged
    assert count(engine, BillingEvent, org) == len(events)
    assert count(engine, Payment, org) == len(payments)
