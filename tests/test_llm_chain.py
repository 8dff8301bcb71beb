"""The LLM chain and its circuit breakers: the real OpenAI plugin against the loopback
server with faults injected, then the embedded dialogue engine, then canned replies. What
matters is what the caller gets: a reply, from the tier that could give it, within the
first-token budget."""

from __future__ import annotations

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
from plugins.llm_chain import LLMChain

FIRST_TOKEN_S = 0.5


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


# the breaker's state machine against a model of the specification
OPS = st.lists(
    st.one_of(
        st.just(("allow",)),
        st.just(("success",)),
        st.just(("failure",)),
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_breaker_follows_its_specification(ops: list[tuple[Any, ...]]):
    clock = Clock()
    breaker = CircuitBreaker("llm/test", failure_threshold=5, window_s=60, open_s=30, clock=clock)
    state, failures, open_until, probing = "closed", [], 0.0, False
    for op in ops:
        now = clock.now
        if op[0] == "advance":
            clock.now += op[1]
        elif op[0] == "allow":
            if state == "closed":
                expected = True
            elif state == "open" and now < open_until or probing:
                expected = False
            else:
                expected, probing, state = True, True, "half_open"
            assert breaker.allow() == expected, (op, state)
        elif op[0] == "success":
            breaker.record_success()
            state, failures, probing = "closed", [], False
        else:
            breaker.record_failure()
            was_probe, probing = probing, False
            failures = [t for t in failures if t > now - 60] + [now]
            if was_probe or len(failures) >= 5:
                state, open_until = "open", now + 30
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
