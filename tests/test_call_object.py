"""The call object's life cycle on the embedded stack, without a room or a sidecar: a call
admitted unleased (the sidecar was down) is metered into the outbox, and however it ends
(the session closes, as when the caller hangs up or the agent ends the call, or the
worker closes it) its final usage and its end reach the outbox exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.admission import AdmissionDecision, CallIdentity
from agent.call import Call
from agent.outbox import Outbox
from agent.profile import builtin_profile
from agent.settings import Settings
from agent.wav_io import CallerAudioInput, CapturedAudioOutput
from tests.conftest import silence

pytestmark = pytest.mark.slow

UNLEASED = AdmissionDecision(status="unleased", organisation_id=5, dialled_number="+15550100")


def new_call(tmp_path: Path, vad_model: Any, decision: AdmissionDecision = UNLEASED) -> Call:
    settings = Settings(_env_file=None, data_dir=tmp_path, aec_warmup_s=0)  # type: ignore[call-arg]
    return Call(
        CallIdentity("call-1", decision.organisation_id, None, decision.dialled_number),
        decision,
        builtin_profile(),
        settings=settings,
        vad_model=vad_model,
        caller_number="+15557654321",
    )


async def start(call: Call) -> None:
    await call.start(
        audio_input=CallerAudioInput(silence(5.0)), audio_output=CapturedAudioOutput(), greet=False
    )


def final_events(tmp_path: Path) -> list[Any]:
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        return [d for d in outbox.due() if d.call is not None and d.call.ended_at is not None]
    finally:
        outbox.close()


async def test_a_session_that_closes_ends_the_call_and_meters_its_end(tmp_path, vad_model):
    call = new_call(tmp_path, vad_model)
    await start(call)
    assert call.session is not None
    call.session.shutdown()  # what end_call does, and what a hang-up does to the session
    await asyncio.wait_for(call.ended.wait(), timeout=10)

    assert call.status == "ended"
    ended = final_events(tmp_path)
    assert ended, "the call's end never reached the outbox"
    facts = ended[0].call
    assert facts.status == "ended" and facts.caller_number_masked == "+*******4321"
    assert facts.dialled_number == "+15550100" and facts.ended_at >= facts.started_at
    assert {d.organisation_id for d in ended} == {5}


async def test_closing_twice_tears_down_once(tmp_path, vad_model):
    call = new_call(tmp_path, vad_model)
    await start(call)
    await asyncio.gather(call.aclose("failed"), call.aclose("ended"), call.aclose())
    assert call.status == "failed"  # the first close decides
    sequences = {d.idempotency_key.rsplit(":", 1)[1] for d in final_events(tmp_path)}
    assert len(sequences) == 1


async def test_an_unmetered_call_writes_nothing(tmp_path, vad_model):
    call = new_call(tmp_path, vad_model, AdmissionDecision(status="unmetered"))
    await start(call)
    await call.aclose()
    assert not (tmp_path / "outbox.db").exists()
