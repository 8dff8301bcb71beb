"""The worker's /health: each check's status and reason, the worst as the worker's, and
the port's start-up errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from agent.health import OUTBOX_BACKLOG, health_app, worker_health
from agent.outbox import Outbox
from agent.settings import Settings
from tests.test_cli import one_error_line, run_cli


@pytest_asyncio.fixture
async def http_stub() -> AsyncIterator[Callable[[int, str], Any]]:
    """Starts small HTTP servers answering GET / and /health with a fixed status/text."""
    runners: list[web.AppRunner] = []

    async def start(status: int, text: str) -> int:
        async def answer(_: web.Request) -> web.Response:
            return web.Response(status=status, text=text)

        app = web.Application()
        app.router.add_get("/", answer)
        app.router.add_get("/health", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    yield start
    for runner in runners:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


async def test_a_worker_livekit_calls_ok_with_nothing_else_set_is_healthy(tmp_path, http_stub):
    port = await http_stub(200, "OK")
    report = await worker_health(settings_for(tmp_path, worker_http_port=port))
    assert report["status"] == "healthy"
    assert set(report["checks"]) == {"livekit", "models", "outbox"}  # no sidecar configured


async def test_livekit_giving_up_or_a_dead_worker_is_unhealthy(tmp_path, http_stub):
    port = await http_stub(503, "failed to connect to livekit")
    report = await worker_health(settings_for(tmp_path, worker_http_port=port))
    assert report["status"] == "unhealthy"
    assert report["checks"]["livekit"]["detail"] == "failed to connect to livekit"
    report = await worker_health(settings_for(tmp_path, worker_http_port=free_port()))
    assert report["status"] == "unhealthy"
    assert "not serving" in report["checks"]["livekit"]["detail"]


async def test_an_unreachable_sidecar_or_a_billing_backlog_degrades(tmp_path, http_stub):
    port = await http_stub(200, "OK")
    sidecar = f"http://127.0.0.1:{free_port()}"
    report = await worker_health(settings_for(tmp_path, worker_http_port=port, sidecar_url=sidecar))
    assert report["status"] == "degraded"
    assert "does not answer" in report["checks"]["sidecar"]["detail"]

    sick = await http_stub(503, "database down")
    settings = settings_for(tmp_path, worker_http_port=port, sidecar_url=f"http://127.0.0.1:{sick}")
    assert (await worker_health(settings))["checks"]["sidecar"]["status"] == "degraded"

    from billing.pricing import EventDraft
    from storage.models import UsageKind

    outbox = Outbox(settings.outbox_path)
    drafts = [
        EventDraft(f"k{i}", organisation_id=1, call_id="c", kind=UsageKind.call_seconds, quantity=1)
        for i in range(OUTBOX_BACKLOG + 1)
    ]
    outbox.add(drafts)
    outbox.close()
    report = await worker_health(settings_for(tmp_path, worker_http_port=port))
    assert report["status"] == "degraded"
    assert report["checks"]["outbox"]["detail"].startswith(f"{OUTBOX_BACKLOG + 1} billing events")


async def test_the_endpoint_says_503_when_unhealthy(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    settings = settings_for(tmp_path, worker_http_port=free_port())
    async with TestClient(TestServer(health_app(settings))) as client:
        response = await client.get("/health")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "unhealthy" and "livekit" in body["checks"]


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_a_malformed_health_port_is_one_clear_line(value: str):
    proc = run_cli("start", env={"HEALTH_PORT": value})
    assert proc.returncode != 0
    assert "HEALTH_PORT" in one_error_line(proc)


@pytest.mark.parametrize("setting", ["HEALTH_PORT", "METRICS_PORT", "WORKER_HTTP_PORT"])
def test_a_worker_port_in_use_is_one_clear_line(tmp_path: Path, setting: str):
    """(livekit itself logs a busy port and exits 0.)"""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as livekit:  # something listening where LIVEKIT_URL points
            livekit.bind(("127.0.0.1", 0))
            livekit.listen()
            proc = run_cli(
                "start",
                env={
                    setting: str(port),
                    "LIVEKIT_URL": f"ws://127.0.0.1:{livekit.getsockname()[1]}",
                    "LIVEKIT_API_KEY": "devkey",
                    "LIVEKIT_API_SECRET": "secret-secret-secret-secret-secret",
                    "DATA_DIR": str(tmp_path),
                },
            )
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert setting in line and str(port) in line
