"""The LLM chain: cloud tiers, then the embedded dialogue engine, then canned replies.

Built on livekit-agents' ``llm.FallbackAdapter`` (its per-tier request, metrics forwarding
and stream plumbing), with what it lacks for a phone call:

- a **first-token budget**: a tier that connects and then says nothing for
  ``first_token_s`` has failed (livekit waits for its whole ``attempt_timeout``);
- an **empty reply** (a stream that ends with neither text nor a tool call) has failed;
- **a reply that dies half-way is finished by the next tier**, not dropped (livekit
  gives up once a chunk was sent): a cloud tier gets the conversation with the part
  already sent to the voice as its own unfinished message and is asked to continue it;
  whatever tier answers, a restart of what was already said is cut
  (``ContinuationFilter``), so the caller hears neither a repeat nor a gap. A reply that
  already sent a tool call is not continued (the tool ran);
- a **circuit breaker** per cloud provider, shared by every call of the process: an open
  breaker skips its tier at once (``plugins.circuit_breaker``);
- every fallback is recorded (``fallback_events``, a log line, a Prometheus counter with
  bounded labels).

Local tiers have no breaker: they do not depend on anything that can go away.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any, cast

from livekit.agents import APIConnectionError, llm
from livekit.agents.llm.fallback_adapter import FallbackAdapter, FallbackLLMStream
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr

from plugins.circuit_breaker import CircuitBreaker
from plugins.fallback import FallbackEvent, TierSilent, TierTimeout, classify, record_fallback

FIRST_TOKEN_S = 2.0
ATTEMPT_TIMEOUT_S = 30.0


class LLMChain(FallbackAdapter):
    """``tiers`` in order of preference, each with its breaker (None: a local tier)."""

    def __init__(
        self,
        tiers: list[tuple[llm.LLM, CircuitBreaker | None]],
        *,
        first_token_s: float = FIRST_TOKEN_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        super().__init__(
            [tier for tier, _ in tiers],
            attempt_timeout=attempt_timeout_s,
            max_retry_per_llm=0,
            retry_on_chunk_sent=False,
        )
        self.breakers = [breaker for _, breaker in tiers]
        self.first_token_s = first_token_s
        self.fallback_events: list[FallbackEvent] = []
        """Every fallback of this chain (one chain per call)."""

    @property
    def tiers(self) -> list[llm.LLM]:
        return list(self._llm_instances)

    async def aclose(self) -> None:
        """Close every tier (livekit's adapter only lets go of their metrics): the chain is
        the session's LLM, and the call closes it at its end."""
        await super().aclose()
        for tier in self._llm_instances:
            await tier.aclose()

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions | None = None,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return LLMChainStream(
            llm=self,
            conn_options=conn_options or APIConnectOptions(max_retry=0, timeout=ATTEMPT_TIMEOUT_S),
            chat_ctx=chat_ctx,
            tools=tools or [],
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )

    def record_fallback(self, tier: llm.LLM, breaker: CircuitBreaker | None, reason: str) -> None:
        # the breaker's name (``llm/openai``), not the plugin's provider, which for a custom
        # base URL is its host: metric labels stay a small fixed set
        provider = breaker.provider if breaker is not None else f"llm/{tier.provider}"
        record_fallback(self.fallback_events, "llm", provider, reason, model=tier.model)


CONTINUE_NOTE = (
    "Your previous reply was cut off mid-way by a technical fault; the caller heard it up to "
    "where it stops. Continue it from exactly that point, without repeating any of it."
)


def continuation_context(chat_ctx: llm.ChatContext, said: str) -> llm.ChatContext:
    """``chat_ctx`` with the unfinished reply ``said`` as the assistant's last message and a
    note asking to continue it (Anthropic's plugin turns a trailing assistant message into
    a prefill where the model takes one)."""
    ctx = chat_ctx.copy()
    ctx.add_message(role="assistant", content=said)
    ctx.add_message(role="system", content=CONTINUE_NOTE)
    return ctx


_WORD = re.compile(r"[\w']+")


class ContinuationFilter:
    """Passes a continuation's text on, except a restart of what was already ``said``:
    while the continuation's words repeat ``said``'s from its first word, they are held
    back; once they cover all of it, what follows is passed on (the rest of a word that
    ``said`` had cut in the middle); once they differ, all of the held text is passed on
    (a continuation, or a rephrased answer)."""

    def __init__(self, said: str) -> None:
        words = list(_WORD.finditer(said))
        self._said = [w.group().lower() for w in words]
        self._said_cut = bool(words) and words[-1].end() == len(said)
        self._tail = said[words[-1].end() :] if words else ""
        """What ``said`` has after its last word (", " or " "): not repeated either."""
        self._held = ""
        self._open = not self._said

    def feed(self, text: str) -> str:
        if self._open:
            return text
        self._held += text
        return self._decide(ended=False)

    def finish(self) -> str:
        """The continuation has ended: what is still held and new (its last word was held
        back in case it went on)."""
        return "" if self._open else self._decide(ended=True)

    def _decide(self, *, ended: bool) -> str:
        matches = list(_WORD.finditer(self._held))
        in_word = bool(matches) and matches[-1].end() == len(self._held)
        complete = matches[:-1] if in_word and not ended else matches
        for i, match in enumerate(complete[: len(self._said)]):
            word, want = match.group().lower(), self._said[i]
            last = i == len(self._said) - 1
            if word != want and not (last and self._said_cut and word.startswith(want)):
                return self._release(0)
            if last:
                # all of ``said`` repeated: pass on what follows it (the rest of the word
                # ``said`` stopped inside: the voice has not spoken a half sentence yet,
                # the text is joined before it is)
                if word != want:
                    return self._release(match.start() + len(want))
                after = self._held[match.end() :]
                shared = _common_prefix(after, self._tail)
                if shared == len(after) < len(self._tail) and not ended:
                    return ""  # so far it repeats what followed the word too: wait
                return self._release(match.end() + shared)
        return ""

    def _release(self, start: int) -> str:
        self._open = True
        out, self._held = self._held[start:], ""
        return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class LLMChainStream(FallbackLLMStream):
    _chain: LLMChain

    def __init__(self, llm: LLMChain, **kwargs: Any) -> None:
        super().__init__(llm, **kwargs)
        self._chain = llm
        self._tier_spoke = False
        self._said = ""
        """The reply's text sent to the session so far, by every tier."""
        self._sent_tool_call = False

    async def _run(self) -> None:
        chain = self._chain
        original_ctx = self._chat_ctx
        for tier, breaker in zip(chain.tiers, chain.breakers, strict=True):
            if breaker is not None and not breaker.allow():
                chain.record_fallback(tier, breaker, "breaker_open")
                continue
            self._tier_spoke = False
            # a cloud tier continues a reply cut short; a local one answers the caller
            # (its own rules), and the filter cuts its restart of what was said
            continuing = bool(self._said) and breaker is not None
            self._chat_ctx = (
                continuation_context(original_ctx, self._said) if continuing else original_ctx
            )
            try:
                await self._relay(tier, ContinuationFilter(self._said))
            except Exception as exc:
                reason, retry_after_s = classify(exc)
                if breaker is not None:
                    breaker.record_failure(retry_after_s=retry_after_s)
                chain.record_fallback(tier, breaker, reason)
                if self._sent_tool_call:
                    raise  # the tool ran: another tier's reply would run it again
                continue
            finally:
                self._chat_ctx = original_ctx
            if breaker is not None:
                breaker.record_success()
            return
        raise APIConnectionError("every LLM tier failed")

    async def _relay(self, tier: llm.LLM, unrepeated: ContinuationFilter) -> None:
        """Forward ``tier``'s chunks, its text through ``unrepeated``. Raises on a failure,
        on no first token within the budget, and on an empty reply."""
        chunks = cast(AsyncGenerator[llm.ChatChunk, None], self._try_generate(llm=tier))
        try:
            try:
                chunk = await asyncio.wait_for(anext(chunks), self._chain.first_token_s)
            except StopAsyncIteration:
                raise TierSilent("empty_reply") from None
            except TimeoutError:
                raise TierTimeout("first_token_timeout") from None
            while True:
                delta = chunk.delta
                if delta is not None and (delta.content or delta.tool_calls):
                    self._tier_spoke = True
                if delta is not None and delta.content:
                    text = unrepeated.feed(delta.content)
                    self._said += text
                    chunk = chunk.model_copy(
                        update={"delta": delta.model_copy(update={"content": text})}
                    )
                if delta is not None and delta.tool_calls:
                    self._sent_tool_call = True
                self._event_ch.send_nowait(chunk)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    if rest := unrepeated.finish():
                        self._said += rest
                        self._event_ch.send_nowait(
                            llm.ChatChunk(
                                id=chunk.id,
                                delta=llm.ChoiceDelta(role="assistant", content=rest),
                            )
                        )
                    break
            if not self._tier_spoke:
                raise TierSilent("empty_reply")
        finally:
            await chunks.aclose()
