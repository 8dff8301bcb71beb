"""Agents: the plan's agent quota (409 with its reason, even under concurrent creation),
phone numbers, admin-assigned tools, and deletion that keeps the call history."""

from __future__ import annotations

import asyncio

import httpx

from storage.models import Agent, Call, Role
from tests.api_client import SidecarApi


def test_creating_beyond_the_plans_agent_quota_is_409_with_the_reason(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(max_agents=3), Role.admin)
    statuses = [
        shared_sidecar.client.post(
            "/v1/agents", json={"name": f"a{i}"}, headers=admin.headers
        ).status_code
        for i in range(3)
    ]
    refused = shared_sidecar.client.post("/v1/agents", json={"name": "a4"}, headers=admin.headers)
    assert statuses == [201, 201, 201]
    assert refused.status_code == 409
    assert refused.json()["reason"] == "max_agents"
    assert "3 agents" in refused.json()["detail"]
    assert seed.count(Agent, organisation_id=admin.organisation_id) == 3
    metrics = shared_sidecar.client.get("/metrics").text
    assert 'sidecar_quota_rejections_total{reason="max_agents"}' in metrics


async def test_concurrent_creations_never_exceed_the_quota(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(max_agents=3), Role.admin)
    transport = httpx.ASGITransport(app=shared_sidecar.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/agents", json={"name": f"c{i}"}, headers=admin.headers)
                for i in range(8)
            )
        )
    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 5
    assert seed.count(Agent, organisation_id=admin.organisation_id) == 3


def test_a_phone_number_belongs_to_one_agent_across_organisations(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    first = seed.member(seed.organisation(), Role.admin)
    second = seed.member(seed.organisation(), Role.admin)
    number = "+15550001111"
    created = shared_sidecar.client.post(
        "/v1/agents", json={"name": "a", "phone_number": number}, headers=first.headers
    )
    taken = shared_sidecar.client.post(
        "/v1/agents", json={"name": "b", "phone_number": number}, headers=second.headers
    )
    assert created.status_code == 201
    assert (taken.status_code, taken.json()["reason"]) == (409, "phone_number_taken")


def test_a_taken_number_is_refused_alike_whoever_holds_it(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    mine = seed.member(seed.organisation(), Role.admin)
    theirs = seed.member(seed.organisation(), Role.admin)
    my_number, their_number = "+15550004441", "+15550004442"
    seed.agent(mine.organisation_id, mine.user_id, phone_number=my_number)
    seed.agent(theirs.organisation_id, theirs.user_id, phone_number=their_number)
    answers = [
        shared_sidecar.client.post(
            "/v1/agents", json={"name": "n", "phone_number": number}, headers=mine.headers
        )
        for number in (my_number, their_number)
    ]
    assert [a.status_code for a in answers] == [409, 409]
    assert answers[0].json() == answers[1].json()
    assert str(theirs.organisation_id) not in answers[1].text


def test_patching_a_taken_number_with_an_owner_is_the_same_409(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    other_user = seed.member(admin.organisation_id, Role.agent)
    taken = "+15550003331"
    seed.agent(seed.organisation(), seed.member(seed.organisation(), Role.admin).user_id)
    holder = seed.member(seed.organisation(), Role.admin)
    seed.agent(holder.organisation_id, holder.user_id, phone_number=taken)
    agent_id = seed.agent(admin.organisation_id, admin.user_id)
    url = f"/v1/agents/{agent_id}"
    alone = shared_sidecar.client.patch(url, json={"phone_number": taken}, headers=admin.headers)
    with_owner = shared_sidecar.client.patch(
        url,
        json={"phone_number": taken, "owner_user_id": other_user.user_id, "name": "renamed"},
        headers=admin.headers,
    )
    assert (alone.status_code, with_owner.status_code) == (409, 409)
    assert alone.json() == with_owner.json()
    stored = shared_sidecar.client.get(url, headers=admin.headers).json()
    assert (stored["owner_user_id"], stored["phone_number"]) == (admin.user_id, None)
    assert stored["name"] != "renamed"


def test_a_phone_number_must_be_e164(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    response = shared_sidecar.client.post(
        "/v1/agents", json={"name": "a", "phone_number": "555-0100"}, headers=admin.headers
    )
    assert response.status_code == 422


def test_admins_assign_tools_and_agent_users_read_them(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin, agent_user = seed.member(org, Role.admin), seed.member(org, Role.agent)
    agent_id = seed.agent(org, agent_user.user_id)
    assigned = shared_sidecar.client.patch(
        f"/v1/agents/{agent_id}",
        json={"tools": ["lookup_account", "create_ticket"]},
        headers=admin.headers,
    )
    assert assigned.status_code == 200
    seen = shared_sidecar.client.get(f"/v1/agents/{agent_id}", headers=agent_user.headers)
    assert seen.json()["tools"] == ["lookup_account", "create_ticket"]
    refused = shared_sidecar.client.patch(
        f"/v1/agents/{agent_id}", json={"tools": []}, headers=agent_user.headers
    )
    assert refused.status_code == 403
    assert "tools" in refused.json()["detail"]


def test_an_agent_user_edits_its_own_agent(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    agent_user = seed.member(seed.organisation(), Role.agent)
    created = shared_sidecar.client.post(
        "/v1/agents",
        json={"name": "Mine", "instructions": "Be brief."},
        headers=agent_user.headers,
    ).json()
    assert created["owner_user_id"] == agent_user.user_id
    patched = shared_sidecar.client.patch(
        f"/v1/agents/{created['id']}", json={"instructions": "Be kind."}, headers=agent_user.headers
    ).json()
    assert (patched["name"], patched["instructions"]) == ("Mine", "Be kind.")


def test_a_null_phone_number_unassigns_it(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    agent_id = seed.agent(org, admin.user_id, phone_number="+15550002222")
    patched = shared_sidecar.client.patch(
        f"/v1/agents/{agent_id}", json={"phone_number": None}, headers=admin.headers
    )
    assert patched.json()["phone_number"] is None


def test_deleting_an_agent_keeps_its_calls(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    agent_id = seed.agent(org, admin.user_id)
    call_id = seed.call(org, agent_id)
    response = shared_sidecar.client.delete(f"/v1/agents/{agent_id}", headers=admin.headers)
    assert response.status_code == 204
    assert seed.get(Agent, agent_id) is None
    call = seed.get(Call, call_id)
    assert call is not None and call.agent_id is None
    log = shared_sidecar.client.get(
        "/v1/audit-log", params={"action": "agent.deleted"}, headers=admin.headers
    ).json()
    assert [entry["subject"] for entry in log] == [f"agent:{agent_id}"]
