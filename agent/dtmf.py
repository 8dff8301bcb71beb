"""Keypad input: DTMF digits collected into one entry, the caller's turn.

Digits arrive one key at a time (a room's ``sip_dtmf_received``; ``simulate --dtmf``). An
entry ends with ``#`` or when no key has come for ``timeout_s``; ``*`` clears what was
typed so far (the usual "start again" key). An entry is handed to ``on_entry`` as its
digits ("1234"); an empty entry (a lone ``#``) is dropped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

KEYS = frozenset("0123456789*#")
TIMEOUT_S = 5.0
MAX_DIGITS = 32


class DtmfCollector:
    def __init__(
        self,
        on_entry: Callable[[str], None],
        *,
        timeout_s: float = TIMEOUT_S,
        max_digits: int = MAX_DIGITS,
    ) -> None:
        if timeout_s <= 0 or max_digits < 1:
            raise ValueError("timeout_s > 0 and max_digits >= 1")
        self._on_entry = on_entry
        self.timeout_s = timeout_s
        self.max_digits = max_digits
        self._digits = ""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def typed(self) -> str:
        """The digits of the entry in progress."""
        return self._digits

    def press(self, key: str) -> None:
        """One key; raises ``ValueError`` for anything but 0-9, ``*`` and ``#``."""
        if len(key) != 1 or key not in KEYS:
            raise ValueError(f"not a keypad key: {key!r}")
        self._cancel_timer()
        if key == "#":
            self._finish()
            return
        if key == "*":
            self._digits = ""
            return
        self._digits += key
        if len(self._digits) >= self.max_digits:
            self._finish()
            return
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._finish)

    def _finish(self) -> None:
        self._cancel_timer()
        entry, self._digits = self._digits, ""
        if entry:
            self._on_entry(entry)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._cancel_timer()
        self._digits = ""


@dataclass(frozen=True)
class KeyPresses:
    """Keys pressed at ``at_s`` seconds into a simulated call (one 0.2 s apart)."""

    at_s: float
    keys: str


_SCRIPT = re.compile(r"^t=(\d+(?:\.\d+)?):([0-9*#]+)$")


def parse_dtmf_script(text: str) -> list[KeyPresses]:
    """``"t=12.5:1234#,t=30:0"`` -> key presses; ``ValueError`` names the bad part."""
    presses = []
    for part in text.split(","):
        match = _SCRIPT.match(part.strip())
        if match is None:
            raise ValueError(
                f"bad DTMF entry {part.strip()!r}: expected t=SECONDS:KEYS, keys from 0-9 * #"
            )
        presses.append(KeyPresses(float(match.group(1)), match.group(2)))
    return presses
