"""A worker's job process as far as it runs without a LiveKit server: livekit's own
production logging (``start``) with our masking, then ``agent.worker.entrypoint`` in a real
(fake-job) ``JobContext`` whose room holds a SIP caller. Run as a script by
``tests/test_worker_job.py``, so the test reads everything the process writes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents.cli import cli as livekit_cli
from livekit.agents.testing import fake_job_context
from livekit.agents.utils import http_context

from agent.admission import AdmissionDecision
from agent.logs import mask_livekit_logging
from agent.worker import entrypoint, prewarm
from tests.loopback.livekit_server import API_KEY, API_SECRET, LiveKitServer

CALLER = "+15551234567"
TRUNK = "+15550107788"


@dataclass
class SipCaller:
    """The SIP participant as the job sees it: its identity and attributes carry numbers."""

    identity: str = f"sip_{CALLER}"
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    attributes: dict[str, str] = field(
        default_factory=lambda: {
            "sip.phoneNumber": CALLER,
            "sip.trunkPhoneNumber": TRUNK,
            "sip.callID": f"SCL_{CALLER}",
        }
    )


class AgentSeat:
    """The agent's own participant: only its attributes (the admission decision) are read."""

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.identity = "agent"


class DispatchedRoom(rtc.Room):
    """An unconnected room whose agent seat carries the request handler's decision."""

    def __init__(self, decision: AdmissionDecision) -> None:
        super().__init__()
        self._seat = AgentSeat(decision.to_attributes())

    @property
    def local_participant(self) -> Any:  # type: ignore[override]
        return self._seat


async def run_job(seconds: float) -> None:
    decision = AdmissionDecision(status="unmetered", dialled_number=None)
    room = DispatchedRoom(decision)
    # a job runs in livekit's HTTP context (its LiveKit API client and plugins use it), with
    # the worker's LiveKit server in its environment: here the loopback one
    async with LiveKitServer() as server, http_context.open():
        os.environ.update(
            LIVEKIT_URL=server.url, LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET
        )
        await _run_in_job(room, seconds)
        print(f"livekit api: {json.dumps(server.writes)}", file=sys.stderr)


async def _run_in_job(room: DispatchedRoom, seconds: float) -> None:
    with fake_job_context(room=room, job_id="AJ_sipjob1") as ctx:
        caller = SipCaller()

        async def wait_for_participant(**_: Any) -> SipCaller:
            # what livekit logs of a participant joining, as its room events would
            logging.getLogger("livekit.agents").info(
                "participant joined",
                extra={"participant": caller.identity, "attributes": str(caller.attributes)},
            )
            return caller

        ctx.is_fake_job = lambda: False  # type: ignore[method-assign]
        ctx.wait_for_participant = wait_for_participant  # type: ignore[method-assign]
        prewarm(ctx.proc)
        await entrypoint(ctx)
        await asyncio.sleep(seconds)
        for callback in ctx._shutdown_callbacks:  # what livekit runs when the job ends
            await callback("test over")
    print("job done", file=sys.stderr)


if __name__ == "__main__":
    with mask_livekit_logging(None):
        livekit_cli.setup_logging("INFO", devmode=False, console=False)
    asyncio.run(run_job(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
