"""The worker's job request handler: the sidecar's decision reaches the job as attributes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.admission import (
    ADMISSION_ATTR,
    MESSAGE_ATTR,
    ORG_ATTR,
    REASON_ATTR,
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
    assert req.accepted == {ADMISSION_ATTR: "unmetered"}


async def test_unreachable_sidecar_fails_open_and_still_meters_the_call(unused_tcp_port: int):
    client = SidecarClient(f"http://127.0.0.1:{unused_tcp_port}", "token", timeout_s=1.0)
    req = FakeJobRequest(FakeJob("job-1", '{"organisation_id": 5}'))
    await make_request_handler(Settings(admission_fail_open=True), client)(req)
    await client.aclose()
    assert req.accepted == {ADMISSION_ATTR: "unleased", ORG_ATTR: "5"}


async def test_unreachable_sidecar_can_fail_closed_with_a_reason(unused_tcp_port: int):
    client = SidecarClient(f"http://127.0.0.1:{unused_tcp_port}", "token", timeout_s=1.0)
    req = FakeJobRequest(FakeJob("job-1", '{"organisation_id": 5}'))
    await make_request_handler(Settings(admission_fail_open=False), client)(req)
    await client.aclose()
    assert req.accepted is not None
    assert req.accepted[ADMISSION_ATTR] == "refused"
    assert req.accepted[REASON_ATTR] == "billing_unavailable"
    assert req.accepted[MESSAGE_ATTR]
