"""Usage into money: a call's usage as integer quantities, priced with its plan.

Every quantity is a non-negative integer in the unit its :class:`UsageKind` names
(seconds, milliseconds, tokens, characters). Prices are integer minor units per block of
units (a minute of call time, a minute of STT audio, 1000 tokens or characters), and every
event's price is rounded *up* to a whole minor unit on its own: 1 s of a call priced 10
cents a minute costs 1 cent, not 0.1666. Rounding per event (not per month) keeps each
billing event's amount final the moment it is written, so applying events in any order,
or replaying them, gives the same balance. Only integer arithmetic is used, never float.

Every number is bounded, far below the 64-bit columns that hold it, so no arithmetic here
or in the database can overflow (and SQLite never turns an overflowing sum into a float):
a quantity by :data:`MAX_QUANTITY` of its kind, a price by :data:`MAX_BLOCK_PRICE_MINOR`,
an event's or a payment's amount by :data:`MAX_AMOUNT_MINOR` and a balance by
:data:`MAX_BALANCE_MINOR` either side of zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from storage.models import Plan, UsageKind

MAX_CALL_ID_CHARS = 64
"""``calls.id`` and ``billing_events.call_id`` hold at most 64 characters."""

_WEEK_S = 7 * 24 * 3600
MAX_QUANTITY: dict[UsageKind, int] = {
    UsageKind.call_seconds: _WEEK_S,
    UsageKind.stt_audio_ms: _WEEK_S * 1000,
    UsageKind.llm_input_tokens: 10**9,
    UsageKind.llm_output_tokens: 10**9,
    UsageKind.tts_characters: 10**9,
}
"""The most one billing event may carry, per kind: a week of call time or STT audio, a
billion tokens or characters. The worker meters a call in events of a few minutes each, so
a larger quantity is a bug (or an attack), never usage."""
MAX_BLOCK_PRICE_MINOR = 10**9
"""The highest price a plan may set for one block (a minute, 1000 tokens or characters)."""
MAX_AMOUNT_MINOR = 10**12
"""The largest amount of one billing event or one payment, in minor units (ten billion
major units): far above any real charge or top-up."""
MAX_BALANCE_MINOR = 10**15
"""A balance stays within this either side of zero (a thousand times the largest amount,
some 10**3 below the 64-bit limit): a payment or charge that would pass it is refused."""

# units per priced block, for each kind
_BLOCK_UNITS: dict[UsageKind, int] = {
    UsageKind.call_seconds: 60,
    UsageKind.stt_audio_ms: 60_000,
    UsageKind.llm_input_tokens: 1000,
    UsageKind.llm_output_tokens: 1000,
    UsageKind.tts_characters: 1000,
}


@dataclass(frozen=True)
class UsageLine:
    """An amount of one kind of usage, in the kind's integer unit."""

    kind: UsageKind
    quantity: int

    def __post_init__(self) -> None:
        # any amount: a whole session's usage may pass one event's MAX_QUANTITY
        _check_integer(self.quantity)


@dataclass(frozen=True)
class CallFacts:
    """What a call's events tell the sidecar about the call itself, for its row in
    ``calls``: who called (masked), which number, when it started and, on the call's last
    events, when and how it ended. Times are unix seconds."""

    started_at: float
    caller_number_masked: str | None = None
    dialled_number: str | None = None
    caller_number_hash: str | None = None
    """HMAC of the caller's number under CALLER_ID_SECRET (never the number)."""
    sip_call_id: str | None = None
    direction: str | None = None
    """``inbound`` or ``outbound`` (a phone call), else None."""
    ended_at: float | None = None
    status: str | None = None
    """On the last events: ``ended`` (hung up, or the agent ended it) or ``failed``."""


@dataclass(frozen=True)
class EventDraft:
    """A billing event before it is priced and applied: what the worker's outbox stores and
    the sidecar receives. ``idempotency_key`` identifies it for ever."""

    idempotency_key: str
    organisation_id: int
    call_id: str
    kind: UsageKind
    quantity: int
    agent_id: int | None = None
    """The agent that answered the call; the sidecar records it on a call it creates."""
    call: CallFacts | None = None


def block_price_minor(plan: Plan, kind: UsageKind) -> int:
    """The plan's price of one block of ``kind`` (see the module docstring), minor units."""
    match kind:
        case UsageKind.call_seconds:
            return plan.price_per_minute_minor
        case UsageKind.stt_audio_ms:
            return plan.price_per_stt_minute_minor
        case UsageKind.llm_input_tokens:
            return plan.price_per_1k_llm_input_tokens_minor
        case UsageKind.llm_output_tokens:
            return plan.price_per_1k_llm_output_tokens_minor
        case UsageKind.tts_characters:
            return plan.price_per_1k_tts_characters_minor
    raise ValueError(f"unknown usage kind {kind!r}")


def price_minor(plan: Plan, kind: UsageKind, quantity: int) -> int:
    """Price of ``quantity`` units of ``kind`` on ``plan``, in the plan's minor units,
    rounded up to a whole minor unit (ceil). Zero costs zero.

    Raises ValueError for a quantity that is not an integer in 0..``MAX_QUANTITY[kind]``,
    a price outside 0..:data:`MAX_BLOCK_PRICE_MINOR`, or an amount above
    :data:`MAX_AMOUNT_MINOR`.
    """
    check_quantity(kind, quantity)
    block_price = block_price_minor(plan, kind)
    if not 0 <= block_price <= MAX_BLOCK_PRICE_MINOR:
        raise ValueError(
            f"plan {plan.name!r} prices {kind} outside 0..{MAX_BLOCK_PRICE_MINOR} minor units"
        )
    # ceil(quantity * price / units) in integers: floor division of the negation
    amount = -(-quantity * block_price // _BLOCK_UNITS[kind])
    if amount > MAX_AMOUNT_MINOR:
        raise ValueError(f"amount {amount} exceeds the maximum of {MAX_AMOUNT_MINOR} minor units")
    return amount


def usage_events(
    call_id: str,
    organisation_id: int,
    usage: Sequence[UsageLine],
    sequence: int,
    *,
    agent_id: int | None = None,
    call: CallFacts | None = None,
    keep_zero: bool = False,
) -> list[EventDraft]:
    """One :class:`EventDraft` per non-zero usage line (every line with ``keep_zero``: a
    call's end must reach the sidecar even when nothing new was used), keyed
    ``{call_id}:{kind}:{sequence}``.

    The key is deterministic: the same call, kind and sequence number always make the same
    key, so re-sending a sequence bills nothing twice. Raises ValueError for an empty or too
    long call id, a negative sequence, or a kind that appears twice in ``usage`` (both
    lines would get one key, and the second would be silently dropped as a duplicate).
    """
    if not call_id or len(call_id) > MAX_CALL_ID_CHARS:
        raise ValueError(f"call id must be 1..{MAX_CALL_ID_CHARS} characters")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise ValueError(f"sequence must be a non-negative integer, got {sequence!r}")
    kinds = [line.kind for line in usage]
    if len(set(kinds)) != len(kinds):
        raise ValueError("each usage kind may appear once per sequence")
    return [
        EventDraft(
            idempotency_key=f"{call_id}:{line.kind.value}:{sequence}",
            organisation_id=organisation_id,
            call_id=call_id,
            kind=line.kind,
            quantity=line.quantity,
            agent_id=agent_id,
            call=call,
        )
        for line in usage
        if line.quantity > 0 or keep_zero
    ]


def usage_from_session(
    duration_s: float,
    stt_audio_s: float,
    llm_input_tokens: int,
    llm_output_tokens: int,
    tts_characters: int,
) -> list[UsageLine]:
    """A session's usage as billing lines, one per kind (zeros included): call time rounded
    up to whole seconds, STT audio rounded up to whole milliseconds.

    Raises ValueError for a negative, NaN or infinite duration or a negative count.
    """
    return [
        UsageLine(UsageKind.call_seconds, _ceil_units(duration_s, 1)),
        UsageLine(UsageKind.stt_audio_ms, _ceil_units(stt_audio_s, 1000)),
        UsageLine(UsageKind.llm_input_tokens, llm_input_tokens),
        UsageLine(UsageKind.llm_output_tokens, llm_output_tokens),
        UsageLine(UsageKind.tts_characters, tts_characters),
    ]


def _ceil_units(seconds: float, units_per_second: int) -> int:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite non-negative number, got {seconds!r}")
    # round away float noise first: 0.57 s is 570.0000000000001 ms, which must not bill 571
    return math.ceil(round(seconds * units_per_second, 6))


def check_quantity(kind: UsageKind, quantity: int) -> None:
    """Raise ValueError unless ``quantity`` is an integer in 0..``MAX_QUANTITY[kind]``, what
    one billing event may carry."""
    _check_integer(quantity)
    maximum = MAX_QUANTITY[kind]
    if quantity > maximum:
        raise ValueError(f"quantity of {kind} must be an integer in 0..{maximum}, got {quantity!r}")


def _check_integer(quantity: int) -> None:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise ValueError(f"quantity must be a non-negative integer, got {quantity!r}")
