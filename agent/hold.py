"""A phone caller on hold: the organisation's concurrency limit was reached, and the
sidecar queued the call (``billing.admission``: arrival order, shared by every worker
through Redis) instead of refusing it.

The caller hears the hold message, then livekit's hold music in a loop, while
:class:`HoldQueueWait` asks the sidecar again every :data:`POLL_S`: that keeps the
caller's place and, at the head of the queue, takes the next free slot. The wait ends
admitted, refused (the queue was full, or the wait reached ``HOLD_MAX_WAIT_S``: the
caller hears the refusal) or, when the sidecar stops answering, as admission's
fail-open setting says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from livekit.agents import AgentSession
from livekit.agents.utils.audio import audio_frames_from_file
from livekit.agents.voice.background_audio import BuiltinAudioClip
from prometheus_client import Counter, Histogram

from agent.admission import UNAVAILABLE_MESSAGE, AdmissionDecision, CallIdentity
from agent.sidecar_client import SidecarClient, SidecarUnavailable

log = logging.getLogger("agent.hold")

POLL_S = 1.0
"""How often a waiting call asks again (well inside the sidecar's 10 s entry lifetime)."""
TIMEOUT_MESSAGE = "Sorry, all our agents are still busy. Please call again a little later."

HOLD_OUTCOMES = Counter(
    "voice_agent_hold_outcomes_total",
    "Calls that waited on hold, by how the wait ended: admitted, timeout, refused "
    "(the queue was full or the call could no longer be taken), hung_up, unleased "
    "(the sidecar stopped answering; admitted unmetered-for-now).",
    ["outcome"],
)
HOLD_WAIT = Histogram(
    "voice_agent_hold_wait_seconds",
    "How long callers waited on hold before the wait ended (any outcome).",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600),
)


class HoldQueueWait:
    """One queued call's wait. ``sleep`` and ``clock`` are injectable (tests)."""

    def __init__(
        self,
        sidecar: SidecarClient,
        identity: CallIdentity,
        *,
        max_wait_s: float,
        fail_open: bool,
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sidecar = sidecar
        self._identity = identity
        self._max_wait_s = max_wait_s
        self._fail_open = fail_open
        self._poll_s = poll_s
        self._clock = clock

    async def wait(self, decision: AdmissionDecision) -> AdmissionDecision:
        """Until the call is admitted or refused; the final decision. Cancelled (the
        caller hung up): leaves the queue."""
        started = self._clock()
        position = decision.position
        log.info("caller on hold", extra={"position": position})
        try:
            while True:
                if self._clock() - started >= self._max_wait_s:
                    await self._leave(decision)
                    return self._end(
                        "timeout",
                        started,
                        decision.model_copy(
                            update={
                                "status": "refused",
                                "reason": "hold_timeout",
                                "message": TIMEOUT_MESSAGE,
                                "position": None,
                            }
                        ),
                    )
                await asyncio.sleep(self._poll_s)
                try:
                    answer = await self._sidecar.admit(
                        self._identity.call_id,
                        organisation_id=decision.organisation_id,
                        agent_id=decision.agent_id,
                        dialled_number=self._identity.dialled_number,
                        hold=True,
                    )
                except SidecarUnavailable as exc:
                    log.error(
                        "sidecar unavailable while the caller is on hold",
                        extra={"error": str(exc), "fail_open": self._fail_open},
                    )
                    if self._fail_open:
                        return self._end(
                            "unleased", started, decision.model_copy(update={"status": "unleased"})
                        )
                    return self._end(
                        "refused",
                        started,
                        decision.model_copy(
                            update={"status": "refused", "message": UNAVAILABLE_MESSAGE}
                        ),
                    )
                if answer.admitted and answer.lease_id:
                    return self._end(
                        "admitted",
                        started,
                        decision.model_copy(
                            update={
                                "status": "admitted",
                                "lease_id": answer.lease_id,
                                "reason": None,
                                "message": None,
                                "position": None,
                            }
                        ),
                    )
                if answer.position is None:
                    return self._end(
                        "refused",
                        started,
                        decision.model_copy(
                            update={
                                "status": "refused",
                                "reason": answer.reason,
                                "message": answer.message,
                            }
                        ),
                    )
                if answer.position != position:
                    position = answer.position
                    log.info("caller moved up the queue", extra={"position": position})
        except asyncio.CancelledError:
            HOLD_OUTCOMES.labels("hung_up").inc()
            HOLD_WAIT.observe(self._clock() - started)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._leave(decision))
            raise

    def _end(self, outcome: str, started: float, decision: AdmissionDecision) -> AdmissionDecision:
        waited = self._clock() - started
        HOLD_OUTCOMES.labels(outcome).inc()
        HOLD_WAIT.observe(waited)
        log.info("hold ended", extra={"outcome": outcome, "waited_s": round(waited, 1)})
        return decision

    async def _leave(self, decision: AdmissionDecision) -> None:
        if decision.organisation_id is None:
            return
        try:
            await self._sidecar.leave_queue(self._identity.call_id, decision.organisation_id)
        except SidecarUnavailable as exc:  # its entry expires on its own in 10 s
            log.warning("could not leave the hold queue", extra={"error": str(exc)})


async def play_hold_music(session: AgentSession, message: str | None) -> None:
    """Say ``message`` (if any), then loop livekit's hold music until cancelled."""
    if message:
        await session.say(message, allow_interruptions=False).wait_for_playout()
    path = BuiltinAudioClip.HOLD_MUSIC.path()
    sample_rate = session.tts.sample_rate if session.tts else 24_000
    while True:
        handle = session.say(
            "",
            audio=audio_frames_from_file(path, sample_rate=sample_rate, num_channels=1),
            allow_interruptions=False,
            add_to_chat_ctx=False,
        )
        try:
            await handle.wait_for_playout()
        except asyncio.CancelledError:
            handle.interrupt(force=True)
            raise
