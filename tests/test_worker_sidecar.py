"""The worker's admission against the real sidecar app served on 127.0.0.1: a call gets a
lease, a call over the limit is refused with a reason the caller can hear, and a released
lease frees its slot."""

from __future__ import annotations

import pytest

from agent.admission import (
    CallIdentity,
    LeaseKeeper,
    make_request_handler,
)
from agent.settings import Settings
from agent.sidecar_client import SidecarClient
from agent.worker import start_sidecar_link
from billing.api.app import create_app
from storage.db import session_scope
from tests.api_client import SERVICE_TOKEN, make_config, serving
from tests.billing_seed import seed_agent, seed_org
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
        assert first.decision.status == "admitted"
        assert first.decision.organisation_id == one_call_org
        lease = first.decision.lease_id
        assert await client.heartbeat(lease)

        second = FakeJobRequest(FakeJob("call-2", meta))
        await handler(second)
        assert second.accepted is not None
        assert second.decision.status == "refused"
        assert second.decision.reason == "concurrent_calls_limit"
        assert second.decision.message

        await client.release(lease)
        assert not await client.heartbeat(lease)
        third = FakeJobRequest(FakeJob("call-3", meta))
        await handler(third)
        assert third.accepted is not None and third.decision.status == "admitted"
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
    assert req.accepted is not None and req.decision.reason == "billing_unavailable"


async def test_a_lost_lease_is_taken_again_and_counts_against_new_calls(
    engine, database_url, tmp_path, one_call_org
):
    """The lease expires under a live call (heartbeats lost for longer than the TTL): the
    keeper takes it again, over the limit, so the next new call is refused."""
    import asyncio

    config = make_config(database_url, tmp_path / "rec", lease_ttl_s=0.3)
    with serving(create_app(config, engine=engine)) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        handler = make_request_handler(Settings(), client)
        meta = f'{{"organisation_id": {one_call_org}}}'
        live = FakeJobRequest(FakeJob("live", meta))
        await handler(live)
        assert live.accepted is not None and live.decision.status == "admitted"
        lease = f"{one_call_org}:live"
        keeper = LeaseKeeper(client, CallIdentity("live", one_call_org, None, None), lease)

        await asyncio.sleep(0.5)  # the lease expires
        other = FakeJobRequest(FakeJob("other", meta))
        await handler(other)  # and its slot goes to another call
        assert other.accepted is not None and other.decision.status == "admitted"

        await keeper.tick()
        assert keeper.lease_id == lease and await client.heartbeat(lease)
        third = FakeJobRequest(FakeJob("third", meta))
        await handler(third)
        assert third.accepted is not None and third.decision.reason == ("concurrent_calls_limit")

        await keeper.release()
        assert keeper.lease_id is None and not await client.heartbeat(lease)
        await client.aclose()


async def test_a_call_admitted_while_the_sidecar_was_down_takes_a_lease_once_it_is_up(
    engine, database_url, tmp_path, one_call_org, unused_tcp_port
):
    # a closed port refuses at once whatever the timeout; the generous one is for the
    # app's first request, which on a fresh checkout (no bytecode yet) can take over 1 s
    client = SidecarClient(f"http://127.0.0.1:{unused_tcp_port}", SERVICE_TOKEN, timeout_s=15.0)
    keeper = LeaseKeeper(client, CallIdentity("call-1", one_call_org, None, None), None)
    await keeper.tick()  # nobody listens: the call goes on unleased
    assert keeper.lease_id is None

    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app, port=unused_tcp_port):
        await keeper.tick()
        lease = f"{one_call_org}:call-1"
        assert keeper.lease_id == lease and await client.heartbeat(lease)
        await keeper.release()
    await client.aclose()


async def test_a_call_the_sidecar_cannot_place_is_left_alone(
    engine, database_url, tmp_path, one_call_org, caplog
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        keeper = LeaseKeeper(client, CallIdentity("call-1", None, 999_999, None), None)
        with caplog.at_level("INFO", logger="agent.admission"):
            await keeper.tick()
            await keeper.tick()  # given up: no second request
        assert keeper.lease_id is None
        refusals = [r for r in caplog.records if "will not count" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].reason == "unknown_agent"  # type: ignore[attr-defined]
        await client.aclose()


def test_the_worker_announces_itself_to_the_sidecar(engine, database_url, tmp_path):
    import time

    from billing.api.resources import resources_of

    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        settings = Settings(
            sidecar_url=url, sidecar_service_token=SERVICE_TOKEN, data_dir=tmp_path / "data"
        )
        link = start_sidecar_link(settings)
        assert link is not None
        try:
            deadline = time.monotonic() + 10
            while resources_of(app).workers.count() < 1:
                assert time.monotonic() < deadline, "no worker heartbeat reached the sidecar"
                time.sleep(0.05)
        finally:
            link.stop()


def test_no_sidecar_link_without_a_sidecar_url():
    assert start_sidecar_link(Settings(sidecar_url="")) is None


async def test_a_sidecar_error_on_heartbeat_keeps_the_lease_for_the_next_try(
    engine, database_url, tmp_path, one_call_org
):
    """A 401/503 is not a lost lease: the keeper keeps it and heart-beats it next time."""
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        good = SidecarClient(url, SERVICE_TOKEN)
        assert (
            await good.admit(
                "call-1", organisation_id=one_call_org, agent_id=None, dialled_number=None
            )
        ).admitted
        wrong = SidecarClient(url, "not-the-token-0123456789")
        lease = f"{one_call_org}:call-1"
        keeper = LeaseKeeper(wrong, CallIdentity("call-1", one_call_org, None, None), lease)
        await keeper.tick()
        assert keeper.lease_id == lease
        await keeper.release()  # refused too: the lease will expire by its TTL
        assert await good.heartbeat(lease)
        await good.release(lease)
        await wrong.aclose()
        await good.aclose()


async def test_the_lease_is_heart_beaten_three_times_per_ttl_the_sidecar_gives(
    engine, database_url, tmp_path, one_call_org
):
    app = create_app(make_config(database_url, tmp_path / "rec", lease_ttl_s=6.0), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        decision = await client.admit(
            "call-ttl", organisation_id=one_call_org, agent_id=None, dialled_number=None
        )
        assert decision.admitted and decision.lease_id is not None
        keeper = LeaseKeeper(
            client, CallIdentity("call-ttl", one_call_org, None, None), decision.lease_id
        )
        assert keeper.interval_s == 10.0  # until the sidecar has said its TTL
        await keeper.tick()
        assert keeper.interval_s == 2.0
        await keeper.release()
        await client.aclose()


@pytest.mark.parametrize("named_by", ["agent_id", "dialled_number"])
async def test_a_call_found_by_its_agent_or_number_is_metered_to_its_organisation(
    engine, database_url, tmp_path, named_by
):
    """Dispatch metadata often names only the agent or the dialled number: the sidecar's
    answer says whose call it is, so the call is metered and billed, not left free."""
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, admins=1)
        agent = seed_agent(session, org, admin, phone_number="+15550107788")
        org_id, agent_id = org.id, agent.id
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        handler = make_request_handler(Settings(), client)
        meta = {"agent_id": f'{{"agent_id": {agent_id}}}',
                "dialled_number": '{"dialled_number": "+15550107788"}'}[named_by]  # fmt: skip
        request = FakeJobRequest(FakeJob("call-by-agent", meta))
        await handler(request)
        assert request.accepted is not None
        assert request.decision.status == "admitted"
        assert request.decision.organisation_id == org_id
        assert request.decision.agent_id == agent_id
        await client.release(request.decision.lease_id)
        await client.aclose()
