"""Who may do what: the role matrix is the specification of the API's authorization.

Each row is one route (with the resource it acts on: the caller's own, or another user's
in the same organisation) and the status each role gets. A status in the 2xx range means
allowed; 403 means the role may not use the route at all; 404 means the role may use the
route but cannot see that resource (agent users see only their own agents, calls and
recordings; agent and viewer users only their own keys). Every case runs with a fresh
caller and fresh resources, so destructive rows do not disturb each other.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from storage.models import Role
from tests.api_client import Member, Seeder, SidecarApi

NEW_USER = {"email": "{email}", "role": "viewer"}
TO_VIEWER = {"role": "viewer"}
NEW_AGENT = {"name": "Front desk"}
NEW_AGENT_WITH_TOOLS = {"name": "Front desk", "tools": ["lookup_account"]}
RENAME = {"name": "Renamed"}
TOOLS = {"tools": ["lookup_account"]}
EMPTY: dict[str, Any] = {}
RETAIN_30 = {"recording_retention_days": 30}
A_NUMBER = {"number": "+15550100999"}  # the shared sidecar has no CALLER_ID_SECRET: 503

# fmt: off
MATRIX: list[tuple[str, str, dict[str, Any] | None, int, int, int]] = [
    # method   path                                         body                  admin agent viewer
    ("GET",    "/v1/organisation",                          None,                 200,  403,  200),
    ("PATCH",  "/v1/organisation",                          RETAIN_30,            200,  403,  403),
    ("GET",    "/v1/users",                                 None,                 200,  403,  403),
    ("POST",   "/v1/users",                                 NEW_USER,             201,  403,  403),
    ("PATCH",  "/v1/users/{other_user}",                    TO_VIEWER,            200,  403,  403),
    ("DELETE", "/v1/users/{other_user}",                    None,                 204,  403,  403),
    ("GET",    "/v1/keys",                                  None,                 200,  200,  200),
    ("POST",   "/v1/keys",                                  EMPTY,                201,  403,  403),
    ("POST",   "/v1/keys/{own_key}/rotate",                 None,                 201,  201,  201),
    ("POST",   "/v1/keys/{other_key}/rotate",               None,                 201,  404,  404),
    ("DELETE", "/v1/keys/{own_key}",                        None,                 204,  204,  204),
    ("DELETE", "/v1/keys/{other_key}",                      None,                 204,  404,  404),
    ("GET",    "/v1/agents",                                None,                 200,  200,  200),
    ("POST",   "/v1/agents",                                NEW_AGENT,            201,  201,  403),
    ("POST",   "/v1/agents",                                NEW_AGENT_WITH_TOOLS, 201,  403,  403),
    ("GET",    "/v1/agents/{own_agent}",                    None,                 200,  200,  200),
    ("GET",    "/v1/agents/{other_agent}",                  None,                 200,  404,  200),
    ("PATCH",  "/v1/agents/{own_agent}",                    RENAME,               200,  200,  403),
    ("PATCH",  "/v1/agents/{own_agent}",                    TOOLS,                200,  403,  403),
    ("PATCH",  "/v1/agents/{other_agent}",                  RENAME,               200,  404,  403),
    ("DELETE", "/v1/agents/{own_agent}",                    None,                 204,  204,  403),
    ("DELETE", "/v1/agents/{other_agent}",                  None,                 204,  404,  403),
    ("GET",    "/v1/calls",                                 None,                 200,  200,  200),
    ("GET",    "/v1/calls/{own_call}",                      None,                 200,  200,  200),
    ("GET",    "/v1/calls/{other_call}",                    None,                 200,  404,  200),
    ("POST",   "/v1/calls/{own_call}/erase",                None,                 200,  403,  403),
    ("GET",    "/v1/usage",                                 None,                 200,  403,  200),
    ("GET",    "/v1/balance",                               None,                 200,  403,  200),
    ("GET",    "/v1/audit-log",                             None,                 200,  403,  403),
    ("GET",    "/v1/notifications",                         None,                 200,  403,  200),
    ("GET",    "/v1/recordings",                            None,                 200,  200,  403),
    ("POST",   "/v1/recordings",                            None,                 503,  403,  403),
    ("GET",    "/v1/recordings/{own_recording}/download",   None,                 200,  200,  403),
    ("GET",    "/v1/recordings/{other_recording}/download", None,                 200,  404,  403),
    ("GET",    "/v1/recordings/{own_recording}/speakers",   None,                 422,  422,  403),
    ("GET",    "/v1/recordings/{other_recording}/speakers", None,                 422,  404,  403),
    ("DELETE", "/v1/recordings/{own_recording}",            None,                 204,  204,  403),
    ("DELETE", "/v1/recordings/{other_recording}",          None,                 204,  404,  403),
    ("POST",   "/v1/erasures/caller-number",                A_NUMBER,             503,  403,  403),
    ("POST",   "/v1/tokens",                                {"agent_id": 2**30},  404,  404,  404),
    # the shared sidecar has no recording keys: diarization is 503 where it is allowed
    ("POST",   "/v1/recordings/{own_recording}/diarize",    EMPTY,                503,  503,  403),
    ("POST",   "/v1/recordings/{other_recording}/diarize",  EMPTY,                503,  404,  403),
    ("GET",    "/v1/jobs/{own_job}",                        None,                 200,  200,  403),
    ("GET",    "/v1/jobs/{other_job}",                      None,                 200,  404,  403),
    ("GET",    "/v1/jobs/{own_job}/result",                 None,                 409,  409,  403),
    ("DELETE", "/v1/jobs/{own_job}",                        None,                 200,  200,  403),
    ("DELETE", "/v1/jobs/{other_job}",                      None,                 200,  404,  403),
    ("GET",    "/v1/voiceprints",                           None,                 200,  403,  403),
    ("POST",   "/v1/voiceprints?name=Maria",                None,                 415,  403,  403),
    ("DELETE", "/v1/voiceprints/{voiceprint}",              None,                 204,  403,  403),
]
# fmt: on

ROLES = (Role.admin, Role.agent, Role.viewer)

# Routes that take no API key, and what authenticates them instead (tested elsewhere).
NOT_KEYED = {
    ("POST", "/v1/payments/webhook/{}"): "HMAC signature (test_api_payments)",
    ("POST", "/internal/admissions"): "service token (test_api_internal)",
    ("POST", "/internal/admissions/{}/heartbeat"): "service token (test_api_internal)",
    ("DELETE", "/internal/admissions/{}"): "service token (test_api_internal)",
    ("POST", "/internal/billing-events"): "service token (test_api_internal)",
    ("POST", "/internal/workers/heartbeat"): "service token (test_api_internal)",
    ("GET", "/internal/agents/{}/profile"): "service token (test_api_agent_profiles)",
    ("POST", "/internal/admissions/queue/leave"): "service token (test_api_internal)",
    ("PUT", "/internal/recordings/{}/{}"): "service token (test_recording)",
    ("GET", "/call"): "public: the page asks for a key (test_call_page)",
    ("GET", "/call/call.js"): "public (test_call_page)",
    ("GET", "/call/call.css"): "public (test_call_page)",
    ("GET", "/health"): "public",
    ("GET", "/metrics"): "public",
}


def _route_shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0])


def _cases() -> list[Any]:
    cases = []
    for method, path, body, *statuses in MATRIX:
        for role, status in zip(ROLES, statuses, strict=True):
            label = f"{role.value}-{method}-{path}" + ("-tools" if body and "tools" in body else "")
            cases.append(pytest.param(role, method, path, body, status, id=label))
    return cases


class Targets:
    """The resources one case acts on, created only when its path or body names them:
    ``own_*`` belong to the caller, ``other_*`` to another (agent) user of the same
    organisation."""

    def __init__(self, seed: Seeder, caller: Member) -> None:
        self.seed = seed
        self.caller = caller
        self.org = caller.organisation_id

    @cached_property
    def other(self) -> Member:
        return self.seed.member(self.org, Role.agent)

    @cached_property
    def email(self) -> str:
        return f"new-{self.caller.key_prefix}@example.com"

    @cached_property
    def other_user(self) -> int:
        return self.other.user_id

    @cached_property
    def own_key(self) -> int:
        return self.caller.key_id

    @cached_property
    def other_key(self) -> int:
        return self.other.key_id

    @cached_property
    def own_agent(self) -> int:
        return self.seed.agent(self.org, self.caller.user_id)

    @cached_property
    def other_agent(self) -> int:
        return self.seed.agent(self.org, self.other.user_id)

    @cached_property
    def own_call(self) -> str:
        return self.seed.call(self.org, self.own_agent)

    @cached_property
    def other_call(self) -> str:
        return self.seed.call(self.org, self.other_agent)

    @cached_property
    def own_recording(self) -> int:
        return self.seed.recording(self.org, self.own_call)

    @cached_property
    def other_recording(self) -> int:
        return self.seed.recording(self.org, self.other_call)

    @cached_property
    def own_job(self) -> int:
        return self.seed.diarization_job(self.org, self.own_recording)

    @cached_property
    def other_job(self) -> int:
        return self.seed.diarization_job(self.org, self.other_recording)

    @cached_property
    def voiceprint(self) -> int:
        return self.seed.voiceprint(self.org, f"person-{self.caller.key_prefix}")

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda m: str(getattr(self, m.group(1))), value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value


@pytest.fixture(scope="module")
def organisation_id(shared_sidecar: SidecarApi) -> int:
    return shared_sidecar.seed.organisation()


@pytest.mark.parametrize(("role", "method", "path", "body", "expected"), _cases())
def test_role_matrix(
    shared_sidecar: SidecarApi,
    organisation_id: int,
    role: Role,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    expected: int,
) -> None:
    caller = shared_sidecar.seed.member(organisation_id, role)
    targets = Targets(shared_sidecar.seed, caller)
    response = shared_sidecar.client.request(
        method,
        targets.fill(path),
        json=targets.fill(body) if body is not None else None,
        headers=caller.headers,
    )
    assert response.status_code == expected, response.text


def test_every_route_is_in_the_matrix_or_authenticated_otherwise(
    shared_sidecar: SidecarApi,
) -> None:
    routes = {
        (method, _route_shape(context.path or ""))
        for context in iter_route_contexts(shared_sidecar.app.routes)
        if isinstance(context.route, APIRoute)
        for method in context.methods or ()
    }
    in_matrix = {(method, _route_shape(path)) for method, path, *_ in MATRIX}
    assert routes - in_matrix - set(NOT_KEYED) == set(), "add new routes to MATRIX"
    assert in_matrix | set(NOT_KEYED) == routes, "MATRIX names a route that does not exist"


@pytest.mark.parametrize(
    ("method", "path"),
    sorted({(method, path) for method, path, *_ in MATRIX}),
)
def test_every_keyed_route_refuses_a_request_without_a_key(
    shared_sidecar: SidecarApi, method: str, path: str
) -> None:
    concrete = re.sub(r"\{[^}]*\}", "1", path)
    response = shared_sidecar.client.request(method, concrete, json={})
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
