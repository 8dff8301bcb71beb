"""Session assembly: which STT, LLM and TTS a call gets, read top to bottom as data flows.

caller audio -> Silero VAD -> STT -> LLM (+ function tools) -> TTS -> caller
"""

from __future__ import annotations

import logging

from livekit.agents import AgentSession, llm, stt, tts, vad
from livekit.agents.voice.turn import TurnHandlingOptions

from agent.settings import Settings
from agent.support_agent import SUPPORT_POLICY

log = logging.getLogger("agent.pipeline")


def load_vad() -> vad.VAD:
    """Silero VAD; its ONNX model ships inside the plugin's wheel."""
    from livekit.plugins import silero

    return silero.VAD.load()


def build_stt(settings: Settings) -> stt.STT:
    if settings.resolved_stt() == "deepgram":
        from livekit.plugins import deepgram

        return deepgram.STT(
            model=settings.deepgram_model,
            api_key=settings.deepgram_api_key.get_secret_value(),
            base_url=settings.deepgram_base_url,
        )
    from plugins.local_stt import WhisperSTT

    return WhisperSTT()


def build_llm(settings: Settings) -> llm.LLM:
    if settings.resolved_llm() == "openai":
        from livekit.plugins import openai

        return openai.LLM(
            model=settings.openai_model,
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
        )
    from plugins.dialogue_llm import DialogueLLM

    return DialogueLLM(SUPPORT_POLICY)


def build_tts(settings: Settings) -> tts.TTS:
    provider = settings.resolved_tts()
    if provider == "elevenlabs":
        from livekit.plugins import elevenlabs

        return elevenlabs.TTS(
            voice_id=settings.elevenlabs_voice_id,
            model=settings.elevenlabs_model,
            api_key=settings.elevenlabs_api_key.get_secret_value(),
            base_url=settings.elevenlabs_base_url,
        )
    if provider == "openai":
        from livekit.plugins import openai

        return openai.TTS(
            model=settings.openai_tts_model,
            voice=settings.openai_tts_voice,
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            response_format="pcm",
        )
    from plugins.local_tts import PiperTTS

    return PiperTTS()


def build_session(settings: Settings, vad_model: vad.VAD) -> AgentSession:
    stt_model, llm_model, tts_model = build_stt(settings), build_llm(settings), build_tts(settings)
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
            endpointing={
                "min_delay": settings.min_endpointing_delay_s,
                "max_delay": settings.max_endpointing_delay_s,
            },
        ),
    )
