"""The real services, when their credentials are set; skipped otherwise (as here, with no
internet). They never replace the loopback tests (tests/test_cloud_*.py), which run the
same plugins against local servers that can also inject faults.

    DEEPGRAM_API_KEY=... OPENAI_API_KEY=... ANTHROPIC_API_KEY=... ELEVENLABS_API_KEY=... \\
    LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... ./test.sh tests/test_live.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from agent.admission import AdmissionDecision
from agent.cli import cut_recording
from agent.settings import Settings
from agent.simulate import SimulationOptions, simulate_call
from agent.wav_io import AGENT_SAMPLE_RATE_HZ
from tests.conftest import silence
from tests.hearing import share_of_words_heard, transcribe

REPO = Path(__file__).resolve().parents[1]
NO_GREETING = SimulationOptions(greeting=False, quiet_after_s=1.5)


def needs(*names: str) -> pytest.MarkDecorator:
    missing = [name for name in names if not os.environ.get(name)]
    return pytest.mark.skipif(bool(missing), reason=f"set {', '.join(missing)} to run")


def diane(sample_wav_pcm: np.ndarray) -> np.ndarray:
    """Corpus: "This is Diane in New Jersey." on a real phone line."""
    return cut_recording(sample_wav_pcm, 12.3, 14.5)


@needs("DEEPGRAM_API_KEY")
async def test_deepgram_transcribes_a_real_caller(vad_model, sample_wav_pcm):
    settings = Settings(stt_provider="deepgram", llm_provider="local", tts_provider="local")
    report, _ = await simulate_call(diane(sample_wav_pcm), settings, vad_model, options=NO_GREETING)
    assert report.stack["stt"].startswith("livekit.plugins.deepgram"), report.stack
    assert not [e for e in report.fallback_events if e["stage"] == "stt"], report.fallback_events
    assert "Diane" in " ".join(t.caller_text for t in report.turns), report.to_json()
    assert report.errors == []


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param("openai", marks=needs("OPENAI_API_KEY")),
        pytest.param("anthropic", marks=needs("ANTHROPIC_API_KEY")),
    ],
)
async def test_cloud_llm_calls_the_outage_tool(provider, vad_model, piper_caller):
    settings = Settings(stt_provider="local", llm_provider=provider, tts_provider="local")
    caller = np.concatenate([silence(0.3), piper_caller("Is there an outage in Springfield?")])
    report, _ = await simulate_call(caller, settings, vad_model, options=NO_GREETING)
    assert [c["name"] for c in report.tool_calls] == ["check_outage"], report.to_json()
    assert report.usage.llm_input_tokens > 0 and report.usage.llm_output_tokens > 0


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param("elevenlabs", marks=needs("ELEVENLABS_API_KEY")),
        pytest.param("openai", marks=needs("OPENAI_API_KEY")),
    ],
)
async def test_cloud_voice_speaks_the_reply(provider, vad_model, sample_wav_pcm):
    settings = Settings(stt_provider="local", llm_provider="local", tts_provider=provider)
    report, audio = await simulate_call(
        diane(sample_wav_pcm), settings, vad_model, options=NO_GREETING
    )
    assert report.turns and report.turns[0].agent_text, report.to_json()
    heard = transcribe(audio, AGENT_SAMPLE_RATE_HZ)
    assert share_of_words_heard(report.turns[0].agent_text, heard) >= 0.7, heard
    assert report.usage.tts_characters > 0


@needs("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
async def test_the_worker_joins_a_dispatched_room(tmp_path: Path):
    """`agent.py start` registers with the server and joins the room it is dispatched to."""
    from livekit import api

    agent_name = f"va-test-{uuid.uuid4().hex[:8]}"
    room = f"{agent_name}-room"
    env = {**os.environ, "AGENT_NAME": agent_name, "LOG_FORMAT": "text", "SIDECAR_URL": ""}
    log = (tmp_path / "worker.log").open("w")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "agent.py", "start", cwd=REPO, env=env, stdout=log, stderr=log
    )
    lk = api.LiveKitAPI()
    try:
        await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
        await asyncio.sleep(5)  # registration
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        )
        joined = None
        deadline = time.monotonic() + 90
        while joined is None and time.monotonic() < deadline:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            agents = [p for p in listed.participants if p.kind == api.ParticipantInfo.Kind.AGENT]
            joined = agents[0] if agents else None
            await asyncio.sleep(1)
        assert worker.returncode is None, "the worker exited; see worker.log"
        assert joined is not None, "no agent joined within 90 s; see worker.log"
        assert AdmissionDecision.from_attributes(joined.attributes).status == "unmetered"
    finally:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await lk.aclose()
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), timeout=30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        log.close()
