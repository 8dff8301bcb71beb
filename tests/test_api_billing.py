"""What an organisation reads about its money: the organisation, balance and monthly
usage, as the ledger has them."""

from __future__ import annotations

from storage.models import Role, utcnow
from tests.api_client import ROOMY_PLAN, SERVICE_HEADERS, Member, SidecarApi, billing_event


def _charged_org(sidecar: SidecarApi) -> Member:
    """An organisation billed for 5 call minutes (50 cents) and 2 k TTS characters."""
    seed = sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    events = [
        billing_event(org, call, 300),
        billing_event(org, call, 2000, kind="tts_characters"),
    ]
    response = sidecar.client.post(
        "/internal/billing-events", json={"events": events}, headers=SERVICE_HEADERS
    )
    assert response.status_code == 200
    return seed.member(org, Role.viewer)


def test_the_organisation_shows_its_plan_and_balance(shared_sidecar: SidecarApi) -> None:
    viewer = _charged_org(shared_sidecar)
    body = shared_sidecar.client.get("/v1/organisation", headers=viewer.headers).json()
    assert body["id"] == viewer.organisation_id
    assert body["plan"]["max_agents"] == ROOMY_PLAN["max_agents"]
    assert body["balance_minor"] == -50
    assert body["currency"] == "USD"


def test_the_balance_is_the_ledgers(shared_sidecar: SidecarApi) -> None:
    viewer = _charged_org(shared_sidecar)
    body = shared_sidecar.client.get("/v1/balance", headers=viewer.headers).json()
    assert body == {"balance_minor": -50, "currency": "USD"}


def test_usage_defaults_to_the_current_month(shared_sidecar: SidecarApi) -> None:
    viewer = _charged_org(shared_sidecar)
    body = shared_sidecar.client.get("/v1/usage", headers=viewer.headers).json()
    now = utcnow()
    assert (body["year"], body["month"]) == (now.year, now.month)
    assert body["quantities"]["call_seconds"] == 300
    assert body["quantities"]["tts_characters"] == 2000
    assert body["quantities"]["llm_input_tokens"] == 0
    assert (body["amount_minor"], body["currency"]) == (50, "USD")


def test_usage_of_another_month_is_empty(shared_sidecar: SidecarApi) -> None:
    viewer = _charged_org(shared_sidecar)
    body = shared_sidecar.client.get(
        "/v1/usage", params={"year": 2001, "month": 1}, headers=viewer.headers
    ).json()
    assert body["amount_minor"] == 0
    assert set(body["quantities"].values()) == {0}


def test_an_impossible_month_is_422(shared_sidecar: SidecarApi) -> None:
    viewer = _charged_org(shared_sidecar)
    response = shared_sidecar.client.get("/v1/usage", params={"month": 13}, headers=viewer.headers)
    assert response.status_code == 422
