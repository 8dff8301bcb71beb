"""First-run set-up: the default plans, and an organisation with its first admin and key.

Used by ``python agent.py sidecar bootstrap`` and by tests. Nothing here commits: run it
in ``storage.db.session_scope`` so the organisation, its admin, the key and their audit
rows are created together or not at all.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from billing.audit import SYSTEM_ACTOR, record_audit
from billing.keys import issue_key
from storage.models import Organisation, Plan, Role, User

DEFAULT_PLANS: tuple[dict[str, Any], ...] = (
    {
        "name": "starter",
        "currency": "USD",
        "prepaid": False,
        "max_agents": 3,
        "max_concurrent_calls": 5,
        "monthly_minutes": 1_000,
        "price_per_minute_minor": 5,
        "price_per_stt_minute_minor": 1,
        "price_per_1k_llm_input_tokens_minor": 1,
        "price_per_1k_llm_output_tokens_minor": 2,
        "price_per_1k_tts_characters_minor": 3,
    },
    {
        "name": "prepaid",
        "currency": "USD",
        "prepaid": True,
        "max_agents": 5,
        "max_concurrent_calls": 10,
        "monthly_minutes": 5_000,
        "price_per_minute_minor": 4,
        "price_per_stt_minute_minor": 1,
        "price_per_1k_llm_input_tokens_minor": 1,
        "price_per_1k_llm_output_tokens_minor": 2,
        "price_per_1k_tts_characters_minor": 3,
    },
    {
        "name": "scale",
        "currency": "USD",
        "prepaid": False,
        "max_agents": 50,
        "max_concurrent_calls": 100,
        "monthly_minutes": 100_000,
        "price_per_minute_minor": 3,
        "price_per_stt_minute_minor": 1,
        "price_per_1k_llm_input_tokens_minor": 1,
        "price_per_1k_llm_output_tokens_minor": 1,
        "price_per_1k_tts_characters_minor": 2,
    },
)
"""Prices in US cents per minute, per minute of STT audio, per 1000 tokens or characters."""


class UnknownPlanError(LookupError):
    """No plan has the requested name."""


def ensure_default_plans(session: Session) -> list[Plan]:
    """Add each of :data:`DEFAULT_PLANS` that is missing (by name) and return all of them.

    Existing plans are left as they are, so an operator's changed prices survive a second
    bootstrap.
    """
    plans = []
    for values in DEFAULT_PLANS:
        plan = session.exec(select(Plan).where(Plan.name == values["name"])).first()
        if plan is None:
            plan = Plan(**values)
            session.add(plan)
        plans.append(plan)
    session.flush()
    return plans


def create_organisation(
    session: Session, name: str, plan_name: str, admin_email: str
) -> tuple[Organisation, str]:
    """An organisation on ``plan_name`` (billed in the plan's currency) with one admin user
    and an API key for that admin: returns the organisation and the key's plaintext, which
    is shown this once and stored only as a hash.

    Raises UnknownPlanError for a plan name that does not exist (call
    :func:`ensure_default_plans` first) and ValueError for an empty name or an email
    without "@".
    """
    if not name.strip():
        raise ValueError("organisation name must not be empty")
    if "@" not in admin_email:
        raise ValueError("admin email must be an email address")
    plan = session.exec(select(Plan).where(Plan.name == plan_name)).first()
    if plan is None or plan.id is None:
        raise UnknownPlanError(f"no plan named {plan_name!r}")
    organisation = Organisation(name=name.strip(), plan_id=plan.id, currency=plan.currency)
    session.add(organisation)
    session.flush()
    assert organisation.id is not None  # flushed
    admin = User(organisation_id=organisation.id, email=admin_email, role=Role.admin)
    session.add(admin)
    session.flush()
    api_key, plaintext = issue_key(session, admin)
    for action, subject, detail in (
        ("organisation.created", f"organisation:{organisation.id}", {"plan": plan.name}),
        ("user.created", f"user:{admin.id}", {"role": Role.admin.value}),
        ("key.issued", f"key:{api_key.prefix}", {"user_id": admin.id}),
    ):
        record_audit(
            session,
            organisation_id=organisation.id,
            actor=SYSTEM_ACTOR,
            action=action,
            subject=subject,
            detail=detail,
        )
    return organisation, plaintext
