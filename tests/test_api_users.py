"""Users: an organisation always keeps an admin; removing a user removes its keys."""

from __future__ import annotations

import pytest

from storage.models import ApiKey, Role
from tests.api_client import SidecarApi


def test_the_last_admin_cannot_be_demoted_or_removed(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    client = shared_sidecar.client
    demoted = client.patch(
        f"/v1/users/{admin.user_id}", json={"role": "viewer"}, headers=admin.headers
    )
    removed = client.delete(f"/v1/users/{admin.user_id}", headers=admin.headers)
    assert (demoted.status_code, demoted.json()["reason"]) == (409, "last_admin")
    assert (removed.status_code, removed.json()["reason"]) == (409, "last_admin")


def test_an_admin_can_step_down_when_another_admin_remains(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin, successor = seed.member(org, Role.admin), seed.member(org, Role.admin)
    response = shared_sidecar.client.patch(
        f"/v1/users/{admin.user_id}", json={"role": "viewer"}, headers=admin.headers
    )
    assert response.json()["role"] == "viewer"
    # the new role holds from the next request on
    assert shared_sidecar.client.get("/v1/users", headers=admin.headers).status_code == 403
    assert shared_sidecar.client.get("/v1/users", headers=successor.headers).status_code == 200


def test_removing_a_user_removes_its_keys(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin, viewer = seed.member(org, Role.admin), seed.member(org, Role.viewer)
    response = shared_sidecar.client.delete(f"/v1/users/{viewer.user_id}", headers=admin.headers)
    assert response.status_code == 204
    assert seed.count(ApiKey, user_id=viewer.user_id) == 0
    assert shared_sidecar.client.get("/v1/agents", headers=viewer.headers).status_code == 401


def test_a_user_who_owns_agents_cannot_be_removed(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin, owner = seed.member(org, Role.admin), seed.member(org, Role.agent)
    seed.agent(org, owner.user_id)
    response = shared_sidecar.client.delete(f"/v1/users/{owner.user_id}", headers=admin.headers)
    assert (response.status_code, response.json()["reason"]) == (409, "owns_agents")


def test_an_email_is_used_once_per_organisation(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    body = {"email": "twice@example.com", "role": "agent"}
    first = shared_sidecar.client.post("/v1/users", json=body, headers=admin.headers)
    second = shared_sidecar.client.post("/v1/users", json=body, headers=admin.headers)
    assert first.status_code == 201
    assert (second.status_code, second.json()["reason"]) == (409, "email_taken")


@pytest.mark.parametrize("resource", ["users", "keys", "agents"])
def test_lists_page_by_limit_and_offset(shared_sidecar: SidecarApi, resource: str) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    for _ in range(2):
        member = seed.member(org, Role.agent)
        seed.agent(org, member.user_id)
    client = shared_sidecar.client

    def ids(**page: int) -> list[int]:
        response = client.get(f"/v1/{resource}", params=page, headers=admin.headers)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    everything = ids()
    assert len(everything) >= 2 and everything == sorted(everything)
    assert ids(limit=1) == everything[:1]
    assert ids(limit=1, offset=1) == everything[1:2]
    assert ids(offset=len(everything)) == []


@pytest.mark.parametrize("resource", ["users", "keys", "agents", "calls", "audit-log"])
@pytest.mark.parametrize("page", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}])
def test_a_malformed_page_is_422(shared_sidecar: SidecarApi, resource: str, page: dict) -> None:
    seed = shared_sidecar.seed
    admin = seed.member(seed.organisation(), Role.admin)
    response = shared_sidecar.client.get(f"/v1/{resource}", params=page, headers=admin.headers)
    assert response.status_code == 422, response.text
