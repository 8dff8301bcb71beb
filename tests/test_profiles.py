"""Agent profiles: the shipped ones load, a bad one is refused with the file and the field
named, the cache serves stale copies while the sidecar is down, the profile's choices reach
the pipeline, and the example agents hold a conversation through livekit's AgentSession."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit.agents import AgentSession, llm
from pydantic import ValidationError

from agent.pipeline import stage_settings
from agent.profile import (
    PROFILES_DIR,
    TROUBLE_REPLY,
    TROUBLE_TRANSFER_REPLY,
    ProfileError,
    ProfileStore,
    builtin_profile,
    canned_policy,
    dialogue_policy,
    load_profile_file,
    parse_profile,
)
from agent.settings import Settings
from agent.tools import CallTools, ProfileAgent
from billing.agent_profile import TOOL_NAMES, AgentProfile
from plugins.dialogue_llm import DialogueLLM, DialoguePolicy, decide

SHIPPED = sorted(PROFILES_DIR.glob("*.yaml"))


def test_the_tool_registry_implements_exactly_the_names_profiles_may_grant():
    every = AgentProfile(name="all", tools=list(TOOL_NAMES))
    assert [t.info.name for t in CallTools(every).granted()] == list(TOOL_NAMES)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profiles_load_and_compile(path: Path):
    profile = load_profile_file(path)
    policy = dialogue_policy(profile)
    assert policy.greeting == profile.greeting and policy.intents


def test_three_profiles_ship_besides_each_other():
    assert {p.stem for p in SHIPPED} >= {"northwind", "clinic", "restaurant"}


def test_an_agent_gets_only_the_tools_its_profile_grants():
    agent = ProfileAgent(load_profile_file(PROFILES_DIR / "clinic.yaml"), greet=False)
    assert sorted(t.info.name for t in agent.tools) == ["end_call", "transfer_to_human"]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "a YAML mapping"),
        ("greeting: hi", "name: Field required"),
        ("name: x\ntools: [open_safe]", "tools.0"),
        ("name: x\nvoices: {openai: robot}", "unknown OpenAI voice"),
        ("name: x\nvoices: {local: amy}", "unknown local voice"),
        ("name: x\nproviders: {llm: gemini}", "providers.llm"),
        ("name: x\nlanguage: english", "language"),
        ("name: x\ngreating: hello", "greating: Extra inputs are not permitted"),
        ("name: x\ntools: [end_call, end_call]", "each tool once"),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: ['(unclosed'], reply: hi}]}",
            "not a valid regular expression",
        ),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: [hi], reply: 'hi {who}'}]}",
            "names who, which it does not fill",
        ),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: [hi], tool: end_call}]}",
            "not in the profile's tools",
        ),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: [hi]}]}",
            "exactly one of tool or reply",
        ),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: [hi], reply: '{n}', "
            "slots: [{name: n, question: q, extract: [{pattern: 'no group'}]}]}]}",
            "needs a group",
        ),
        (
            "name: x\ndialogue: {intents: [{name: a, triggers: [hi], reply: '{n}', "
            "slots: [{name: n, question: q, extract: [{digits: [5, 2]}]}]}]}",
            "min <= max",
        ),
        ("name: x\ntelephony: {transfer_number: '+15550109999'}", "needs the transfer_to_human"),
        (
            "name: x\ntools: [transfer_to_human]\ntelephony: {transfer_number: '555-0100'}",
            "E.164 (+15550100) or a sip:/tel: URI",
        ),
        ("name: x\ntelephony: {keys: {'#': end_call}}", "telephony.keys.#"),
        ("name: x\ntelephony: {keys: {'12': end_call}}", "telephony.keys.12"),
        ("name: x\ntelephony: {keys: {'0': open_safe}}", "telephony.keys.0"),
        ("name: x\ntelephony: {transfer_line: ''}", "telephony.transfer_line"),
        ("name: x\ntelephony: {transfer_nmber: '+15550109999'}", "Extra inputs"),
        ("name: x\ntelephony: {transfer_mode: lukewarm}", "telephony.transfer_mode"),
        ("name: x\ntelephony: {transfer_ring_s: 600}", "telephony.transfer_ring_s"),
        ("name: x\ntelephony: {transfer_ring_s: soon}", "telephony.transfer_ring_s"),
    ],
)
def test_a_malformed_profile_is_refused_naming_the_file_and_the_problem(text: str, complaint: str):
    with pytest.raises(ProfileError) as raised:
        parse_profile(text, source="bad.yaml")
    assert str(raised.value).startswith("bad.yaml: ") and complaint in str(raised.value)


def test_a_missing_profile_file_is_a_profile_error(tmp_path: Path):
    with pytest.raises(ProfileError, match="cannot read agent profile"):
        load_profile_file(tmp_path / "nope.yaml")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_profiles_are_cached_for_their_ttl_then_fetched_again():
    clock, fetched = FakeClock(), []

    async def fetch(agent_id: int) -> AgentProfile:
        fetched.append(agent_id)
        return AgentProfile(name=f"agent {agent_id} v{len(fetched)}")

    store = ProfileStore(builtin_profile(), ttl_s=30, clock=clock)
    assert (await store.get(7, fetch)).name == "agent 7 v1"
    clock.now = 29
    assert (await store.get(7, fetch)).name == "agent 7 v1"
    clock.now = 31
    assert (await store.get(7, fetch)).name == "agent 7 v2"
    assert fetched == [7, 7]


async def test_a_sidecar_outage_serves_the_cached_profile_else_the_default():
    clock = FakeClock()

    async def works(agent_id: int) -> AgentProfile:
        return AgentProfile(name="clinic")

    async def down(agent_id: int) -> AgentProfile:
        raise ConnectionError("sidecar down")

    store = ProfileStore(builtin_profile(), ttl_s=30, clock=clock)
    await store.get(1, works)
    clock.now = 3600
    assert (await store.get(1, down)).name == "clinic"
    assert (await store.get(2, down)).name == builtin_profile().name
    # no sidecar, or no agent named: the local profile, nothing fetched
    assert (await store.for_call(1, None)).name == builtin_profile().name


def test_a_profile_without_dialogue_offers_a_person_and_ends_on_goodbye():
    policy = dialogue_policy(AgentProfile(name="bare", tools=["transfer_to_human", "end_call"]))
    tools = set(TOOL_NAMES)

    def said(text: str) -> tuple[str | None, str | None]:
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content=text)
        d = decide(policy, ctx.items, tools)
        return d.text, d.tool_name

    text, _ = said("What is the meaning of life?")
    assert text is not None and "connect you to a person" in text
    assert said("Yes please")[1] == "transfer_to_human"
    assert said("Goodbye")[1] == "end_call"
    without_transfer = dialogue_policy(AgentProfile(name="bare"))
    assert "person" not in without_transfer.fallback_reply


def test_the_canned_tier_can_still_hand_the_caller_to_a_person():
    """When every LLM tier has failed, a profile that transfers calls keeps that one action;
    one that does not promises nothing."""
    phone = AgentProfile(
        name="desk",
        tools=["transfer_to_human"],
        telephony={"transfer_number": "+15550109999"},  # type: ignore[arg-type]
    )

    def said(policy: DialoguePolicy, text: str) -> tuple[str | None, str | None]:
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content=text)
        d = decide(policy, ctx.items, set(TOOL_NAMES))
        return d.text, d.tool_name

    assert said(canned_policy(phone), "what's my balance?") == (TROUBLE_TRANSFER_REPLY, None)
    assert said(canned_policy(phone), "a person please")[1] == "transfer_to_human"
    bare = canned_policy(AgentProfile(name="bare", tools=["transfer_to_human"]))
    assert said(bare, "a person please") == (TROUBLE_REPLY, None)


def test_the_profile_chooses_providers_models_and_voices_among_what_the_worker_has():
    settings = Settings(openai_api_key="sk-test", _env_file=None)  # type: ignore[call-arg]
    profile = AgentProfile.model_validate(
        {
            "name": "x",
            "voices": {"openai": "nova"},
            "providers": {"llm": "openai", "tts": "openai", "stt": "deepgram", "llm_model": "m1"},
        }
    )
    chosen = stage_settings(settings, profile)
    assert chosen.resolved_llm() == "openai" and chosen.openai_model == "m1"
    assert chosen.resolved_tts() == "openai" and chosen.openai_tts_voice == "nova"
    # no Deepgram key on this worker: the settings' own choice, not a call without STT
    assert chosen.resolved_stt() == "local"


def test_a_profile_can_put_claude_first_with_its_own_model():
    settings = Settings(
        openai_api_key="sk-test",  # type: ignore[arg-type]
        anthropic_api_key="sk-ant-test",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    assert settings.resolved_llm() == "openai"  # auto: OpenAI first when both keys are set
    profile = AgentProfile.model_validate(
        {"name": "x", "providers": {"llm": "anthropic", "llm_model": "claude-sonnet-4-6"}}
    )
    chosen = stage_settings(settings, profile)
    assert chosen.resolved_llm() == "anthropic"
    assert chosen.anthropic_model == "claude-sonnet-4-6" and chosen.openai_model == "gpt-4.1-mini"
    with pytest.raises(ValidationError):
        AgentProfile.model_validate({"name": "x", "providers": {"llm": "claude"}})


async def _run(profile_file: str, *lines: str) -> list[str]:
    """What the agent says to each line, through livekit's AgentSession (no audio)."""
    profile = load_profile_file(PROFILES_DIR / profile_file)
    replies = []
    async with AgentSession(llm=DialogueLLM(dialogue_policy(profile))) as session:
        await session.start(ProfileAgent(profile, greet=False))
        for line in lines:
            result = await session.run(user_input=line)
            messages = [
                e.item.text_content or ""
                for e in result.events
                if e.type == "message" and e.item.role == "assistant"
            ]
            replies.append(" ".join(messages))
    return replies


async def test_the_clinic_takes_an_appointment_request_over_two_turns():
    ask, noted = await _run("clinic.yaml", "I need to book an appointment", "Thursday please")
    assert ask == "Of course. Which day would suit you?"
    assert "appointment request for Thursday" in noted


async def test_the_clinic_sends_an_emergency_to_911_and_gives_its_hours():
    emergency, hours = await _run("clinic.yaml", "My father has chest pain", "When are you open?")
    assert "call 911" in emergency and "Saturday from 9 AM" in hours


async def test_the_restaurant_books_a_table_asking_for_what_is_missing():
    guests, day, done = await _run(
        "restaurant.yaml", "Can I reserve a table?", "We are four", "On Saturday"
    )
    assert guests == "Lovely. For how many guests?" and day == "And for which day?"
    assert done.startswith("Perfect, a table for 4 on Saturday")


async def test_the_restaurant_says_goodbye_with_its_own_line_and_hangs_up():
    profile = load_profile_file(PROFILES_DIR / "restaurant.yaml")
    async with AgentSession(llm=DialogueLLM(dialogue_policy(profile))) as session:
        closed = []
        session.on("close", closed.append)
        await session.start(ProfileAgent(profile, greet=False))
        result = await session.run(user_input="That's all, bye")
        result.expect.next_event().is_function_call(name="end_call")
        result.expect.next_event().is_function_call_output(output=profile.goodbye)
        result.expect.next_event().is_message(role="assistant")
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.02)
        assert closed, "the session did not end after the goodbye"
