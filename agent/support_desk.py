"""The demo agent's back office: an internet provider's outages, accounts, bills, tickets.

In-memory demo data; a deployment replaces :class:`SupportDesk` with calls to its own
systems. Every method returns a sentence the agent can speak as is, because the local
dialogue engine speaks tool results verbatim (a cloud LLM may rephrase them).
"""

from __future__ import annotations

import itertools
import logging
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


class SupportDesk:
    def __init__(
        self,
        outages: tuple[Outage, ...] = DEMO_OUTAGES,
        accounts: tuple[Account, ...] = DEMO_ACCOUNTS,
    ) -> None:
        self._outages = {o.area: o for o in outages}
        self._accounts = {a.number: a for a in accounts}
        self._ticket_numbers = itertools.count(1001)
        self.tickets: list[tuple[str, str]] = []

    def check_outage(self, area: str) -> str:
        key = area.strip().lower()
        outage = self._outages.get(key)
        if outage is None:
            return (
                f"There is no known outage in {area}. Restarting your router fixes most "
                "problems; if it does not, I can open a ticket for a technician."
            )
        return (
            f"Yes, there is an outage in {area} since {outage.since}. "
            f"Our engineers expect service back by {outage.expected_fix}."
        )

    def lookup_account(self, account_number: str) -> str:
        account = self._accounts.get(account_number)
        if account is None:
            return f"I could not find account {_spell(account_number)}. Could you check the number?"
        return (
            f"Account {_spell(account.number)} belongs to {account.holder}, on the "
            f"{account.plan} plan, and it is {account.status}."
        )

    def billing_summary(self, account_number: str) -> str:
        account = self._accounts.get(account_number)
        if account is None:
            return f"I could not find account {_spell(account_number)}. Could you check the number?"
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


def _spell(code: str) -> str:
    """Read codes character by character, as people say them on the phone."""
    return " ".join(code)
