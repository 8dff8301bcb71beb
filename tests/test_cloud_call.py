"""One whole call on the cloud stack (Deepgram, OpenAI, ElevenLabs), every provider a loopback
server: the caller's words reach the LLM, its tool call runs, the tool's output goes back to
the LLM, and the answer is spoken and billed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.pipeline import load_vad
from agent.profile import builtin_profile
from agent.settings import Settings
from agent.simulate import SimulationOptions, simulate_call
from agent.wav_io import load_caller_audio
from tests.loopback.anthropic_server import AnthropicServer
from tests.loopback.deepgram_server import DeepgramServer
from tests.loopback.elevenlabs_server import ElevenLabsServer
from tests.loopback.openai_server import OpenAIServer, ToolCallScript

SAMPLE_WAV = Path(__file__).parent / "data" / "sample.wav"
CALLER_SAYS = "my internet is down in springfield"
REPLY = ["Yes, there is an outage in Springfield.", " Service should be back by 1 pm."]

GREETING = builtin_profile().greeting


@pytest.mark.slow
async def test_cloud_call_runs_the_tool_and_speaks_the_answer(
    deepgram_server: DeepgramServer,
    openai_server: OpenAIServer,
    elevenlabs_server: ElevenLabsServer,
) -> None:
    deepgram_server.options.transcripts = [CALLER_SAYS]
    openai_server.options.tool_call = ToolCallScript("check_outage", {"area": "Springfield"})
    openai_server.options.reply_chunks = REPLY
    openai_server.options.prompt_tokens = 120
    elevenlabs_server.options.ms_per_char = 20.0  # a shorter greeting and reply
    settings = Settings(
        deepgram_api_key=SecretStr("test"),
        deepgram_base_url=deepgram_server.listen_url,
        openai_api_key=SecretStr("test"),
        openai_base_url=openai_server.base_url,
        elevenlabs_api_key=SecretStr("test"),
        elevenlabs_base_url=elevenlabs_server.base_url,
    )
    pcm = load_caller_audio(SAMPLE_WAV)[int(12.3 * 16_000) : int(14.5 * 16_000)]

    report, agent_audio = await asyncio.wait_for(
        simulate_call(pcm, settings, load_vad(), options=SimulationOptions(realtime=True)),
        timeout=90,
    )

    assert report.stack == {
        "stt": "livekit.plugins.deepgram.stt.STT -> plugins.local_stt.WhisperSTT",
        "llm": "livekit.plugins.openai.llm.LLM -> plugins.dialogue_llm.DialogueLLM"
        " -> plugins.dialogue_llm.DialogueLLM",
        "tts": "livekit.plugins.elevenlabs.tts.TTS -> livekit.plugins.openai.tts.TTS"
        " -> plugins.local_tts.PiperTTS -> plugins.phrasebook.PhrasebookTTS",
    }
    assert report.errors == [] and report.fallback_events == []

    # what the caller said reached the LLM, which called the tool with its arguments
    caller_lines = [u.text for u in report.transcript if u.role == "caller"]
    assert caller_lines == [CALLER_SAYS]
    assert len(report.tool_calls) == 1
    (tool_call,) = report.tool_calls
    assert tool_call["name"] == "check_outage"
    assert tool_call["arguments"] == {"area": "Springfield"}
    assert tool_call["is_error"] is False
    assert "outage in Springfield" in tool_call["output"]

    # the LLM got the tool's output back in a follow-up request, and answered it
    requests = openai_server.chat_requests
    with_output = [
        i for i, r in enumerate(requests) if any(m["role"] == "tool" for m in r["messages"])
    ]
    assert with_output and with_output[0] >= 1, "the tool output came in a follow-up request"
    follow_up = requests[with_output[0]]
    assert follow_up["messages"][-1]["role"] == "tool"
    assert follow_up["messages"][-1]["content"] == tool_call["output"]
    assert any(m.get("content") == CALLER_SAYS for m in follow_up["messages"])

    # the answer was spoken: the agent's transcript and the TTS server both have it
    agent_lines = [u.text for u in report.transcript if u.role == "agent"]
    assert agent_lines == [GREETING, "".join(REPLY)]
    # one request a sentence (the TTS chain speaks sentence by sentence)
    spoken = [" ".join(r["text"].split()) for r in elevenlabs_server.http_requests]
    assert " ".join(spoken) == f"{GREETING} {''.join(REPLY)}" and len(spoken) >= 3
    assert len(report.turns) == 1
    assert report.turns[0].end_of_speech_to_first_audio_s is not None
    assert len(agent_audio) > 0 and agent_audio.any()

    # and billed: tokens from the usage chunks, characters from the TTS, audio from the STT
    usage = report.usage
    assert usage.llm_input_tokens >= 2 * 120  # the tool-call request and the follow-up
    assert usage.llm_output_tokens > 0
    # the characters the voice was sent (sentence by sentence: the spaces between go unbilled)
    assert usage.tts_characters == sum(len(r["text"]) for r in elevenlabs_server.http_requests)
    assert usage.tts_audio_s > 0
    assert usage.stt_audio_s > 0
    assert deepgram_server.audio_bytes >= len(pcm) * 2


@pytest.mark.slow
async def test_when_openai_is_down_claude_runs_the_tool_and_answers_the_call(
    deepgram_server: DeepgramServer,
    openai_server: OpenAIServer,
    anthropic_server: AnthropicServer,
) -> None:
    """OpenAI refuses every request; the Anthropic tier takes the turn: the session's
    tools reach Claude, its tool use runs ours, the result goes back, the answer is said."""
    deepgram_server.options.transcripts = [CALLER_SAYS]
    openai_server.options.status = 503
    anthropic_server.options.tool_call = ToolCallScript("check_outage", {"area": "Springfield"})
    anthropic_server.options.reply_chunks = REPLY
    settings = Settings(
        deepgram_api_key=SecretStr("test"),
        deepgram_base_url=deepgram_server.listen_url,
        openai_api_key=SecretStr("test"),
        openai_base_url=openai_server.base_url,
        anthropic_api_key=SecretStr("test"),
        anthropic_base_url=anthropic_server.base_url,
        tts_provider="local",
    )
    pcm = load_caller_audio(SAMPLE_WAV)[int(12.3 * 16_000) : int(14.5 * 16_000)]
    report, _ = await asyncio.wait_for(
        simulate_call(pcm, settings, load_vad(), options=SimulationOptions(realtime=True)),
        timeout=90,
    )
    assert report.stack["llm"].startswith(
        "livekit.plugins.openai.llm.LLM -> livekit.plugins.anthropic.llm.LLM -> "
    )
    # (the loopback Deepgram answers only the clip's first second; Whisper, after the
    # 3 s no-result budget, hears the rest as a second turn, which Claude answers alike)
    first_call = report.tool_calls[0]
    assert (first_call["name"], first_call["arguments"]) == (
        "check_outage",
        {"area": "Springfield"},
    )
    assert "outage in Springfield" in anthropic_server.tool_results()[0]
    # Claude was given the agent's tools, and its answer is what the caller heard
    assert "check_outage" in [t["name"] for t in anthropic_server.message_requests[0]["tools"]]
    assert report.turns[0].caller_text == CALLER_SAYS
    assert report.turns[0].agent_text == "".join(REPLY)
    assert {e["provider"] for e in report.fallback_events} <= {"llm/openai", "stt/deepgram"}
    assert report.errors == []
