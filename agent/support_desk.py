"""The demo agent's back office: an internet provider's outages, accounts, bills, tickets.

In-memory demo data; a deployment replaces :class:`SupportDesk` with calls to its own
systems. Every method returns a sentence the agent can speak as is, because the local
dialogue engine speaks tool results verbatim (a cloud LLM may rephrase them).

What a caller says reaches here through speech recognition, so it is matched the way a
person would: case, spacing and punctuation do not matter ("Spring field.", "SPRINGFIELD"),
digits may be said as words or spaced out ("nine four one oh seven", "12 34 56"), and an
area may be misheard by a letter or two ("Springfeld"). Account numbers must match
exactly (a near miss is someone else's account). What is not recognised is never stated
as a fact: the agent says what it heard and asks again.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
from dataclasses import dataclass

log = logging.getLogger("agent.support_desk")


@dataclass(frozen=True)
class Account:
    number: str
    holder: str
    plan: str
    status: str
    balance_due_minor: int
    currency: str
    due_date: str
    last_payment_minor: int
    last_payment_date: str


@dataclass(frozen=True)
class Outage:
    area: str
    since: str
    expected_fix: str


DEMO_OUTAGES = (
    Outage(area="springfield", since="9:10 this morning", expected_fix="1 pm today"),
    Outage(area="94107", since="7:45 this morning", expected_fix="noon today"),
)

DEMO_ACCOUNTS = (
    Account(
        number="123456",
        holder="Diane Miller",
        plan="Fiber 500",
        status="active",
        balance_due_minor=4250,
        currency="USD",
        due_date="December 1st",
        last_payment_minor=4250,
        last_payment_date="November 1st",
    ),
    Account(
        number="654321",
        holder="Sheila Brooks",
        plan="Cable 100",
        status="suspended for non-payment",
        balance_due_minor=12900,
        currency="USD",
        due_date="November 15th",
        last_payment_minor=0,
        last_payment_date="never",
    ),
)


def speak_money(amount_minor: int, currency: str) -> str:
    major, minor = divmod(amount_minor, 100)
    unit = {"USD": "dollars", "EUR": "euros", "GBP": "pounds"}.get(currency, currency)
    return f"{major} {unit}" + (f" and {minor} cents" if minor else "")


_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
AREA_SIMILARITY = 0.85
"""How close (difflib's ratio) a heard area name must be to a known one to count as it:
one or two letters misheard in a town's name, never another town."""


def normalise_spoken(text: str) -> str:
    """What a caller said, for matching: lower case, punctuation dropped, digit words and
    spaced-out digits joined into one number ("nine four one oh seven" -> "94107")."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    out: list[str] = []
    for word in words:
        digit = _DIGIT_WORDS.get(word, word if word.isdigit() else None)
        if digit is not None and out and out[-1].isdigit():
            out[-1] += digit
        else:
            out.append(digit if digit is not None else word)
    return " ".join(out)


def spoken_digits(text: str) -> str | None:
    """The number in ``text`` when all it says is digits ("12-34-56", "one two three"),
    else None."""
    normal = normalise_spoken(text)
    return normal if normal.isdigit() else None


class SupportDesk:
    def __init__(
        self,
        outages: tuple[Outage, ...] = DEMO_OUTAGES,
        accounts: tuple[Account, ...] = DEMO_ACCOUNTS,
    ) -> None:
        self._outages = {_area_key(o.area): o for o in outages}
        self._accounts = {a.number: a for a in accounts}
        self._ticket_numbers = itertools.count(1001)
        self.tickets: list[tuple[str, str]] = []

    def check_outage(self, area: str) -> str:
        outage = self._find_outage(area)
        if outage is None:
            heard = _say(area)
            return (
                f"I heard {heard}, and I have no outage listed there. Did I hear that "
                "right? If not, please say the town or the ZIP code again. If I did, "
                "restarting your router fixes most problems, and I can open a ticket for "
                "a technician."
            )
        return (
            f"Yes, there is an outage in {_say(outage.area)} since {outage.since}. "
            f"Our engineers expect service back by {outage.expected_fix}."
        )

    def lookup_account(self, account_number: str) -> str:
        account = self._find_account(account_number)
        if account is None:
            return _account_not_found(account_number)
        return (
            f"Account {_spell(account.number)} belongs to {account.holder}, on the "
            f"{account.plan} plan, and it is {account.status}."
        )

    def billing_summary(self, account_number: str) -> str:
        account = self._find_account(account_number)
        if account is None:
            return _account_not_found(account_number)
        due = speak_money(account.balance_due_minor, account.currency)
        if account.last_payment_minor:
            paid = speak_money(account.last_payment_minor, account.currency)
            last = f"Your last payment was {paid} on {account.last_payment_date}."
        else:
            last = "We have no payment on record."
        return f"Your balance is {due}, due {account.due_date}. {last}"

    def create_ticket(self, summary: str) -> str:
        ticket = f"T{next(self._ticket_numbers)}"
        self.tickets.append((ticket, summary))
        log.info("ticket created", extra={"ticket": ticket})
        return (
            f"I have opened ticket {_spell(ticket)} for you. A technician will call you "
            "back within four hours."
        )

    def request_callback(self, reason: str) -> str:
        ticket = f"T{next(self._ticket_numbers)}"
        self.tickets.append((ticket, f"callback: {reason}"))
        log.info("callback requested", extra={"ticket": ticket})
        return (
            f"All my colleagues are busy right now, so I have opened ticket {_spell(ticket)} "
            "and a person will call you back within the hour."
        )

    def _find_outage(self, area: str) -> Outage | None:
        key = _area_key(area)
        if not key:
            return None
        if key in self._outages:
            return self._outages[key]
        if key.isdigit():  # a ZIP code: exact, or it is another place
            return None
        names = [name for name in self._outages if not name.isdigit()]
        close = difflib.get_close_matches(key, names, n=1, cutoff=AREA_SIMILARITY)
        return self._outages[close[0]] if close else None

    def _find_account(self, account_number: str) -> Account | None:
        digits = spoken_digits(account_number)
        return self._accounts.get(digits) if digits is not None else None


def _area_key(area: str) -> str:
    # "Spring field", "springfield." and "SPRINGFIELD" are one place
    return normalise_spoken(area).replace(" ", "")


def _account_not_found(heard: str) -> str:
    digits = spoken_digits(heard)
    said = _spell(digits) if digits is not None else _say(heard)
    return (
        f"I heard account {said}, and I could not find it. Could you read me the number "
        "again, digit by digit?"
    )


def _say(text: str) -> str:
    """How to say back what was heard: digits one by one, names as they are written."""
    digits = spoken_digits(text)
    if digits is not None:
        return _spell(digits)
    return normalise_spoken(text).title() or "nothing"


def _spell(code: str) -> str:
    """Read codes character by character, as people say them on the phone."""
    return " ".join(code)
