"""The worker's job request handler: the sidecar's decision reaches the job as one typed
attribute (JSON), which a room's front end can read too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from agent.admission import (
    ADMISSION_ATTR,
    AdmissionDecision,
    call_identity,
    make_request_handler,
)
from agent.settings import Settings
from agent.sidecar_client import SidecarClient


@dataclass
class FakeJob:
    id: str
    metadata: str = ""


@dataclass
class FakeRoom:
    metadata: str = ""


@dataclass
class FakeJobRequest:
    """Only what the handler touches of livekit's JobRequest."""

    job: FakeJob
    room: FakeRoom = field(default_factory=FakeRoom)
    accepted: dict[str, str] | None = None

    async def accept(self, *, attributes: dict[str, str] | None = None) -> None:
        self.accepted = attributes or {}

    @property
    def decision(self) -> AdmissionDecision:
        assert self.accepted is not None and list(self.accepted) == [ADMISSION_ATTR]
        return AdmissionDecision.from_attributes(self.accepted)


def test_identity_merges_room_and_job_metadata_job_wins():
    ident = call_identity(
        "job-1",
        [
            '{"organisation_id": 3, "dialled_number": "+15550100"}',
            '{"agent_id": 9, "organisation_id": 4}',
        ],
        None,
    )
    assert (ident.organisation_id, ident.agent_id, ident.dialled_number) == (4, 9, "+15550100")


@pytest.mark.parametrize(
    "metadata",
    ["not json", "[1, 2]", '{"organisation_id": "3"}', '{"organisation_id": true}', ""],
    ids=["not-json", "array", "id-as-string", "id-as-bool", "empty"],
)
def test_malformed_metadata_falls_back_to_the_default_organisation(metadata: str):
    ident = call_identity("job-1", [metadata], 42)
    assert ident.organisation_id == 42 and ident.agent_id is None


async def test_without_a_sidecar_calls_are_accepted_unmetered():
    req = FakeJobRequest(FakeJob("job-1"))
    await make_request_handler(Settings(), None)(req)
    assert req.decision.status == "unmetered"
    assert json.loads(req.accepted[ADMISSION_ATTR]) == {"status": "unmetered"}


async def test_unreachable_sidecar_fails_open_and_still_meters_the_call(unused_tcp_port: int):
    client = SidecarClient(f"http://127.0.0.1:{unused_tcp_port}", "token", timeout_s=1.0)
    req = FakeJobRequest(FakeJob("job-1", '{"organisation_id": 5}'))
    await make_request_handler(Settings(admission_fail_open=True), client)(req)
    await client.aclose()
    assert (req.decision.status, req.decision.organisation_id) == ("unleased", 5)


async def test_unreachable_sidecar_can_fail_closed_with_a_reason(unused_tcp_port: int):
    client = SidecarClient(f"http://127.0.0.1:{unused_tcp_port}", "token", timeout_s=1.0)
    req = FakeJobRequest(FakeJob("job-1", '{"organisation_id": 5}'))
    await make_request_handler(Settings(admission_fail_open=False), client)(req)
    await client.aclose()
    decision = req.decision
    assert decision.refused and decision.reason == "billing_unavailable" and decision.message


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {ADMISSION_ATTR: ""},
        {ADMISSION_ATTR: "admitted"},
        {ADMISSION_ATTR: '{"status": "maybe"}'},
    ],
    ids=["missing", "empty", "old-plain-string", "unknown-status"],
)
def test_a_missing_or_malformed_decision_is_taken_as_unmetered(attributes: dict[str, str]):
    assert AdmissionDecision.from_attributes(attributes).status == "unmetered"


def test_the_decision_round_trips_through_its_attribute():
    decision = AdmissionDecision(
        status="admitted",
        lease_id="5:job-1",
        organisation_id=5,
        agent_id=7,
        dialled_number="+15550100",
    )
    assert AdmissionDecision.from_attributes(decision.to_attributes()) == decision
    assert decision.identity("job-1").agent_id == 7
