"""Retention and erasure: an organisation's recordings older than its retention are
deleted by the sweep (file, then row, with an audit entry); a call's recordings and
caller number are erased on request with a report, its billing left whole; the settings
and the erasure are for admins only, and malformed values are refused."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from billing.retention import purge_expired_recordings
from storage.models import (
    AuditLog,
    Call,
    Organisation,
    Recording,
    Role,
    UsageKind,
    UsageRecord,
    utcnow,
)
from tests.api_client import SidecarApi

REPO = Path(__file__).resolve().parents[1]


def _age(api: SidecarApi, recording_id: int, days: float) -> None:
    with Session(api.engine) as session:
        row = session.get(Recording, recording_id)
        assert row is not None
        row.created_at = utcnow() - timedelta(days=days)
        session.add(row)
        session.commit()


def _retention(api: SidecarApi, org: int, days: int | None) -> None:
    with Session(api.engine) as session:
        row = session.get(Organisation, org)
        assert row is not None
        row.recording_retention_days = days
        session.add(row)
        session.commit()


def test_the_sweep_deletes_only_what_is_past_each_organisations_retention(sidecar_api):
    api, seed = sidecar_api, sidecar_api.seed
    keeps_30, keeps_all = seed.organisation(), seed.organisation()
    _retention(api, keeps_30, 30)
    old = seed.recording(keeps_30, seed.call(keeps_30, None))
    new = seed.recording(keeps_30, seed.call(keeps_30, None))
    forever = seed.recording(keeps_all, seed.call(keeps_all, None))
    _age(api, old, 31)
    _age(api, new, 29)
    _age(api, forever, 400)

    assert purge_expired_recordings(api.engine, api.config.recordings_dir) == {keeps_30: 1}
    rows = {r.id: r for r in seed_rows(api, Recording)}
    assert rows[old].deleted_at is not None and rows[new].deleted_at is None
    assert rows[forever].deleted_at is None
    assert not (api.config.recordings_dir / rows[old].path).exists()
    assert (api.config.recordings_dir / rows[new].path).exists()
    [entry] = [a for a in seed_rows(api, AuditLog) if a.action == "recordings.expired"]
    assert entry.organisation_id == keeps_30 and entry.actor == "system:retention"
    assert purge_expired_recordings(api.engine, api.config.recordings_dir) == {}


def seed_rows(api: SidecarApi, model):  # type: ignore[no-untyped-def]
    with Session(api.engine) as session:
        return list(session.exec(select(model)).all())


def test_admins_set_the_retention_and_bad_values_are_refused(sidecar_api):
    api, seed = sidecar_api, sidecar_api.seed
    org = seed.organisation()
    admin, viewer = seed.member(org, Role.admin), seed.member(org, Role.viewer)
    client = api.client
    resp = client.patch("/v1/organisation", json={"recording_retention_days": 30},
                        headers=admin.headers)  # fmt: skip
    assert resp.status_code == 200 and resp.json()["recording_retention_days"] == 30
    assert (
        client.get("/v1/organisation", headers=viewer.headers).json()["recording_retention_days"]
        == 30
    )
    denied = client.patch("/v1/organisation", json={"recording_retention_days": 1},
                          headers=viewer.headers)  # fmt: skip
    assert denied.status_code == 403
    for bad in ({"recording_retention_days": 0}, {"recording_retention_days": 4000},
                {"recording_retention_days": "x"}, {}):  # fmt: skip
        assert client.patch("/v1/organisation", json=bad, headers=admin.headers).status_code == 422
    cleared = client.patch("/v1/organisation", json={"recording_retention_days": None},
                           headers=admin.headers)  # fmt: skip
    assert cleared.json()["recording_retention_days"] is None
    assert any(a.action == "organisation.changed" for a in seed_rows(api, AuditLog))


def test_erasing_a_call_removes_its_voice_and_number_and_keeps_its_billing(sidecar_api):
    api, seed = sidecar_api, sidecar_api.seed
    org, other = seed.organisation(), seed.organisation()
    admin = seed.member(org, Role.admin)
    agent_user = seed.member(org, Role.agent)
    call = seed.call(org, None)
    with Session(api.engine) as session:
        row = session.get(Call, call)
        assert row is not None
        row.caller_number_masked = "+*******4321"
        session.add(row)
        session.add(UsageRecord(organisation_id=org, call_id=call,
                                kind=UsageKind.call_seconds, quantity=90))  # fmt: skip
        session.commit()
    recording = seed.recording(org, call)
    path = api.config.recordings_dir / seed.get(Recording, recording).path

    erase = lambda c, who: api.client.post(f"/v1/calls/{c}/erase", headers=who.headers)  # noqa: E731
    assert erase(call, agent_user).status_code == 403
    resp = erase(call, admin)
    assert resp.status_code == 200
    assert resp.json() == {"call_id": call, "recordings_deleted": 1, "files_deleted": 1,
                           "caller_number_removed": True}  # fmt: skip
    assert not path.exists() and seed.get(Recording, recording) is None
    assert seed.get(Call, call).caller_number_masked is None
    assert seed.count(UsageRecord, call_id=call) == 1  # the bill stays
    again = erase(call, admin).json()
    assert (again["recordings_deleted"], again["caller_number_removed"]) == (0, False)
    theirs = seed.call(other, None)
    assert erase(theirs, admin).status_code == 404
    assert erase("no-such-call", admin).status_code == 404
    assert [a for a in seed_rows(api, AuditLog) if a.action == "call.erased"]


def test_the_purge_command_sweeps_once(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}", "DATA_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    command = [sys.executable, str(REPO / "agent.py"), "sidecar", "purge-expired"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "0 expired recording(s) deleted in 0 organisation(s)" in proc.stdout


@pytest.mark.parametrize("days", [1, 3650])
def test_retention_bounds_are_accepted(sidecar_api, days):
    org = sidecar_api.seed.organisation()
    admin = sidecar_api.seed.member(org, Role.admin)
    resp = sidecar_api.client.patch(
        "/v1/organisation", json={"recording_retention_days": days}, headers=admin.headers
    )
    assert resp.status_code == 200


async def test_the_serving_sidecar_sweeps_by_itself(engine, database_url, tmp_path):
    import asyncio

    from billing.api.app import create_app
    from tests.api_client import Seeder, make_config, serving

    seed = Seeder(engine, tmp_path / "rec")
    org = seed.organisation()
    with Session(engine) as session:
        row = session.get(Organisation, org)
        assert row is not None
        row.recording_retention_days = 1
        session.add(row)
        session.commit()
    old = seed.recording(org, seed.call(org, None))
    with Session(engine) as session:
        rec = session.get(Recording, old)
        assert rec is not None
        rec.created_at = utcnow() - timedelta(days=2)
        session.add(rec)
        session.commit()
    config = make_config(database_url, tmp_path / "rec", retention_sweep_s=0.05)
    with serving(create_app(config, engine=engine)):
        for _ in range(200):  # 10 s at most
            if seed.get(Recording, old).deleted_at is not None:
                break
            await asyncio.sleep(0.05)
    assert seed.get(Recording, old).deleted_at is not None


def test_a_callers_number_erases_all_its_calls_and_nothing_else(engine, database_url, tmp_path):
    from fastapi.testclient import TestClient

    from billing.api.app import create_app
    from billing.internal_api import caller_number_hash
    from tests.api_client import Seeder, make_config

    secret = "caller-id-secret-0123456789"
    config = make_config(database_url, tmp_path / "rec", caller_id_secret=secret)
    seed = Seeder(engine, config.recordings_dir)
    org, other = seed.organisation(), seed.organisation()
    admin, viewer = seed.member(org, Role.admin), seed.member(org, Role.viewer)
    theirs = caller_number_hash(secret, "+15557654321")
    calls = {name: seed.call(o, None) for name, o in
             (("a", org), ("b", org), ("someone_else", org), ("other_org", other))}  # fmt: skip
    with Session(engine) as session:
        for name, call_id in calls.items():
            row = session.get(Call, call_id)
            assert row is not None
            row.caller_number_hash = (
                caller_number_hash(secret, "+15550000000") if name == "someone_else" else theirs
            )
            row.caller_number_masked = "+*******4321"
            session.add(row)
        session.commit()
    for call_id in calls.values():
        seed.recording(org if call_id != calls["other_org"] else other, call_id)

    with TestClient(create_app(config, engine=engine)) as client:
        post = lambda body, who: client.post(  # noqa: E731
            "/v1/erasures/caller-number", json=body, headers=who.headers
        )
        assert post({"number": "+15557654321"}, viewer).status_code == 403
        for bad in ({"number": "5557654321"}, {"number": "+1 555"}, {}):
            assert post(bad, admin).status_code == 422
        resp = post({"number": "+15557654321"}, admin)
        assert resp.status_code == 200
        assert resp.json() == {"calls_erased": 2, "recordings_deleted": 2, "files_deleted": 2}
        again = post({"number": "+15557654321"}, admin).json()
        assert again["calls_erased"] == 0
    left = {r.call_id for r in seed_rows_engine(engine, Recording)}
    assert left == {calls["someone_else"], calls["other_org"]}
    for name in ("a", "b"):
        row = seed.get(Call, calls[name])
        assert row.caller_number_masked is None and row.caller_number_hash is None
    assert seed.get(Call, calls["other_org"]).caller_number_hash == theirs

    bare = make_config(database_url, tmp_path / "rec")
    with TestClient(create_app(bare, engine=engine)) as client:
        resp = client.post("/v1/erasures/caller-number", json={"number": "+15557654321"},
                           headers=admin.headers)  # fmt: skip
        assert resp.status_code == 503 and "CALLER_ID_SECRET" in resp.json()["detail"]


def seed_rows_engine(engine, model):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return list(session.exec(select(model)).all())


def test_the_worker_keeps_an_hmac_of_the_callers_number_never_the_number(tmp_path):
    from agent.admission import AdmissionDecision, CallIdentity
    from agent.call import Call as LiveCall
    from agent.profile import builtin_profile
    from agent.settings import Settings
    from billing.internal_api import caller_number_hash

    def facts(secret: str):  # type: ignore[no-untyped-def]
        settings = Settings(_env_file=None, data_dir=tmp_path, caller_id_secret=secret)  # type: ignore[call-arg]
        call = LiveCall(CallIdentity("c", 1, None, None), AdmissionDecision(status="unleased"),
                        builtin_profile(), settings=settings, vad_model=None,  # type: ignore[arg-type]
                        caller_number="+15557654321")  # fmt: skip
        return call.facts()

    with_secret = facts("caller-id-secret-0123456789")
    assert with_secret.caller_number_hash == caller_number_hash(
        "caller-id-secret-0123456789", "+1 (555) 765-4321"
    )
    assert "7654321" not in repr(with_secret)
    assert facts("").caller_number_hash is None


def test_erasing_an_organisation_leaves_nothing_of_it_and_everything_of_the_others(
    engine, database_url, tmp_path
):
    from billing.audit import record_audit
    from storage.db import make_engine
    from storage.models import Agent, ApiKey, User
    from tests.api_client import Seeder

    rec_dir = tmp_path / "data" / "recordings"
    seed = Seeder(engine, rec_dir)
    gone, stays = seed.organisation(), seed.organisation()
    files = {}
    for org in (gone, stays):
        member = seed.member(org, Role.admin)
        agent = seed.agent(org, member.user_id)
        call = seed.call(org, agent)
        files[org] = rec_dir / seed.get(Recording, seed.recording(org, call)).path
        with Session(engine) as session:
            session.add(UsageRecord(organisation_id=org, call_id=call,
                                    kind=UsageKind.call_seconds, quantity=60))  # fmt: skip
            record_audit(session, organisation_id=org, actor="test", action="x", subject="y")
            session.commit()
    name = seed.get(Organisation, gone).name
    env = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "PATH": "/usr/bin:/bin",
    }
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "agent.py"), "sidecar", "erase-organisation", *extra],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip

    wrong = run("--id", str(gone), "--confirm", "not its name")
    assert wrong.returncode == 1 and "nothing was deleted" in wrong.stderr
    assert run("--id", "999999", "--confirm", "x").returncode == 1
    assert files[gone].exists()

    done = run("--id", str(gone), "--confirm", name)
    assert done.returncode == 0, done.stderr
    assert "1 recording files" in done.stdout and "1 organisations" in done.stdout
    assert not files[gone].exists() and files[stays].exists()
    check = make_engine(database_url)
    try:
        with Session(check) as session:
            for model in (
                Organisation,
                User,
                ApiKey,
                Agent,
                Call,
                UsageRecord,
                Recording,
                AuditLog,
            ):
                column = model.id if model is Organisation else model.organisation_id  # type: ignore[attr-defined]
                rows = session.exec(select(column).where(column == gone)).all()
                assert rows == [], model.__name__
                assert session.exec(select(model)).first() is not None, model.__name__
    finally:
        check.dispose()
