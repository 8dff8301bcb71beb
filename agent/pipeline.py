"""Session assembly: which STT, LLM and TTS a call gets, read top to bottom as data flows.

caller audio -> Silero VAD -> STT chain -> LLM chain (+ the profile's function tools)
             -> TTS chain -> caller

Each stage is a chain of providers in ``plugins/`` (cloud tiers behind circuit breakers,
then local ones; see the README's "When a provider fails").

The worker's settings say which providers this machine has (keys, base URLs, defaults);
the agent's profile chooses among them per stage (``stage_settings``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from livekit.agents import AgentSession, llm, stt, tts, vad
from livekit.agents.voice.turn import TurnHandlingOptions

from agent.profile import (
    KEYPAD_LINE,
    REPEAT_LINE,
    RESUME_LINE,
    TROUBLE_REPLY,
    TROUBLE_TRANSFER_REPLY,
    canned_policy,
    dialogue_policy,
)
from agent.settings import Settings
from billing.agent_profile import AgentProfile

if TYPE_CHECKING:
    import openai as openai_sdk

    from plugins.circuit_breaker import CircuitBreaker
    from plugins.phrasebook import PhrasebookTTS
    from plugins.stt_chain import STTChain
    from plugins.tts_chain import TTSChain

log = logging.getLogger("agent.pipeline")


def load_vad() -> vad.VAD:
    """Silero VAD; its ONNX model ships inside the plugin's wheel."""
    from livekit.plugins import silero

    return silero.VAD.load()


def build_stt(settings: Settings, vad_model: vad.VAD) -> STTChain:
    """The STT chain: Deepgram (when its key is set and the settings do not force the
    local STT; behind its process-wide circuit breaker), then the local Whisper (through
    plugins.speculative_stt with the call's VAD, or livekit's ``stt.StreamAdapter``)."""
    from plugins.circuit_breaker import breaker_for
    from plugins.local_stt import WhisperSTT
    from plugins.stt_chain import STTChain

    tiers: list[tuple[stt.STT, CircuitBreaker | None]] = []
    if settings.resolved_stt() == "deepgram":
        from livekit.plugins import deepgram

        cloud = deepgram.STT(
            model=settings.deepgram_model,
            api_key=settings.deepgram_api_key.get_secret_value(),
            base_url=settings.deepgram_base_url,
        )
        tiers.append((cloud, breaker_for("stt/deepgram", settings.deepgram_base_url)))
    local: stt.STT = WhisperSTT()
    if settings.speculative_stt:
        from plugins.speculative_stt import SpeculativeStreamAdapter

        local = SpeculativeStreamAdapter(stt=local, vad=vad_model)
    tiers.append((local, None))
    return STTChain(tiers, vad=vad_model, no_result_s=settings.stt_no_result_s)


def stage_settings(settings: Settings, profile: AgentProfile) -> Settings:
    """``settings`` with the profile's choices applied: a provider per stage (``auto``
    keeps the settings' own), its models and its voices. A provider whose key this worker
    does not have is logged and left to the settings' choice: the call is still answered."""
    chosen = profile.providers
    keys = {
        "deepgram": settings.deepgram_api_key,
        "openai": settings.openai_api_key,
        "anthropic": settings.anthropic_api_key,
        "elevenlabs": settings.elevenlabs_api_key,
    }
    update: dict[str, object] = {}
    for stage, provider in (("stt", chosen.stt), ("llm", chosen.llm), ("tts", chosen.tts)):
        if provider == "auto":
            continue
        key = keys.get(provider)
        if key is not None and not key.get_secret_value():
            log.warning(
                "the agent's provider has no key on this worker; using the default",
                extra={"stage": stage, "provider": provider, "agent": profile.name},
            )
            continue
        update[f"{stage}_provider"] = provider
    resolved = settings.model_copy(update=update)
    if chosen.stt_model:
        update["deepgram_model"] = chosen.stt_model
    if chosen.llm_model:
        model_field = {"openai": "openai_model", "anthropic": "anthropic_model"}
        if (field := model_field.get(resolved.resolved_llm())) is not None:
            update[field] = chosen.llm_model
    if chosen.tts_model:
        model_field = {"openai": "openai_tts_model", "elevenlabs": "elevenlabs_model"}
        if (field := model_field.get(resolved.resolved_tts())) is not None:
            update[field] = chosen.tts_model
    if profile.voices.openai:
        update["openai_tts_voice"] = profile.voices.openai
    if profile.voices.elevenlabs:
        update["elevenlabs_voice_id"] = profile.voices.elevenlabs
    return settings.model_copy(update=update)


def build_llm(settings: Settings, profile: AgentProfile) -> llm.LLM:
    """The LLM chain: the cloud LLMs whose keys are set (the chosen provider first, then
    OpenAI, then Anthropic; each behind its process-wide circuit breaker), then the
    embedded dialogue engine following the profile, then canned replies. All tiers failing
    still produces speech."""
    from plugins.dialogue_llm import DialogueLLM
    from plugins.llm_chain import LLMChain

    chosen = settings.resolved_llm()
    tiers: list[tuple[llm.LLM, CircuitBreaker | None]] = []
    if chosen != "local":
        keyed = {
            "openai": settings.openai_api_key.get_secret_value(),
            "anthropic": settings.anthropic_api_key.get_secret_value(),
        }
        for provider in dict.fromkeys(p for p in (chosen, "openai", "anthropic") if keyed[p]):
            cloud = _openai_llm if provider == "openai" else _anthropic_llm
            tiers.append(cloud(settings))
    tiers.append((DialogueLLM(dialogue_policy(profile)), None))
    tiers.append((DialogueLLM(canned_policy(profile)), None))
    return LLMChain(tiers, first_token_s=settings.llm_first_token_s)


def _openai_llm(settings: Settings) -> tuple[llm.LLM, CircuitBreaker]:
    from livekit.plugins import openai

    from plugins.circuit_breaker import breaker_for

    breaker = breaker_for("llm/openai", settings.openai_base_url)
    tier = openai.LLM(model=settings.openai_model, client=_openai_client(settings, breaker))
    return tier, breaker


def _openai_client(settings: Settings, breaker: CircuitBreaker) -> openai_sdk.AsyncClient:
    """The OpenAI SDK client a tier uses: no SDK retries (the chain is the retry), and our
    HTTP client, which hands a 429's ``Retry-After`` to the tier's breaker."""
    import openai as openai_sdk

    from plugins.fallback import provider_http_client

    return openai_sdk.AsyncClient(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=0,
        http_client=provider_http_client(breaker),
    )


def _anthropic_llm(settings: Settings) -> tuple[llm.LLM, CircuitBreaker]:
    import anthropic as anthropic_sdk
    from livekit.plugins import anthropic

    from plugins.circuit_breaker import breaker_for
    from plugins.fallback import provider_http_client

    breaker = breaker_for("llm/anthropic", settings.anthropic_base_url)
    key = settings.anthropic_api_key.get_secret_value()
    client = anthropic_sdk.AsyncClient(
        api_key=key,
        base_url=settings.anthropic_base_url,
        max_retries=0,
        # Claude may think for a while between streamed chunks (the plugin's own 30 s)
        http_client=provider_http_client(breaker, read_timeout_s=30.0),
    )
    return anthropic.LLM(model=settings.anthropic_model, api_key=key, client=client), breaker


def build_tts(settings: Settings, profile: AgentProfile, *, lines: Sequence[str] = ()) -> TTSChain:
    """The TTS chain: the cloud voices whose keys are set (the chosen provider first, then
    ElevenLabs, then OpenAI; each behind its process-wide circuit breaker), the local voice,
    then the profile's fixed lines (and ``lines``) pre-rendered by the local voice."""
    from plugins.circuit_breaker import breaker_for
    from plugins.local_tts import PiperTTS
    from plugins.phrasebook import PhrasebookTTS
    from plugins.tts_chain import TTSChain

    chosen = settings.resolved_tts()
    cloud: list[str] = []
    if chosen != "local":
        keyed = {
            "elevenlabs": settings.elevenlabs_api_key.get_secret_value(),
            "openai": settings.openai_api_key.get_secret_value(),
        }
        cloud = [p for p in (chosen, "elevenlabs", "openai") if keyed.get(p)]
        cloud = list(dict.fromkeys(cloud))
    tiers: list[tuple[tts.TTS, CircuitBreaker | None]] = []
    for provider in cloud:
        if provider == "elevenlabs":
            from livekit.plugins import elevenlabs

            voice: tts.TTS = elevenlabs.TTS(
                voice_id=settings.elevenlabs_voice_id,
                model=settings.elevenlabs_model,
                api_key=settings.elevenlabs_api_key.get_secret_value(),
                base_url=settings.elevenlabs_base_url,
            )
            tiers.append((voice, breaker_for("tts/elevenlabs", settings.elevenlabs_base_url)))
        else:
            from livekit.plugins import openai

            breaker = breaker_for("tts/openai", settings.openai_base_url)
            voice = openai.TTS(
                model=settings.openai_tts_model,
                voice=settings.openai_tts_voice,
                client=_openai_client(settings, breaker),
                response_format="pcm",
            )
            tiers.append((voice, breaker))
    local = PiperTTS()
    tiers.append((local, None))
    phone = profile.telephony
    fixed = (profile.greeting, profile.goodbye, REPEAT_LINE, KEYPAD_LINE, RESUME_LINE, *lines)
    if phone.transfer_number:
        fixed += (phone.transfer_line, phone.transfer_failed_line, TROUBLE_TRANSFER_REPLY)
    tiers.append((PhrasebookTTS(local, fixed, trouble_line=TROUBLE_REPLY), None))
    return TTSChain(tiers, first_audio_s=settings.tts_first_audio_s)


def phrasebook(tts_model: tts.TTS | None) -> PhrasebookTTS | None:
    """The last tier of a TTS chain: its fixed lines are rendered in the worker's prewarm
    (the default agent) or once a call has started, off the greeting's path."""
    from plugins.phrasebook import PhrasebookTTS

    tiers = getattr(tts_model, "tiers", [])
    return tiers[-1] if tiers and isinstance(tiers[-1], PhrasebookTTS) else None


def build_session(settings: Settings, vad_model: vad.VAD, profile: AgentProfile) -> AgentSession:
    """The session a call of ``profile`` runs; it does not own its models (the call object
    closes them)."""
    settings = stage_settings(settings, profile)
    stt_model = build_stt(settings, vad_model)
    llm_model = build_llm(settings, profile)
    tts_model = build_tts(settings, profile)
    log.info(
        "session assembled",
        extra={"stt": stt_model.label, "llm": llm_model.label, "tts": tts_model.label},
    )
    return AgentSession(
        vad=vad_model,
        stt=stt_model,
        llm=llm_model,
        tts=tts_model,
        aec_warmup_duration=settings.aec_warmup_s or None,
        turn_handling=TurnHandlingOptions(
            turn_detection="vad",
            # pause at the onset; agent.interruption decides whether it was real
            interruption={
                "mode": "vad",
                "min_duration": settings.interrupt_onset_s,
                "resume_false_interruption": True,
                "false_interruption_timeout": settings.interrupt_resume_s,
            },
            endpointing={
                "min_delay": settings.min_endpointing_delay_s,
                "max_delay": settings.max_endpointing_delay_s,
            },
            preemptive_generation={"enabled": True, "preemptive_tts": settings.preemptive_tts},
        ),
    )
