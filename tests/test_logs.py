"""Logging masks phone numbers in every form, and only phone numbers, on every handler:
ours and livekit-agents' own, records forwarded from job processes included."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.logs import (
    JsonFormatter,
    MaskingFilter,
    TextFormatter,
    call_id_var,
    mask_handlers,
    mask_phone_numbers,
)

NUMBER = "+15557654321"
DIGITS = "15557654321"


@st.composite
def phone_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A phone number as a log line might carry it, and the digits that must not show."""
    area = draw(st.integers(200, 999))
    exchange = draw(st.integers(200, 999))
    line = draw(st.integers(0, 9999))
    national = f"{area}{exchange}{line:04d}"
    written = draw(
        st.sampled_from(
            [
                f"+1{national}",
                f"+1 {area} {exchange} {line:04d}",
                f"+1-{area}-{exchange}-{line:04d}",
                f"({area}) {exchange}-{line:04d}",
                f"{area}-{exchange}-{line:04d}",
                f"{area} {exchange} {line:04d}",
                f"{area}.{exchange}.{line:04d}",
                national,
                f"sip:+1{national}@10.0.0.7:5060",
                f"sip:{national}@pbx.example;transport=udp",
                f"tel:+1{national}",
                f"room_+1{national}_Xk3",
            ]
        )
    )
    return written, national


# log timestamps: four-digit years
TIMES = st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1))
KEPT = st.one_of(
    TIMES.map(lambda d: d.isoformat()),
    TIMES.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    TIMES.map(lambda d: d.date().isoformat()),
    st.floats(0, 10_000, allow_nan=False).map(lambda s: f"{s:.3f}s"),
    # numbers as logs print them: with a name ("bytes=1000 took=10000" stays; three bare
    # numbers in a row shaped like "555 123 4567" would be masked as a phone number)
    st.integers(0, 10**9 - 1).map(lambda n: f"count={n}"),
    st.integers(10**12, 10**15).map(lambda n: f"at_ms={n}"),
    st.integers(0, 10**9).map(lambda c: f"amount={c // 100}.{c % 100:02d}"),
    st.uuids().map(str),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789", min_size=8, max_size=16).map(
        lambda s: f"AJ_{s}"
    ),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda q: ".".join(map(str, q))),
)


@settings(max_examples=int(os.environ.get("MASKING_EXAMPLES", "300")), deadline=None)
@given(
    kept=st.lists(KEPT, min_size=1, max_size=4),
    phones=st.lists(phone_numbers(), min_size=1, max_size=3),
    glue=st.sampled_from([" ", ", ", " | ", " caller=", '"}, {"x": "']),
)
def test_a_line_loses_its_phone_numbers_and_keeps_everything_else(kept, phones, glue):
    parts = [*kept, *(written for written, _ in phones)]
    masked = mask_phone_numbers(glue.join(parts))
    for token in kept:
        assert token in masked
    for written, national in phones:
        assert written not in masked and national not in masked


@pytest.mark.parametrize(
    "text",
    [
        "2025-12-07T10:11:12",
        "2025-12-07T10:11:12.345+00:00",
        "10:11:12",
        "took 1.250 s",
        "balance 1234567.89",
        "job AJ_6JkQZ8x12345678",
        "id 123e4567-e89b-12d3-a456-426614174000",
        "at 1733051234567 ms",
        "from 192.168.100.200",
    ],
)
def test_timestamps_durations_ids_and_amounts_are_left_alone(text):
    assert mask_phone_numbers(text) == text


@pytest.fixture
def root_capture() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers[:], root.level = saved  # type: ignore[assignment]


def test_the_filter_masks_message_args_extras_and_tracebacks(root_capture):
    handler = logging.getLogger().handlers[0]
    handler.setFormatter(JsonFormatter())
    mask_handlers()
    log = logging.getLogger("livekit.agents")
    log.info("participant %s joined", NUMBER, extra={"identity": f"sip_{NUMBER}"})
    try:
        raise RuntimeError(f"dial {NUMBER} failed")
    except RuntimeError:
        log.exception("transfer failed")
    text = root_capture.getvalue()
    assert DIGITS not in re.sub(r"\D", "", text.replace("\n", "|"))
    first = json.loads(text.splitlines()[0])
    assert first["identity"] == "sip_+*******4321"


def test_the_call_id_is_on_every_line_of_a_call(root_capture):
    logging.getLogger().handlers[0].setFormatter(TextFormatter())
    mask_handlers()
    token = call_id_var.set("call-42")
    try:
        logging.getLogger("agent.worker").info("hello")
    finally:
        call_id_var.reset(token)
    assert "[call-42] hello" in root_capture.getvalue()


def test_livekit_logging_of_start_and_dev_is_masked(capsys):
    from livekit.agents.cli import cli as livekit_cli

    from agent.logs import mask_livekit_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with mask_livekit_logging(fmt=None):
            for devmode in (False, True):
                root.handlers[:] = []
                livekit_cli.setup_logging("INFO", devmode=devmode, console=False)
                logging.getLogger("livekit.agents").info(
                    "received job request", extra={"room": f"call-_{NUMBER}_Ab3"}
                )
                # a job process's record, forwarded to the main process as livekit does
                forwarded = logging.makeLogRecord(
                    {"name": "livekit.agents", "levelno": logging.INFO, "levelname": "INFO",
                     "msg": f"participant sip_{NUMBER} connected", "call_id": "AJ_x1"}
                )  # fmt: skip
                logging.getLogger("livekit.agents").callHandlers(forwarded)
    finally:
        root.handlers[:], root.level = saved  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert "received job request" in out and "AJ_x1" in out
    assert DIGITS not in re.sub(r"\D", "", out.replace("\n", "|"))


def test_a_record_is_masked_once_even_behind_two_handlers():
    record = logging.makeLogRecord({"msg": "n %s", "args": (NUMBER,)})
    MaskingFilter().filter(record)
    MaskingFilter().filter(record)
    assert record.getMessage() == "n +*******4321"
