"""Where a call's agent profile comes from, and what the embedded dialogue engine makes of it.

A call runs the profile of the agent the sidecar admitted it for (fetched per call, cached
briefly, served stale while the sidecar is briefly down), else the one in ``AGENT_PROFILE``
(``--agent FILE.yaml``), else the built-in Northwind demo. The schema is
``billing.agent_profile`` (the sidecar validates the same model).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from agent.sidecar_client import SidecarClient
from billing.agent_profile import AgentProfile, Dialogue, Extractor
from plugins.dialogue_llm import (
    DialoguePolicy,
    Intent,
    Slot,
    SlotExtractor,
    digits_slot,
    regex_slot,
)

log = logging.getLogger("agent.profile")

PROFILES_DIR = Path(__file__).parent / "profiles"
BUILTIN_PROFILE = PROFILES_DIR / "northwind.yaml"
PROFILE_CACHE_TTL_S = 30.0

# the embedded tier's offer for a profile without its own dialogue section
_TRANSFER_TRIGGERS = (
    r"\b(human|real person|representative|operator|someone|somebody|a person)\b",
    r"\b(yes|yeah|please do|sure)\b",
)
_GOODBYE_TRIGGERS = (r"\b(bye|goodbye|that'?s all|hang up)\b",)
_NO_TRANSFER_FALLBACK = "Sorry, I can't help with that right now. Please call again later."
REPEAT_LINE = "Sorry, I didn't catch that. Could you say it again?"
KEYPAD_LINE = (
    "I'm having trouble hearing you. You can type it on your keypad instead, "
    "then press the hash key."
)
RESUME_LINE = "Sorry, we got cut off. Let's pick up where we left off."
TROUBLE_REPLY = "I'm sorry, I'm having trouble right now. Please call again in a few minutes."
"""The canned tier's one reply: true whatever failed (it promises no action)."""
TROUBLE_TRANSFER_REPLY = (
    "I'm sorry, I'm having trouble right now. Say 'a person' and I'll connect you to someone."
)
"""The canned tier's reply when the profile transfers calls: it can still do that."""


class ProfileError(Exception):
    """A profile file that cannot be used; the message says which file and what is wrong."""


def parse_profile(text: str, *, source: str) -> AgentProfile:
    """A profile from YAML (or JSON) text. Raises ProfileError naming ``source`` and every
    field that is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a YAML mapping (name: ..., greeting: ...)")
    try:
        return AgentProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'profile'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProfileError(f"{source}: {problems}") from None


def load_profile_file(path: Path) -> AgentProfile:
    """Raises ProfileError for a missing, unreadable or invalid file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read agent profile {path}: {exc}") from None
    return parse_profile(text, source=str(path))


@functools.cache
def builtin_profile() -> AgentProfile:
    """The Northwind demo (``agent/profiles/northwind.yaml``)."""
    return load_profile_file(BUILTIN_PROFILE)


def local_profile(path: Path | None) -> AgentProfile:
    """The one-machine profile: ``path`` (``AGENT_PROFILE``) or the built-in demo."""
    return load_profile_file(path) if path else builtin_profile()


class ProfileStore:
    """Profiles of sidecar-defined agents, cached per worker process for ``ttl_s``.

    ``get`` fetches with the call's own ``fetch`` (the sidecar client; raising on failure);
    a failed fetch serves the last copy, however old, so a sidecar blip does not change
    who answers; an agent never fetched while the sidecar is down gets ``default``.
    """

    def __init__(
        self,
        default: AgentProfile,
        *,
        ttl_s: float = PROFILE_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[int, tuple[float, AgentProfile]] = {}

    async def for_call(self, agent_id: int | None, sidecar: SidecarClient | None) -> AgentProfile:
        """The profile a call answers with: its admitted agent's from the sidecar (cached),
        else the default."""
        if sidecar is None or agent_id is None:
            return self.default
        return await self.get(agent_id, sidecar.agent_profile)

    async def get(
        self, agent_id: int, fetch: Callable[[int], Awaitable[AgentProfile]]
    ) -> AgentProfile:
        cached = self._cache.get(agent_id)
        if cached is not None and self._clock() - cached[0] < self._ttl_s:
            return cached[1]
        try:
            profile = await fetch(agent_id)
        except Exception as exc:  # any failure to fetch: the call must still be answered
            if cached is not None:
                log.warning(
                    "agent profile fetch failed; using the cached copy",
                    extra={"agent_id": agent_id, "error": str(exc)},
                )
                return cached[1]
            log.error(
                "agent profile unavailable; answering with the default profile",
                extra={"agent_id": agent_id, "error": str(exc), "profile": self.default.name},
            )
            return self.default
        self._cache[agent_id] = (self._clock(), profile)
        return profile


def dialogue_policy(profile: AgentProfile) -> DialoguePolicy:
    """The embedded dialogue engine's policy for ``profile``: its own ``dialogue`` section,
    or, without one, its fallback reply and (with the tools for it) a person and a goodbye."""
    spec = profile.dialogue or _default_dialogue(profile)
    return DialoguePolicy(
        greeting=profile.greeting,
        fallback_reply=spec.fallback_reply,
        tool_error_reply=spec.tool_error_reply,
        intents=tuple(
            Intent(
                name=intent.name,
                triggers=tuple(intent.triggers),
                tool=intent.tool,
                slots=tuple(
                    Slot(s.name, s.question, _extractor(s.extract), s.whole_answer)
                    for s in intent.slots
                ),
                reply=intent.reply,
                fixed_arguments=dict(intent.fixed_arguments),
            )
            for intent in spec.intents
        ),
    )


def canned_policy(profile: AgentProfile) -> DialoguePolicy:
    """The LLM chain's last tier: one honest sentence and, when the profile transfers
    calls to a person (``telephony.transfer_number``), that one action."""
    if not profile.telephony.transfer_number:
        return DialoguePolicy(
            intents=(),
            greeting=profile.greeting,
            fallback_reply=TROUBLE_REPLY,
            tool_error_reply=TROUBLE_REPLY,
        )
    transfer = Intent(
        name="transfer",
        triggers=_TRANSFER_TRIGGERS,
        tool="transfer_to_human",
        slots=(),
        reply=None,
        fixed_arguments={"reason": "{utterance}"},
    )
    return DialoguePolicy(
        intents=(transfer,),
        greeting=profile.greeting,
        fallback_reply=TROUBLE_TRANSFER_REPLY,
        tool_error_reply=TROUBLE_REPLY,
    )


def _default_dialogue(profile: AgentProfile) -> Dialogue:
    intents: list[dict[str, object]] = []
    if "end_call" in profile.tools:
        intents.append({"name": "goodbye", "triggers": _GOODBYE_TRIGGERS, "tool": "end_call"})
    if "transfer_to_human" in profile.tools:
        intents.append(
            {
                "name": "transfer",
                "triggers": _TRANSFER_TRIGGERS,
                "tool": "transfer_to_human",
                "fixed_arguments": {"reason": "{utterance}"},
            }
        )
        return Dialogue.model_validate({"intents": intents})
    return Dialogue.model_validate({"intents": intents, "fallback_reply": _NO_TRANSFER_FALLBACK})


def _extractor(specs: list[Extractor]) -> SlotExtractor:
    chain = [
        digits_slot(*spec.digits) if spec.digits is not None else regex_slot(spec.pattern or "")
        for spec in specs
    ]

    def extract(text: str) -> str | None:
        for one in chain:
            if value := one(text):
                return value
        return None

    return extract
