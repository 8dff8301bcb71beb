"""The LLM chain and its circuit breakers: the real OpenAI plugin against the loopback
server with faults injected, then the embedded dialogue engine, then canned replies. What
matters is what the caller gets: a reply, from the tier that could give it, within the
first-token budget."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.agents import llm
from livekit.plugins import openai

from agent.profile import TROUBLE_REPLY, builtin_profile, canned_policy, dialogue_policy
from plugins.circuit_breaker import CircuitBreaker
from plugins.dialogue_llm import DialogueLLM
from plugins.fallback import MAX_RETRY_AFTER_S, parse_retry_after
from plugins.llm_chain import ContinuationFilter, LLMChain

FIRST_TOKEN_S = 1.0
"""Long enough that a loaded machine still gets a 429 or 500 back before it (CI once
took over 0.5 s to answer a 429 on the loopback under load)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain_for(server: Any, breaker: CircuitBreaker | None = None) -> LLMChain:
    cloud = openai.LLM(model="gpt-test", api_key="sk-test", base_url=server.base_url)
    profile = builtin_profile()
    return LLMChain(
        [
            (cloud, breaker or CircuitBreaker("llm/openai", clock=Clock())),
            (DialogueLLM(dialogue_policy(profile)), None),
            (DialogueLLM(canned_policy(profile)), None),
        ],
        first_token_s=FIRST_TOKEN_S,
    )


async def reply(chain: llm.LLM, text: str = "Hello there") -> str:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    said = ""
    async with chain.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                said += chunk.delta.content
    return said


async def test_a_reply_nobody_waits_for_any_more_is_no_provider_failure(openai_server):
    """livekit drops a preemptive draft when the caller goes on speaking: the chain stops
    quietly, without blaming the provider (no fallback, no breaker failure)."""
    import asyncio

    openai_server.options.reply_chunks = [f"word{i} " for i in range(40)]
    openai_server.options.chunk_delay_s = 0.02
    breaker = CircuitBreaker("llm/openai", clock=Clock())
    chain = chain_for(openai_server, breaker)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Hello there")
    stream = chain.chat(chat_ctx=ctx)
    async for chunk in stream:
        if chunk.delta and chunk.delta.content:
            break
    await stream.aclose()
    await asyncio.sleep(0.3)  # anything the chain would still do, it has done
    assert chain.fallback_events == []
    assert breaker.state == "closed" and breaker.allow()


async def test_a_healthy_cloud_llm_answers_and_nothing_falls_back(openai_server):
    chain = chain_for(openai_server)
    assert await reply(chain) == "Hello from loopback."
    assert chain.fallback_events == []


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"refuse": True}, "connection"),
        ({"status": 500}, "http_5xx"),
        ({"status": 503}, "http_5xx"),
        ({"status": 429}, "rate_limited"),
        ({"status": 401}, "http_4xx"),
        ({"silent_close": True}, "connection"),
        ({"garbage": "not_json"}, "malformed"),
        ({"garbage": "wrong_schema"}, "malformed"),
        ({"reply_chunks": []}, "empty_reply"),
        ({"stall_s": 10.0}, "first_token_timeout"),
        ({"first_byte_delay_s": 10.0}, "first_token_timeout"),
    ],
    ids=lambda v: str(v),
)
async def test_every_cloud_fault_is_answered_by_the_dialogue_engine_within_the_budget(
    openai_server, fault: dict[str, Any], reason: str
):
    for name, value in fault.items():
        setattr(openai_server.options, name, value)
    chain = chain_for(openai_server)
    started = time.monotonic()
    said = await reply(chain)
    elapsed_s = time.monotonic() - started
    assert said == "Hello! This is Northwind Internet support. How can I help you today?"
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [("llm/openai", reason)]
    # whatever failed, the next tier spoke within the budget (plus the engine's moment)
    assert elapsed_s < FIRST_TOKEN_S + 0.5, elapsed_s


async def test_five_failures_open_the_breaker_and_later_turns_skip_the_provider_at_once(
    openai_server,
):
    openai_server.options.status = 500
    clock = Clock()
    breaker = CircuitBreaker("llm/openai", clock=clock)
    for _ in range(5):
        await reply(chain_for(openai_server, breaker))
    assert breaker.state == "open" and len(openai_server.chat_requests) == 5

    chain = chain_for(openai_server, breaker)
    started = time.monotonic()
    assert await reply(chain)
    assert time.monotonic() - started < 0.1
    assert len(openai_server.chat_requests) == 5  # not asked at all
    assert [e.reason for e in chain.fallback_events] == ["breaker_open"]

    # after 30 s one probe goes through; it succeeds and the provider is back
    openai_server.options.status = None
    clock.now += 30
    assert await reply(chain_for(openai_server, breaker)) == "Hello from loopback."
    assert breaker.state == "closed"


async def test_retry_after_keeps_the_breaker_open_as_long_as_the_provider_asked(openai_server):
    clock = Clock()
    breaker = CircuitBreaker("llm/openai", clock=clock)
    breaker.record_failure(retry_after_s=120)
    clock.now += 60
    assert not breaker.allow()
    clock.now += 61
    assert breaker.allow()


def http_date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("header", "open_s"),
    [("120", 120.0), (None, 0.0), ("soon", 0.0), ("date", 90.0)],
    ids=["seconds", "absent", "unreadable", "http-date"],
)
async def test_a_429_keeps_the_provider_skipped_as_long_as_its_retry_after_asked(
    openai_server, header: str | None, open_s: float
):
    from agent.pipeline import build_llm

    openai_server.options.status = 429
    openai_server.options.retry_after = http_date_in(90) if header == "date" else header
    chain = build_llm(cloud_settings(openai_server), builtin_profile())
    breaker = chain.breakers[0]
    assert await reply(chain)  # the dialogue engine answered
    assert [e.reason for e in chain.fallback_events] == ["rate_limited"]
    if not open_s:  # no usable Retry-After: an ordinary failure (1 of 5)
        assert breaker.state == "closed"
    else:  # skipped as long as asked (an HTTP date loses a second or two on the way)
        assert open_s - 3 < breaker.open_for_s <= open_s


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("999999", MAX_RETRY_AFTER_S),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # a date with no zone
        ("Mon, 99 Foo 2015 99:99:99 GMT", None),
    ],
)
def test_retry_after_values_are_read_or_refused(value: str, seconds: float | None):
    assert parse_retry_after(value) == seconds


async def test_when_every_tier_but_the_last_fails_the_caller_hears_the_canned_reply():
    class Broken(DialogueLLM):
        def chat(self, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in a tier")

    profile = builtin_profile()
    chain = LLMChain(
        [(Broken(dialogue_policy(profile)), None), (DialogueLLM(canned_policy(profile)), None)]
    )
    assert await reply(chain) == TROUBLE_REPLY
    assert [e.reason for e in chain.fallback_events] == ["error"]


def test_a_probe_whose_call_went_away_does_not_shut_the_provider_out_for_good():
    clock = Clock()
    breaker = CircuitBreaker("llm/openai", clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 30
    assert breaker.allow()  # the probe; its caller hangs up before it reports back
    assert not breaker.allow()
    clock.now += 30
    assert breaker.allow()


# the breaker's state machine against a model of the specification
OPS = st.lists(
    st.one_of(
        st.just(("allow",)),
        st.just(("success",)),
        st.just(("failure",)),
        st.tuples(st.just("failure"), st.floats(min_value=0, max_value=100)),
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_breaker_follows_its_specification(ops: list[tuple[Any, ...]]):
    clock = Clock()
    breaker = CircuitBreaker("llm/test", failure_threshold=5, window_s=60, open_s=30, clock=clock)
    state, failures, open_until, probing, probe_at = "closed", [], 0.0, False, 0.0
    for op in ops:
        now = clock.now
        if op[0] == "advance":
            clock.now += op[1]
        elif op[0] == "allow":
            if state == "closed":
                expected = True
            elif state == "open" and now < open_until or probing and now - probe_at < 30:
                expected = False
            else:
                expected, probing, state, probe_at = True, True, "half_open", now
            assert breaker.allow() == expected, (op, state)
        elif op[0] == "success":
            breaker.record_success()
            state, failures, probing = "closed", [], False
        else:
            retry_after = op[1] if len(op) > 1 else None
            breaker.record_failure(retry_after_s=retry_after)
            was_probe, probing = probing, False
            failures = [t for t in failures if t > now - 60] + [now]
            tripped = was_probe or len(failures) >= 5
            if tripped or retry_after is not None:
                open_s = max(30 if tripped else 0, retry_after or 0)
                state, open_until = "open", max(open_until, now + open_s)
        shown = "half_open" if state == "open" and clock.now >= open_until else state
        assert breaker.state == shown


@pytest.mark.slow
async def test_a_call_whose_cloud_llm_is_unreachable_is_answered_turn_after_turn(
    vad_model, piper_caller, unused_tcp_port
):
    """Before the chain: the greeting, then silence for the rest of the call."""
    from pydantic import SecretStr

    from agent.settings import Settings
    from agent.simulate import SimulationOptions, simulate_call
    from tests.conftest import silence

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr("sk-test"),
        openai_base_url=f"http://127.0.0.1:{unused_tcp_port}/v1",
    )
    caller = np.concatenate(
        [
            piper_caller("Is there an outage in Springfield?"),
            silence(3.0),
            piper_caller("Thank you."),
            silence(1.0),
        ]
    )
    report, _ = await simulate_call(
        caller, settings, vad_model, options=SimulationOptions(greeting=False, quiet_after_s=1.5)
    )
    assert len(report.turns) == 2, report.transcript
    assert "Springfield" in report.turns[0].agent_text
    assert "anything else" in report.turns[1].agent_text
    assert report.tool_calls and report.tool_calls[0]["name"] == "check_outage"
    assert {(e["provider"], e["reason"]) for e in report.fallback_events} <= {
        ("llm/openai", "connection"),
        ("llm/openai", "breaker_open"),
    }
    assert report.errors == []


# -- Anthropic, the second cloud tier -------------------------------------------------


def cloud_settings(openai_server: Any = None, anthropic_server: Any = None) -> Any:
    from pydantic import SecretStr

    from agent.settings import Settings

    keys: dict[str, Any] = {}
    if openai_server is not None:
        keys |= {"openai_api_key": SecretStr("sk-test"), "openai_base_url": openai_server.base_url}
    if anthropic_server is not None:
        keys |= {
            "anthropic_api_key": SecretStr("sk-ant-test"),
            "anthropic_base_url": anthropic_server.base_url,
        }
    return Settings(_env_file=None, llm_first_token_s=FIRST_TOKEN_S, **keys)  # type: ignore[call-arg]


async def test_when_openai_is_down_claude_answers_then_the_dialogue_engine(
    openai_server, anthropic_server
):
    from agent.pipeline import build_llm

    openai_server.options.status = 503
    chain = build_llm(cloud_settings(openai_server, anthropic_server), builtin_profile())
    assert await reply(chain) == "Hello from the loopback Claude."
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [("llm/openai", "http_5xx")]

    anthropic_server.options.refuse = True
    chain = build_llm(cloud_settings(openai_server, anthropic_server), builtin_profile())
    assert (
        await reply(chain) == "Hello! This is Northwind Internet support. How can I help you today?"
    )
    assert [e.provider for e in chain.fallback_events] == ["llm/openai", "llm/anthropic"]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"refuse": True}, "connection"),
        ({"status": 529}, "http_5xx"),  # Anthropic's "overloaded"
        ({"status": 429}, "rate_limited"),
        ({"silent_close": True}, "connection"),
        ({"garbage": "not_json"}, "malformed"),
        ({"reply_chunks": []}, "empty_reply"),
        ({"stall_s": 10.0}, "first_token_timeout"),
    ],
    ids=lambda v: str(v),
)
async def test_every_claude_fault_is_answered_by_the_dialogue_engine_within_the_budget(
    anthropic_server, fault: dict[str, Any], reason: str
):
    from agent.pipeline import build_llm

    for name, value in fault.items():
        setattr(anthropic_server.options, name, value)
    chain = build_llm(cloud_settings(anthropic_server=anthropic_server), builtin_profile())
    started = time.monotonic()
    said = await reply(chain)
    assert said == "Hello! This is Northwind Internet support. How can I help you today?"
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [("llm/anthropic", reason)]
    assert time.monotonic() - started < FIRST_TOKEN_S + 0.5


async def test_claude_calls_the_profiles_tools(anthropic_server):
    """The Anthropic tier runs the agent's function tools like the OpenAI one."""
    from agent.pipeline import build_llm
    from tests.loopback.openai_server import ToolCallScript

    anthropic_server.options.tool_call = ToolCallScript("check_outage", {"area": "Springfield"})
    chain = build_llm(cloud_settings(anthropic_server=anthropic_server), builtin_profile())
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Is there an outage in Springfield?")
    calls = []
    async with chain.chat(chat_ctx=ctx, tools=[]) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.tool_calls:
                calls += chunk.delta.tool_calls
    assert [(c.name, c.arguments) for c in calls] == [("check_outage", '{"area": "Springfield"}')]


# -- a reply that dies half-way -------------------------------------------------------


async def test_a_reply_cut_off_half_way_is_continued_by_claude_without_a_repeat(
    openai_server, anthropic_server
):
    from agent.pipeline import build_llm

    openai_server.options.reply_chunks = [
        "Yes, there is",
        " an outage",
        " in Spring",
        "field today.",
    ]
    openai_server.options.drop_after_fraction = 0.75  # "... an outage in Spring"
    anthropic_server.options.reply_chunks = ["field", " since 9:10 this morning."]
    chain = build_llm(cloud_settings(openai_server, anthropic_server), builtin_profile())
    said = await reply(chain, "Is there an outage?")
    assert said == "Yes, there is an outage in Springfield since 9:10 this morning."
    assert [(e.provider, e.reason) for e in chain.fallback_events] == [("llm/openai", "connection")]
    # Claude was shown the unfinished reply as its own and asked to go on from there
    # (livekit sends a system message after the conversation's start as a user turn)
    *_, unfinished, note = anthropic_server.message_requests[-1]["messages"]
    assert unfinished["role"] == "assistant"
    assert "Yes, there is an outage in Spring" in json.dumps(unfinished)
    assert "cut off" in json.dumps(note)


async def test_a_reply_cut_off_half_way_and_restarted_by_the_next_tier_is_not_repeated(
    openai_server,
):
    """The dialogue engine answers the caller afresh; its words the caller already heard
    are cut, so the reply reads as one."""
    from agent.pipeline import build_llm

    whole = "Hello! This is Northwind Internet support. How can I help you today?"
    openai_server.options.reply_chunks = [w + " " for w in whole.split()]
    openai_server.options.drop_after_fraction = 0.4
    chain = build_llm(cloud_settings(openai_server), builtin_profile())
    said = await reply(chain)
    assert said.split() == whole.split()
    assert [e.reason for e in chain.fallback_events] == ["connection"]


@pytest.mark.parametrize(
    ("said", "continuation", "heard"),
    [
        ("Yes, there is", " an outage.", " an outage."),  # a true continuation
        ("Yes, there is", "Yes, there is an outage.", " an outage."),  # a restart
        ("Yes, there is an out", "age today.", "age today."),  # the cut word finished
        ("Yes, there is an out", "Yes, there is an outage today.", "age today."),
        ("Yes, there is", "Yes, we know of one.", "Yes, we know of one."),  # a rephrase
        ("", "Hello.", "Hello."),
    ],
)
def test_the_continuation_filter_cuts_restarts_only(said: str, continuation: str, heard: str):
    for pieces in ([continuation], [c for c in continuation]):  # whole, and char by char
        unrepeated = ContinuationFilter(said)
        assert "".join(unrepeated.feed(p) for p in pieces) + unrepeated.finish() == heard


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z']{1,8}", fullmatch=True), st.sampled_from(["", ",", "."])
        ),
        min_size=2,
        max_size=12,
    ).map(lambda ws: " ".join(w + p for w, p in ws)),
    st.data(),
)
def test_a_reply_cut_anywhere_and_restarted_reads_as_one(full: str, data: st.DataObject):
    """Whatever character the first tier stopped at (inside a word, after a comma, on a
    space), the restart's remainder joins it into the whole reply."""
    cut = data.draw(st.integers(min_value=1, max_value=len(full) - 1))
    chunk = data.draw(st.integers(min_value=1, max_value=10))
    said = full[:cut]
    if not said.strip() or not any(c.isalnum() for c in said):
        return
    unrepeated = ContinuationFilter(said)
    out = "".join(unrepeated.feed(full[i : i + chunk]) for i in range(0, len(full), chunk))
    out += unrepeated.finish()
    assert (said + out).split() == full.split(), (said, out)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=8),
    st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=12),
)
def test_a_restarted_reply_comes_out_once_whatever_its_chunks(
    said_words: list[str], rest_words: list[str], chunk: int
):
    said = " ".join(said_words) + " "
    restart = said + " ".join(rest_words) + "."
    unrepeated = ContinuationFilter(said)
    out = "".join(unrepeated.feed(restart[i : i + chunk]) for i in range(0, len(restart), chunk))
    assert (said + out + unrepeated.finish()).split() == restart.split()


@pytest.mark.slow
async def test_a_call_whose_llm_dies_mid_reply_hears_the_whole_answer_once(
    vad_model, piper_caller, openai_server, anthropic_server
):
    """OpenAI's stream drops after half its reply; Claude continues it. The caller hears
    every word of the answer, and none twice (read back from the call's audio)."""
    from agent.simulate import SimulationOptions, simulate_call
    from agent.wav_io import AGENT_SAMPLE_RATE_HZ
    from tests.conftest import silence
    from tests.hearing import share_of_words_heard, transcribe

    answer = "Yes, there is an outage in Springfield, and our engineers expect it fixed by noon."
    words = answer.split(" ")
    openai_server.options.reply_chunks = [w + " " for w in words[:-1]] + [words[-1]]
    openai_server.options.drop_after_fraction = 0.5
    anthropic_server.options.reply_chunks = [" ".join(words[len(words) // 2 :])]
    caller = np.concatenate(
        [silence(0.3), piper_caller("Is there an outage in Springfield?"), silence(1.0)]
    )
    report, audio = await simulate_call(
        caller,
        cloud_settings(openai_server, anthropic_server).model_copy(
            update={"llm_first_token_s": 2.0}
        ),
        vad_model,
        options=SimulationOptions(greeting=False, quiet_after_s=2.0),
    )
    assert [t.agent_text.split() for t in report.turns] == [answer.split()]
    assert [(e["provider"], e["reason"]) for e in report.fallback_events] == [
        ("llm/openai", "connection")
    ]
    heard = transcribe(audio, AGENT_SAMPLE_RATE_HZ)
    assert share_of_words_heard(answer, heard) >= 0.8, heard
    # one word from each half, neither of which Whisper was seen to mishear ("outage" it
    # once wrote "out-aging"): each is heard exactly once
    assert heard.lower().count("springfield") == 1, heard
    assert heard.lower().count("engineer") == 1, heard
