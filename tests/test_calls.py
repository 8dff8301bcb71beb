"""Whole calls through real Silero VAD and the embedded stack (Whisper, dialogue engine,
Piper), driven by caller recordings in real time, with no room and no sound card."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from agent.cli import cut_recording as cut
from agent.profile import PROFILES_DIR, load_profile_file
from agent.settings import Settings
from agent.simulate import SimulationOptions, simulate_call
from agent.wav_io import AGENT_SAMPLE_RATE_HZ
from tests.conftest import silence
from tests.hearing import share_of_words_heard, transcribe

pytestmark = pytest.mark.slow

NO_GREETING = SimulationOptions(greeting=False, quiet_after_s=1.5)


def agent_lines(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [u.text for u in report.transcript if u.role == "agent"]


async def test_real_caller_introduction_gets_a_reply_by_name(vad_model, sample_wav_pcm):
    """Corpus: Diane says "This is Diane in New Jersey." on a real phone line."""
    caller = cut(sample_wav_pcm, 12.3, 14.5)
    report, agent_audio = await simulate_call(caller, Settings(), vad_model, options=NO_GREETING)

    assert [t.caller_text for t in report.turns] == ["This is Diane in New Jersey."]
    assert "Diane" in report.turns[0].agent_text
    latency = report.turns[0].end_of_speech_to_first_audio_s
    assert latency is not None and 0 < latency < 10
    # the reply is audible: Whisper hears most of it in the agent's own audio
    heard = transcribe(agent_audio, AGENT_SAMPLE_RATE_HZ)
    assert share_of_words_heard(report.turns[0].agent_text, heard) >= 0.7, heard
    assert report.usage.stt_audio_s > 1.0
    # TTS is billed on the characters sent, sentence by sentence (spaces between dropped)
    assert report.usage.tts_characters == len(report.turns[0].agent_text) - 1
    assert report.errors == []


async def test_real_caller_hello_gets_a_greeting(vad_model, sample_wav_pcm):
    """Corpus: "Hello?" at 6.68 s."""
    report, _ = await simulate_call(
        cut(sample_wav_pcm, 6.4, 7.4), Settings(), vad_model, options=NO_GREETING
    )
    assert len(report.turns) == 1
    assert "hello" in report.turns[0].caller_text.lower()
    assert "How can I help you today?" in report.turns[0].agent_text


async def test_greeting_plays_before_the_caller_speaks(vad_model, sample_wav_pcm):
    report, _ = await simulate_call(
        cut(sample_wav_pcm, 12.3, 14.5), Settings(), vad_model, options=SimulationOptions()
    )
    roles = [u.role for u in report.transcript]
    assert roles[:3] == ["agent", "caller", "agent"]
    assert "Northwind" in report.transcript[0].text
    assert len(report.turns) == 1  # the greeting answers nobody


async def test_outage_question_runs_the_tool_and_answers_with_its_result(vad_model, piper_caller):
    """Synthetic caller (Piper voice): the corpus has no support-desk phrases."""
    caller = np.concatenate([silence(0.3), piper_caller("Is there an outage in Springfield?")])
    report, _ = await simulate_call(caller, Settings(), vad_model, options=NO_GREETING)
    assert [c["name"] for c in report.tool_calls] == ["check_outage"], report.to_json()
    assert report.tool_calls[0]["arguments"]["area"].lower() == "springfield"
    assert "outage in Springfield" in agent_lines(report)[-1]


async def test_slot_filling_over_two_caller_turns(vad_model, piper_caller):
    """Synthetic caller: asks about the bill, then gives the account number when asked."""
    caller = np.concatenate(
        [
            silence(0.3),
            piper_caller("I have a question about my bill."),
            silence(7.0),  # the agent asks for the account number meanwhile
            piper_caller("My account number is one two three four five six."),
        ]
    )
    report, _ = await simulate_call(caller, Settings(), vad_model, options=NO_GREETING)
    lines = agent_lines(report)
    assert "account number" in lines[0]
    assert report.tool_calls and report.tool_calls[0]["name"] == "billing_summary"
    assert report.tool_calls[0]["arguments"] == {"account_number": "123456"}
    assert "42 dollars and 50 cents" in lines[-1]


async def test_caller_barging_in_cuts_the_agent_off(vad_model, piper_caller):
    """The caller speaks over a long answer: playback stops early and is marked."""
    caller = np.concatenate(
        [
            silence(0.3),
            piper_caller("What is the status of my account? It is six five four three two one."),
            silence(4.5),  # the reply starts 1.5-3 s in and runs ~6 s
            piper_caller("Stop. I want to speak to a real person please."),
        ]
    )
    report, _ = await simulate_call(caller, Settings(), vad_model, options=NO_GREETING)
    interrupted = [u for u in report.transcript if u.role == "agent" and u.interrupted]
    assert interrupted, report.to_json()
    assert report.tool_calls[-1]["name"] == "transfer_to_human"


def espeak_phone_caller(text: str, voice: str = "en-us+m3") -> np.ndarray:
    """A caller line in espeak-ng's voice (not the agent's Piper), band-limited to an 8 kHz
    telephone line and back to 16 kHz, with a little line noise."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "150", "--stdout", text], capture_output=True, check=True
    ).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    line = soxr.resample(soxr.resample(data, rate, 8_000), 8_000, 16_000)
    noise = np.random.default_rng(7).normal(0, 0.003, len(line)).astype(np.float32)
    return (np.clip(line + noise, -1, 1) * 32767).astype(np.int16)


async def test_the_restaurant_profile_books_a_table_for_a_telephone_caller(vad_model):
    """Another voice than the tests' usual one, on a telephone band: the restaurant's
    greeting, then a booking with both details in one sentence."""
    profile = load_profile_file(PROFILES_DIR / "restaurant.yaml")
    caller = np.concatenate(
        [
            silence(0.5),
            espeak_phone_caller("Hello. I would like to book a table for four people on Saturday."),
            silence(1.0),
        ]
    )
    report, _ = await simulate_call(
        caller,
        Settings(_env_file=None),  # type: ignore[call-arg]
        vad_model,
        options=SimulationOptions(quiet_after_s=1.5),
        profile=profile,
    )
    said = agent_lines(report)
    assert report.agent == profile.name and said[0] == profile.greeting
    assert any(line.startswith("Perfect, a table for 4 on Saturday") for line in said), report
    assert report.errors == [] and report.status == "ended"
