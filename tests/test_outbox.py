"""The billing outbox keeps every event until the sidecar has it, survives restarts, and
delivers at least once; with the sidecar deduplicating by key, each is billed once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.outbox import Outbox, OutboxSender, backoff_s
from agent.sidecar_client import SidecarClient
from billing.api.app import create_app
from billing.config import SidecarConfig
from billing.ledger import balance_minor
from billing.pricing import EventDraft
from storage.db import session_scope
from storage.models import UsageKind
from tests.api_client import serving
from tests.billing_seed import seed_org

TOKEN = "service-token-0123456789"
T0 = 1_790_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(n: int, *, call_id: str = "job-1", start: int = 0) -> list[EventDraft]:
    return [
        EventDraft(f"{call_id}:call_seconds:{i}", 7, call_id, UsageKind.call_seconds, 60 + i)
        for i in range(start, start + n)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", clock=clock)
    yield box
    box.close()


class LoopbackSidecar:
    """``POST /internal/billing-events`` on 127.0.0.1, stoppable and restartable on the
    same port. Applies each key once (as the ledger does) and records every delivery."""

    def __init__(self) -> None:
        self.port = 0
        self.applied: dict[str, dict[str, object]] = {}
        self.requests: list[list[str]] = []
        self.statuses: list[int] = []
        """Statuses to answer with next, in order, before normal service resumes."""
        self.apply_then_fail = 0
        """Apply this many batches, then answer 503 anyway (a lost answer)."""
        self.refused_keys: set[str] = set()
        """Rejected for good (``permanent``), as the ledger rejects an unknown organisation."""
        self.not_yet_keys: set[str] = set()
        """Rejected for now (not ``permanent``), as a misconfigured plan is."""
        self.whole_batch_refusals = 0
        """Answer this many batches of more than one event with a 422 for the batch."""
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        sidecar = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = sidecar.handle(self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, headers: object, body: bytes) -> tuple[int, bytes]:
        """The status and body to answer with: per-event results, as the real route."""
        with self._lock:
            if path != "/internal/billing-events":
                return 404, b""
            if headers["Authorization"] != f"Bearer {TOKEN}":  # type: ignore[index]
                return 401, b""
            batch = json.loads(body)["events"]
            keys = [event["idempotency_key"] for event in batch]
            self.requests.append(keys)
            if self.statuses:
                return self.statuses.pop(0), b""
            if self.whole_batch_refusals and len(batch) > 1:
                self.whole_batch_refusals -= 1
                return 422, b'{"detail": []}'
            results = []
            for event in batch:
                key = event["idempotency_key"]
                if key in self.refused_keys | self.not_yet_keys:
                    permanent = key in self.refused_keys
                    results.append(
                        {"idempotency_key": key, "status": "rejected", "reason": "x",
                         "permanent": permanent}
                    )  # fmt: skip
                    continue
                new = key not in self.applied
                self.applied.setdefault(key, event)
                results.append(
                    {"idempotency_key": key, "status": "applied" if new else "duplicate"}
                )
            if self.apply_then_fail:
                self.apply_then_fail -= 1
                return 503, b""
            return 200, json.dumps({"results": results}).encode()

    def delivered_keys(self) -> list[str]:
        return [key for batch in self.requests for key in batch]


@pytest.fixture
def sidecar() -> Iterator[LoopbackSidecar]:
    server = LoopbackSidecar()
    server.start()
    yield server
    if server._server is not None:
        server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[SidecarClient]]:
    """The sidecar clients a test made, closed after it."""
    made: list[SidecarClient] = []
    yield made
    for client in made:
        await client.aclose()


def sender_for(
    outbox: Outbox,
    sidecar: LoopbackSidecar | str,
    clients: list[SidecarClient],
    *,
    token: str = TOKEN,
    **kwargs: int,
) -> OutboxSender:
    url = sidecar if isinstance(sidecar, str) else sidecar.url
    clients.append(SidecarClient(url, token, timeout_s=5.0))
    return OutboxSender(outbox, clients[-1], **kwargs)


def test_added_events_are_due_at_once(outbox):
    assert outbox.add(events(3)) == 3
    assert outbox.due() == events(3)
    assert outbox.pending_count() == 3


def test_an_event_added_twice_is_kept_once(outbox):
    outbox.add(events(3))
    assert outbox.add(events(5)) == 2
    assert outbox.add([events(1)[0], events(1)[0]]) == 0
    assert outbox.pending_count() == 5


def test_a_delivered_event_added_again_is_ignored(outbox):
    outbox.add(events(1))
    outbox.mark_delivered([events(1)[0].idempotency_key])
    assert outbox.add(events(1)) == 0
    assert outbox.pending_count() == 0


def test_due_returns_at_most_the_limit_oldest_first(outbox, clock):
    outbox.add(events(2, call_id="old"))
    clock.now += 1
    outbox.add(events(2, call_id="new"))
    assert [d.call_id for d in outbox.due(limit=3)] == ["old", "old", "new"]


def test_events_survive_closing_and_reopening_the_outbox(tmp_path, clock):
    first = Outbox(tmp_path / "outbox.db", clock=clock)
    first.add(events(4))
    first.mark_delivered([events(1)[0].idempotency_key])
    first.close()
    reopened = Outbox(tmp_path / "outbox.db", clock=clock)
    assert reopened.pending_count() == 3
    assert reopened.due() == events(4)[1:]
    reopened.close()


def test_events_are_on_disk_when_add_returns_even_if_the_process_dies(tmp_path):
    path = tmp_path / "outbox.db"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from agent.outbox import Outbox\n"
        "from billing.pricing import EventDraft\n"
        "from storage.models import UsageKind\n"
        "box = Outbox(Path(sys.argv[1]))\n"
        "box.add([EventDraft(f'job:call_seconds:{i}', 7, 'job', UsageKind.call_seconds, 1)"
        " for i in range(10)])\n"
        "os._exit(0)  # no close, no cleanup\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    reopened = Outbox(path)
    assert reopened.pending_count() == 10
    reopened.close()


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(tmp_path):
    # each LiveKit job process opens its own Outbox on the worker's one file
    boxes = [Outbox(tmp_path / "outbox.db") for _ in range(4)]

    def write(box: Outbox, n: int) -> None:
        for i in range(10):
            box.add(events(5, start=n * 50 + i * 5))
        box.add(events(50))  # the same 50 keys from every writer

    threads = [threading.Thread(target=write, args=(box, n)) for n, box in enumerate(boxes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert boxes[0].pending_count() == 200
    for box in boxes:
        box.close()


def test_failed_events_back_off_1_2_4_8_seconds_up_to_60(outbox, clock):
    outbox.add(events(1))
    key = events(1)[0].idempotency_key
    for wait_s in [1, 2, 4, 8, 16, 32, 60, 60, 60]:
        outbox.mark_failed([key], now=clock.now)
        assert outbox.due(now=clock.now + wait_s - 0.01) == []
        clock.now += wait_s
        assert outbox.due(now=clock.now) == events(1)
    assert outbox.attempts(key) == 9


def test_a_failed_event_is_not_due_before_its_backoff_ends(outbox, clock):
    outbox.add(events(1))
    outbox.mark_failed([events(1)[0].idempotency_key])
    assert outbox.due(now=clock.now + 0.99) == []
    assert outbox.due(now=clock.now + 1.0) == events(1)


def test_backoff_is_capped():
    assert [backoff_s(n) for n in (1, 2, 3, 4, 7, 100, 10**6)] == [1, 2, 4, 8, 60, 60, 60]


async def test_the_sender_posts_events_with_the_service_token(outbox, sidecar, clients):
    outbox.add(events(3))
    assert await sender_for(outbox, sidecar, clients).deliver_once() == 3
    assert sidecar.applied["job-1:call_seconds:0"] == {
        "idempotency_key": "job-1:call_seconds:0",
        "organisation_id": 7,
        "call_id": "job-1",
        "kind": "call_seconds",
        "quantity": 60,
    }
    assert outbox.pending_count() == 0


async def test_the_sender_sends_at_most_a_batch_at_a_time(outbox, sidecar, clients):
    outbox.add(events(5))
    sender = sender_for(outbox, sidecar, clients, batch_size=2)
    assert [await sender.deliver_once() for _ in range(4)] == [2, 2, 1, 0]
    assert [len(batch) for batch in sidecar.requests] == [2, 2, 1]


@pytest.mark.parametrize("status", [500, 503, 408, 429])
async def test_a_sidecar_error_keeps_the_batch_for_a_retry(outbox, sidecar, clients, clock, status):
    outbox.add(events(2))
    sidecar.statuses = [status]
    sender = sender_for(outbox, sidecar, clients)
    assert await sender.deliver_once() == 0
    assert outbox.pending_count() == 2
    assert await sender.deliver_once() == 0  # backing off: nothing due, nothing sent
    clock.now += 1
    assert await sender.deliver_once() == 2
    assert len(sidecar.requests) == 2


async def test_a_refused_service_token_keeps_the_batch_without_splitting_it(
    outbox, sidecar, clients
):
    outbox.add(events(3))
    sender = sender_for(outbox, sidecar, clients, token="wrong-token")
    assert await sender.deliver_once() == 0
    assert len(sidecar.requests) == 0  # refused before reading: the loopback counts none
    assert outbox.pending_count() == 3
    assert outbox.attempts(events(1)[0].idempotency_key) == 1


async def test_one_refused_event_does_not_hold_back_the_rest_of_its_batch(outbox, sidecar, clients):
    outbox.add(events(4))
    poison = events(4)[2].idempotency_key
    sidecar.refused_keys = {poison}
    assert await sender_for(outbox, sidecar, clients).deliver_once() == 3
    assert len(sidecar.requests) == 1  # one batch: no splitting needed
    assert sorted(sidecar.applied) == sorted(
        d.idempotency_key for d in events(4) if d.idempotency_key != poison
    )
    # the refused event is money: kept for an operator, never dropped, never resent
    assert outbox.pending_count() == 0
    assert [(d.idempotency_key, reason) for d, reason in outbox.rejected()] == [(poison, "x: None")]


async def test_a_permanently_rejected_event_is_never_sent_again(outbox, sidecar, clients, clock):
    outbox.add(events(2))
    sidecar.refused_keys = {events(2)[0].idempotency_key}
    sender = sender_for(outbox, sidecar, clients)
    assert await sender.deliver_once() == 1
    for _ in range(5):
        clock.now += 120
        assert await sender.deliver_once() == 0
    assert len(sidecar.requests) == 1


async def test_an_event_rejected_for_now_is_retried_with_backoff(outbox, sidecar, clients, clock):
    outbox.add(events(2))
    later = events(2)[1].idempotency_key
    sidecar.not_yet_keys = {later}
    sender = sender_for(outbox, sidecar, clients)
    assert await sender.deliver_once() == 1
    assert (outbox.pending_count(), outbox.attempts(later)) == (1, 1)
    sidecar.not_yet_keys = set()  # the operator fixed the plan
    clock.now += 1
    assert await sender.deliver_once() == 1
    assert outbox.pending_count() == 0 and outbox.rejected() == []


async def test_a_batch_refused_whole_is_split_and_each_event_settled_alone(
    outbox, sidecar, clients
):
    outbox.add(events(3))
    sidecar.whole_batch_refusals = 1
    assert await sender_for(outbox, sidecar, clients).deliver_once() == 3
    assert [len(batch) for batch in sidecar.requests] == [3, 1, 1, 1]
    assert outbox.pending_count() == 0


async def test_an_event_refused_whole_on_its_own_is_set_aside(outbox, sidecar, clients):
    outbox.add(events(1))
    sidecar.statuses = [413]
    assert await sender_for(outbox, sidecar, clients).deliver_once() == 0
    assert outbox.pending_count() == 0
    assert len(outbox.rejected()) == 1


async def test_a_success_without_a_result_per_event_is_retried(outbox, sidecar, clients, clock):
    outbox.add(events(2))
    sidecar.statuses = [200]  # an empty body
    sender = sender_for(outbox, sidecar, clients)
    assert await sender.deliver_once() == 0
    assert outbox.pending_count() == 2
    clock.now += 1
    assert await sender.deliver_once() == 2


def test_an_outbox_file_from_before_rejections_opens_and_keeps_its_events(tmp_path, clock):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (idempotency_key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,"
        " delivered_at REAL, created_at REAL NOT NULL)"
    )
    payload = json.dumps(
        {
            "idempotency_key": "k",
            "organisation_id": 7,
            "call_id": "c",
            "kind": "call_seconds",
            "quantity": 5,
        }
    )
    db.execute("INSERT INTO outbox VALUES ('k', ?, 0, 0, NULL, 0)", (payload,))
    db.commit()
    db.close()
    box = Outbox(path, clock=clock)
    assert [d.idempotency_key for d in box.due()] == ["k"]
    box.close()


async def test_a_lost_answer_is_redelivered_and_billed_once(outbox, sidecar, clients, clock):
    outbox.add(events(3))
    sidecar.apply_then_fail = 1
    sender = sender_for(outbox, sidecar, clients)
    assert await sender.deliver_once() == 0
    clock.now += 1
    assert await sender.deliver_once() == 3
    assert sidecar.delivered_keys().count("job-1:call_seconds:0") == 2
    assert len(sidecar.applied) == 3
    assert outbox.pending_count() == 0


async def test_events_added_while_the_sidecar_is_down_are_all_delivered_once_it_is_back(
    outbox, sidecar, clients, clock
):
    sidecar.stop()
    sender = sender_for(outbox, sidecar, clients, batch_size=50)
    added = []
    for call in range(5):
        batch = events(40, call_id=f"job-{call}")
        outbox.add(batch)
        added += [d.idempotency_key for d in batch]
        assert await sender.deliver_once() == 0  # connection refused: kept
        clock.now += 5
    assert outbox.pending_count() == 200

    sidecar.start()
    clock.now += 61  # past the longest backoff
    for _ in range(20):
        if await sender.deliver_once() == 0 and outbox.pending_count() == 0:
            break
    assert outbox.pending_count() == 0
    assert set(sidecar.delivered_keys()) == set(added)
    assert sorted(sidecar.applied) == sorted(added)


async def test_run_delivers_in_the_background_until_stopped(tmp_path, sidecar, clients):
    outbox = Outbox(tmp_path / "outbox.db")  # real clock: run() is what the worker runs
    sender = sender_for(outbox, sidecar, clients, batch_size=10)
    stop = threading.Event()
    running = asyncio.create_task(sender.run(stop, poll_s=0.02))
    try:
        outbox.add(events(35))
        for _ in range(500):  # 10 s at most
            if not outbox.pending_count():
                break
            await asyncio.sleep(0.02)
        assert outbox.pending_count() == 0
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=5)
    assert len(sidecar.applied) == 35
    outbox.close()


async def test_the_outbox_bills_each_event_once_through_the_real_sidecar_route(
    engine, tmp_path, clock, clients
):
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=0, balance_minor=10_000, price_per_minute_minor=60)
        org_id = org.id
    assert org_id is not None
    config = SidecarConfig(
        database_url="unused://",
        redis_url=None,
        service_token=TOKEN,
        notify_webhook_url=None,
        notify_webhook_secret=None,
        recordings_dir=tmp_path / "recordings",
    )
    outbox = Outbox(tmp_path / "outbox.db", clock=clock)
    good = [
        EventDraft(f"job-e2e:call_seconds:{i}", org_id, "job-e2e", UsageKind.call_seconds, 60)
        for i in range(5)
    ]
    unknown_org = EventDraft("job-x:call_seconds:0", 424242, "job-x", UsageKind.call_seconds, 60)
    outbox.add([*good[:3], unknown_org, *good[3:]])
    with serving(create_app(config, engine=engine)) as url:
        assert await sender_for(outbox, url, clients).deliver_once() == 5
        # the same events again, as from an outbox that never heard the answers
        replay = Outbox(tmp_path / "replay.db", clock=clock)
        replay.add(good)
        assert await sender_for(replay, url, clients).deliver_once() == 5
        replay.close()
    with session_scope(engine) as session:
        assert balance_minor(session, org_id) == (10_000 - 5 * 60, "USD")
    # the refused event is kept for an operator, never dropped, never resent
    assert outbox.pending_count() == 0
    [(rejected, reason)] = outbox.rejected()
    assert rejected == unknown_org and reason.startswith("unknown_organisation")
    outbox.close()
