"""Setting the sidecar up: its configuration refuses weak secrets, and bootstrap makes the
default plans and a first organisation whose admin key works."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from billing.bootstrap import (
    DEFAULT_PLANS,
    UnknownPlanError,
    create_organisation,
    ensure_default_plans,
)
from storage.models import AuditLog, Plan, User
from tests.api_client import SidecarApi, make_config


@pytest.mark.parametrize(
    "change",
    [
        {"service_token": ""},
        {"service_token": "short"},
        {"payment_webhook_secrets": {"acmepay": "x" * 15}},
        {"payment_webhook_secrets": {"Acme": "x" * 16}},
        {"payment_webhook_secrets": {"": "x" * 16}},
        {"rate_limit_webhook_per_ip": 0},
        {"rate_limit_per_key": -1},
        {"notify_webhook_url": "https://hooks.example.com/n"},
        {"max_body_bytes": 0},
        {"rate_limit_per_ip": 0},
        {"rate_limit_window_s": 0.0},
        {"lease_ttl_s": -1.0},
    ],
)
def test_a_bad_configuration_is_refused(change: dict[str, Any]) -> None:
    config = make_config("sqlite://", Path("recordings"))
    with pytest.raises(ValueError):
        replace(config, **change)


def test_default_plans_are_created_once(shared_sidecar: SidecarApi) -> None:
    with Session(shared_sidecar.engine) as session:
        ensure_default_plans(session)
        session.commit()
        ensure_default_plans(session)
        session.commit()
        names = session.exec(select(Plan.name)).all()
    for plan in DEFAULT_PLANS:
        assert names.count(plan["name"]) == 1
    plans = {p["name"]: p for p in DEFAULT_PLANS}
    assert plans["starter"]["currency"] == "USD" and not plans["starter"]["prepaid"]
    assert plans["prepaid"]["currency"] == "USD" and plans["prepaid"]["prepaid"]


def test_bootstrap_makes_an_organisation_with_a_working_admin_key(
    shared_sidecar: SidecarApi,
) -> None:
    with Session(shared_sidecar.engine) as session:
        ensure_default_plans(session)
        organisation, api_key = create_organisation(session, "Acme", "prepaid", "boss@acme.test")
        session.commit()
        org_id = organisation.id
        admins = session.exec(select(User).where(User.organisation_id == org_id)).all()
        audit = session.exec(
            select(AuditLog.action).where(AuditLog.organisation_id == org_id)
        ).all()
    assert [(u.email, u.role) for u in admins] == [("boss@acme.test", "admin")]
    assert sorted(audit) == ["key.issued", "organisation.created", "user.created"]
    response = shared_sidecar.client.get("/v1/organisation", headers={"X-API-Key": api_key})
    assert response.status_code == 200
    assert response.json()["plan"]["name"] == "prepaid"


def test_bootstrap_refuses_an_unknown_plan(shared_sidecar: SidecarApi) -> None:
    with Session(shared_sidecar.engine) as session, pytest.raises(UnknownPlanError):
        create_organisation(session, "Acme", "platinum", "boss@acme.test")
