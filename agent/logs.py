"""Structured logging: one JSON object per line, with the call id and masked numbers."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

# a run of 7+ digits, optionally led by "+" and broken by spaces/dashes/dots/parentheses
_PHONE_RE = re.compile(r"\+?\d(?:[\s\-.()]*\d){6,}")


def mask_phone(number: str) -> str:
    """Keep the last 4 digits of a phone number: ``+15551234567`` -> ``+*******4567``."""
    digits = re.sub(r"\D", "", number)
    if len(digits) <= 4:
        return "*" * len(digits)
    prefix = "+" if number.strip().startswith("+") else ""
    return prefix + "*" * (len(digits) - 4) + digits[-4:]


def mask_phone_numbers(text: str) -> str:
    """Mask every phone-number-like run of digits inside free text."""
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


class JsonFormatter(logging.Formatter):
    _STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_phone_numbers(record.getMessage()),
        }
        if (call_id := call_id_var.get()) is not None:
            entry["call_id"] = call_id
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = mask_phone_numbers(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call_id = call_id_var.get()
        prefix = f"[{call_id}] " if call_id else ""
        line = f"{record.levelname.lower():7} {record.name}: {prefix}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_phone_numbers(line)


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger (ours and livekit's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
