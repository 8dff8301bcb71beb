"""The local dialogue engine: intents, slot filling and the agent's function tools."""

from __future__ import annotations

import pytest
from livekit.agents import AgentSession, llm

from agent.profile import builtin_profile, dialogue_policy
from agent.tools import ProfileAgent
from billing.agent_profile import TOOL_NAMES
from plugins.dialogue_llm import DialogueLLM, decide, spoken_digits

SUPPORT_POLICY = dialogue_policy(builtin_profile())
ALL_TOOLS = set(TOOL_NAMES)


def SupportAgent() -> ProfileAgent:  # noqa: N802 - reads as the agent it builds
    return ProfileAgent(builtin_profile(), greet=False)


def convo(*turns: tuple[str, str]) -> list[llm.ChatItem]:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="instructions")
    for role, text in turns:
        ctx.add_message(role=role, content=text)  # type: ignore[arg-type]
    return list(ctx.items)


def test_greets_when_the_caller_has_not_spoken():
    assert decide(SUPPORT_POLICY, convo(), ALL_TOOLS).text == SUPPORT_POLICY.greeting


@pytest.mark.parametrize(
    "second", ["You know, I heard of the eight.", "Taksa, originally from Chicago.", "um"]
)
def test_a_second_utterance_it_cannot_place_gets_the_fallback_not_silence(second):
    """The introduction intent's name slot has no question: it must never count as asked
    (an empty reply made the chain fall through to "I'm having trouble")."""
    said = decide(
        SUPPORT_POLICY,
        convo(("user", "Okay, I thought."), ("assistant", SUPPORT_POLICY.fallback_reply),
              ("user", second)),
        ALL_TOOLS,
    )  # fmt: skip
    assert said.text == SUPPORT_POLICY.fallback_reply


def test_outage_with_a_town_calls_check_outage():
    d = decide(SUPPORT_POLICY, convo(("user", "My internet is down in Springfield.")), ALL_TOOLS)
    assert (d.tool_name, d.tool_arguments) == ("check_outage", {"area": "Springfield"})


def test_outage_without_a_place_asks_for_it_then_takes_the_whole_answer():
    first = decide(SUPPORT_POLICY, convo(("user", "My internet is not working.")), ALL_TOOLS)
    assert first.tool_name is None and "ZIP code" in (first.text or "")
    second = decide(
        SUPPORT_POLICY,
        convo(
            ("user", "My internet is not working."),
            ("assistant", first.text or ""),
            ("user", "springfield."),
        ),
        ALL_TOOLS,
    )
    assert (second.tool_name, second.tool_arguments) == ("check_outage", {"area": "springfield"})


def test_zip_code_said_as_digit_words_fills_the_area():
    d = decide(
        SUPPORT_POLICY, convo(("user", "Is there an outage? nine four one oh seven")), ALL_TOOLS
    )
    assert d.tool_arguments == {"area": "94107"}


def test_billing_question_asks_for_the_account_then_looks_up_the_bill():
    first = decide(SUPPORT_POLICY, convo(("user", "I have a question about my bill.")), ALL_TOOLS)
    assert "account number" in (first.text or "")
    second = decide(
        SUPPORT_POLICY,
        convo(
            ("user", "I have a question about my bill."),
            ("assistant", first.text or ""),
            ("user", "It's one two three, four five six."),
        ),
        ALL_TOOLS,
    )
    assert (second.tool_name, second.tool_arguments) == (
        "billing_summary",
        {"account_number": "123456"},
    )


def test_an_answer_that_also_names_another_intent_still_fills_the_asked_slot():
    asked = "I can help with your bill. What is your account number?"
    d = decide(
        SUPPORT_POLICY,
        convo(
            ("user", "A question about my bill"),
            ("assistant", asked),
            ("user", "My account number is 123456."),
        ),
        ALL_TOOLS,
    )
    assert (d.tool_name, d.tool_arguments) == ("billing_summary", {"account_number": "123456"})


def test_the_caller_can_change_topic_instead_of_answering():
    asked = "I can help with your bill. What is your account number?"
    d = decide(
        SUPPORT_POLICY,
        convo(
            ("user", "A question about my bill"),
            ("assistant", asked),
            ("user", "Actually, is there an outage in Springfield?"),
        ),
        ALL_TOOLS,
    )
    assert (d.tool_name, d.tool_arguments) == ("check_outage", {"area": "Springfield"})


def test_an_unrelated_answer_to_a_slot_question_is_asked_again():
    first = decide(SUPPORT_POLICY, convo(("user", "What's on my account?")), ALL_TOOLS)
    again = decide(
        SUPPORT_POLICY,
        convo(("user", "What's on my account?"), ("assistant", first.text or ""), ("user", "Hmm.")),
        ALL_TOOLS,
    )
    assert again.text == first.text and again.tool_name is None


def test_tool_result_is_spoken_and_tool_error_gets_an_apology():
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="outage in Springfield?")
    ctx.items.append(llm.FunctionCall(call_id="c1", name="check_outage", arguments="{}"))
    ctx.items.append(
        llm.FunctionCallOutput(
            call_id="c1", name="check_outage", output="Yes, an outage.", is_error=False
        )
    )
    assert decide(SUPPORT_POLICY, ctx.items, ALL_TOOLS).text == "Yes, an outage."
    ctx.items[-1] = llm.FunctionCallOutput(
        call_id="c1", name="check_outage", output="boom", is_error=True
    )
    assert decide(SUPPORT_POLICY, ctx.items, ALL_TOOLS).text == SUPPORT_POLICY.tool_error_reply


def test_a_tool_the_agent_does_not_offer_is_never_called():
    d = decide(SUPPORT_POLICY, convo(("user", "My internet is down in Springfield.")), set())
    assert d.tool_name is None and d.text == SUPPORT_POLICY.fallback_reply


def test_transfer_request_passes_the_callers_words_as_reason():
    d = decide(SUPPORT_POLICY, convo(("user", "Let me talk to a real person please")), ALL_TOOLS)
    assert d.tool_name == "transfer_to_human"
    assert d.tool_arguments == {"reason": "Let me talk to a real person please"}


def test_goodbye_ends_the_call_with_the_profiles_goodbye():
    d = decide(SUPPORT_POLICY, convo(("user", "Goodbye.")), ALL_TOOLS)
    assert d.tool_name == "end_call" and d.tool_arguments == {}


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("This is Diane in New Jersey.", "Nice to meet you, Diane."),
        ("Hello?", "How can I help you today?"),
        ("Oh, hello. I didn't know you were there.", "How can I help you today?"),
        ("Thank you so much.", "anything else"),
        ("I'm originally from Chicago also.", "I can't help with that."),
        ("ask not what your country can do for you", "I can't help with that."),
    ],
)
def test_small_talk_and_unknown_requests(utterance: str, expected: str):
    assert expected in (decide(SUPPORT_POLICY, convo(("user", utterance)), ALL_TOOLS).text or "")


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("one two three", "123"),
        ("5 5 5, 0 1", "55501"),
        ("oh nine", "9"),
        ("nine oh", "90"),
        ("", ""),
    ],
)
def test_spoken_digits(text: str, digits: str):
    assert spoken_digits(text) == digits


async def test_session_runs_the_real_tool_and_speaks_its_result():
    """Through livekit-agents' own AgentSession and its RunResult assertions."""
    async with AgentSession(llm=DialogueLLM(SUPPORT_POLICY)) as session:
        agent = SupportAgent()
        await session.start(agent)
        result = await session.run(user_input="Is there an outage in Springfield?")
        result.expect.next_event().is_function_call(
            name="check_outage", arguments={"area": "Springfield"}
        )
        result.expect.next_event().is_function_call_output()
        msg = result.expect.next_event().is_message(role="assistant")
        assert "outage in Springfield" in (msg.event().item.text_content or "")
        result.expect.no_more_events()


async def test_session_bill_conversation_over_two_turns():
    async with AgentSession(llm=DialogueLLM(SUPPORT_POLICY)) as session:
        await session.start(SupportAgent())
        first = await session.run(user_input="I want to ask about a charge on my bill")
        first.expect.next_event().is_message(role="assistant")
        second = await session.run(user_input="one two three four five six")
        second.expect.next_event().is_function_call(
            name="billing_summary", arguments={"account_number": "123456"}
        )
        second.expect.next_event().is_function_call_output()
        reply = second.expect.next_event().is_message(role="assistant").event().item
        assert "42 dollars and 50 cents" in (reply.text_content or "")


async def test_usage_is_reported_in_words():
    engine = DialogueLLM(SUPPORT_POLICY)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hello there")
    usage = None
    text = ""
    async with engine.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                text += chunk.delta.content
            if chunk.usage:
                usage = chunk.usage
    assert usage is not None and usage.prompt_tokens == 2
    assert usage.completion_tokens == len(text.split())
