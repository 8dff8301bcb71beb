"""Calls: newest first, filtered by agent, status and start time."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from storage.models import Call, Role, utcnow
from tests.api_client import SidecarApi


def test_calls_are_listed_newest_first_and_filtered(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    viewer = seed.member(org, Role.viewer)
    agent_a, agent_b = seed.agent(org, viewer.user_id), seed.agent(org, viewer.user_id)
    now = utcnow()
    with Session(shared_sidecar.engine) as session:
        for call_id, agent_id, hours_ago, status in (
            ("f-old", agent_a, 48, "ended"),
            ("f-mid", agent_b, 24, "ended"),
            ("f-new", agent_a, 1, "active"),
        ):
            session.add(
                Call(
                    id=f"{call_id}-{org}",
                    organisation_id=org,
                    agent_id=agent_id,
                    status=status,
                    started_at=now - timedelta(hours=hours_ago),
                )
            )
        session.commit()

    def ids(**params: str | int) -> list[str]:
        response = shared_sidecar.client.get("/v1/calls", params=params, headers=viewer.headers)
        assert response.status_code == 200
        return [call["id"].removesuffix(f"-{org}") for call in response.json()]

    assert ids() == ["f-new", "f-mid", "f-old"]
    assert ids(agent_id=agent_a) == ["f-new", "f-old"]
    assert ids(status="ended") == ["f-mid", "f-old"]
    assert ids(started_after=(now - timedelta(hours=30)).isoformat()) == ["f-new", "f-mid"]
    assert ids(started_before=(now - timedelta(hours=30)).isoformat()) == ["f-old"]
    assert ids(limit=1, offset=1) == ["f-mid"]


def test_an_agent_user_sees_only_its_own_agents_calls(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    mine, theirs = seed.member(org, Role.agent), seed.member(org, Role.agent)
    own_call = seed.call(org, seed.agent(org, mine.user_id))
    seed.call(org, seed.agent(org, theirs.user_id))
    seed.call(org, None)  # a call no agent owns
    listed = shared_sidecar.client.get("/v1/calls", headers=mine.headers).json()
    assert [call["id"] for call in listed] == [own_call]
