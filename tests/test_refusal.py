"""A refused call hears why: the refusal is spoken in full with the local voice."""

from __future__ import annotations

import numpy as np
from livekit.agents import Agent

from agent.call import say_refusal, voice_only_session
from agent.profile import builtin_profile
from agent.settings import Settings
from agent.wav_io import CapturedAudioOutput
from tests.hearing import share_of_words_heard, transcribe


async def test_the_refusal_message_is_spoken_to_the_caller():
    message = "Sorry, all our lines are busy. Please call again later."
    session = voice_only_session(Settings(tts_provider="local"), builtin_profile(), message)
    speaker = CapturedAudioOutput()
    session.output.audio = speaker
    await session.start(agent=Agent(instructions=""), record=False)
    await say_refusal(session, message)

    pcm = np.concatenate([np.frombuffer(b"".join(s.pcm), dtype=np.int16) for s in speaker.segments])
    assert len(pcm) / speaker.sample_rate_hz > 2.0
    heard = transcribe(pcm, speaker.sample_rate_hz)
    assert share_of_words_heard(message, heard) >= 0.7, heard
