"""What an agent profile is: the schema the sidecar stores and validates (``/v1/agents``) and
the worker runs (``agent.profile``). Plain data, no livekit: both processes import it.

A profile names its instructions (what a cloud LLM reads), the greeting and goodbye it
speaks, the tools it may use (names from :data:`TOOL_NAMES`, the tools the worker offers),
a voice per TTS provider, its language, a provider and model per stage, and the
``dialogue`` the embedded dialogue engine follows when no cloud LLM answers.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ToolName = Literal[
    "check_outage",
    "lookup_account",
    "billing_summary",
    "create_ticket",
    "transfer_to_human",
    "end_call",
    "send_dtmf",
]
TOOL_NAMES: tuple[str, ...] = get_args(ToolName)
"""Every function tool the worker offers (``agent.tools`` implements exactly these)."""

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
)
LOCAL_VOICES = frozenset({"joe"})
"""Voices the embedded TTS ships (Piper, en_US joe medium)."""
_ELEVENLABS_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")

SttProvider = Literal["auto", "local", "deepgram"]
LlmProvider = Literal["auto", "local", "openai", "anthropic"]
TtsProvider = Literal["auto", "local", "elevenlabs", "openai"]
ModelName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:/-]+$")]
Text = Annotated[str, Field(min_length=1, max_length=2_000)]
MAX_INTENTS = 50
MAX_PATTERN_CHARS = 500


class _Strict(BaseModel):
    # a misspelt field in a profile is an error, never silently ignored
    model_config = ConfigDict(extra="forbid", frozen=True)


class Voices(_Strict):
    """The voice to use with each TTS provider; a provider not named keeps its default."""

    local: str | None = None
    openai: str | None = None
    elevenlabs: str | None = None

    @field_validator("local")
    @classmethod
    def _known_local(cls, value: str | None) -> str | None:
        if value is not None and value not in LOCAL_VOICES:
            raise ValueError(
                f"unknown local voice {value!r}; known: {', '.join(sorted(LOCAL_VOICES))}"
            )
        return value

    @field_validator("openai")
    @classmethod
    def _known_openai(cls, value: str | None) -> str | None:
        if value is not None and value not in OPENAI_VOICES:
            known = ", ".join(sorted(OPENAI_VOICES))
            raise ValueError(f"unknown OpenAI voice {value!r}; known: {known}")
        return value

    @field_validator("elevenlabs")
    @classmethod
    def _elevenlabs_id(cls, value: str | None) -> str | None:
        if value is not None and not _ELEVENLABS_VOICE_ID.match(value):
            raise ValueError("an ElevenLabs voice is its 20-character voice id")
        return value


class Providers(_Strict):
    """Which provider (and model) each stage uses for this agent; ``auto`` follows the
    worker's settings (the cloud provider when its key is set, else the local one)."""

    stt: SttProvider = "auto"
    llm: LlmProvider = "auto"
    tts: TtsProvider = "auto"
    stt_model: ModelName | None = None
    llm_model: ModelName | None = None
    tts_model: ModelName | None = None


def _check_pattern(value: str) -> str:
    if len(value) > MAX_PATTERN_CHARS:
        raise ValueError(f"a pattern is at most {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


Pattern = Annotated[str, Field(min_length=1)]


class Extractor(_Strict):
    """How a slot's value is found in what the caller said: a number said as digits or digit
    words (``digits: [min, max]`` lengths), or a regular expression's first group
    (``pattern``, case-insensitive). Exactly one."""

    digits: tuple[Annotated[int, Field(ge=1, le=30)], Annotated[int, Field(ge=1, le=30)]] | None = (
        None
    )
    pattern: Pattern | None = None

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_pattern(value)
        if re.compile(value).groups < 1:
            raise ValueError("a slot pattern needs a group: (...) around the value")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Extractor:
        if (self.digits is None) == (self.pattern is None):
            raise ValueError("give exactly one of digits or pattern")
        if self.digits is not None and self.digits[0] > self.digits[1]:
            raise ValueError("digits: [min, max] with min <= max")
        return self


class SlotSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,49}$")]
    question: str = Field(max_length=2_000)
    """What the agent asks when the value is missing (empty: the slot is only ever taken
    from the triggering utterance)."""
    extract: list[Extractor] = Field(min_length=1, max_length=5)
    """Tried in order; the first that finds a value wins."""
    whole_answer: bool = False
    """Take the caller's whole answer to ``question`` when no extractor finds a value."""


class IntentSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,49}$")]
    triggers: list[Pattern] = Field(min_length=1, max_length=20)
    """Regular expressions searched case-insensitively in what the caller said."""
    tool: ToolName | None = None
    slots: list[SlotSpec] = Field(default_factory=list, max_length=10)
    reply: Text | None = None
    """Spoken when the intent has no tool; may name its slots as ``{slot}``."""
    fixed_arguments: dict[str, Text] = Field(default_factory=dict)
    """Tool arguments not asked for, e.g. ``{"reason": "{utterance}"}``."""

    @field_validator("triggers")
    @classmethod
    def _valid_triggers(cls, values: list[str]) -> list[str]:
        return [_check_pattern(v) for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> IntentSpec:
        if (self.tool is None) == (self.reply is None):
            raise ValueError(f"intent {self.name!r}: give exactly one of tool or reply")
        slots = {s.name for s in self.slots}
        if self.reply is not None:
            _check_template(f"intent {self.name!r} reply", self.reply, slots)
        for name, template in self.fixed_arguments.items():
            _check_template(
                f"intent {self.name!r} argument {name!r}", template, slots | {"utterance"}
            )
        return self


def _check_template(what: str, template: str, allowed: set[str]) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ValueError(f"{what} names {', '.join(unknown)}, which it does not fill")


class Dialogue(_Strict):
    """What the embedded dialogue engine says and does (see ``plugins.dialogue_llm``)."""

    intents: list[IntentSpec] = Field(default_factory=list, max_length=MAX_INTENTS)
    fallback_reply: Text = (
        "Sorry, I can't help with that. Would you like me to connect you to a person?"
    )
    tool_error_reply: Text = (
        "Sorry, I could not do that just now. Would you like me to connect you to a person?"
    )


KeyAction = Literal["transfer_to_human", "end_call", "repeat"]
"""What a single key pressed alone (then ``#``, or a pause) does: hand the caller to a
person, end the call, or say the agent's last line again."""
_PHONE_TARGET = re.compile(r"^(\+[1-9][0-9]{6,14}|sips?:[^\s@]+@[^\s]+|tel:\+[1-9][0-9]{6,14})$")


class Telephony(_Strict):
    """What the agent does on a phone line (a SIP caller; ignored for browser users)."""

    transfer_number: str | None = None
    """Where ``transfer_to_human`` hands the caller: E.164 (``+15550100``) or a SIP URI.
    None: a person calls the caller back (a ticket) instead."""
    transfer_line: Text = "Connecting you to a person now. Please hold."
    """Said before the transfer, so the caller knows what the ringing is."""
    transfer_failed_line: Text = (
        "Sorry, I could not reach a person just now. I've asked someone to call you back."
    )
    transfer_mode: Literal["cold", "warm"] = "cold"
    """``cold``: the caller is handed over at once (a SIP REFER). ``warm``: the person is
    called first and briefed on what the caller asked for, and takes the call by pressing
    1 while the caller hears hold music (needs ``SIP_OUTBOUND_TRUNK_ID`` and a LiveKit
    server with ``MoveParticipant``; without a trunk the transfer is cold)."""
    transfer_ring_s: float = Field(default=30.0, ge=5, le=120)
    """How long a warm transfer lets the person's phone ring."""
    keys: dict[Annotated[str, Field(pattern=r"^[0-9]$")], KeyAction] = Field(default_factory=dict)
    """Single keys that act at once, e.g. ``{"0": "transfer_to_human"}`` ("press 0 for a
    person"). Any other entry is the caller's words (digits of an account number)."""

    @field_validator("transfer_number")
    @classmethod
    def _phone_target(cls, value: str | None) -> str | None:
        if value is not None and not _PHONE_TARGET.match(value):
            raise ValueError("a transfer number is E.164 (+15550100) or a sip:/tel: URI")
        return value


class AgentProfile(_Strict):
    """One agent: everything the worker needs to answer a call as it."""

    name: str = Field(min_length=1, max_length=200)
    instructions: str = Field(default="", max_length=20_000)
    greeting: Text = "Hello, how can I help you today?"
    goodbye: Text = "Thank you for calling. Goodbye!"
    """Said by the end-call tool before the agent hangs up."""
    tools: list[ToolName] = Field(default_factory=list, max_length=len(TOOL_NAMES))
    language: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"
    voices: Voices = Voices()
    providers: Providers = Providers()
    dialogue: Dialogue | None = None
    """None: the embedded engine offers the fallback reply and, with ``transfer_to_human``,
    a person."""
    telephony: Telephony = Telephony()

    @model_validator(mode="after")
    def _intents_use_granted_tools(self) -> AgentProfile:
        if len(set(self.tools)) != len(self.tools):
            raise ValueError("tools: each tool once")
        if self.telephony.transfer_number and "transfer_to_human" not in self.tools:
            raise ValueError("telephony.transfer_number needs the transfer_to_human tool")
        for intent in self.dialogue.intents if self.dialogue else []:
            if intent.tool is not None and intent.tool not in self.tools:
                raise ValueError(
                    f"dialogue intent {intent.name!r} uses {intent.tool!r}, "
                    "which is not in the profile's tools"
                )
        return self
