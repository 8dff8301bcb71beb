"""Pytest fixtures: one fresh loopback server per test, closed when the test ends.

Import them into ``tests/conftest.py`` with ``from tests.loopback.fixtures import *``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from livekit.agents.utils import http_context

from tests.loopback.anthropic_server import AnthropicServer
from tests.loopback.deepgram_server import DeepgramServer
from tests.loopback.elevenlabs_server import ElevenLabsServer
from tests.loopback.livekit_server import LiveKitServer
from tests.loopback.openai_server import OpenAIServer

__all__ = [
    "anthropic_server",
    "deepgram_server",
    "elevenlabs_server",
    "job_http_session",
    "livekit_server",
    "openai_server",
]


@pytest_asyncio.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    """A running loopback OpenAI with the default script (a short text reply)."""
    async with OpenAIServer() as server:
        yield server


@pytest_asyncio.fixture
async def anthropic_server() -> AsyncIterator[AnthropicServer]:
    """A running loopback Anthropic with the default script (a short text reply)."""
    async with AnthropicServer() as server:
        yield server


@pytest_asyncio.fixture
async def deepgram_server() -> AsyncIterator[DeepgramServer]:
    """A running loopback Deepgram that hears "hello world" after 1 s of speech."""
    async with DeepgramServer() as server:
        yield server


@pytest_asyncio.fixture
async def elevenlabs_server() -> AsyncIterator[ElevenLabsServer]:
    """A running loopback ElevenLabs speaking a 440 Hz tone, 30 ms per character."""
    async with ElevenLabsServer() as server:
        yield server


@pytest_asyncio.fixture
async def livekit_server() -> AsyncIterator[LiveKitServer]:
    """A running loopback LiveKit server API (SIP, rooms, agent dispatch), empty."""
    async with LiveKitServer() as server:
        yield server


@pytest_asyncio.fixture
async def job_http_session() -> AsyncIterator[None]:
    """The shared aiohttp session the Deepgram and ElevenLabs plugins expect from a job."""
    async with http_context.open():
        yield
