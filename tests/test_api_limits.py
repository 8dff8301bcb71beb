"""Bad numbers and surprises at the edge: any integer in any id, paging or quantity field
answers a 4xx (never a 5xx), an error nobody foresaw is a JSON 500 with the security
headers, and the limits the README states are the ones the code enforces."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.api.app import create_app
from billing.pricing import MAX_AMOUNT_MINOR, MAX_QUANTITY
from storage.models import ROW_ID_MAX, Role, UsageKind
from tests.api_client import SERVICE_HEADERS, SidecarApi, billing_event

ANY_INTEGER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
ID_PATHS = [
    ("GET", "/v1/agents/{}"),
    ("PATCH", "/v1/agents/{}"),
    ("DELETE", "/v1/agents/{}"),
    ("GET", "/v1/users/{}"),
    ("PATCH", "/v1/users/{}"),
    ("DELETE", "/v1/users/{}"),
    ("DELETE", "/v1/keys/{}"),
    ("POST", "/v1/keys/{}/rotate"),
    ("GET", "/v1/recordings/{}"),
    ("GET", "/v1/recordings/{}/download"),
    ("DELETE", "/v1/recordings/{}"),
]
LIST_PATHS = ["/v1/agents", "/v1/users", "/v1/keys", "/v1/calls", "/v1/recordings"]


def _admin(api: SidecarApi) -> dict[str, str]:
    return api.seed.member(api.seed.organisation(), Role.admin).headers


@FUZZ
@given(number=ANY_INTEGER)
def test_any_integer_as_an_id_in_a_path_is_a_4xx(shared_sidecar: SidecarApi, number: int) -> None:
    headers = _admin(shared_sidecar)
    for method, path in ID_PATHS:
        body: dict[str, Any] | None = {"name": "x"} if method == "PATCH" else None
        response = shared_sidecar.client.request(
            method, path.format(number), headers=headers, json=body
        )
        assert 400 <= response.status_code < 500, (method, path, number, response.text)


@FUZZ
@given(number=ANY_INTEGER)
def test_any_integer_for_paging_or_filters_is_a_4xx_or_a_page(
    shared_sidecar: SidecarApi, number: int
) -> None:
    headers = _admin(shared_sidecar)
    for path in LIST_PATHS:
        for params in ({"offset": number}, {"limit": number}):
            response = shared_sidecar.client.get(path, params=params, headers=headers)
            assert response.status_code in (200, 422), (path, params, response.text)
    calls = shared_sidecar.client.get("/v1/calls", params={"agent_id": number}, headers=headers)
    assert calls.status_code in (200, 422)


@FUZZ
@given(number=ANY_INTEGER)
def test_any_integer_in_a_body_id_is_a_4xx_or_accepted(
    shared_sidecar: SidecarApi, number: int
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    agent = seed.agent(org, admin.user_id)
    client = shared_sidecar.client
    answers = [
        client.post(
            "/v1/agents", json={"name": "a", "owner_user_id": number}, headers=admin.headers
        ),
        client.patch(f"/v1/agents/{agent}", json={"owner_user_id": number}, headers=admin.headers),
        client.patch(
            f"/v1/agents/{agent}",
            json={"max_concurrent_calls_per_number": number},
            headers=admin.headers,
        ),
        client.post("/v1/keys", json={"user_id": number}, headers=admin.headers),
        client.post(
            "/internal/admissions",
            json={"call_id": "c", "agent_id": number},
            headers=SERVICE_HEADERS,
        ),
        client.post(
            "/internal/admissions",
            json={"call_id": "c", "organisation_id": number},
            headers=SERVICE_HEADERS,
        ),
    ]
    for response in answers:
        assert response.status_code < 500, response.text


@FUZZ
@given(number=ANY_INTEGER, kind=st.sampled_from(UsageKind))
def test_any_integer_as_a_quantity_or_organisation_never_fails_the_batch(
    shared_sidecar: SidecarApi, number: int, kind: UsageKind
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    call = seed.call(org, None)
    odd = [
        {**billing_event(org, call, 1, kind=kind.value, sequence=1), "quantity": number},
        {**billing_event(org, call, 1, kind=kind.value, sequence=2), "organisation_id": number},
    ]
    good = billing_event(org, call, 60, sequence=3)
    response = shared_sidecar.client.post(
        "/internal/billing-events", json={"events": [*odd, good]}, headers=SERVICE_HEADERS
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[2]["status"] == "applied"
    fits = 0 <= number <= MAX_QUANTITY[kind]
    assert results[0]["status"] == ("applied" if fits else "rejected")
    balance = shared_sidecar.client.get(
        "/v1/balance", headers=seed.member(org, Role.admin).headers
    ).json()["balance_minor"]
    assert isinstance(balance, int)


def test_the_largest_payment_and_ids_at_the_edge_of_32_bits(shared_sidecar: SidecarApi) -> None:
    headers = _admin(shared_sidecar)
    assert shared_sidecar.client.get(f"/v1/agents/{ROW_ID_MAX}", headers=headers).status_code == 404
    assert (
        shared_sidecar.client.get(f"/v1/agents/{ROW_ID_MAX + 1}", headers=headers).status_code
        == 422
    )
    assert MAX_AMOUNT_MINOR == 10**12


def test_an_unforeseen_error_is_a_json_500_with_the_security_headers(
    engine, database_url, tmp_path
) -> None:
    from fastapi.testclient import TestClient

    from tests.api_client import make_config

    app = create_app(make_config(database_url, tmp_path / "recordings"), engine=engine)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error; it has been logged"}
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert "a bug" not in response.text
        assert client.get("/health").status_code == 200  # the app goes on serving


def test_a_body_that_is_not_utf8_is_a_documented_400(shared_sidecar: SidecarApi) -> None:
    headers = {**_admin(shared_sidecar), "Content-Type": "application/json"}
    response = shared_sidecar.client.post(
        "/v1/agents", content=b'{"name": "\xff\xfe"}', headers=headers
    )
    assert response.status_code in (400, 422)
    assert "detail" in response.json()
    documented = shared_sidecar.client.get("/openapi.json").json()["paths"]["/v1/agents"]["post"]
    assert str(response.status_code) in documented["responses"]
