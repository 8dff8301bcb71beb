"""The worker's admission against the real sidecar app served on 127.0.0.1: a call gets a
lease, a call over the limit is refused with a reason the caller can hear, and a released
lease frees its slot."""

from __future__ import annotations

import pytest

from agent.admission import (
    ADMISSION_ATTR,
    LEASE_ATTR,
    MESSAGE_ATTR,
    ORG_ATTR,
    REASON_ATTR,
    make_request_handler,
)
from agent.settings import Settings
from agent.sidecar_client import SidecarClient
from agent.worker import start_sidecar_link
from billing.api.app import create_app
from storage.db import session_scope
from tests.api_client import SERVICE_TOKEN, make_config, serving
from tests.billing_seed import seed_org
from tests.test_worker_admission import FakeJob, FakeJobRequest


@pytest.fixture
def one_call_org(engine) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=1, max_concurrent_calls=1)
        assert org.id is not None
        return org.id


async def test_second_call_is_refused_until_the_first_releases(
    engine, database_url, tmp_path, one_call_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        handler = make_request_handler(Settings(), client)
        meta = f'{{"organisation_id": {one_call_org}}}'

        first = FakeJobRequest(FakeJob("call-1", meta))
        await handler(first)
        assert first.accepted is not None
        assert first.accepted[ADMISSION_ATTR] == "admitted"
        assert first.accepted[ORG_ATTR] == str(one_call_org)
        lease = first.accepted[LEASE_ATTR]
        assert await client.heartbeat(lease)

        second = FakeJobRequest(FakeJob("call-2", meta))
        await handler(second)
        assert second.accepted is not None
        assert second.accepted[ADMISSION_ATTR] == "refused"
        assert second.accepted[REASON_ATTR] == "concurrent_calls_limit"
        assert second.accepted[MESSAGE_ATTR]

        await client.release(lease)
        assert not await client.heartbeat(lease)
        third = FakeJobRequest(FakeJob("call-3", meta))
        await handler(third)
        assert third.accepted is not None and third.accepted[ADMISSION_ATTR] == "admitted"
        await client.aclose()


async def test_wrong_service_token_is_treated_as_unavailable(
    engine, database_url, tmp_path, one_call_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, "not-the-token-0123456789")
        req = FakeJobRequest(FakeJob("call-1", f'{{"organisation_id": {one_call_org}}}'))
        await make_request_handler(Settings(admission_fail_open=False), client)(req)
        await client.aclose()
    assert req.accepted is not None and req.accepted[REASON_ATTR] == "billing_unavailable"


def test_the_worker_announces_itself_to_the_sidecar(engine, database_url, tmp_path):
    import time

    from billing.api.resources import resources_of

    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        settings = Settings(
            sidecar_url=url, sidecar_service_token=SERVICE_TOKEN, data_dir=tmp_path / "data"
        )
        stop = start_sidecar_link(settings)
        assert stop is not None
        try:
            deadline = time.monotonic() + 10
            while resources_of(app).workers.count() < 1:
                assert time.monotonic() < deadline, "no worker heartbeat reached the sidecar"
                time.sleep(0.05)
        finally:
            stop.set()


def test_no_sidecar_link_without_a_sidecar_url():
    assert start_sidecar_link(Settings(sidecar_url="")) is None
