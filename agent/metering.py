"""Usage metering: a call's usage becomes billing events in the local outbox.

Every ``interval_s`` during the call and once at its end, the meter takes the session's
cumulative usage, subtracts what it already emitted and writes the difference as events
keyed ``{call_id}:{kind}:{sequence}``. The keys are deterministic, so re-sending a batch
after a crash or a retry bills nothing twice; the outbox delivers them to the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from livekit.agents.metrics import LLMModelUsage, STTModelUsage, TTSModelUsage
from livekit.agents.voice.agent_session import AgentSessionUsage

from agent.outbox import Outbox
from billing.pricing import CallFacts, UsageLine, usage_events, usage_from_session
from storage.models import UsageKind

log = logging.getLogger("agent.metering")


@dataclass
class UsageTotals:
    """A session's usage summed over its models (several, with fallbacks)."""

    stt_audio_s: float = 0.0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    tts_characters: int = 0
    tts_audio_s: float = 0.0


def usage_totals(usage: AgentSessionUsage) -> UsageTotals:
    totals = UsageTotals()
    for model in usage.model_usage:
        if isinstance(model, STTModelUsage):
            totals.stt_audio_s += model.audio_duration
        elif isinstance(model, LLMModelUsage):
            totals.llm_input_tokens += model.input_tokens
            totals.llm_output_tokens += model.output_tokens
        elif isinstance(model, TTSModelUsage):
            totals.tts_characters += model.characters_count
            totals.tts_audio_s += model.audio_duration
    return totals


def session_usage_lines(duration_s: float, usage: AgentSessionUsage) -> list[UsageLine]:
    """Cumulative usage of a call so far, in billing units."""
    t = usage_totals(usage)
    return usage_from_session(
        duration_s, t.stt_audio_s, t.llm_input_tokens, t.llm_output_tokens, t.tts_characters
    )


class CallMeter:
    def __init__(
        self,
        outbox: Outbox,
        *,
        call_id: str,
        organisation_id: int,
        agent_id: int | None = None,
        usage: Callable[[], AgentSessionUsage],
        call_facts: Callable[[], CallFacts] | None = None,
        started_at: float | None = None,
        interval_s: float = 60.0,
    ) -> None:
        self._outbox = outbox
        self._call_id = call_id
        self._org = organisation_id
        self._agent_id = agent_id
        self._usage = usage
        self._call_facts = call_facts
        self._started_at = started_at if started_at is not None else time.monotonic()
        self._interval_s = interval_s
        self._emitted: dict[UsageKind, int] = {}
        self._sequence = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._periodic(), name="CallMeter")

    async def close(self, *, status: str = "ended") -> None:
        """Stop the periodic metering and write the call's final usage; its events tell
        the sidecar the call ended (``ended`` or ``failed``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.flush, ended=(time.time(), status))

    def flush(self, *, ended: tuple[float, str] | None = None) -> int:
        """Write usage not yet emitted as one sequence of events; returns how many.
        ``ended`` (unix time, status): the call's last flush, which always writes at least
        one event, so the call's end reaches the sidecar."""
        lines = session_usage_lines(time.monotonic() - self._started_at, self._usage())
        delta = []
        for line in lines:
            new = line.quantity - self._emitted.get(line.kind, 0)
            if new > 0:
                delta.append(UsageLine(kind=line.kind, quantity=new))
        if not delta and ended is None:
            return 0
        facts = self._call_facts() if self._call_facts else None
        if facts is not None and ended is not None:
            facts = replace(facts, ended_at=max(ended[0], facts.started_at), status=ended[1])
        drafts = usage_events(
            self._call_id,
            self._org,
            delta or [UsageLine(UsageKind.call_seconds, 0)],
            self._sequence,
            agent_id=self._agent_id,
            call=facts,
            keep_zero=not delta,
        )
        self._outbox.add(drafts)  # durable before we count it as emitted
        for line in delta:
            self._emitted[line.kind] = self._emitted.get(line.kind, 0) + line.quantity
        self._sequence += 1
        log.info("usage metered", extra={"events": len(drafts), "sequence": self._sequence - 1})
        return len(drafts)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                # the outbox syncs to disk: keep that off the call's event loop
                await asyncio.to_thread(self.flush)
            except Exception:
                log.exception("metering failed; will retry at the next interval")
