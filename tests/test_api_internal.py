"""The workers' internal routes: service-token auth, admission leases, billing events
(applied once per key, however often replayed) and worker heartbeats."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from billing.api.app import create_app
from billing.pricing import MAX_QUANTITY
from storage.models import BillingEvent, Role, UsageKind
from tests.api_client import SERVICE_HEADERS, SidecarApi, billing_event, make_config


def _internal_routes() -> list[tuple[str, str]]:
    app = create_app(make_config("sqlite://", Path("unused")))
    return sorted(
        (method, re.sub(r"\{[^}]*\}", "lease-1", context.path or ""))
        for context in iter_route_contexts(app.routes)
        if isinstance(context.route, APIRoute) and (context.path or "").startswith("/internal/")
        for method in context.methods or ()
    )


@pytest.mark.parametrize(("method", "path"), _internal_routes())
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {SERVICE_HEADERS['Authorization'].split()[1]}"},
        {"X-API-Key": SERVICE_HEADERS["Authorization"].split()[1]},
    ],
    ids=["none", "wrong-token", "wrong-scheme", "api-key-header"],
)
def test_internal_routes_need_the_service_token(
    shared_sidecar: SidecarApi, method: str, path: str, headers: dict[str, str]
) -> None:
    response = shared_sidecar.client.request(method, path, json={}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_an_api_key_does_not_open_internal_routes(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    response = shared_sidecar.client.post(
        "/internal/admissions", json={"call_id": "c"}, headers=admin.headers
    )
    assert response.status_code == 401


def _admit(sidecar: SidecarApi, call_id: str, organisation_id: int) -> dict[str, object]:
    response = sidecar.client.post(
        "/internal/admissions",
        json={"call_id": call_id, "organisation_id": organisation_id},
        headers=SERVICE_HEADERS,
    )
    assert response.status_code in (200, 409), response.text
    return {"status": response.status_code, **response.json()}


def test_a_call_that_can_hold_is_queued_with_202_and_can_leave(shared_sidecar: SidecarApi) -> None:
    client = shared_sidecar.client
    org = shared_sidecar.seed.organisation(max_concurrent_calls=1)
    assert _admit(shared_sidecar, "in-call", org)["status"] == 200
    body = {"call_id": "waiting", "organisation_id": org, "hold": True}
    queued = client.post("/internal/admissions", json=body, headers=SERVICE_HEADERS)
    assert queued.status_code == 202, queued.text
    assert queued.json()["position"] == 0 and queued.json()["reason"] == "queued"
    scraped = client.get("/metrics").text
    assert 'sidecar_admissions_queued_total{at_head="true"}' in scraped
    leave = {"call_id": "waiting", "organisation_id": org}
    for _ in range(2):  # idempotent
        left = client.post("/internal/admissions/queue/leave", json=leave, headers=SERVICE_HEADERS)
        assert left.status_code == 204
    for bad in ({"call_id": "w"}, {"call_id": "", "organisation_id": org}, {"organisation_id": 0}):
        refused = client.post("/internal/admissions/queue/leave", json=bad, headers=SERVICE_HEADERS)
        assert refused.status_code == 422
    assert client.post("/internal/admissions/queue/leave", json=leave).status_code == 401
    not_bool = client.post(
        "/internal/admissions",
        json={"call_id": "x", "organisation_id": org, "hold": "please"},
        headers=SERVICE_HEADERS,
    )
    assert not_bool.status_code == 422


def test_an_admitted_call_gets_a_lease_to_heartbeat_and_release(shared_sidecar: SidecarApi) -> None:
    client = shared_sidecar.client
    org = shared_sidecar.seed.organisation()
    admitted = _admit(shared_sidecar, "call-lease", org)
    assert admitted == {
        "status": 200,
        "admitted": True,
        "lease_id": f"{org}:call-lease",
        "reason": None,
        "message": admitted["message"],
        "organisation_id": org,
        "agent_id": None,
        "position": None,
    }
    lease = f"/internal/admissions/{org}:call-lease"
    heartbeat = client.post(f"{lease}/heartbeat", headers=SERVICE_HEADERS)
    assert heartbeat.status_code == 200
    assert heartbeat.json()["ttl_s"] == shared_sidecar.config.lease_ttl_s
    released = client.delete(lease, headers=SERVICE_HEADERS)
    assert released.status_code == 204
    gone = client.post(f"{lease}/heartbeat", headers=SERVICE_HEADERS)
    assert gone.status_code == 404


def test_releasing_an_unknown_lease_is_a_204(shared_sidecar: SidecarApi) -> None:
    response = shared_sidecar.client.delete(
        "/internal/admissions/1:nobody", headers=SERVICE_HEADERS
    )
    assert response.status_code == 204


@pytest.mark.parametrize(
    "lease_id", ["nobody", "0:x", ":x", "1:", "99999999999:x", "1:" + "x" * 80]
)
def test_a_malformed_lease_id_is_422(shared_sidecar: SidecarApi, lease_id: str) -> None:
    client = shared_sidecar.client
    for response in (
        client.delete(f"/internal/admissions/{lease_id}", headers=SERVICE_HEADERS),
        client.post(f"/internal/admissions/{lease_id}/heartbeat", headers=SERVICE_HEADERS),
    ):
        assert response.status_code in (404, 422), response.text


def test_one_call_id_in_two_organisations_takes_a_slot_in_each_and_frees_only_its_own(
    shared_sidecar: SidecarApi,
) -> None:
    client = shared_sidecar.client
    org_a = shared_sidecar.seed.organisation(max_concurrent_calls=1)
    org_b = shared_sidecar.seed.organisation(max_concurrent_calls=1)
    call = f"shared-{org_a}"
    a = _admit(shared_sidecar, call, org_a)
    b = _admit(shared_sidecar, call, org_b)
    assert (a["status"], b["status"]) == (200, 200)
    assert a["lease_id"] != b["lease_id"]
    # each organisation is at its limit of one with its own call
    assert _admit(shared_sidecar, f"more-{org_a}", org_a)["status"] == 409
    assert _admit(shared_sidecar, f"more-{org_b}", org_b)["status"] == 409
    client.delete(f"/internal/admissions/{b['lease_id']}", headers=SERVICE_HEADERS)
    still = client.post(f"/internal/admissions/{a['lease_id']}/heartbeat", headers=SERVICE_HEADERS)
    assert still.status_code == 200
    assert _admit(shared_sidecar, f"more-{org_a}", org_a)["status"] == 409
    assert _admit(shared_sidecar, f"more-{org_b}", org_b)["status"] == 200


def test_a_refused_call_is_409_with_reason_and_message_and_counted(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation(max_concurrent_calls=5)
    for i in range(5):
        assert _admit(shared_sidecar, f"busy-{org}-{i}", org)["status"] == 200
    refused = _admit(shared_sidecar, f"busy-{org}-5", org)
    assert refused["status"] == 409
    assert refused["admitted"] is False and refused["lease_id"] is None
    assert refused["reason"] == "concurrent_calls_limit"
    assert refused["message"]
    metrics = shared_sidecar.client.get("/metrics").text
    assert 'sidecar_quota_rejections_total{reason="concurrent_calls_limit"}' in metrics


def test_an_unknown_organisation_is_refused(shared_sidecar: SidecarApi) -> None:
    refused = _admit(shared_sidecar, "call-nowhere", 999_999)
    assert (refused["status"], refused["reason"]) == (409, "unknown_agent")


def test_a_live_call_resumes_its_lease_over_the_limit(shared_sidecar: SidecarApi) -> None:
    org = shared_sidecar.seed.organisation(max_concurrent_calls=1)
    assert _admit(shared_sidecar, f"busy-{org}", org)["status"] == 200
    response = shared_sidecar.client.post(
        "/internal/admissions",
        json={"call_id": f"lost-{org}", "organisation_id": org, "resume": True},
        headers=SERVICE_HEADERS,
    )
    assert response.status_code == 200 and response.json()["lease_id"] == f"{org}:lost-{org}"
    assert _admit(shared_sidecar, f"new-{org}", org)["status"] == 409


@pytest.mark.parametrize(
    "body",
    [
        {"organisation_id": 1},
        {"call_id": "", "organisation_id": 1},
        {"call_id": "x" * 65, "organisation_id": 1},
        {"call_id": "c", "agent_id": 0},
        {"call_id": "c", "organisation_id": "one"},
        {"call_id": "c", "dialled_number": "+1" * 20},
        {"call_id": "c", "organisation_id": 1, "resume": "maybe"},
        ["c", 1],
        "not json",
    ],
    ids=[
        "no-call-id",
        "empty-call-id",
        "long-call-id",
        "agent-id-0",
        "org-id-text",
        "long-number",
        "resume-not-bool",
        "array",
        "not-json",
    ],
)
def test_a_malformed_admission_is_422_and_takes_no_lease(
    shared_sidecar: SidecarApi, body: Any
) -> None:
    org = shared_sidecar.seed.organisation(max_concurrent_calls=1)
    payload = {"content": body} if isinstance(body, str) else {"json": body}
    response = shared_sidecar.client.post(
        "/internal/admissions", headers=SERVICE_HEADERS, **payload
    )
    assert response.status_code == 422, response.text
    assert _admit(shared_sidecar, f"after-{org}", org)["status"] == 200  # the slot is free


def test_active_leases_are_a_gauge(shared_sidecar: SidecarApi) -> None:
    def gauge() -> float:
        text = shared_sidecar.client.get("/metrics").text
        match = re.search(r"^sidecar_leases_active (\S+)$", text, re.MULTILINE)
        assert match
        return float(match.group(1))

    org = shared_sidecar.seed.organisation()
    before = gauge()
    _admit(shared_sidecar, f"gauge-{org}", org)
    assert gauge() == before + 1
    shared_sidecar.client.delete(f"/internal/admissions/{org}:gauge-{org}", headers=SERVICE_HEADERS)
    assert gauge() == before


def _post_events(sidecar: SidecarApi, events: list[dict[str, object]]) -> tuple[int, dict]:
    response = sidecar.client.post(
        "/internal/billing-events", json={"events": events}, headers=SERVICE_HEADERS
    )
    return response.status_code, response.json()


def _statuses(body: dict) -> list[str]:
    return [result["status"] for result in body["results"]]


def test_a_replayed_batch_is_applied_once(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    batch = [
        billing_event(org, call, 120),
        billing_event(org, call, 30_000, kind="stt_audio_ms"),
    ]
    first_status, first = _post_events(shared_sidecar, batch)
    balance_after_first = seed.balance(org)
    again_status, again = _post_events(shared_sidecar, batch)
    assert (first_status, again_status) == (200, 200)
    assert [r["idempotency_key"] for r in first["results"]] == [
        f"{call}:call_seconds:0",
        f"{call}:stt_audio_ms:0",
    ]
    assert _statuses(first) == ["applied", "applied"]
    assert _statuses(again) == ["duplicate", "duplicate"]
    assert balance_after_first == -20  # 2 minutes at 10 cents; STT is free on this plan
    assert seed.balance(org) == balance_after_first
    assert seed.count(BillingEvent, organisation_id=org) == 2


def test_a_key_repeated_within_a_batch_is_applied_once(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    event = billing_event(org, call, 60)
    status, body = _post_events(shared_sidecar, [event, event])
    assert (status, _statuses(body)) == (200, ["applied", "duplicate"])
    assert seed.balance(org) == -10


def test_a_rejected_event_gets_its_reason_and_the_others_are_applied(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    good = billing_event(org, call, 60)
    bad = billing_event(org + 50_000, "call-of-nobody", 60)
    status, body = _post_events(shared_sidecar, [good, bad])
    assert (status, _statuses(body)) == (200, ["applied", "rejected"])
    rejected = body["results"][1]
    assert (rejected["reason"], rejected["permanent"]) == ("unknown_organisation", True)
    assert seed.balance(org) == -10


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "minutes"},
        {"quantity": -1},
        {"quantity": 1.5},
        {"quantity": 2**31},
        {"quantity": 2**63},
        {"quantity": 10**40},
        {"organisation_id": 0},
        {"organisation_id": 2**31},
        {"organisation_id": 2**64},
        {"call_id": ""},
        {"idempotency_key": None},
    ],
    ids=[
        "unknown kind",
        "negative quantity",
        "float quantity",
        "quantity 2**31",
        "quantity 2**63",
        "huge quantity",
        "no organisation",
        "organisation 2**31",
        "organisation 2**64",
        "no call",
        "no key",
    ],
)
def test_a_malformed_event_is_rejected_alone_and_never_blocks_its_batch(
    shared_sidecar: SidecarApi, change: dict
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    before = seed.balance(org)
    status, body = _post_events(
        shared_sidecar,
        [
            billing_event(org, call, 60, sequence=1),
            {**billing_event(org, call, 60), **change},
            billing_event(org, call, 60, sequence=2),
        ],
    )
    assert (status, _statuses(body)) == (200, ["applied", "rejected", "applied"])
    assert body["results"][1]["reason"] == "invalid_event"
    assert body["results"][1]["permanent"] is True
    assert seed.count(BillingEvent, organisation_id=org) == 2
    assert seed.balance(org) == before - 20


def test_a_quantity_above_its_kinds_maximum_is_rejected_and_charges_nothing(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    over = billing_event(org, call, MAX_QUANTITY[UsageKind.call_seconds] + 1)
    status, body = _post_events(shared_sidecar, [over])
    assert (status, _statuses(body)) == (200, ["rejected"])
    assert body["results"][0]["reason"] == "invalid_event"
    assert seed.balance(org) == 0


def test_a_new_call_records_its_agent_and_its_owner_sees_it(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org, other = seed.organisation(), seed.organisation()
    owner = seed.member(org, Role.agent)
    agent = seed.agent(org, owner.user_id)
    foreign = seed.agent(other, seed.member(other, Role.admin).user_id)
    events = [
        {**billing_event(org, f"call-agent-{org}", 60), "agent_id": agent},
        {**billing_event(org, f"call-foreign-{org}", 60), "agent_id": foreign},
    ]
    status, body = _post_events(shared_sidecar, events)
    assert (status, _statuses(body)) == (200, ["applied", "applied"])
    seen = shared_sidecar.client.get("/v1/calls", headers=owner.headers).json()
    assert [(c["id"], c["agent_id"]) for c in seen] == [(f"call-agent-{org}", agent)]
    # another organisation's agent is not recorded; the usage is billed all the same
    assert seed.balance(org) == -20


def test_a_batch_that_is_not_a_list_of_events_is_422(shared_sidecar: SidecarApi) -> None:
    for body in ({"events": "x"}, {"events": [1] * 501}, {}, []):
        response = shared_sidecar.client.post(
            "/internal/billing-events", json=body, headers=SERVICE_HEADERS
        )
        assert response.status_code == 422, body


def test_billed_amounts_are_counted_by_kind_and_currency(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    _post_events(shared_sidecar, [billing_event(org, seed.call(org, None), 600)])
    metrics = shared_sidecar.client.get("/metrics").text
    assert 'sidecar_billing_amount_minor_total{currency="USD",kind="call_seconds"}' in metrics
    assert 'sidecar_billing_events_total{outcome="applied"}' in metrics


def test_worker_heartbeats_count_live_workers(shared_sidecar: SidecarApi) -> None:
    client = shared_sidecar.client
    first = client.post(
        "/internal/workers/heartbeat", json={"worker_id": "count-a"}, headers=SERVICE_HEADERS
    )
    second = client.post(
        "/internal/workers/heartbeat", json={"worker_id": "count-b"}, headers=SERVICE_HEADERS
    )
    assert second.json()["live_workers"] == first.json()["live_workers"] + 1
    assert second.json()["shared_leases"] is False


def _sidecar_without_shared_leases(shared_sidecar: SidecarApi, **changes: Any) -> TestClient:
    config = replace(shared_sidecar.config, **changes)
    return TestClient(create_app(config, engine=shared_sidecar.engine))


def test_several_workers_without_redis_log_one_warning(
    shared_sidecar: SidecarApi, caplog: pytest.LogCaptureFixture
) -> None:
    with _sidecar_without_shared_leases(shared_sidecar) as client, caplog.at_level(logging.WARNING):
        for worker in ("w1", "w1", "w2", "w3", "w2"):
            client.post(
                "/internal/workers/heartbeat", json={"worker_id": worker}, headers=SERVICE_HEADERS
            )
    warnings = [r for r in caplog.records if "leases are in-process" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].live_workers == 2  # type: ignore[attr-defined]


def test_one_worker_without_redis_logs_no_warning(
    shared_sidecar: SidecarApi, caplog: pytest.LogCaptureFixture
) -> None:
    with _sidecar_without_shared_leases(shared_sidecar) as client, caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.post(
                "/internal/workers/heartbeat", json={"worker_id": "alone"}, headers=SERVICE_HEADERS
            )
    assert not [r for r in caplog.records if "leases are in-process" in r.getMessage()]


def test_several_workers_with_redis_log_no_warning(
    shared_sidecar: SidecarApi,
    redis_server_url: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        _sidecar_without_shared_leases(
            shared_sidecar, redis_url=redis_server_url, key_prefix=redis_prefix
        ) as client,
        caplog.at_level(logging.WARNING),
    ):
        for worker in ("w1", "w2"):
            response = client.post(
                "/internal/workers/heartbeat", json={"worker_id": worker}, headers=SERVICE_HEADERS
            )
            assert response.json()["shared_leases"] is True
    assert not [r for r in caplog.records if "leases are in-process" in r.getMessage()]


def test_leases_are_shared_through_redis(
    shared_sidecar: SidecarApi, redis_server_url: str, redis_prefix: str
) -> None:
    """Two sidecar replicas on one Redis count one organisation's calls together."""
    org = shared_sidecar.seed.organisation(max_concurrent_calls=5)
    replica = {"redis_url": redis_server_url, "key_prefix": redis_prefix}
    with (
        _sidecar_without_shared_leases(shared_sidecar, **replica) as one,
        _sidecar_without_shared_leases(shared_sidecar, **replica) as two,
    ):
        statuses = [
            (one if i % 2 else two)
            .post(
                "/internal/admissions",
                json={"call_id": f"shared-{org}-{i}", "organisation_id": org},
                headers=SERVICE_HEADERS,
            )
            .status_code
            for i in range(6)
        ]
    assert statuses == [200] * 5 + [409]
