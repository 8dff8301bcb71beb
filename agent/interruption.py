"""Barge-in: the agent stops the moment the caller talks over it, and takes its turn back
when the sound was not an interruption.

livekit-agents does the mechanics: with ``min_duration`` short, caller speech over the
agent *pauses* its audio (``resume_false_interruption``), and when the caller falls silent
without a turn being committed, the sentence resumes where it paused after
``false_interruption_timeout``. livekit's "adaptive" mode, which decides what is a real
interruption, is a LiveKit Cloud service; this module is our offline decision, in a
bounded window:

- **real**: the caller is still speaking ``confirm_s`` after the onset (a question, an
  objection): the agent's speech is interrupted there and then, it does not come back;
- **not real**: the sound ended sooner (a cough, a click, "uh-huh"): the sentence resumes
  ``resume_s`` after it, and a transcript of it that holds only backchannel words
  ("uh-huh", "okay", "right") is dropped (:meth:`InterruptionPolicy.swallow`), so it
  commits no turn and the agent keeps its turn. A short word that is not a backchannel
  ("stop", "no") still commits a turn once transcribed, which interrupts the agent then.
"""

from __future__ import annotations

import asyncio
import logging
import re

from livekit.agents import AgentSession
from livekit.agents.voice import events

log = logging.getLogger("agent.interruption")

BACKCHANNEL_WORDS = frozenset(
    [
        "uh",
        "huh",
        "uh-huh",
        "mm",
        "hmm",
        "mm-hmm",
        "mhm",
        "hm",
        "um",
        "okay",
        "ok",
        "right",
        "yeah",
        "yep",
        "yes",
        "sure",
        "alright",
        "got",
        "it",
        "i",
        "see",
        "cool",
        "great",
        "fine",
    ]
)
"""Words that acknowledge without taking the turn (lower case)."""
MAX_BACKCHANNEL_WORDS = 3


def is_backchannel(text: str) -> bool:
    """``text`` holds only backchannel words (and at most a few of them)."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())
    return 0 < len(words) <= MAX_BACKCHANNEL_WORDS and all(w in BACKCHANNEL_WORDS for w in words)


class InterruptionPolicy:
    """One call's barge-in decision; :meth:`attach` it to the session before it starts."""

    def __init__(self, *, confirm_s: float) -> None:
        self.confirm_s = confirm_s
        self.overlapped = False
        """The caller's current (or last) utterance began while the agent was speaking."""
        self._session: AgentSession | None = None
        self._confirm: asyncio.TimerHandle | None = None
        self.interruptions = 0
        """Real interruptions decided by the window (the agent stopped for good)."""

    def attach(self, session: AgentSession) -> None:
        self._session = session
        session.on("user_state_changed", self._on_user_state)

    def swallow(self, transcript: str) -> bool:
        """Drop this transcript (a backchannel said over the agent)?"""
        if self.overlapped and is_backchannel(transcript):
            log.info("backchannel over the agent: it keeps its turn", extra={"text": transcript})
            return True
        return False

    def _on_user_state(self, ev: events.UserStateChangedEvent) -> None:
        session = self._session
        if session is None:
            return
        if ev.new_state == "speaking":
            self.overlapped = session.agent_state == "speaking"
            if self.overlapped:
                self._cancel()
                self._confirm = asyncio.get_running_loop().call_later(
                    self.confirm_s, self._confirm_real
                )
        else:
            self._cancel()

    def _confirm_real(self) -> None:
        self._confirm = None
        session = self._session
        if session is None or session.user_state != "speaking":
            return
        self.interruptions += 1
        log.info("the caller interrupted the agent")
        session.interrupt()

    def _cancel(self) -> None:
        if self._confirm is not None:
            self._confirm.cancel()
            self._confirm = None

    def close(self) -> None:
        self._cancel()
        if self._session is not None:
            self._session.off("user_state_changed", self._on_user_state)
            self._session = None
