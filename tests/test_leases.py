"""Concurrency leases: all-or-nothing slots with a TTL, kept alive by heartbeats.

Every behaviour runs on the in-process store and on a real Redis server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from storage.leases import LeaseScope, LeaseStore, MemoryLeaseStore, RedisLeaseStore
from tests import billing_seed

lease_store = billing_seed.lease_store  # the shared fixture: memory and Redis

ORG = LeaseScope("org:1", 10)
NUMBER = LeaseScope("number:+15550100", 2)
LONG_TTL_S = 60.0


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 20 ms for at most ``timeout_s``; its last answer."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_lease_takes_one_slot_in_every_scope(lease_store: LeaseStore) -> None:
    assert lease_store.acquire("call-1", [ORG, NUMBER], LONG_TTL_S) is None

    assert lease_store.active(ORG.key) == 1
    assert lease_store.active(NUMBER.key) == 1


def test_a_full_scope_refuses_the_lease_and_no_slot_is_taken_anywhere(
    lease_store: LeaseStore,
) -> None:
    one_line = LeaseScope("number:+15550199", 1)
    lease_store.acquire("call-1", [one_line], LONG_TTL_S)

    assert lease_store.acquire("call-2", [ORG, one_line], LONG_TTL_S) == one_line.key

    assert lease_store.active(ORG.key) == 0
    assert lease_store.active(one_line.key) == 1


def test_the_refusal_names_the_first_full_scope_in_request_order(lease_store: LeaseStore) -> None:
    a, b = LeaseScope("org:a", 1), LeaseScope("org:b", 1)
    lease_store.acquire("call-1", [a, b], LONG_TTL_S)

    assert lease_store.acquire("call-2", [b, a], LONG_TTL_S) == b.key


def test_a_zero_limit_refuses_every_lease(lease_store: LeaseStore) -> None:
    closed = LeaseScope("org:closed", 0)

    assert lease_store.acquire("call-1", [closed], LONG_TTL_S) == closed.key
    assert lease_store.active(closed.key) == 0


def test_reacquiring_a_live_lease_is_idempotent(lease_store: LeaseStore) -> None:
    single = LeaseScope("org:single", 1)
    assert lease_store.acquire("call-1", [single], LONG_TTL_S) is None

    assert lease_store.acquire("call-1", [single], LONG_TTL_S) is None
    assert lease_store.active(single.key) == 1


def test_release_frees_every_slot_and_is_idempotent(lease_store: LeaseStore) -> None:
    lease_store.acquire("call-1", [ORG, NUMBER], LONG_TTL_S)

    lease_store.release("call-1")
    lease_store.release("call-1")
    lease_store.release("never-acquired")

    assert lease_store.active(ORG.key) == 0
    assert lease_store.active(NUMBER.key) == 0
    assert lease_store.heartbeat("call-1", LONG_TTL_S) is False


def test_scopes_count_independently(lease_store: LeaseStore) -> None:
    lease_store.acquire("call-1", [LeaseScope("org:1", 1)], LONG_TTL_S)

    assert lease_store.acquire("call-2", [LeaseScope("org:2", 1)], LONG_TTL_S) is None


def test_500_concurrent_acquires_with_a_limit_of_10_take_exactly_10(
    lease_store: LeaseStore,
) -> None:
    scope = LeaseScope("org:busy", 10)
    with ThreadPoolExecutor(64) as pool:
        results = list(
            pool.map(lambda i: lease_store.acquire(f"call-{i}", [scope], LONG_TTL_S), range(500))
        )

    admitted = [i for i, full in enumerate(results) if full is None]
    assert len(admitted) == 10
    assert all(full == scope.key for full in results if full is not None)
    assert lease_store.active(scope.key) == 10

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda i: lease_store.release(f"call-{i}"), admitted))
    assert lease_store.active(scope.key) == 0


def test_leases_of_a_dead_worker_expire_after_their_ttl_and_free_the_slots(
    lease_store: LeaseStore,
) -> None:
    scope, line = LeaseScope("org:crash", 3), LeaseScope("number:+15550123", 5)
    for i in range(3):
        assert lease_store.acquire(f"dead-{i}", [scope, line], 0.5) is None
    assert lease_store.acquire("new", [scope], LONG_TTL_S) == scope.key

    # the worker died: nobody heart-beats its leases
    assert wait_until(lambda: lease_store.active(scope.key) == 0, timeout_s=3.0)

    assert lease_store.active(line.key) == 0
    assert lease_store.acquire("new", [scope], LONG_TTL_S) is None
    assert lease_store.heartbeat("dead-0", LONG_TTL_S) is False


def test_heartbeats_keep_a_lease_alive_past_its_ttl(lease_store: LeaseStore) -> None:
    scope = LeaseScope("org:long-call", 1)
    lease_store.acquire("call-1", [scope], 0.5)

    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # three TTLs
        assert lease_store.heartbeat("call-1", 0.5) is True
        time.sleep(0.1)

    assert lease_store.active(scope.key) == 1
    assert lease_store.acquire("call-2", [scope], LONG_TTL_S) == scope.key


def test_an_expired_lease_is_not_revived_by_a_heartbeat(lease_store: LeaseStore) -> None:
    lease_store.acquire("call-1", [ORG], 0.2)
    assert wait_until(lambda: lease_store.active(ORG.key) == 0, timeout_s=3.0)

    assert lease_store.heartbeat("call-1", LONG_TTL_S) is False
    assert lease_store.active(ORG.key) == 0


def test_an_expired_lease_can_be_acquired_again(lease_store: LeaseStore) -> None:
    lease_store.acquire("call-1", [ORG], 0.2)
    assert wait_until(lambda: lease_store.active(ORG.key) == 0, timeout_s=3.0)

    assert lease_store.acquire("call-1", [ORG], LONG_TTL_S) is None
    assert lease_store.active(ORG.key) == 1


def test_a_heartbeat_of_an_unknown_lease_is_false(lease_store: LeaseStore) -> None:
    assert lease_store.heartbeat("nobody", LONG_TTL_S) is False


@pytest.mark.parametrize(
    ("scopes", "ttl_s"),
    [
        ([], LONG_TTL_S),
        ([ORG, ORG], LONG_TTL_S),
        ([LeaseScope("org:x", -1)], LONG_TTL_S),
        ([ORG], 0.0),
    ],
    ids=["no scopes", "repeated scope", "negative limit", "zero ttl"],
)
def test_invalid_acquire_arguments_raise_value_error(
    lease_store: LeaseStore, scopes: list[LeaseScope], ttl_s: float
) -> None:
    with pytest.raises(ValueError):
        lease_store.acquire("call-1", scopes, ttl_s)


# -- property: any sequence of operations agrees with a simple model -----------------

SCOPES = [LeaseScope("org:p", 3), LeaseScope("number:p1", 2), LeaseScope("number:p2", 1)]
LEASE_IDS = st.sampled_from(["a", "b", "c", "d", "e"])
SCOPE_SETS = st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3, unique=True)


@dataclass
class ModelLease:
    scopes: list[LeaseScope]
    expires_at: float


class LeaseModelMachine(RuleBasedStateMachine):
    """Compares a store with a dictionary of leases; ``now`` only moves in subclasses
    that can expire leases."""

    ttls_s = st.just(LONG_TTL_S)

    def __init__(self, store: LeaseStore) -> None:
        super().__init__()
        self.store = store
        self.now = 0.0
        self.model: dict[str, ModelLease] = {}

    def live(self) -> dict[str, ModelLease]:
        return {k: v for k, v in self.model.items() if v.expires_at > self.now}

    @rule(lease_id=LEASE_IDS, scopes=SCOPE_SETS, data=st.data())
    def acquire(self, lease_id: str, scopes: list[LeaseScope], data: st.DataObject) -> None:
        ttl_s = data.draw(self.ttls_s)
        live = self.live()
        if lease_id in live:
            live[lease_id].expires_at = self.now + ttl_s
            expected = None
        else:
            expected = next(
                (
                    s.key
                    for s in scopes
                    if sum(s in lease.scopes for lease in live.values()) >= s.limit
                ),
                None,
            )
            if expected is None:
                self.model[lease_id] = ModelLease(scopes, self.now + ttl_s)
        assert self.store.acquire(lease_id, scopes, ttl_s) == expected

    @rule(lease_id=LEASE_IDS, data=st.data())
    def heartbeat(self, lease_id: str, data: st.DataObject) -> None:
        ttl_s = data.draw(self.ttls_s)
        lease = self.live().get(lease_id)
        if lease is not None:
            lease.expires_at = self.now + ttl_s
        assert self.store.heartbeat(lease_id, ttl_s) is (lease is not None)

    @rule(lease_id=LEASE_IDS)
    def release(self, lease_id: str) -> None:
        self.model.pop(lease_id, None)
        self.store.release(lease_id)

    @invariant()
    def active_matches_the_model_and_never_exceeds_the_limit(self) -> None:
        live = self.live()
        for scope in SCOPES:
            expected = sum(scope in lease.scopes for lease in live.values())
            assert self.store.active(scope.key) == expected <= scope.limit


class ExpiringLeaseModelMachine(LeaseModelMachine):
    """Adds the passing of time (whole seconds on a fake clock, so expiry is exact)."""

    ttls_s = st.integers(1, 4).map(float)

    def __init__(self) -> None:
        super().__init__(MemoryLeaseStore(clock=lambda: self.now))

    @rule(seconds=st.integers(0, 3))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds


def test_any_sequence_with_expiry_agrees_with_the_model_in_memory() -> None:
    run_state_machine_as_test(
        ExpiringLeaseModelMachine,
        settings=settings(max_examples=200, stateful_step_count=30, deadline=None),
    )


def test_any_sequence_agrees_with_the_model_on_redis(
    redis_server_url: str, redis_prefix: str
) -> None:
    # Redis expires by its own clock, which a test cannot move: this run checks the Lua
    # logic for acquire/heartbeat/release with long TTLs; expiry has its own tests above
    with billing_seed.redis_client(redis_server_url, redis_prefix) as client:

        class RedisLeaseModelMachine(LeaseModelMachine):
            def __init__(self) -> None:
                # a fresh prefix per example: every example starts from empty scopes
                super().__init__(RedisLeaseStore(client, f"{redis_prefix}{uuid.uuid4().hex}:"))

        run_state_machine_as_test(
            RedisLeaseModelMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
