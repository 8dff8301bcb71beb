"""Stopping the worker: ``python agent.py start`` as a real process, registered with the
loopback LiveKit server's agent endpoint. SIGTERM stops it taking calls, drains (livekit),
flushes the billing outbox to the sidecar and exits 0; a second SIGTERM ends it at once
with the outbox intact on disk. In process: the flush delivers what the outbox was
holding back (events in backoff)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.settings import Settings
from agent.worker import start_sidecar_link
from billing.api.app import create_app
from billing.ledger import balance_minor
from billing.pricing import EventDraft
from storage.db import session_scope
from storage.models import UsageKind
from tests.api_client import SERVICE_TOKEN, make_config, serving
from tests.billing_seed import seed_org
from tests.loopback.livekit_server import API_KEY, API_SECRET, LiveKitServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EVENTS = 4


@pytest.fixture
def org_id(engine) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=0, balance_minor=10_000, price_per_minute_minor=60)
        assert org.id is not None
        return org.id


def held_back_events(data_dir: Path, org: int) -> None:
    """Billing events in the worker's outbox, put off for an hour (a failed delivery's
    backoff): only the flush at shutdown offers them."""
    outbox = Outbox(data_dir / "outbox.db")
    drafts = [
        EventDraft(f"job-drain:call_seconds:{i}", org, "job-drain", UsageKind.call_seconds, 60)
        for i in range(EVENTS)
    ]
    outbox.add(drafts)
    outbox.mark_failed([d.idempotency_key for d in drafts], now=time.time() + 3600)
    outbox.close()


def pending(data_dir: Path) -> int:
    outbox = Outbox(data_dir / "outbox.db")
    try:
        return outbox.pending_count()
    finally:
        outbox.close()


def test_stopping_the_link_flushes_events_held_back_by_backoff(
    engine, database_url, tmp_path, org_id
):
    held_back_events(tmp_path, org_id)
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        settings = Settings(_env_file=None, sidecar_url=url, sidecar_service_token=SERVICE_TOKEN,
                            data_dir=tmp_path)  # type: ignore[call-arg]  # fmt: skip
        link = start_sidecar_link(settings)
        assert link is not None
        time.sleep(1.5)  # the sender's first rounds: nothing is due
        assert pending(tmp_path) == EVENTS
        link.stop()
    assert pending(tmp_path) == 0
    with session_scope(engine) as session:
        assert balance_minor(session, org_id)[0] == 10_000 - EVENTS * 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveKitInThread:
    """The loopback LiveKit server on an event loop of its own (the worker process
    registers with it while the test blocks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = LiveKitServer()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LiveKitServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def livekit_in_thread() -> Iterator[LiveKitServer]:
    with LiveKitInThread() as server:
        yield server


def start_worker(livekit: LiveKitServer, sidecar_url: str, data_dir: Path) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LIVEKIT_URL": livekit.url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "SIDECAR_URL": sidecar_url,
        "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN,
        "DATA_DIR": str(data_dir),
        "WORKER_HTTP_PORT": str(_free_port()),
        "LOG_FORMAT": "json",
    }
    return subprocess.Popen(
        [sys.executable, "agent.py", "start"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_registered(livekit: LiveKitServer, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while livekit.workers_registered < 1:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited: {proc.stdout.read()[-3000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the worker never registered"
        time.sleep(0.1)


def test_sigterm_drains_flushes_the_outbox_and_exits_0(
    engine, database_url, tmp_path, org_id, livekit_in_thread
):
    held_back_events(tmp_path, org_id)
    app = create_app(make_config(database_url, tmp_path / "rec"), engine=engine)
    with serving(app) as url:
        proc = start_worker(livekit_in_thread, url, tmp_path)
        try:
            wait_registered(livekit_in_thread, proc)
            assert pending(tmp_path) == EVENTS  # held back while it runs
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "draining worker" in out and "outbox flushed" in out
    assert pending(tmp_path) == 0
    with session_scope(engine) as session:
        assert balance_minor(session, org_id)[0] == 10_000 - EVENTS * 60


class Blackhole:
    """A sidecar that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_a_second_sigterm_exits_at_once_and_keeps_the_outbox(tmp_path, livekit_in_thread):
    held_back_events(tmp_path, 1)
    sidecar = Blackhole()
    proc = start_worker(livekit_in_thread, sidecar.url, tmp_path)
    try:
        wait_registered(livekit_in_thread, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # draining, then flushing to a sidecar that never answers
        second = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - second
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        sidecar.close()
    assert took < 5, f"the second SIGTERM took {took:.1f} s"
    assert proc.returncode != 0  # forced
    assert pending(tmp_path) == EVENTS, "the outbox lost events"
