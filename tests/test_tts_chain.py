"""The TTS chain: the real ElevenLabs and OpenAI plugins against the loopback servers with
faults injected, then the local Piper voice, then the pre-rendered phrasebook. What
matters is what the caller hears: audio for every sentence, from the tier that could give
it, within the first-audio budget, and a sentence that dies half-way finished from where
it stopped, neither repeated nor cut short."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from livekit.plugins import elevenlabs, openai

from agent.profile import TROUBLE_REPLY, builtin_profile
from agent.wav_io import AGENT_SAMPLE_RATE_HZ
from plugins.circuit_breaker import CircuitBreaker
from plugins.local_tts import PiperTTS
from plugins.phrasebook import PhrasebookTTS
from plugins.tts_chain import TTSChain, unheard_rest
from tests.hearing import share_of_words_heard, transcribe

FIRST_AUDIO_S = 0.5

pytestmark = pytest.mark.usefixtures("job_http_session")
SENTENCE = "Your router should be back online within the next ten minutes."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cloud_chain(
    eleven: Any, oai: Any, *, breaker: CircuitBreaker | None = None, local: bool = True
) -> TTSChain:
    tiers: list[Any] = [
        (
            elevenlabs.TTS(voice_id="v", api_key="xi-test", base_url=eleven.base_url),
            breaker or CircuitBreaker("tts/elevenlabs", clock=Clock()),
        ),
        (
            openai.TTS(api_key="sk-test", base_url=oai.base_url, response_format="pcm"),
            CircuitBreaker("tts/openai", clock=Clock()),
        ),
    ]
    if local:
        tiers.append((PiperTTS(), None))
    return TTSChain(tiers, first_audio_s=FIRST_AUDIO_S, stall_s=FIRST_AUDIO_S)


async def speak(chain: TTSChain, text: str) -> tuple[np.ndarray, float]:
    """(the audio at the chain's rate, seconds to its first frame)."""
    started = time.monotonic()
    first: float | None = None
    frames = []
    async with chain.synthesize(text) as stream:
        async for event in stream:
            if first is None:
                first = time.monotonic() - started
            frames.append(np.frombuffer(event.frame.data, dtype=np.int16))
    assert first is not None, "no audio at all"
    return np.concatenate(frames), first


def tone_seconds(server: Any, text: str) -> float:
    return len(text.strip()) * server.options.ms_per_char / 1000


def openai_seconds(server: Any, text: str) -> float:
    return len(server.speech_pcm(text)) / 2 / 24_000


async def test_a_healthy_cloud_voice_speaks_and_nothing_falls_back(
    elevenlabs_server, openai_server
):
    chain = cloud_chain(elevenlabs_server, openai_server, local=False)
    audio, _ = await speak(chain, SENTENCE)
    assert len(audio) / chain.sample_rate == pytest.approx(
        tone_seconds(elevenlabs_server, SENTENCE),
        abs=0.1,  # MP3 padding
    )
    assert chain.fallback_events == [] and openai_server.speech_texts == []


FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "refused": ({"refuse": True}, "connection"),
    "500": ({"status": 500}, "http_5xx"),
    "429": ({"status": 429}, "rate_limited"),
    "no first byte": ({"first_byte_delay_s": 5.0}, "first_audio_timeout"),
    "connects then silent": ({"stall_s": 5.0}, "first_audio_timeout"),
    "dropped": ({"silent_close": True}, "connection"),
    "garbage": ({"garbage": "not_json"}, "malformed"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_fault_of_the_first_voice_is_spoken_by_the_next_within_the_budget(
    elevenlabs_server, openai_server, fault
):
    settings, reason = FAULTS[fault]
    for name, value in settings.items():
        setattr(elevenlabs_server.options, name, value)
    chain = cloud_chain(elevenlabs_server, openai_server, local=False)
    audio, first_s = await speak(chain, SENTENCE)
    assert openai_server.speech_texts == [SENTENCE]
    assert len(audio) / chain.sample_rate == pytest.approx(
        openai_seconds(openai_server, SENTENCE), abs=0.05
    )
    assert first_s < FIRST_AUDIO_S + 0.5, f"the caller waited {first_s:.2f} s"
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [("tts/elevenlabs", reason)]


async def test_a_sentence_that_dies_half_way_is_finished_from_the_word_it_stopped_at(
    elevenlabs_server, openai_server
):
    """OpenAI's voice first here: its PCM reaches the caller as it arrives (ElevenLabs'
    MP3 arrives whole), so the drop leaves half a sentence heard."""
    chain = TTSChain(
        [
            (
                openai.TTS(api_key="sk", base_url=openai_server.base_url, response_format="pcm"),
                CircuitBreaker("tts/openai", clock=Clock()),
            ),
            (
                elevenlabs.TTS(voice_id="v", api_key="xi", base_url=elevenlabs_server.base_url),
                CircuitBreaker("tts/elevenlabs", clock=Clock()),
            ),
        ],
        first_audio_s=FIRST_AUDIO_S,
    )
    await speak(chain, "Let me look that up for you right away.")  # the voice's own rate
    openai_server.options.drop_after_fraction = 0.5
    audio, _ = await speak(chain, SENTENCE)

    assert chain.fallback_events[-1].reason == "connection"
    rest = elevenlabs_server.http_requests[-1]["text"].strip()
    assert rest and SENTENCE.endswith(rest), rest
    # what the caller heard of the first voice, from the audio itself
    first_voice_s = len(audio) / chain.sample_rate - tone_seconds(elevenlabs_server, rest)
    heard_chars = first_voice_s / openai_seconds(openai_server, SENTENCE) * len(SENTENCE)
    assert 0.3 * len(SENTENCE) < heard_chars < 0.7 * len(SENTENCE)
    start = len(SENTENCE) - len(rest)
    # the second voice starts at the word the caller was hearing: no earlier (a repeat),
    # no later (a loss)
    assert start <= heard_chars + 1, f"lost {SENTENCE[int(heard_chars) : start]!r}"
    assert " " not in SENTENCE[start : int(heard_chars)].strip(), "repeated whole words"


def test_the_unheard_rest_starts_at_the_word_being_spoken():
    text = "one two three four"
    assert unheard_rest(text, 0) == text
    assert unheard_rest(text, 5) == "two three four"  # "one t|wo": "two" again
    assert unheard_rest(text, 4) == "two three four"  # "one |two"
    assert unheard_rest(text, 2) == text
    assert unheard_rest(text, 100) == ""


async def test_an_open_breaker_skips_the_voice_without_asking_it(elevenlabs_server, openai_server):
    clock = Clock()
    breaker = CircuitBreaker("tts/elevenlabs", clock=clock)
    for _ in range(5):
        breaker.record_failure()
    chain = cloud_chain(elevenlabs_server, openai_server, breaker=breaker, local=False)
    _, first_s = await speak(chain, SENTENCE)
    assert elevenlabs_server.http_requests == []
    assert [e.reason for e in chain.fallback_events] == ["breaker_open"]
    assert first_s < 0.3


async def test_a_429_skips_each_voice_as_long_as_its_retry_after_asked(
    elevenlabs_server, openai_server
):
    """ElevenLabs' error keeps its response (aiohttp's); OpenAI's SDK error does not, and
    the pipeline's HTTP client hands the header to the breaker."""
    from pydantic import SecretStr

    from agent.pipeline import build_tts
    from agent.settings import Settings

    for server, seconds in ((elevenlabs_server, "45"), (openai_server, "20")):
        server.options.status, server.options.retry_after = 429, seconds
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        elevenlabs_api_key=SecretStr("xi-test"),
        elevenlabs_base_url=elevenlabs_server.base_url,
        openai_api_key=SecretStr("sk-test"),
        openai_base_url=openai_server.base_url,
    )
    chain = build_tts(settings, builtin_profile())
    audio, _ = await speak(chain, SENTENCE)  # the local voice said it
    assert len(audio) > chain.sample_rate
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [
        ("tts/elevenlabs", "rate_limited"),
        ("tts/openai", "rate_limited"),
    ]
    eleven, oai = chain.breakers[:2]
    assert eleven is not None and 43 < eleven.open_for_s <= 45
    assert oai is not None and 18 < oai.open_for_s <= 20
    await chain.aclose()


@pytest.mark.slow
async def test_with_every_cloud_voice_down_the_local_voice_says_the_sentence(
    elevenlabs_server, openai_server
):
    elevenlabs_server.options.status = 503
    openai_server.options.refuse = True
    chain = cloud_chain(elevenlabs_server, openai_server)
    audio, _ = await speak(chain, SENTENCE)
    assert chain.sample_rate == 24_000  # Piper's 22.05 kHz resampled to the chain's rate
    heard = transcribe(audio, chain.sample_rate)
    # 60 renderings (2026-12-03): 59 heard whole, one as "back in the next 10 minutes",
    # 10 of the 13 words; Whisper tiny runs "online within" together now and then
    assert share_of_words_heard(SENTENCE, heard) >= 0.75, heard
    assert [e.provider for e in chain.fallback_events] == ["tts/elevenlabs", "tts/openai"]


async def test_the_phrasebook_says_fixed_lines_and_the_trouble_line_once(elevenlabs_server):
    """The last tier: every voice gone (here the only one refuses)."""
    elevenlabs_server.options.refuse = True
    profile = builtin_profile()
    book = PhrasebookTTS(PiperTTS(), [profile.greeting], trouble_line=TROUBLE_REPLY)
    book.prepare()
    assert book.ready
    chain = TTSChain(
        [
            (
                elevenlabs.TTS(voice_id="v", api_key="xi", base_url=elevenlabs_server.base_url),
                CircuitBreaker("tts/elevenlabs", clock=Clock()),
            ),
            (book, None),
        ],
        first_audio_s=FIRST_AUDIO_S,
    )
    greeting_first = profile.greeting.split(". ")[0] + "."
    fixed, _ = await speak(chain, greeting_first)
    unknown, _ = await speak(chain, "Your bill this month is forty two dollars.")
    again, _ = await speak(chain, "Anything else I can do?")
    rate = chain.sample_rate
    assert share_of_words_heard(greeting_first, transcribe(fixed, rate)) >= 0.8
    assert share_of_words_heard(TROUBLE_REPLY, transcribe(unknown, rate)) >= 0.8
    assert len(again) / rate < 0.2 and np.abs(again).max() == 0  # silence, not a repeat


@pytest.mark.slow
async def test_a_call_whose_cloud_voice_hangs_is_spoken_by_the_local_voice_within_the_budget(
    vad_model, piper_caller, elevenlabs_server
):
    """Before the chain, livekit waited for the provider's whole timeout: 10 s of silence
    a sentence. Here each of the first sentences costs the budget (1.5 s), then the
    breaker opens and later ones cost nothing."""
    from pydantic import SecretStr

    from agent.settings import Settings
    from agent.simulate import SimulationOptions, simulate_call
    from tests.conftest import silence

    elevenlabs_server.options.first_byte_delay_s = 30.0
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        elevenlabs_api_key=SecretStr("xi-test"),
        elevenlabs_base_url=elevenlabs_server.base_url,
    )
    caller = np.concatenate(
        [
            piper_caller("Is there an outage in Springfield?"),
            silence(10.0),  # the whole answer, before the caller thanks the agent
            piper_caller("Thank you."),
            silence(1.0),
        ]
    )
    report, agent_audio = await simulate_call(
        caller, settings, vad_model, options=SimulationOptions(greeting=True, quiet_after_s=2.0)
    )
    assert len(report.turns) == 2, report.transcript
    latencies = [t.end_of_speech_to_first_audio_s for t in report.turns]
    assert all(s is not None and s < 1.5 + 2.5 for s in latencies), latencies
    reasons = [e["reason"] for e in report.fallback_events if e["stage"] == "tts"]
    assert set(reasons) <= {"first_audio_timeout", "breaker_open"}, reasons
    # five sentences at most pay the budget: then the breaker skips the voice
    assert 1 <= reasons.count("first_audio_timeout") <= 5
    heard = transcribe(agent_audio, AGENT_SAMPLE_RATE_HZ)
    assert share_of_words_heard(report.turns[0].agent_text, heard) >= 0.7, heard
