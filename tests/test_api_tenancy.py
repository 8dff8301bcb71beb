"""Tenant isolation: another organisation's ids are "not found" (404, never 403, so ids
reveal nothing), every list shows only the caller's organisation, and nothing of the
other organisation changes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from storage.models import Agent, ApiKey, Recording, Role, User
from tests.api_client import SERVICE_HEADERS, Member, SidecarApi, billing_event


@dataclass(frozen=True)
class OtherOrganisation:
    admin: Member
    user: int
    key: int
    agent: int
    call: str
    recording: int


@pytest.fixture
def caller(shared_sidecar: SidecarApi) -> Member:
    seed = shared_sidecar.seed
    return seed.member(seed.organisation(), Role.admin)


@pytest.fixture
def other(shared_sidecar: SidecarApi) -> OtherOrganisation:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    user = seed.member(org, Role.agent)
    agent = seed.agent(org, user.user_id)
    call = seed.call(org, agent)
    return OtherOrganisation(
        admin=admin,
        user=user.user_id,
        key=user.key_id,
        agent=agent,
        call=call,
        recording=seed.recording(org, call),
    )


# every route that names a resource, aimed at the other organisation's resource
# fmt: off
FOREIGN_IDS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PATCH",  "/v1/users/{user}",                  {"role": "viewer"}),
    ("DELETE", "/v1/users/{user}",                  None),
    ("POST",   "/v1/keys",                          {"user_id": "{user}"}),
    ("POST",   "/v1/keys/{key}/rotate",             None),
    ("DELETE", "/v1/keys/{key}",                    None),
    ("POST",   "/v1/agents",                        {"name": "x", "owner_user_id": "{user}"}),
    ("GET",    "/v1/agents/{agent}",                None),
    ("PATCH",  "/v1/agents/{agent}",                {"name": "taken over"}),
    ("PATCH",  "/v1/agents/{agent}",                {"owner_user_id": "{user}"}),
    ("DELETE", "/v1/agents/{agent}",                None),
    ("GET",    "/v1/calls/{call}",                  None),
    ("GET",    "/v1/recordings/{recording}/download", None),
    ("DELETE", "/v1/recordings/{recording}",        None),
]
# fmt: on


def _fill(value: Any, other: OtherOrganisation) -> Any:
    if isinstance(value, str):
        whole = re.fullmatch(r"\{(\w+)\}", value)
        if whole:  # a whole-value placeholder keeps the id's type (int in JSON)
            return getattr(other, whole.group(1))
        return re.sub(r"\{(\w+)\}", lambda m: str(getattr(other, m.group(1))), value)
    if isinstance(value, dict):
        return {k: _fill(v, other) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "body"),
    FOREIGN_IDS,
    ids=[f"{m}-{p}-{sorted(b or {})}" for m, p, b in FOREIGN_IDS],
)
def test_another_organisations_ids_are_not_found(
    shared_sidecar: SidecarApi,
    caller: Member,
    other: OtherOrganisation,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = shared_sidecar.client.request(
        method, _fill(path, other), json=_fill(body, other), headers=caller.headers
    )
    assert response.status_code == 404, response.text


def test_the_other_organisation_is_unchanged_after_every_foreign_request(
    shared_sidecar: SidecarApi, caller: Member, other: OtherOrganisation
) -> None:
    seed = shared_sidecar.seed
    for method, path, body in FOREIGN_IDS:
        shared_sidecar.client.request(
            method, _fill(path, other), json=_fill(body, other), headers=caller.headers
        )
    agent = seed.get(Agent, other.agent)
    assert agent is not None and agent.owner_user_id == other.user
    assert not agent.name.startswith("taken")
    user = seed.get(User, other.user)
    assert user is not None and user.role == Role.agent
    key = seed.get(ApiKey, other.key)
    assert key is not None and key.revoked_at is None
    recording = seed.get(Recording, other.recording)
    assert recording is not None and recording.deleted_at is None
    assert (shared_sidecar.config.recordings_dir / recording.path).is_file()
    assert seed.count(ApiKey, user_id=other.user) == 1
    assert seed.count(Agent, organisation_id=other.admin.organisation_id) == 1


@pytest.mark.parametrize(
    ("path", "foreign"),
    [
        ("/v1/users", lambda o: {"id": o.user}),
        ("/v1/keys", lambda o: {"id": o.key}),
        ("/v1/agents", lambda o: {"id": o.agent}),
        ("/v1/calls", lambda o: {"id": o.call}),
        (f"/v1/calls?agent_id={'{agent}'}", lambda o: {"id": o.call}),
        ("/v1/recordings", lambda o: {"id": o.recording}),
        ("/v1/audit-log", lambda o: {"subject": f"user:{o.user}"}),
    ],
)
def test_lists_show_only_the_callers_organisation(
    shared_sidecar: SidecarApi, caller: Member, other: OtherOrganisation, path: str, foreign: Any
) -> None:
    seed = shared_sidecar.seed
    # the other organisation's admin changes something, so it has an audit row too
    shared_sidecar.client.patch(
        f"/v1/users/{other.user}", json={"role": "agent"}, headers=other.admin.headers
    )
    # and the caller has rows of its own, so an empty list proves nothing
    own_user = seed.member(caller.organisation_id, Role.agent)
    own_call = seed.call(
        caller.organisation_id, seed.agent(caller.organisation_id, own_user.user_id)
    )
    seed.recording(caller.organisation_id, own_call)
    shared_sidecar.client.patch(
        f"/v1/users/{own_user.user_id}", json={"role": "agent"}, headers=caller.headers
    )
    response = shared_sidecar.client.get(_fill(path, other), headers=caller.headers)
    assert response.status_code == 200
    rows = response.json()
    if "agent_id" not in path:
        assert rows, "the caller's own rows are listed"
    unwanted = foreign(other)
    assert [row for row in rows if unwanted.items() <= row.items()] == []


def test_balance_and_usage_are_the_callers_own(
    shared_sidecar: SidecarApi, caller: Member, other: OtherOrganisation
) -> None:
    shared_sidecar.client.post(
        "/internal/billing-events",
        json={"events": [billing_event(other.admin.organisation_id, other.call, 600)]},
        headers=SERVICE_HEADERS,
    )
    balance = shared_sidecar.client.get("/v1/balance", headers=caller.headers).json()
    usage = shared_sidecar.client.get("/v1/usage", headers=caller.headers).json()
    assert balance["balance_minor"] == 0
    assert usage["quantities"]["call_seconds"] == 0
    assert shared_sidecar.seed.balance(other.admin.organisation_id) < 0
