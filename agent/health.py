"""The worker's ``GET /health`` on ``HEALTH_PORT``: healthy, degraded or unhealthy, with a
reason per check (the sidecar's has the same statuses: ``billing/api/routes/health.py``).

- ``livekit``: livekit's own worker endpoint (``/`` on ``WORKER_HTTP_PORT``), which says
  503 once the worker gave up connecting to the LiveKit server or lost its inference
  process (while it is still retrying it says OK). Unhealthy when it is not OK or not
  there: this worker takes no calls.
- ``models``: the embedded models every call's last tiers need are on disk (Silero's VAD,
  Whisper, the Piper voice). Unhealthy when one is missing: a provider outage would leave
  callers in silence.
- ``outbox``: billing events not yet delivered to the sidecar; degraded past
  ``OUTBOX_BACKLOG`` (the sidecar is not keeping up, or not reachable).
- ``sidecar``: its ``/health`` answers (when one is configured); degraded otherwise: calls
  are still admitted (``ADMISSION_FAIL_OPEN``) and billed later from the outbox.

HTTP 200 for healthy and degraded, 503 for unhealthy (take the worker out of rotation).
It runs on a thread and event loop of its own, beside the sidecar link: livekit owns the
main loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from aiohttp import web

from agent.outbox import Outbox
from agent.settings import Settings

log = logging.getLogger("agent.health")

Status = Literal["healthy", "degraded", "unhealthy"]
TIMEOUT_S = 2.0
OUTBOX_BACKLOG = 1000
_RANK: dict[Status, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True)
class Check:
    status: Status
    detail: str


async def worker_health(settings: Settings) -> dict[str, object]:
    """Every check, and the worst of them as the worker's status."""
    names = ("livekit", "models", "outbox", "sidecar")
    results = await asyncio.gather(
        _livekit(settings),
        asyncio.to_thread(_models),
        asyncio.to_thread(_outbox, settings),
        _sidecar(settings),
    )
    checks = {name: check for name, check in zip(names, results, strict=True) if check}
    worst = max((c.status for c in checks.values()), key=_RANK.__getitem__, default="healthy")
    return {
        "status": worst,
        "checks": {name: {"status": c.status, "detail": c.detail} for name, c in checks.items()},
    }


async def _livekit(settings: Settings) -> Check:
    url = f"http://127.0.0.1:{settings.worker_http_port}/"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return Check("unhealthy", f"the worker is not serving ({type(exc).__name__})")
    if response.status_code != 200:
        return Check("unhealthy", response.text.strip()[:200] or f"HTTP {response.status_code}")
    return Check("healthy", "livekit's worker endpoint says OK")


def _models() -> Check:
    from plugins.local_stt import bundled_whisper_model_dir
    from plugins.local_tts import bundled_piper_voice

    try:
        missing = [
            str(path)
            for path in (
                bundled_whisper_model_dir() / "model.bin",
                *bundled_piper_voice(),
                _silero_model(),
            )
            if not path.is_file()
        ]
    except Exception as exc:  # a package not installed
        return Check("unhealthy", f"cannot locate the local models ({type(exc).__name__})")
    if missing:
        return Check("unhealthy", "missing: " + ", ".join(missing))
    return Check("healthy", "VAD, Whisper and the Piper voice are on disk")


def _silero_model() -> Path:
    # located, not imported: livekit registers a plugin on import, on the main thread only
    spec = importlib.util.find_spec("livekit.plugins.silero")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("livekit.plugins.silero")
    return Path(spec.submodule_search_locations[0]) / "resources" / "silero_vad.onnx"


def _outbox(settings: Settings) -> Check | None:
    if not settings.outbox_path.exists():
        return Check("healthy", "no billing events yet")
    outbox = Outbox(settings.outbox_path)
    try:
        pending = outbox.pending_count()
    finally:
        outbox.close()
    if pending > OUTBOX_BACKLOG:
        return Check("degraded", f"{pending} billing events wait for the sidecar")
    return Check("healthy", f"{pending} billing events to deliver")


async def _sidecar(settings: Settings) -> Check | None:
    if not settings.sidecar_url:
        return None
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.get(settings.sidecar_url.rstrip("/") + "/health")
    except httpx.HTTPError as exc:
        return Check("degraded", f"the sidecar does not answer ({type(exc).__name__})")
    if response.status_code != 200:
        return Check("degraded", f"the sidecar says HTTP {response.status_code}")
    return Check("healthy", "the sidecar answers")


def health_app(settings: Settings) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        report = await worker_health(settings)
        return web.json_response(report, status=503 if report["status"] == "unhealthy" else 200)

    app = web.Application()
    app.router.add_get("/health", health)
    return app


def start_health_server(settings: Settings) -> threading.Event | None:
    """Serve ``/health`` on ``settings.health_port`` from a thread of its own; set the
    returned event to stop. None when no port is set."""
    if settings.health_port is None:
        return None
    stop = threading.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        runner = web.AppRunner(health_app(settings), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, "0.0.0.0", settings.health_port).start()
        except OSError as exc:
            failure.append(exc)
            ready.set()
            await runner.cleanup()
            return
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    threading.Thread(target=lambda: asyncio.run(serve()), name="health", daemon=True).start()
    ready.wait(TIMEOUT_S * 5)
    if failure:
        raise OSError(f"cannot serve /health on port {settings.health_port}: {failure[0]}")
    return stop
