"""Structured logging for every command: one masking filter on every handler, the call id
on every line of a call, JSON or text.

Phone numbers are masked before any formatter sees a record (:class:`MaskingFilter`), so
the same rule holds for our formatters and for livekit-agents' own (``start``, ``dev`` and
``console`` log through livekit's handlers; job processes forward their records to the
main process, whose handlers carry the filter). A number keeps its last four digits.

What counts as a phone number (:func:`mask_phone_numbers`): a ``+`` and 8 to 15 digits
(E.164, spaced or dashed, anywhere, inside room names too); the user part of a ``sip:``,
``sips:`` or ``tel:`` URI with 7 or more digits; 9 to 15 digits in national forms: two or
three groups of 2 to 8 digits joined by spaces, or up to four by dashes or dots, the first
of 3 to 5 digits (or in parentheses) and the last of 4 or more (``(555) 123-4567``,
``555-123-4567``, ``555.123.4567``, ``0151 2345 6789``, ``030 1234567``); and a bare run of
10 to 12 digits (``5551234567``). What is kept:
dates and timestamps (``2025-12-07T10:11:12.345Z``), times and durations (``10:11:12``,
``1.5 s``), decimal amounts (``1234567.89``), IPv4 addresses, ids that mix digits with
letters or dashes (UUIDs, ``AJ_6JkQZ8x``), and bare runs of up to 9 or of 13 and more digits
(amounts, millisecond timestamps). A bare run of 10 to 12 digits is masked even when it is
not a number (a unix time in seconds in free text): the rule errs towards privacy.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)
"""The call this task works for, in processes that log through our formatters; livekit's
job processes get it on every record through ``JobContext.log_context_fields``."""

_E164 = re.compile(r"(?<![0-9])\+\d(?:[ \-.()]{0,2}\d){7,14}(?![0-9])")
_SIP_USER = re.compile(r"(?i)\b(sips?:|tel:)([^@;>\s\"',]+)")
# a candidate national number: digit groups joined by single separators (or "(ddd) "),
# not glued to letters, dashes, colons or dots on either side (ids, times, versions)
_NATIONAL = re.compile(
    r"(?<![A-Za-z0-9.:/\-+])(?:\(\d{2,5}\)\s?)?\d+(?:[ \-.]\d+)*(?![A-Za-z0-9:\-]|\.\d)"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}\.\d{2}\.\d{4}|\d{4}\.\d{2}\.\d{2}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DECIMAL = re.compile(r"\d+\.\d{1,2}")


def mask_phone(number: str) -> str:
    """Keep the last 4 digits of a phone number: ``+15551234567`` -> ``+*******4567``."""
    digits = re.sub(r"\D", "", number)
    if len(digits) <= 4:
        return "*" * len(digits)
    prefix = "+" if number.strip().startswith("+") else ""
    return prefix + "*" * (len(digits) - 4) + digits[-4:]


def mask_phone_numbers(text: str) -> str:
    """``text`` with every phone number in it masked (see the module docstring for what
    counts as one, and what is kept)."""
    text = _SIP_USER.sub(_mask_sip_user, text)
    text = _E164.sub(lambda m: mask_phone(m.group(0)), text)
    return _NATIONAL.sub(_mask_national, text)


def _mask_sip_user(match: re.Match[str]) -> str:
    scheme, user = match.group(1), match.group(2)
    if sum(c.isdigit() for c in user) >= 7:
        return scheme + mask_phone(user)
    return match.group(0)


def _mask_national(match: re.Match[str]) -> str:
    # the candidate may run several space-separated tokens together ("at 10 555 123 4567"):
    # from the end (a number ends in its subscriber group), mask the longest phone-like
    # span that ends at each token, keep the other tokens as they were
    parts = match.group(0).split(" ")
    out: list[str] = []
    j = len(parts)
    while j > 0:
        for i in range(j):
            span = " ".join(parts[i:j])
            if _looks_national(span):
                out.append(mask_phone(span))
                j = i
                break
        else:
            out.append(parts[j - 1])
            j -= 1
    return " ".join(reversed(out))


def _looks_national(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    # a national number with its area code has 9 or more digits; a shorter run of groups
    # ("101 1000") is more likely two counts than a local number
    if not candidate or not 9 <= digits <= 15 or not candidate[-1].isdigit():
        return False
    if candidate.isdigit():
        return 10 <= digits <= 12
    tokens = candidate.split(" ")
    for token in tokens:
        if _DATE.fullmatch(token) or _IPV4.fullmatch(token) or _DECIMAL.fullmatch(token):
            return False
        if "." in token and len(tokens) > 1:  # dotted numbers are one token: 555.123.4567
            return False
    if "-" in candidate and re.search(r"(?<!\)) ", candidate):
        # one kind of separator per number, but for "(555) 123-4567": "100 555-123-4567"
        # is a count and a number
        return False
    groups = [g for g in re.split(r"[ \-.()]+", candidate) if g]
    # an area code has 3 to 5 digits, or 2 in parentheses: "(02) 1234 5678"; a shorter
    # first group is a count or a time before the number ("10 555-123-4567")
    first_ok = 3 <= len(groups[0]) <= 5 or (candidate.startswith("(") and len(groups[0]) >= 2)
    # national forms have 2 to 3 groups ("555 123 4567", "0151 2345 6789", "030 1234567");
    # a longer run of space-separated numbers is counts and amounts, at most ending in one
    most_groups = 3 if " " in candidate.replace(") ", ")") else 4
    return (
        2 <= len(groups) <= most_groups
        and first_ok
        and len(groups[-1]) >= 4
        and all(2 <= len(g) <= 8 for g in groups)
    )


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class MaskingFilter(logging.Filter):
    """Masks phone numbers in a record before any formatter sees it: the message (with
    its arguments merged), every string attribute added by ``extra`` or a log context,
    and the formatted traceback. Puts the current :data:`call_id_var` on the record when
    it has none. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_va_masked", False):
            record.msg = mask_phone_numbers(record.getMessage())
            record.args = None
            for key, value in list(record.__dict__.items()):
                if key not in _STANDARD_ATTRS and isinstance(value, str):
                    setattr(record, key, mask_phone_numbers(value))
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = mask_phone_numbers(record.exc_text)
            if getattr(record, "call_id", None) is None and (call_id := call_id_var.get()):
                record.call_id = call_id
            record._va_masked = True
        return True


def mask_handlers(logger: logging.Logger | None = None) -> None:
    """Put one :class:`MaskingFilter` on every handler of ``logger`` (default: the root
    logger, where livekit-agents and :func:`configure_logging` put theirs); idempotent."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the call id and
    every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``level logger: [call id] message key=value ...``, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        call_id = extras.pop("call_id", None)
        prefix = f"[{call_id}] " if call_id else ""
        fields = "".join(f" {key}={value}" for key, value in extras.items())
        line = f"{record.levelname.lower():7} {record.name}: {prefix}{record.getMessage()}{fields}"
        if record.exc_info or record.exc_text:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))  # type: ignore[arg-type]
        return line


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }
    if "call_id" not in extras and (call_id := call_id_var.get()) is not None:
        extras["call_id"] = call_id
    return extras


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger (ours and livekit's) to stderr in ``fmt`` ("json" or "text"),
    masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    mask_handlers(root)


def reformat_handlers(fmt: str, logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: root) our formatter for ``fmt``: used
    when ``LOG_FORMAT`` asks for another format than livekit-agents' default for the
    command."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(formatter)


@contextmanager
def mask_livekit_logging(fmt: str | None) -> Iterator[None]:
    """While the block runs, livekit-agents' CLI sets up its logging as usual (JSON for
    ``start``, coloured text for ``dev`` and ``console``) and then every root handler gets
    the :class:`MaskingFilter`, and our formatter for ``fmt`` when ``LOG_FORMAT`` names one.

    livekit-agents offers no hook after its ``setup_logging``, so this wraps that one
    function for the block's duration (``tests/test_logs.py`` fails if it moves)."""
    from livekit.agents.cli import cli as livekit_cli

    original = livekit_cli.setup_logging

    def setup_logging(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        if fmt is not None:
            reformat_handlers(fmt)
        mask_handlers()

    livekit_cli.setup_logging = setup_logging
    try:
        yield
    finally:
        livekit_cli.setup_logging = original
