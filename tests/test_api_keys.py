"""API keys: shown once, stored as a salted hash, accepted only in ``X-API-Key``, and
revocable and rotatable."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

import pytest
from sqlmodel import Session, select

import billing.keys
from billing.keys import LAST_USED_RESOLUTION, authenticate, issue_key, key_prefix_of
from storage.models import ApiKey, AuditLog, Role, User, utcnow
from tests.api_client import Member, SidecarApi


@pytest.fixture
def admin(shared_sidecar: SidecarApi) -> Member:
    seed = shared_sidecar.seed
    return seed.member(seed.organisation(), Role.admin)


def test_a_key_has_the_documented_form_and_its_prefix_is_stored(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    assert re.fullmatch(r"va_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", admin.api_key)
    assert key_prefix_of(admin.api_key) == admin.key_prefix
    assert shared_sidecar.seed.key_row(admin).prefix == admin.key_prefix


def test_only_a_salted_sha256_of_the_key_is_stored(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    row = shared_sidecar.seed.key_row(admin)
    assert row.key_hash == hashlib.sha256((row.salt + admin.api_key).encode()).hexdigest()
    assert len(row.salt) >= 32
    secret = admin.api_key.split("_", 2)[2]
    assert all(secret not in str(value) for value in row.model_dump().values())


def test_two_keys_never_share_a_salt(shared_sidecar: SidecarApi) -> None:
    with Session(shared_sidecar.engine) as session:
        user = User(
            organisation_id=shared_sidecar.seed.organisation(), email="s@x.io", role=Role.admin
        )
        session.add(user)
        session.flush()
        first, _ = issue_key(session, user)
        second, _ = issue_key(session, user)
        assert first.salt != second.salt
        session.rollback()


def test_a_created_key_is_shown_in_that_response_only(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    client = shared_sidecar.client
    created = client.post("/v1/keys", json={}, headers=admin.headers)
    assert created.status_code == 201
    plaintext = created.json()["api_key"]
    assert client.get("/v1/organisation", headers={"X-API-Key": plaintext}).status_code == 200
    listed = client.get("/v1/keys", headers=admin.headers)
    assert plaintext not in listed.text
    assert all("api_key" not in key and "key_hash" not in key for key in listed.json())
    audit = client.get("/v1/audit-log", headers=admin.headers)
    assert plaintext not in audit.text


def test_using_a_key_records_when_it_was_last_used(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    assert shared_sidecar.seed.key_row(admin).last_used_at is None
    before = utcnow()
    assert shared_sidecar.client.get("/v1/agents", headers=admin.headers).status_code == 200
    last_used_at = shared_sidecar.seed.key_row(admin).last_used_at
    assert last_used_at is not None and last_used_at >= before


def test_last_used_at_is_written_at_most_once_per_resolution(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    start = utcnow()
    with Session(shared_sidecar.engine) as session:
        found = authenticate(session, admin.api_key, now=start)
        assert found is not None
        session.commit()
        authenticate(session, admin.api_key, now=start + LAST_USED_RESOLUTION / 2)
        session.commit()
        assert shared_sidecar.seed.key_row(admin).last_used_at == start
        later = start + LAST_USED_RESOLUTION + timedelta(seconds=1)
        authenticate(session, admin.api_key, now=later)
        session.commit()
    assert shared_sidecar.seed.key_row(admin).last_used_at == later


def test_a_revoked_key_is_refused(shared_sidecar: SidecarApi, admin: Member) -> None:
    client = shared_sidecar.client
    assert client.delete(f"/v1/keys/{admin.key_id}", headers=admin.headers).status_code == 204
    response = client.get("/v1/agents", headers=admin.headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"


def test_revoking_twice_is_harmless_and_audited_once(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    client = shared_sidecar.client
    other_admin = shared_sidecar.seed.member(admin.organisation_id, Role.admin)
    for _ in range(2):
        response = client.delete(f"/v1/keys/{admin.key_id}", headers=other_admin.headers)
        assert response.status_code == 204
    assert (
        shared_sidecar.seed.count(AuditLog, action="key.revoked", subject=f"key:{admin.key_prefix}")
        == 1
    )


def test_rotation_gives_a_working_key_and_revokes_the_old_one(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    client = shared_sidecar.client
    rotated = client.post(f"/v1/keys/{admin.key_id}/rotate", headers=admin.headers)
    assert rotated.status_code == 201
    new_key = rotated.json()["api_key"]
    assert rotated.json()["key"]["user_id"] == admin.user_id
    assert client.get("/v1/agents", headers={"X-API-Key": new_key}).status_code == 200
    assert client.get("/v1/agents", headers=admin.headers).status_code == 401
    assert shared_sidecar.seed.key_row(admin).revoked_at is not None


def test_a_revoked_key_cannot_be_rotated(shared_sidecar: SidecarApi, admin: Member) -> None:
    client = shared_sidecar.client
    other_admin = shared_sidecar.seed.member(admin.organisation_id, Role.admin)
    client.delete(f"/v1/keys/{admin.key_id}", headers=other_admin.headers)
    response = client.post(f"/v1/keys/{admin.key_id}/rotate", headers=other_admin.headers)
    assert response.status_code == 409
    assert response.json()["reason"] == "key_revoked"


def test_a_failed_rotation_leaves_the_old_key_working(
    shared_sidecar: SidecarApi, admin: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_issue(*_args: object) -> None:
        raise RuntimeError("no entropy today")

    monkeypatch.setattr(billing.keys, "issue_key", broken_issue)
    failed = shared_sidecar.client.post(f"/v1/keys/{admin.key_id}/rotate", headers=admin.headers)
    monkeypatch.undo()
    assert failed.status_code == 500
    assert "entropy" not in failed.text  # the cause is logged, never shown
    assert shared_sidecar.seed.key_row(admin).revoked_at is None
    assert shared_sidecar.client.get("/v1/agents", headers=admin.headers).status_code == 200


def test_an_admin_issues_a_key_for_another_user(shared_sidecar: SidecarApi, admin: Member) -> None:
    viewer = shared_sidecar.seed.member(admin.organisation_id, Role.viewer)
    created = shared_sidecar.client.post(
        "/v1/keys", json={"user_id": viewer.user_id}, headers=admin.headers
    )
    assert created.status_code == 201
    key = created.json()["api_key"]
    # the new key acts as the viewer, not as the admin who issued it
    assert shared_sidecar.client.get("/v1/users", headers={"X-API-Key": key}).status_code == 403


def test_key_changes_are_in_the_audit_log_with_prefixes_only(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    client = shared_sidecar.client
    issued = client.post("/v1/keys", json={}, headers=admin.headers).json()
    rotated = client.post(f"/v1/keys/{issued['key']['id']}/rotate", headers=admin.headers).json()
    client.delete(f"/v1/keys/{rotated['key']['id']}", headers=admin.headers)
    with Session(shared_sidecar.engine) as session:
        rows = session.exec(
            select(AuditLog).where(AuditLog.organisation_id == admin.organisation_id)
        ).all()
    actions = [(row.action, row.subject, row.actor) for row in rows]
    assert actions == [
        ("key.issued", f"key:{issued['key']['prefix']}", f"key:{admin.key_prefix}"),
        ("key.rotated", f"key:{issued['key']['prefix']}", f"key:{admin.key_prefix}"),
        ("key.revoked", f"key:{rotated['key']['prefix']}", f"key:{admin.key_prefix}"),
    ]
    details = json.dumps([row.detail for row in rows])
    assert issued["api_key"] not in details and rotated["api_key"] not in details


@pytest.mark.parametrize("name", ["api_key", "key", "token", "X-API-Key", "anything"])
def test_a_key_in_the_query_string_is_refused_even_with_a_good_header(
    shared_sidecar: SidecarApi, admin: Member, name: str
) -> None:
    response = shared_sidecar.client.get(
        "/v1/agents", params={name: admin.api_key}, headers=admin.headers
    )
    assert response.status_code == 401
    assert "X-API-Key header" in response.json()["detail"]


@pytest.mark.parametrize("scheme", ["Bearer", "ApiKey", "Basic"])
def test_a_key_in_the_authorization_header_is_refused(
    shared_sidecar: SidecarApi, admin: Member, scheme: str
) -> None:
    for extra in ({}, admin.headers):
        response = shared_sidecar.client.get(
            "/v1/agents", headers={"Authorization": f"{scheme} {admin.api_key}", **extra}
        )
        assert response.status_code == 401
        assert "X-API-Key header" in response.json()["detail"]


@pytest.mark.parametrize(
    "bad_key",
    [
        "not-a-key",
        "va_000000000000_" + "A" * 43,  # well formed, unknown prefix
        "va_zzzzzzzzzzzz_" + "A" * 43,  # malformed prefix
    ],
)
def test_an_unknown_or_malformed_key_is_refused(shared_sidecar: SidecarApi, bad_key: str) -> None:
    response = shared_sidecar.client.get("/v1/agents", headers={"X-API-Key": bad_key})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'


def test_a_real_prefix_with_a_wrong_secret_is_refused(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    forged = f"va_{admin.key_prefix}_" + "A" * 43
    response = shared_sidecar.client.get("/v1/agents", headers={"X-API-Key": forged})
    assert response.status_code == 401
    assert shared_sidecar.seed.key_row(admin).last_used_at is None


def test_the_plaintext_is_stored_nowhere(shared_sidecar: SidecarApi, admin: Member) -> None:
    with Session(shared_sidecar.engine) as session:
        rows = session.exec(select(ApiKey).where(ApiKey.user_id == admin.user_id)).all()
        audit = session.exec(
            select(AuditLog).where(AuditLog.organisation_id == admin.organisation_id)
        ).all()
    dumped = json.dumps([r.model_dump(mode="json") for r in [*rows, *audit]])
    assert admin.api_key not in dumped
