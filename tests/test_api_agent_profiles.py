"""Agent profiles through ``/v1/agents``: every field stored and answered, every field
validated with the schema the worker runs (422 in FastAPI's validation shape), a PATCH
checked as the whole profile it makes, and the worker's ``/internal`` read of it."""

from __future__ import annotations

from typing import Any

import pytest

from agent.profile import PROFILES_DIR, load_profile_file
from billing.internal_api import agent_profile_path
from storage.models import Agent, Role
from tests.api_client import SERVICE_HEADERS, SidecarApi

CLINIC = load_profile_file(PROFILES_DIR / "clinic.yaml")


def _admin(api: SidecarApi):  # type: ignore[no-untyped-def]
    return api.seed.member(api.seed.organisation(), Role.admin)


def test_a_whole_profile_is_stored_and_answered(shared_sidecar: SidecarApi) -> None:
    admin = _admin(shared_sidecar)
    body = CLINIC.model_dump(mode="json")
    created = shared_sidecar.client.post("/v1/agents", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    agent = created.json()
    for field in ("name", "greeting", "goodbye", "tools", "language", "voices", "dialogue"):
        assert agent[field] == body[field], field
    read = shared_sidecar.client.get(f"/v1/agents/{agent['id']}", headers=admin.headers)
    assert read.json() == agent


def test_defaults_fill_what_a_profile_leaves_out(shared_sidecar: SidecarApi) -> None:
    admin = _admin(shared_sidecar)
    agent = shared_sidecar.client.post(
        "/v1/agents", json={"name": "plain"}, headers=admin.headers
    ).json()
    assert agent["greeting"] and agent["language"] == "en" and agent["dialogue"] is None
    assert agent["providers"]["llm"] == "auto"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"tools": ["open_safe"]}, ["body", "tools", 0]),
        ({"voices": {"openai": "robot"}}, ["body", "voices", "openai"]),
        ({"voices": {"elevenlabs": "short"}}, ["body", "voices", "elevenlabs"]),
        ({"providers": {"tts": "acme"}}, ["body", "providers", "tts"]),
        ({"language": "English"}, ["body", "language"]),
        ({"greeting": ""}, ["body", "greeting"]),
        (
            {"dialogue": {"intents": [{"name": "a", "triggers": ["("], "reply": "x"}]}},
            ["body", "dialogue", "intents", 0, "triggers"],
        ),
        (
            {
                "tools": [],
                "dialogue": {"intents": [{"name": "a", "triggers": ["x"], "tool": "end_call"}]},
            },
            ["body"],
        ),
    ],
    ids=[
        "unknown-tool",
        "unknown-openai-voice",
        "bad-elevenlabs-id",
        "unknown-provider",
        "bad-language",
        "empty-greeting",
        "bad-regex",
        "intent-uses-ungranted-tool",
    ],
)
def test_an_invalid_profile_field_is_422_and_nothing_is_stored(
    shared_sidecar: SidecarApi, fields: dict[str, Any], where: list[Any]
) -> None:
    admin = _admin(shared_sidecar)
    refused = shared_sidecar.client.post(
        "/v1/agents", json={"name": "bad", **fields}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    assert any(issue["loc"][: len(where)] == where for issue in refused.json()["detail"])
    assert shared_sidecar.seed.count(Agent, organisation_id=admin.organisation_id) == 0


def test_a_patch_is_checked_as_the_whole_profile_it_makes(shared_sidecar: SidecarApi) -> None:
    admin = _admin(shared_sidecar)
    agent = shared_sidecar.client.post(
        "/v1/agents", json=CLINIC.model_dump(mode="json"), headers=admin.headers
    ).json()
    url = f"/v1/agents/{agent['id']}"
    # the clinic's dialogue uses end_call: taking the tool away would break it
    refused = shared_sidecar.client.patch(url, json={"tools": []}, headers=admin.headers)
    assert refused.status_code == 422
    assert shared_sidecar.client.get(url, headers=admin.headers).json()["tools"] == agent["tools"]
    changed = shared_sidecar.client.patch(
        url, json={"greeting": "Hi there.", "dialogue": None, "tools": []}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    after = changed.json()
    assert (after["greeting"], after["dialogue"], after["tools"]) == ("Hi there.", None, [])
    assert after["goodbye"] == CLINIC.goodbye  # untouched fields stay


def test_the_worker_reads_a_profile_with_the_service_token_only(
    shared_sidecar: SidecarApi,
) -> None:
    admin = _admin(shared_sidecar)
    agent = shared_sidecar.client.post(
        "/v1/agents", json=CLINIC.model_dump(mode="json"), headers=admin.headers
    ).json()
    path = agent_profile_path(agent["id"])
    read = shared_sidecar.client.get(path, headers=SERVICE_HEADERS)
    assert read.status_code == 200
    assert read.json()["profile"] == CLINIC.model_dump(mode="json")
    assert read.json()["organisation_id"] == admin.organisation_id
    assert shared_sidecar.client.get(path, headers=admin.headers).status_code == 401
    missing = shared_sidecar.client.get(agent_profile_path(2**31 - 1), headers=SERVICE_HEADERS)
    assert missing.status_code == 404
    assert (
        shared_sidecar.client.get(agent_profile_path(0), headers=SERVICE_HEADERS).status_code == 422
    )
