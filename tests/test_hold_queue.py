"""The hold queue: phone callers over their organisation's concurrency limit wait in
arrival order for the next free slot.

The queue store's contract runs on the in-process store and on a real Redis server; the
admission controller is driven by 30 callers against a limit of 5 on both; the sidecar's
API answers 202 with a position; the worker's wait (agent.hold) runs against the real
sidecar app served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.admission import AdmissionDecision, CallIdentity, decide_admission
from agent.hold import HoldQueueWait
from agent.sidecar_client import SidecarClient
from billing.admission import (
    CONCURRENT_CALLS_LIMIT,
    HOLD_QUEUE_FULL,
    AdmissionController,
    AdmissionRequest,
)
from billing.api.app import create_app
from storage.db import session_scope
from storage.hold_queue import HoldQueue, MemoryHoldQueue, RedisHoldQueue
from storage.leases import LeaseStore, MemoryLeaseStore, RedisLeaseStore
from tests.api_client import SERVICE_TOKEN, make_config, serving
from tests.billing_seed import redis_client, seed_org


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Iterator[tuple[HoldQueue, LeaseStore]]:
    """A hold queue and a lease store on the same backend, as one sidecar has them."""
    if request.param == "memory":
        yield MemoryHoldQueue(), MemoryLeaseStore()
        return
    prefix = request.getfixturevalue("redis_prefix")
    with redis_client(request.getfixturevalue("redis_server_url"), prefix) as client:
        yield RedisHoldQueue(client, prefix), RedisLeaseStore(client, prefix)


# -- the store -----------------------------------------------------------------------------


def test_callers_keep_their_arrival_order(stores):
    queue, _ = stores
    assert [queue.take_turn("org:1", f"c{i}", 10, 10) for i in range(4)] == [0, 1, 2, 3]
    assert queue.take_turn("org:1", "c2", 10, 10) == 2  # asking again keeps the place
    queue.leave("org:1", "c0")
    assert [queue.take_turn("org:1", f"c{i}", 10, 10) for i in (1, 2, 3)] == [0, 1, 2]
    assert queue.take_turn("org:2", "other", 10, 10) == 0  # another organisation's queue
    assert queue.length("org:1") == 3


def test_a_full_queue_turns_newcomers_away_but_keeps_who_is_in_it(stores):
    queue, _ = stores
    for i in range(3):
        queue.take_turn("org:1", f"c{i}", 3, 10)
    assert queue.take_turn("org:1", "late", 3, 10) is None
    assert queue.take_turn("org:1", "c2", 3, 10) == 2
    assert queue.take_turn("org:1", "late", 0, 10) is None  # 0: nobody waits


def test_an_entry_nobody_asks_about_drops_out():
    clock = Clock()
    queue = MemoryHoldQueue(clock=clock)
    queue.take_turn("org:1", "gone", 10, 10)
    queue.take_turn("org:1", "here", 10, 10)
    clock.now += 6
    queue.take_turn("org:1", "here", 10, 10)
    clock.now += 5  # "gone" was last asked about 11 s ago
    assert queue.take_turn("org:1", "here", 10, 10) == 0
    assert queue.length("org:1") == 1


def test_an_entry_nobody_asks_about_drops_out_of_redis(redis_server_url, redis_prefix):
    with redis_client(redis_server_url, redis_prefix) as client:
        queue = RedisHoldQueue(client, redis_prefix)
        queue.take_turn("org:1", "gone", 10, 0.2)
        queue.take_turn("org:1", "here", 10, 60)
        deadline = time.monotonic() + 5
        while queue.take_turn("org:1", "here", 10, 60) != 0:
            assert time.monotonic() < deadline, "the gone caller never dropped out"
            time.sleep(0.05)


@pytest.mark.parametrize("max_length, ttl_s", [(-1, 10), (5, 0), (5, -1)])
def test_bad_arguments_are_refused(stores, max_length, ttl_s):
    queue, _ = stores
    with pytest.raises(ValueError):
        queue.take_turn("org:1", "c", max_length, ttl_s)


# -- admission: 30 callers, limit 5 --------------------------------------------------------


def _controller(engine, stores, hold_max: int = 30) -> tuple[AdmissionController, int]:
    queue, leases = stores
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=1, max_concurrent_calls=5)
        assert org.id is not None
        org_id = org.id
    return AdmissionController(engine, leases, hold_queue=queue, hold_queue_max=hold_max), org_id


def test_thirty_callers_limit_five_each_admitted_once_in_arrival_order(engine, stores):
    controller, org = _controller(engine, stores)
    callers = [f"call-{i:02d}" for i in range(30)]
    first = [controller.admit(AdmissionRequest(c, organisation_id=org, hold=True)) for c in callers]
    assert sum(a.admitted for a in first) == 5
    assert [a.position for a in first[5:]] == list(range(25))

    admitted: list[str] = [c for c, a in zip(callers, first, strict=True) if a.admitted]
    lock = threading.Lock()
    live = set(admitted)
    most_live = len(live)

    def wait_then_talk(call_id: str) -> None:
        nonlocal most_live
        for _ in range(2000):  # bounded: 2000 asks, 2 ms apart
            decision = controller.admit(AdmissionRequest(call_id, organisation_id=org, hold=True))
            if decision.admitted:
                with lock:
                    admitted.append(call_id)
                    live.add(call_id)
                    most_live = max(most_live, len(live))
                time.sleep(0.005)  # the call
                with lock:
                    live.discard(call_id)
                controller.release(decision.lease_id or "")
                return
            assert decision.queued, decision.reason
            time.sleep(0.002)
        raise AssertionError(f"{call_id} was never admitted")

    def talk_and_hang_up(call_id: str) -> None:
        time.sleep(0.01)
        with lock:
            live.discard(call_id)
        controller.release(f"{org}:{call_id}")

    with ThreadPoolExecutor(max_workers=30) as pool:
        done = [pool.submit(talk_and_hang_up, c) for c in admitted[:5]]
        done += [pool.submit(wait_then_talk, c) for c in callers[5:]]
        for future in done:
            future.result(timeout=60)

    assert admitted == callers, "not admitted in arrival order"
    assert len(set(admitted)) == 30  # each once, none lost
    assert most_live <= 5


def test_a_caller_who_cannot_wait_is_not_let_in_ahead_of_the_queue(engine, stores):
    controller, org = _controller(engine, stores)
    for i in range(5):
        assert controller.admit(AdmissionRequest(f"live-{i}", organisation_id=org)).admitted
    assert controller.admit(AdmissionRequest("waiting", organisation_id=org, hold=True)).queued
    controller.release(f"{org}:live-0")  # a slot frees: it is the waiting caller's
    browser = controller.admit(AdmissionRequest("browser", organisation_id=org))
    assert not browser.admitted and browser.reason == CONCURRENT_CALLS_LIMIT
    assert controller.admit(AdmissionRequest("waiting", organisation_id=org, hold=True)).admitted
    # a live call retrying its admission keeps its slot even with callers waiting
    assert controller.admit(AdmissionRequest("queued-2", organisation_id=org, hold=True)).queued
    assert controller.admit(AdmissionRequest("live-1", organisation_id=org)).admitted


def test_a_full_queue_refuses_with_the_busy_message(engine, stores):
    controller, org = _controller(engine, stores, hold_max=2)
    for i in range(5):
        controller.admit(AdmissionRequest(f"live-{i}", organisation_id=org))
    assert controller.admit(AdmissionRequest("w1", organisation_id=org, hold=True)).queued
    assert controller.admit(AdmissionRequest("w2", organisation_id=org, hold=True)).queued
    third = controller.admit(AdmissionRequest("w3", organisation_id=org, hold=True))
    assert not third.admitted and third.reason == HOLD_QUEUE_FULL and "busy" in third.message
    controller.leave_queue(org, "w1")
    assert controller.admit(AdmissionRequest("w3", organisation_id=org, hold=True)).position == 1


# -- the sidecar's API and the worker's wait ------------------------------------------------


@pytest.fixture
def full_org(engine) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=1, max_concurrent_calls=1)
        assert org.id is not None
        return org.id


async def test_a_held_call_waits_then_is_admitted_when_the_slot_frees(
    engine, database_url, tmp_path, full_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        busy = await decide_admission(
            CallIdentity("busy", full_org, None, None), client, fail_open=False
        )
        assert busy.status == "admitted"
        held = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(held, client, fail_open=False)
        assert decision.status == "queued" and decision.position == 0
        assert decision.message and "hold" in decision.message.lower()

        wait = HoldQueueWait(client, held, max_wait_s=30, fail_open=False, poll_s=0.05)
        waiting = asyncio.create_task(wait.wait(decision))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await client.release(busy.lease_id or "")
        admitted = await asyncio.wait_for(waiting, timeout=10)
        assert admitted.status == "admitted" and admitted.lease_id == f"{full_org}:held"
        await client.aclose()


async def test_a_held_call_is_refused_after_the_longest_wait_and_leaves_the_queue(
    engine, database_url, tmp_path, full_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        await decide_admission(CallIdentity("busy", full_org, None, None), client, fail_open=False)
        held = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(held, client, fail_open=False)
        clock = Clock()

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.01)
                clock.now += 1.0

        ticking = asyncio.create_task(tick())
        wait = HoldQueueWait(client, held, max_wait_s=5, fail_open=False, poll_s=0.02, clock=clock)
        final = await asyncio.wait_for(wait.wait(decision), timeout=10)
        ticking.cancel()
        assert final.status == "refused" and final.reason == "hold_timeout" and final.message
        # it left: the next caller is at the head
        nxt = await decide_admission(
            CallIdentity("next", full_org, None, None, hold=True), client, fail_open=False
        )
        assert nxt.status == "queued" and nxt.position == 0
        await client.aclose()


async def test_a_caller_hanging_up_on_hold_leaves_the_queue(
    engine, database_url, tmp_path, full_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        await decide_admission(CallIdentity("busy", full_org, None, None), client, fail_open=False)
        held = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(held, client, fail_open=False)
        waiting = asyncio.create_task(
            HoldQueueWait(client, held, max_wait_s=60, fail_open=False, poll_s=0.05).wait(decision)
        )
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        nxt = await decide_admission(
            CallIdentity("next", full_org, None, None, hold=True), client, fail_open=False
        )
        assert nxt.position == 0
        await client.aclose()


async def test_the_sidecar_going_away_on_hold_follows_the_fail_open_setting(
    engine, database_url, tmp_path, full_org
):
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        await decide_admission(CallIdentity("busy", full_org, None, None), client, fail_open=False)
        held = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(held, client, fail_open=False)
    # the sidecar is gone now
    opened = await HoldQueueWait(client, held, max_wait_s=60, fail_open=True, poll_s=0.01).wait(
        decision
    )
    closed = await HoldQueueWait(client, held, max_wait_s=60, fail_open=False, poll_s=0.01).wait(
        decision
    )
    assert opened.status == "unleased" and closed.status == "refused" and closed.message
    await client.aclose()


def test_the_hold_flag_comes_from_the_dispatch_metadata():
    from agent.admission import call_identity

    assert call_identity("c", ['{"hold": true, "organisation_id": 4}'], None).hold
    assert not call_identity("c", ['{"hold": "yes"}'], None).hold  # only a JSON true
    assert not call_identity("c", ["{}"], None).hold
    queued = AdmissionDecision(status="queued", organisation_id=4, position=3)
    assert queued.identity("c").hold


# -- a whole call on hold -------------------------------------------------------------------


@pytest.mark.slow
async def test_a_call_on_hold_hears_the_message_and_music_then_the_agent(
    engine, database_url, tmp_path, full_org, vad_model
):
    from agent.call import Call
    from agent.profile import builtin_profile
    from agent.settings import Settings
    from agent.wav_io import CallerAudioInput, CapturedAudioOutput
    from tests.conftest import silence

    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        admin = SidecarClient(url, SERVICE_TOKEN)
        busy = await decide_admission(
            CallIdentity("busy", full_org, None, None), admin, fail_open=False
        )
        identity = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(identity, admin, fail_open=False)
        assert decision.status == "queued"
        settings = Settings(_env_file=None, data_dir=tmp_path, aec_warmup_s=0)  # type: ignore[call-arg]
        call = Call(identity, decision, builtin_profile(), settings=settings,
                    vad_model=vad_model, sidecar=SidecarClient(url, SERVICE_TOKEN))  # fmt: skip
        speaker = CapturedAudioOutput()
        starting = asyncio.create_task(
            call.start(audio_input=CallerAudioInput(silence(1.0)), audio_output=speaker)
        )
        for _ in range(400):  # the hold message, then music: 8 s of audio at most
            played = sum(s.played_until - s.started_at for s in speaker.segments)
            if len(speaker.segments) >= 2 and played > 6.0:
                break
            await asyncio.sleep(0.05)
        assert len(speaker.segments) >= 2, "no hold message and music"
        assert not starting.done() and call.decision.status == "queued"

        held_at = time.time()
        await admin.release(busy.lease_id or "")
        await asyncio.wait_for(starting, timeout=20)
        assert call.decision.status == "admitted" and call.decision.lease_id == f"{full_org}:held"
        assert call.started_at >= held_at, "the time on hold was billed"
        await asyncio.wait_for(call.agent.greeted.wait(), timeout=20)  # type: ignore[union-attr]
        said = [i.text_content for i in call.session.history.items if i.type == "message"]  # type: ignore[union-attr]
        assert said == [builtin_profile().greeting]  # hold lines are not the conversation
        await call.aclose()
        await admin.aclose()


@pytest.mark.slow
async def test_hanging_up_on_hold_closes_the_call_and_frees_the_place(
    engine, database_url, tmp_path, full_org, vad_model
):
    from agent.call import Call
    from agent.profile import builtin_profile
    from agent.settings import Settings
    from agent.wav_io import CapturedAudioOutput

    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        admin = SidecarClient(url, SERVICE_TOKEN)
        await decide_admission(CallIdentity("busy", full_org, None, None), admin, fail_open=False)
        identity = CallIdentity("held", full_org, None, None, hold=True)
        decision = await decide_admission(identity, admin, fail_open=False)
        settings = Settings(_env_file=None, data_dir=tmp_path, aec_warmup_s=0)  # type: ignore[call-arg]
        call = Call(identity, decision, builtin_profile(), settings=settings,
                    vad_model=vad_model, sidecar=SidecarClient(url, SERVICE_TOKEN))  # fmt: skip
        starting = asyncio.create_task(call.start(audio_output=CapturedAudioOutput()))
        await asyncio.sleep(1.0)
        await asyncio.wait_for(call.aclose(), timeout=10)  # the job ends: the caller hung up
        await asyncio.wait_for(starting, timeout=10)
        assert call.ended.is_set() and call.session is None
        nxt = await decide_admission(
            CallIdentity("next", full_org, None, None, hold=True), admin, fail_open=False
        )
        assert nxt.position == 0, "the caller who hung up still holds a place"
        await admin.aclose()
