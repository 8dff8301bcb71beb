"""A deterministic dialogue engine behind livekit-agents' ``llm.LLM`` interface.

It is the embedded default brain and the last-resort tier of the LLM chain: it never
invents facts, answers in microseconds, and drives the *same function tools* a cloud LLM
gets. A :class:`DialoguePolicy` (intents, slots, replies) supplies the domain; the engine
supplies the mechanics:

1. if the last item is a tool result, speak it;
2. otherwise find the intent of the caller's last utterance (or the intent whose slot
   question the agent just asked);
3. fill the intent's slots from the caller's recent utterances; ask for the first one
   missing;
4. call the intent's tool with the slots as arguments, or speak its reply template.

The engine is stateless: everything it needs is in the chat context, so it survives
handing a conversation over from (or to) another LLM mid-call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import APIConnectOptions, llm, utils
from livekit.agents.llm.tool_context import get_fnc_tool_names
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

SlotExtractor = Callable[[str], "str | None"]

_NUMBER_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip


def spoken_digits(text: str) -> str:
    """All digits in ``text``, with spoken digit words ("five five one") as digits."""
    out = []
    for token in re.findall(r"[a-z]+|\d+", text.lower()):
        if token.isdigit():
            out.append(token)
        elif token in _NUMBER_WORDS and not (token in ("o", "oh") and not out):
            out.append(_NUMBER_WORDS[token])
    return "".join(out)


def digits_slot(min_len: int, max_len: int) -> SlotExtractor:
    """Extractor for a number said as digits or digit words, e.g. an account number."""

    def extract(text: str) -> str | None:
        found = spoken_digits(text)
        return found if min_len <= len(found) <= max_len else None

    return extract


def regex_slot(pattern: str, *, group: int = 1) -> SlotExtractor:
    """Extractor for the given regex group (case-insensitive)."""
    compiled = re.compile(pattern, re.IGNORECASE)

    def extract(text: str) -> str | None:
        match = compiled.search(text)
        return match.group(group).strip(" .,!?") if match else None

    return extract


@dataclass(frozen=True)
class Slot:
    name: str
    """The tool argument (or reply template field) this slot fills."""
    question: str
    """What the agent asks when the slot is missing; also how the engine recognises that
    the caller's next utterance answers it."""
    extract: SlotExtractor
    whole_answer: bool = False
    """Take the caller's whole answer to ``question`` when ``extract`` finds nothing."""


@dataclass(frozen=True)
class Intent:
    name: str
    triggers: tuple[str, ...]
    """Regexes searched (case-insensitively) in the caller's utterance; first intent wins."""
    tool: str | None = None
    slots: tuple[Slot, ...] = ()
    reply: str | None = None
    """Spoken when there is no tool; may name slots as ``{slot}``."""
    fixed_arguments: dict[str, str] = field(default_factory=dict)
    """Tool arguments that do not come from the caller, e.g. ``{"summary": "{utterance}"}``."""

    def matches(self, utterance: str) -> bool:
        return any(re.search(t, utterance, re.IGNORECASE) for t in self.triggers)


@dataclass(frozen=True)
class DialoguePolicy:
    intents: tuple[Intent, ...]
    greeting: str
    fallback_reply: str
    tool_error_reply: str


@dataclass(frozen=True)
class Decision:
    """What the engine says next: text, or one tool call."""

    text: str | None = None
    tool_name: str | None = None
    tool_arguments: dict[str, str] | None = None


def _text_of(item: llm.ChatItem) -> str:
    if isinstance(item, llm.ChatMessage):
        return item.text_content or ""
    return ""


def decide(policy: DialoguePolicy, items: Sequence[llm.ChatItem], tool_names: set[str]) -> Decision:
    """The engine's whole behaviour, as a pure function of the conversation so far."""
    convo = [
        i
        for i in items
        if not (isinstance(i, llm.ChatMessage) and i.role in ("system", "developer"))
    ]
    if convo and isinstance(convo[-1], llm.FunctionCallOutput):
        result = convo[-1]
        return Decision(text=policy.tool_error_reply if result.is_error else result.output)

    user_turns = [i for i in convo if isinstance(i, llm.ChatMessage) and i.role == "user"]
    if not user_turns:
        return Decision(text=policy.greeting)
    utterance = _text_of(user_turns[-1]).strip()

    asked = _last_assistant_text(convo)
    pending, pending_texts = _pending_intent(policy, convo)
    intent: Intent | None
    if pending is not None and _answers_question(pending, asked, utterance):
        # "my account number is 123456" answers the billing question; it is not a new
        # account request
        intent, texts = pending, pending_texts
    else:
        intent = next((i for i in policy.intents if i.matches(utterance)), None)
        texts = [utterance]
        if intent is None:
            intent, texts = pending, pending_texts
    if intent is None:
        return Decision(text=policy.fallback_reply)

    values: dict[str, str] = {}
    for slot in intent.slots:
        for text in reversed(texts):  # the latest answer wins
            value = slot.extract(text)
            if value is None and slot.whole_answer and _asks(asked, slot) and text is texts[-1]:
                value = text.strip(" .,!?") or None
            if value:
                values[slot.name] = value
                break
        if slot.name not in values:
            return Decision(text=slot.question or policy.fallback_reply)

    if intent.tool is None:
        return Decision(text=(intent.reply or policy.fallback_reply).format(**values))
    if intent.tool not in tool_names:
        return Decision(text=policy.fallback_reply)
    for name, template in intent.fixed_arguments.items():
        values[name] = template.format(utterance=" ".join(texts), **values)
    return Decision(tool_name=intent.tool, tool_arguments=values)


def _answers_question(intent: Intent, asked: str | None, utterance: str) -> bool:
    return any(_asks(asked, s) and s.extract(utterance) for s in intent.slots)


def _asks(asked: str | None, slot: Slot) -> bool:
    """Did the agent's last words ask ``slot``'s question (they end with it: a resumed
    call says "we got cut off" first)?"""
    # a slot without a question (one the intent only fills from the caller's own words,
    # e.g. a name in "this is Diane") is never asked: "".endswith would say it always was
    return bool(slot.question) and asked is not None and asked.strip().endswith(slot.question)


def _last_assistant_text(convo: Sequence[llm.ChatItem]) -> str | None:
    for item in reversed(convo[:-1]):
        if isinstance(item, llm.ChatMessage) and item.role == "assistant":
            return _text_of(item)
    return None


def _pending_intent(
    policy: DialoguePolicy, convo: Sequence[llm.ChatItem]
) -> tuple[Intent | None, list[str]]:
    """The intent whose slot question the agent just asked, and the caller's utterances
    since that intent was raised (oldest first)."""
    asked = _last_assistant_text(convo)
    intent = next((i for i in policy.intents if any(_asks(asked, s) for s in i.slots)), None)
    if intent is None:
        return None, []
    questions = {s.question for s in intent.slots}
    texts: list[str] = []
    for item in reversed(convo):
        if not isinstance(item, llm.ChatMessage):
            break
        text = _text_of(item)
        if item.role == "user":
            texts.append(text)
            if intent.matches(text):
                break
        elif text not in questions:
            break
    return intent, list(reversed(texts))


def _word_count(text: str) -> int:
    return len(text.split())


class DialogueLLM(llm.LLM):
    """Deterministic, local, instant. Usage is reported in words (not model tokens)."""

    def __init__(self, policy: DialoguePolicy) -> None:
        super().__init__()
        self._policy = policy

    @property
    def model(self) -> str:
        return "dialogue-engine"

    @property
    def provider(self) -> str:
        return "local"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> DialogueStream:
        return DialogueStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class DialogueStream(llm.LLMStream):
    def __init__(
        self,
        engine: DialogueLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(engine, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._policy = engine._policy

    async def _run(self) -> None:
        request_id = utils.shortuuid("dlg_")
        decision = decide(self._policy, self._chat_ctx.items, set(get_fnc_tool_names(self._tools)))
        prompt_words = sum(_word_count(_text_of(i)) for i in self._chat_ctx.items)
        if decision.tool_name is not None:
            call = llm.FunctionToolCall(
                name=decision.tool_name,
                arguments=json.dumps(decision.tool_arguments or {}),
                call_id=utils.shortuuid("call_"),
            )
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id, delta=llm.ChoiceDelta(role="assistant", tool_calls=[call])
                )
            )
            completion_words = 1
        else:
            text = decision.text or ""
            # word by word, as a streaming LLM would, so TTS can start on the first sentence
            for word in re.findall(r"\S+\s*", text):
                self._event_ch.send_nowait(
                    llm.ChatChunk(
                        id=request_id, delta=llm.ChoiceDelta(role="assistant", content=word)
                    )
                )
            completion_words = _word_count(text)
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=completion_words,
                    prompt_tokens=prompt_words,
                    total_tokens=prompt_words + completion_words,
                ),
            )
        )
