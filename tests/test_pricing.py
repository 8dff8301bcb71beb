"""Pricing: integer minor units, each event rounded up on its own; deterministic event keys."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import (
    MAX_AMOUNT_MINOR,
    MAX_BLOCK_PRICE_MINOR,
    MAX_QUANTITY,
    EventDraft,
    UsageLine,
    block_price_minor,
    price_minor,
    usage_events,
    usage_from_session,
)
from storage.models import Plan, UsageKind

UNITS_PER_BLOCK = {
    UsageKind.call_seconds: 60,
    UsageKind.stt_audio_ms: 60_000,
    UsageKind.llm_input_tokens: 1000,
    UsageKind.llm_output_tokens: 1000,
    UsageKind.tts_characters: 1000,
}


def plan(**prices: Any) -> Plan:
    return Plan(
        name="test",
        currency="USD",
        max_agents=1,
        max_concurrent_calls=1,
        monthly_minutes=100,
        **prices,
    )


PLAN = plan(
    price_per_minute_minor=100,
    price_per_stt_minute_minor=30,
    price_per_1k_llm_input_tokens_minor=5,
    price_per_1k_llm_output_tokens_minor=15,
    price_per_1k_tts_characters_minor=20,
)


def test_a_whole_minute_of_call_costs_the_per_minute_price():
    assert price_minor(PLAN, UsageKind.call_seconds, 60) == 100


def test_one_second_of_call_is_rounded_up_to_a_whole_cent():
    # 100 cents / 60 s = 1.67 cents
    assert price_minor(PLAN, UsageKind.call_seconds, 1) == 2


def test_stt_audio_is_priced_per_minute_of_milliseconds():
    assert price_minor(PLAN, UsageKind.stt_audio_ms, 60_000) == 30
    assert price_minor(PLAN, UsageKind.stt_audio_ms, 1) == 1


def test_tokens_and_characters_are_priced_per_thousand_rounded_up():
    assert price_minor(PLAN, UsageKind.llm_input_tokens, 1000) == 5
    assert price_minor(PLAN, UsageKind.llm_input_tokens, 1001) == 6
    assert price_minor(PLAN, UsageKind.llm_output_tokens, 2000) == 30
    assert price_minor(PLAN, UsageKind.tts_characters, 1) == 1


def test_zero_usage_costs_nothing():
    for kind in UsageKind:
        assert price_minor(PLAN, kind, 0) == 0


def test_a_free_kind_costs_nothing_however_much_is_used():
    assert (
        price_minor(plan(), UsageKind.llm_input_tokens, MAX_QUANTITY[UsageKind.llm_input_tokens])
        == 0
    )


@pytest.mark.parametrize("kind", list(UsageKind))
def test_a_quantity_above_its_kinds_maximum_is_refused(kind):
    assert price_minor(PLAN, kind, MAX_QUANTITY[kind]) >= 0
    with pytest.raises(ValueError, match="must be an integer in"):
        price_minor(PLAN, kind, MAX_QUANTITY[kind] + 1)


def test_a_price_above_the_maximum_is_refused():
    with pytest.raises(ValueError, match="prices"):
        price_minor(
            plan(price_per_minute_minor=MAX_BLOCK_PRICE_MINOR + 1), UsageKind.call_seconds, 60
        )


def test_an_amount_above_the_maximum_is_refused_not_overflowed():
    priced = plan(price_per_1k_llm_output_tokens_minor=MAX_BLOCK_PRICE_MINOR)
    # 10**9 tokens at 10**9 per thousand is 10**15: above any one event's amount
    with pytest.raises(ValueError, match="exceeds the maximum"):
        price_minor(priced, UsageKind.llm_output_tokens, 10**9)
    assert price_minor(priced, UsageKind.llm_output_tokens, 1000 * 1000) == MAX_AMOUNT_MINOR


@pytest.mark.parametrize("quantity", [-1, 1.5, True, "10"])
def test_a_quantity_that_is_not_a_non_negative_integer_is_refused(quantity):
    with pytest.raises(ValueError):
        price_minor(PLAN, UsageKind.call_seconds, quantity)


def test_a_negative_price_is_refused():
    with pytest.raises(ValueError):
        price_minor(plan(price_per_minute_minor=-1), UsageKind.call_seconds, 60)


@given(
    kind=st.sampled_from(UsageKind),
    quantity=st.integers(0, min(MAX_QUANTITY.values())),
    block_price=st.integers(0, 10**6),
)
def test_the_price_is_the_exact_fraction_rounded_up_to_one_minor_unit(kind, quantity, block_price):
    priced = plan(
        price_per_minute_minor=block_price,
        price_per_stt_minute_minor=block_price,
        price_per_1k_llm_input_tokens_minor=block_price,
        price_per_1k_llm_output_tokens_minor=block_price,
        price_per_1k_tts_characters_minor=block_price,
    )
    units = UNITS_PER_BLOCK[kind]
    amount = price_minor(priced, kind, quantity)
    assert isinstance(amount, int)
    # amount >= exact price > amount - 1, all in integers
    assert amount * units >= quantity * block_price > (amount - 1) * units


def test_each_kind_reads_its_own_price_column():
    assert [block_price_minor(PLAN, kind) for kind in UsageKind] == [100, 30, 5, 15, 20]


def test_usage_events_are_keyed_by_call_kind_and_sequence():
    drafts = usage_events(
        "job-1",
        7,
        [UsageLine(UsageKind.call_seconds, 61), UsageLine(UsageKind.tts_characters, 300)],
        3,
    )
    assert drafts == [
        EventDraft("job-1:call_seconds:3", 7, "job-1", UsageKind.call_seconds, 61),
        EventDraft("job-1:tts_characters:3", 7, "job-1", UsageKind.tts_characters, 300),
    ]


def test_usage_events_skip_zero_quantities():
    drafts = usage_events(
        "job-1",
        7,
        [UsageLine(UsageKind.call_seconds, 0), UsageLine(UsageKind.stt_audio_ms, 5)],
        0,
    )
    assert [d.kind for d in drafts] == [UsageKind.stt_audio_ms]


def test_the_same_usage_makes_the_same_keys_every_time():
    lines = usage_from_session(12.5, 3.2, 100, 50, 400)
    assert usage_events("job-9", 1, lines, 2) == usage_events("job-9", 1, lines, 2)


def test_a_kind_twice_in_one_sequence_is_refused():
    lines = [UsageLine(UsageKind.call_seconds, 1), UsageLine(UsageKind.call_seconds, 2)]
    with pytest.raises(ValueError):
        usage_events("job-1", 1, lines, 0)


@pytest.mark.parametrize(
    ("call_id", "sequence"), [("", 0), ("x" * 65, 0), ("job-1", -1), ("job-1", True)]
)
def test_a_bad_call_id_or_sequence_is_refused(call_id, sequence):
    with pytest.raises(ValueError):
        usage_events(call_id, 1, [UsageLine(UsageKind.call_seconds, 1)], sequence)


def test_a_usage_line_refuses_a_negative_quantity():
    with pytest.raises(ValueError):
        UsageLine(UsageKind.call_seconds, -1)


def test_session_usage_rounds_call_time_up_to_whole_seconds_and_stt_to_milliseconds():
    lines = usage_from_session(12.2, 3.0004, 100, 50, 400)
    assert lines == [
        UsageLine(UsageKind.call_seconds, 13),
        UsageLine(UsageKind.stt_audio_ms, 3001),
        UsageLine(UsageKind.llm_input_tokens, 100),
        UsageLine(UsageKind.llm_output_tokens, 50),
        UsageLine(UsageKind.tts_characters, 400),
    ]


def test_session_usage_does_not_bill_float_noise():
    # 0.57 * 1000 == 570.0000000000001 in binary floating point
    assert usage_from_session(12.0, 0.57, 0, 0, 0)[:2] == [
        UsageLine(UsageKind.call_seconds, 12),
        UsageLine(UsageKind.stt_audio_ms, 570),
    ]


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf])
def test_session_usage_refuses_impossible_durations(seconds):
    with pytest.raises(ValueError):
        usage_from_session(seconds, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        usage_from_session(0, seconds, 0, 0, 0)


@given(duration_s=st.floats(0, 10**6), stt_s=st.floats(0, 10**6))
def test_session_usage_never_bills_less_than_was_used(duration_s, stt_s):
    call, stt = usage_from_session(duration_s, stt_s, 0, 0, 0)[:2]
    # up to the 1e-6 unit of float noise that is rounded away on purpose
    assert call.quantity >= duration_s - 1e-6
    assert call.quantity < duration_s + 1
    assert stt.quantity >= stt_s * 1000 - 1e-3
    assert stt.quantity < stt_s * 1000 + 1
