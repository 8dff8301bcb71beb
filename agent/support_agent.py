"""The demo agent: phone support for an internet provider.

The same function tools serve every LLM tier: a cloud LLM reads ``INSTRUCTIONS`` and the
tools' descriptions; the local dialogue engine follows ``SUPPORT_POLICY``, whose intents
name the same tools and arguments.
"""

from __future__ import annotations

import logging

from livekit.agents import Agent, RunContext, function_tool

from agent.support_desk import SupportDesk
from plugins.dialogue_llm import (
    DialoguePolicy,
    Intent,
    Slot,
    digits_slot,
    regex_slot,
    spoken_digits,
)

log = logging.getLogger("agent.support_agent")

COMPANY = "Northwind Internet"
GREETING = f"Hello, thanks for calling {COMPANY} support. How can I help you today?"

INSTRUCTIONS = f"""You are the phone support agent of {COMPANY}, an internet provider.
You speak with callers on the phone: answer in one or two short sentences, no lists,
no markup, no emoji. You can check for outages in a town or ZIP code, look up an
account, explain a bill, open a repair ticket, and transfer the caller to a person.
Always use a tool for facts about outages, accounts and bills; never guess them.
Ask for the account number before looking up an account or a bill."""

_AREA = r"\b(?:in|at|near|for)\s+(\d{5}|(?-i:[A-Z][a-z]+)(?:\s(?-i:[A-Z][a-z]+)){0,2})"
_NAME = r"\b(?:this is|my name is|i am|i'm)\s+((?-i:[A-Z][a-z]+))\b"

_ACCOUNT_DIGITS = digits_slot(6, 10)


def _area(text: str) -> str | None:
    """A five-digit ZIP code (said as digits or digit words) or a capitalised place name."""
    if len(zip_code := spoken_digits(text)) == 5:
        return zip_code
    return regex_slot(_AREA)(text)


SUPPORT_POLICY = DialoguePolicy(
    greeting=GREETING,
    fallback_reply=(
        # a short first sentence: the local voice speaks a sentence only once it is whole
        "Sorry, I can't help with that. I can check for outages, look up your account, "
        "answer billing questions, open a repair ticket, or connect you to a person."
    ),
    tool_error_reply=(
        "Sorry, I could not do that just now. Would you like me to connect you to a person?"
    ),
    intents=(
        Intent(
            name="goodbye",
            triggers=(r"\b(bye|goodbye|that'?s all|hang up)\b",),
            reply=f"Thank you for calling {COMPANY}. Goodbye!",
        ),
        Intent(
            name="transfer",
            triggers=(
                r"\b(human|real person|representative|operator|supervisor)\b",
                r"\b(speak|talk) (to|with) (a|an|some) ?(one|body|person|agent)\b",
            ),
            tool="transfer_to_human",
            fixed_arguments={"reason": "{utterance}"},
        ),
        Intent(
            name="billing",
            triggers=(r"\b(bill|billing|charged?|payments?|pay|invoice|refund|balance)\b",),
            tool="billing_summary",
            slots=(
                Slot(
                    "account_number",
                    "I can help with your bill. What is your account number?",
                    _ACCOUNT_DIGITS,
                ),
            ),
        ),
        Intent(
            name="ticket",
            triggers=(r"\b(ticket|technician|complain|complaint|repair|report a problem)\b",),
            tool="create_ticket",
            fixed_arguments={"summary": "{utterance}"},
        ),
        Intent(
            name="outage",
            triggers=(
                r"\b(outage|internet|connection|wi-?fi|offline|no service|not working)\b",
                r"\b(is|it's|went) down\b",
            ),
            tool="check_outage",
            slots=(
                Slot(
                    "area",
                    "I can check that. Which town or ZIP code are you in?",
                    _area,
                    whole_answer=True,
                ),
            ),
        ),
        Intent(
            name="account",
            triggers=(r"\b(account|my plan|subscription)\b",),
            tool="lookup_account",
            slots=(Slot("account_number", "Sure. What is your account number?", _ACCOUNT_DIGITS),),
        ),
        Intent(
            name="introduction",
            triggers=(_NAME,),
            slots=(Slot("name", "", regex_slot(_NAME)),),
            reply="Nice to meet you, {name}. How can I help with your internet service today?",
        ),
        Intent(
            name="thanks",
            triggers=(r"\b(thank you|thanks)\b",),
            reply="You're welcome. Is there anything else I can help with?",
        ),
        Intent(
            name="greeting",
            triggers=(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b",),
            reply=f"Hello! This is {COMPANY} support. How can I help you today?",
        ),
    ),
)


class SupportAgent(Agent):
    def __init__(self, desk: SupportDesk | None = None) -> None:
        super().__init__(instructions=INSTRUCTIONS)
        self.desk = desk or SupportDesk()

    @function_tool
    async def check_outage(self, context: RunContext, area: str) -> str:
        """Check whether there is a known service outage in an area.

        Args:
            area: The caller's town name or five-digit ZIP code.
        """
        return self.desk.check_outage(area)

    @function_tool
    async def lookup_account(self, context: RunContext, account_number: str) -> str:
        """Look up a customer account: holder, plan and status.

        Args:
            account_number: The account number, digits only.
        """
        return self.desk.lookup_account(account_number)

    @function_tool
    async def billing_summary(self, context: RunContext, account_number: str) -> str:
        """Get the balance due, due date and last payment of an account.

        Args:
            account_number: The account number, digits only.
        """
        return self.desk.billing_summary(account_number)

    @function_tool
    async def create_ticket(self, context: RunContext, summary: str) -> str:
        """Open a repair ticket; a technician calls the customer back.

        Args:
            summary: The problem in the caller's words.
        """
        return self.desk.create_ticket(summary)

    @function_tool
    async def transfer_to_human(self, context: RunContext, reason: str) -> str:
        """Transfer the caller to a human support agent.

        Args:
            reason: Why the caller wants a person, in their words.
        """
        # No live transfer target exists in the embedded set-up: a person calls back.
        log.info("transfer requested", extra={"reason": reason})
        return self.desk.request_callback(reason)
