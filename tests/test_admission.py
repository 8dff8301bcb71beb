"""Call admission against the plan: monthly minutes, prepaid balance, concurrent calls per
organisation and per dialled number; and the max-agents check.

Rows are seeded on SQLite and PostgreSQL; leases run in memory and on a real Redis.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from billing.admission import (
    CALLER_MESSAGES,
    Admission,
    AdmissionController,
    AdmissionRequest,
    QuotaExceeded,
    check_can_create_agent,
)
from billing.notify import Notifier
from storage.db import session_scope
from storage.leases import LeaseStore, MemoryLeaseStore
from storage.models import Agent, Notification, Organisation
from tests import billing_seed
from tests.billing_seed import seed_agent, seed_call_seconds, seed_org

lease_store = billing_seed.lease_store  # the shared fixture: memory and Redis

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
NUMBER = "+15550100"


def controller(
    engine: Engine, leases: LeaseStore | None = None, **kwargs: Any
) -> AdmissionController:
    """A controller whose clock reads ``NOW``."""
    return AdmissionController(
        engine,
        leases or MemoryLeaseStore(),
        clock=NOW.timestamp,
        **kwargs,
    )


def seed(engine: Engine, **org_kwargs: Any) -> tuple[int, int]:
    """An organisation (``seed_org`` arguments) with one agent; returns their ids."""
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, **org_kwargs)
        agent = seed_agent(session, org, admin)
        assert org.id is not None and agent.id is not None
        return org.id, agent.id


def use_seconds(engine: Engine, org_id: int, seconds: int, at: datetime = NOW) -> None:
    with session_scope(engine) as session:
        org = session.get(Organisation, org_id)
        assert org is not None
        seed_call_seconds(session, org, seconds, recorded_at=at)


def notifications(engine: Engine, org_id: int) -> list[str]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Notification.dedupe_key).where(Notification.organisation_id == org_id)
            ).all()
        )


def admit_many(
    admissions: AdmissionController, requests: list[AdmissionRequest]
) -> list[Admission]:
    with ThreadPoolExecutor(64) as pool:
        return list(pool.map(admissions.admit, requests))


def test_a_call_within_its_quotas_is_admitted_with_a_lease_named_after_its_org_and_call(
    engine: Engine,
) -> None:
    org_id, agent_id = seed(engine)
    leases = MemoryLeaseStore()

    admission = controller(engine, leases).admit(AdmissionRequest("call-1", agent_id=agent_id))

    assert admission.admitted and admission.reason is None
    assert admission.lease_id == f"{org_id}:call-1"
    assert leases.active(f"org:{org_id}") == 1


@pytest.mark.parametrize("identify_by", ["agent_id", "dialled_number", "organisation_id"])
def test_the_organisation_is_found_from_the_agent_the_number_or_its_id(
    engine: Engine, identify_by: str
) -> None:
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session)
        agent = seed_agent(session, org, admin, phone_number=NUMBER)
        ids: dict[str, Any] = {
            "agent_id": agent.id,
            "dialled_number": NUMBER,
            "organisation_id": org.id,
        }
        org_id = org.id
    leases = MemoryLeaseStore()

    request = AdmissionRequest("call-1", **{identify_by: ids[identify_by]})
    admission = controller(engine, leases).admit(request)

    assert admission.admitted
    assert leases.active(f"org:{org_id}") == 1


@pytest.mark.parametrize(
    "request_kwargs",
    [{"agent_id": 999_999}, {"dialled_number": "+15559999"}, {"organisation_id": 999_999}, {}],
    ids=["no such agent", "no agent on the number", "no such organisation", "nothing given"],
)
def test_a_call_to_an_unknown_agent_is_refused(
    engine: Engine, request_kwargs: dict[str, Any]
) -> None:
    seed(engine)

    admission = controller(engine).admit(AdmissionRequest("call-1", **request_kwargs))

    assert (admission.admitted, admission.reason) == (False, "unknown_agent")
    assert admission.lease_id is None


def test_an_agent_named_with_another_organisation_is_refused(engine: Engine) -> None:
    _, agent_id = seed(engine)
    other_org_id, _ = seed(engine)

    admission = controller(engine).admit(
        AdmissionRequest("call-1", agent_id=agent_id, organisation_id=other_org_id)
    )

    assert admission.reason == "unknown_agent"


def test_500_concurrent_admissions_with_a_limit_of_10_admit_exactly_10(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, max_concurrent_calls=10)
    admissions = controller(engine, lease_store)

    results = admit_many(
        admissions, [AdmissionRequest(f"call-{i}", agent_id=agent_id) for i in range(500)]
    )

    admitted = [r for r in results if r.admitted]
    assert len(admitted) == 10
    assert {r.reason for r in results if not r.admitted} == {"concurrent_calls_limit"}
    assert lease_store.active(f"org:{org_id}") == 10

    for r in admitted:
        assert r.lease_id is not None
        admissions.release(r.lease_id)
    assert lease_store.active(f"org:{org_id}") == 0
    assert admissions.admit(AdmissionRequest("call-after", agent_id=agent_id)).admitted


def test_a_number_cap_refuses_calls_beyond_it_while_the_organisation_has_room(
    engine: Engine, lease_store: LeaseStore
) -> None:
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, max_concurrent_calls=10)
        seed_agent(session, org, admin, phone_number=NUMBER, cap=2)
        other = seed_agent(session, org, admin, phone_number="+15550111")
        other_id = other.id
    admissions = controller(engine, lease_store)

    results = [
        admissions.admit(AdmissionRequest(f"call-{i}", dialled_number=NUMBER)) for i in range(3)
    ]

    assert [r.admitted for r in results] == [True, True, False]
    assert results[2].reason == "number_concurrency_limit"
    assert lease_store.active(f"number:{NUMBER}") == 2
    assert admissions.admit(AdmissionRequest("call-other", agent_id=other_id)).admitted


def test_a_full_organisation_is_reported_before_a_full_number(
    engine: Engine, lease_store: LeaseStore
) -> None:
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, max_concurrent_calls=1)
        seed_agent(session, org, admin, phone_number=NUMBER, cap=1)
    admissions = controller(engine, lease_store)
    admissions.admit(AdmissionRequest("call-1", dialled_number=NUMBER))

    refused = admissions.admit(AdmissionRequest("call-2", dialled_number=NUMBER))

    assert refused.reason == "concurrent_calls_limit"


def test_a_refused_call_leaves_live_calls_untouched(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, max_concurrent_calls=2)
    admissions = controller(engine, lease_store)
    for i in range(2):
        admissions.admit(AdmissionRequest(f"live-{i}", agent_id=agent_id))

    assert not admissions.admit(AdmissionRequest("new", agent_id=agent_id)).admitted

    assert lease_store.active(f"org:{org_id}") == 2
    assert admissions.heartbeat(f"{org_id}:live-0") and admissions.heartbeat(f"{org_id}:live-1")


def test_exhausted_minutes_refuse_new_calls_but_never_cut_a_live_one(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, monthly_minutes=10)
    admissions = controller(engine, lease_store)
    assert admissions.admit(AdmissionRequest("live", agent_id=agent_id)).admitted

    use_seconds(engine, org_id, 10 * 60)

    assert admissions.admit(AdmissionRequest("new", agent_id=agent_id)).reason == (
        "monthly_minutes_exhausted"
    )
    assert admissions.heartbeat(f"{org_id}:live")
    assert lease_store.active(f"org:{org_id}") == 1
    # a retried admission of the live call is not a new call
    assert admissions.admit(AdmissionRequest("live", agent_id=agent_id)).admitted


def test_readmitting_the_same_call_takes_no_second_slot(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, max_concurrent_calls=1)
    admissions = controller(engine, lease_store)

    first = admissions.admit(AdmissionRequest("call-1", agent_id=agent_id))
    again = admissions.admit(AdmissionRequest("call-1", agent_id=agent_id))

    assert first.admitted and again.admitted and again.lease_id == f"{org_id}:call-1"
    assert lease_store.active(f"org:{org_id}") == 1


def test_calls_of_a_dead_worker_free_their_slots_after_the_lease_ttl(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, max_concurrent_calls=2)
    admissions = controller(engine, lease_store, lease_ttl_s=0.5)
    for i in range(2):
        admissions.admit(AdmissionRequest(f"dead-{i}", agent_id=agent_id))
    assert not admissions.admit(AdmissionRequest("new", agent_id=agent_id)).admitted

    deadline = time.monotonic() + 3.0
    while lease_store.active(f"org:{org_id}") and time.monotonic() < deadline:
        time.sleep(0.05)

    assert admissions.admit(AdmissionRequest("new", agent_id=agent_id)).admitted
    assert not admissions.heartbeat(f"{org_id}:dead-0")


def test_a_live_call_that_lost_its_lease_is_counted_again_even_over_the_limit(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_id, agent_id = seed(engine, max_concurrent_calls=1)
    admissions = controller(engine, lease_store)
    assert admissions.admit(AdmissionRequest("live", agent_id=agent_id)).admitted
    lease_store.release(f"{org_id}:live")  # lost: its TTL ran out, or the store restarted
    assert admissions.admit(AdmissionRequest("new", agent_id=agent_id)).admitted

    resumed = admissions.admit(AdmissionRequest("live", agent_id=agent_id, resume=True))

    assert resumed.admitted and resumed.lease_id == f"{org_id}:live"
    assert lease_store.active(f"org:{org_id}") == 2  # over the limit: both calls are live
    assert admissions.heartbeat(f"{org_id}:live")
    assert admissions.admit(AdmissionRequest("third", agent_id=agent_id)).reason == (
        "concurrent_calls_limit"
    )


def test_a_resumed_call_takes_its_number_slot_too(engine: Engine, lease_store: LeaseStore) -> None:
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, max_concurrent_calls=5)
        seed_agent(session, org, admin, phone_number=NUMBER, cap=1)
    admissions = controller(engine, lease_store)

    resumed = admissions.admit(AdmissionRequest("live", dialled_number=NUMBER, resume=True))

    assert resumed.admitted
    assert lease_store.active(f"number:{NUMBER}") == 1
    assert admissions.admit(AdmissionRequest("new", dialled_number=NUMBER)).reason == (
        "number_concurrency_limit"
    )


def test_a_resumed_call_is_never_refused_for_minutes_or_balance(engine: Engine) -> None:
    org_id, agent_id = seed(engine, monthly_minutes=1, prepaid=True, balance_minor=0)
    use_seconds(engine, org_id, 60)
    admissions = controller(engine)
    assert not admissions.admit(AdmissionRequest("new", agent_id=agent_id)).admitted

    assert admissions.admit(AdmissionRequest("live", agent_id=agent_id, resume=True)).admitted
    assert len(notifications(engine, org_id)) == 1  # for the refused new call only


def test_a_resumed_call_of_an_unknown_agent_is_refused(engine: Engine) -> None:
    seed(engine)
    refused = controller(engine).admit(AdmissionRequest("live", agent_id=999_999, resume=True))
    assert not refused.admitted and refused.reason == "unknown_agent"


def test_minutes_just_below_the_monthly_limit_still_admit(engine: Engine) -> None:
    org_id, agent_id = seed(engine, monthly_minutes=10)
    use_seconds(engine, org_id, 10 * 60 - 1)

    assert controller(engine).admit(AdmissionRequest("call-1", agent_id=agent_id)).admitted


def test_only_this_calendar_months_minutes_count(engine: Engine) -> None:
    org_id, agent_id = seed(engine, monthly_minutes=10)
    use_seconds(engine, org_id, 10 * 60, at=MONTH_START - timedelta(seconds=1))
    admissions = controller(engine)
    assert admissions.admit(AdmissionRequest("call-1", agent_id=agent_id)).admitted

    use_seconds(engine, org_id, 10 * 60, at=MONTH_START)

    assert not admissions.admit(AdmissionRequest("call-2", agent_id=agent_id)).admitted


def test_50_concurrent_refusals_for_minutes_notify_the_admins_exactly_once(
    engine: Engine,
) -> None:
    org_id, agent_id = seed(engine, monthly_minutes=10)
    use_seconds(engine, org_id, 10 * 60)
    posts: list[bytes] = []

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        posts.append(body)
        return 200

    notifier = Notifier("http://127.0.0.1:9/hook", "secret", http_post=post)
    admissions = controller(engine, notifier=notifier)

    results = admit_many(
        admissions, [AdmissionRequest(f"c{i}", agent_id=agent_id) for i in range(50)]
    )
    assert notifier.drain(10.0)

    assert {(r.admitted, r.reason) for r in results} == {(False, "monthly_minutes_exhausted")}
    assert notifications(engine, org_id) == [f"{org_id}:monthly_minutes_exhausted:2026-11"]
    assert len(posts) == 1


def test_a_prepaid_plan_without_balance_refuses_and_notifies_exactly_once(
    engine: Engine,
) -> None:
    org_id, agent_id = seed(engine, prepaid=True, balance_minor=0)
    admissions = controller(engine)

    results = admit_many(
        admissions, [AdmissionRequest(f"c{i}", agent_id=agent_id) for i in range(50)]
    )

    assert {(r.admitted, r.reason) for r in results} == {(False, "balance_exhausted")}
    assert notifications(engine, org_id) == [f"{org_id}:balance_exhausted:2026-11"]


@pytest.mark.parametrize(("prepaid", "balance_minor"), [(True, 1), (False, 0), (False, -500)])
def test_a_balance_is_required_only_on_prepaid_plans(
    engine: Engine, prepaid: bool, balance_minor: int
) -> None:
    _, agent_id = seed(engine, prepaid=prepaid, balance_minor=balance_minor)

    assert controller(engine).admit(AdmissionRequest("call-1", agent_id=agent_id)).admitted


def test_every_refusal_message_is_one_short_sentence() -> None:
    for message in CALLER_MESSAGES.values():
        assert message.endswith(".") and message.count(". ") == 0 and len(message) <= 80


def test_an_organisation_below_max_agents_may_create_one(engine: Engine) -> None:
    org_id, _ = seed(engine, max_agents=2)

    with session_scope(engine) as session:
        check_can_create_agent(session, org_id)


def test_an_organisation_at_max_agents_may_not_create_another(engine: Engine) -> None:
    org_id, _ = seed(engine, max_agents=1)

    with pytest.raises(QuotaExceeded) as refused, session_scope(engine) as session:
        check_can_create_agent(session, org_id)

    assert refused.value.reason == "max_agents"
    assert "1 agents" in refused.value.message


def test_concurrent_agent_creations_stop_exactly_at_max_agents(engine: Engine) -> None:
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, max_agents=3)
        org_id, admin_id = org.id, admin.id
    assert org_id is not None and admin_id is not None

    def create(i: int) -> bool:
        try:
            with session_scope(engine) as session:
                check_can_create_agent(session, org_id)
                session.add(Agent(organisation_id=org_id, owner_user_id=admin_id, name=f"a{i}"))
            return True
        except QuotaExceeded:
            return False

    with ThreadPoolExecutor(10) as pool:
        created = list(pool.map(create, range(10)))

    assert sum(created) == 3
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Agent)).one() == 3


def test_an_unknown_organisation_cannot_create_agents(engine: Engine) -> None:
    with pytest.raises(LookupError), session_scope(engine) as session:
        check_can_create_agent(session, 999_999)


def test_two_organisations_calls_with_one_id_hold_separate_leases(
    engine: Engine, lease_store: LeaseStore
) -> None:
    org_a, agent_a = seed(engine, max_concurrent_calls=1)
    org_b, agent_b = seed(engine, max_concurrent_calls=1)
    admissions = controller(engine, lease_store)
    a = admissions.admit(AdmissionRequest("same-id", agent_id=agent_a))
    b = admissions.admit(AdmissionRequest("same-id", agent_id=agent_b))
    assert a.admitted and b.admitted and a.lease_id != b.lease_id
    assert (lease_store.active(f"org:{org_a}"), lease_store.active(f"org:{org_b}")) == (1, 1)
    # B is at its limit of one: B's own "same-id" counted, not A's
    assert admissions.admit(AdmissionRequest("other", agent_id=agent_b)).reason == (
        "concurrent_calls_limit"
    )
    assert b.lease_id is not None and a.lease_id is not None
    admissions.release(b.lease_id)  # B's release frees B's slot only
    assert (lease_store.active(f"org:{org_a}"), lease_store.active(f"org:{org_b}")) == (1, 0)
    assert admissions.heartbeat(a.lease_id)
