"""The LiveKit worker: one job per call, a browser user in a room or a SIP caller.

Kept thin on purpose: everything a call does is assembled in ``agent.pipeline`` and
``agent.support_agent``, which the simulator and the tests drive without a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading

import httpx
from livekit import api, rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess

# livekit-agents registers a plugin when it is first imported, and only on the main thread;
# `console` runs prewarm and the job in a thread, so import every plugin a call may use here.
from livekit.plugins import deepgram, elevenlabs, openai, silero  # noqa: F401

from agent.admission import (
    ADMISSION_ATTR,
    AGENT_ATTR,
    LEASE_ATTR,
    MESSAGE_ATTR,
    ORG_ATTR,
    CallIdentity,
    LeaseKeeper,
    call_identity,
    make_request_handler,
)
from agent.logs import call_id_var, mask_phone
from agent.metering import CallMeter
from agent.pipeline import build_session, build_stt, build_tts, load_vad
from agent.settings import Settings
from agent.sidecar_client import SidecarClient
from agent.support_agent import GREETING, SupportAgent
from billing.internal_api import WORKER_HEARTBEAT_PATH, WorkerHeartbeatIn
from billing.outbox import Outbox, OutboxSender

log = logging.getLogger("agent.worker")

WORKER_HEARTBEAT_INTERVAL_S = 15.0


def outbox_path(settings: Settings):  # type: ignore[no-untyped-def]
    return settings.data_dir / "outbox.db"


def prewarm(proc: JobProcess) -> None:
    """Runs once per worker process, before any call: load models off the call path."""
    settings = Settings()
    proc.userdata["vad"] = load_vad()
    if settings.resolved_stt() == "local":
        build_stt(settings).prewarm()  # type: ignore[attr-defined]
    if settings.resolved_tts() == "local":
        build_tts(settings)  # loads the voice into the process-wide cache


async def entrypoint(ctx: JobContext) -> None:
    settings = Settings()
    call_id = ctx.job.id or ctx.room.name
    call_id_var.set(call_id)
    # on every record of this job process, livekit's own included (forwarded, then masked
    # and formatted by the main process's handlers)
    ctx.log_context_fields = {**ctx.log_context_fields, "call_id": call_id}

    @ctx.room.on("participant_connected")
    def _on_participant(participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            log.info(
                "sip caller joined",
                extra={
                    "caller": mask_phone(participant.attributes.get("sip.phoneNumber", "")),
                    "trunk_number": mask_phone(
                        participant.attributes.get("sip.trunkPhoneNumber", "")
                    ),
                },
            )

    await ctx.connect()
    attributes = ctx.room.local_participant.attributes
    if attributes.get(ADMISSION_ATTR) == "refused":
        await _refuse(ctx, settings, attributes.get(MESSAGE_ATTR, ""))
        return

    session = build_session(settings, ctx.proc.userdata["vad"])
    lease_id = attributes.get(LEASE_ATTR)
    org = attributes.get(ORG_ATTR)
    if org:
        meter = CallMeter(
            Outbox(outbox_path(settings)),
            call_id=ctx.job.id,
            organisation_id=int(org),
            agent_id=int(agent) if (agent := attributes.get(AGENT_ATTR)) else None,
            usage=lambda: session.usage,
        )
        meter.start()
        ctx.add_shutdown_callback(meter.close)
    if settings.sidecar_url and attributes.get(ADMISSION_ATTR) in ("admitted", "unleased"):
        identity = call_identity(
            ctx.job.id, [ctx.room.metadata, ctx.job.metadata], settings.default_organisation_id
        )
        _keep_lease(ctx, settings, identity, lease_id)

    await session.start(agent=SupportAgent(), room=ctx.room)
    log.info("call started", extra={"room": ctx.room.name})
    await session.say(GREETING)


def refusal_session(settings: Settings) -> AgentSession:
    """A voice-only session for a refused call: no STT or LLM, so it costs nothing."""
    return AgentSession(tts=build_tts(settings))


async def say_refusal(session: AgentSession, message: str) -> None:
    """On a started session: say why the call cannot be taken, uninterruptible, wait until
    it was heard, and close the session."""
    await session.say(message, allow_interruptions=False).wait_for_playout()
    await session.aclose()


async def _refuse(ctx: JobContext, settings: Settings, message: str) -> None:
    """Say why the call cannot be taken in the room, then end it (a SIP caller is hung up)."""
    session = refusal_session(settings)
    await session.start(agent=Agent(instructions=""), room=ctx.room)
    await say_refusal(session, message)
    with contextlib.suppress(Exception):
        await ctx.api.room.delete_room(api.DeleteRoomRequest(room=ctx.room.name))
    ctx.shutdown(reason="call refused by admission")


def _keep_lease(
    ctx: JobContext, settings: Settings, identity: CallIdentity, lease_id: str | None
) -> None:
    """Keep the call counted by the sidecar while it runs; release its lease at the end."""
    client = SidecarClient(settings.sidecar_url, settings.sidecar_service_token.get_secret_value())
    keeper = LeaseKeeper(client, identity, lease_id)
    task = asyncio.create_task(keeper.run(), name="lease-keeper")

    async def release() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await keeper.release()
        await client.aclose()

    ctx.add_shutdown_callback(release)


def start_sidecar_link(settings: Settings) -> threading.Event | None:
    """Background threads of the worker's main process: deliver metered billing events
    to the sidecar, and tell it this worker is alive (so a sidecar without Redis can warn
    that its in-process leases do not span several workers). Set the event to stop."""
    if not settings.sidecar_url:
        return None
    stop = threading.Event()
    token = settings.sidecar_service_token.get_secret_value()
    sender = OutboxSender(Outbox(outbox_path(settings)), settings.sidecar_url, token)
    threading.Thread(target=sender.run, args=(stop,), name="outbox-sender", daemon=True).start()
    threading.Thread(
        target=_announce_worker,
        args=(settings.sidecar_url, token, stop),
        name="worker-heartbeat",
        daemon=True,
    ).start()
    return stop


def _announce_worker(sidecar_url: str, token: str, stop: threading.Event) -> None:
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    with httpx.Client(
        base_url=sidecar_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=2.0,
    ) as http:
        while not stop.is_set():
            try:
                body = WorkerHeartbeatIn(worker_id=worker_id).model_dump()
                answer = http.post(WORKER_HEARTBEAT_PATH, json=body)
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("worker heartbeat to the sidecar failed", extra={"error": str(exc)})
            stop.wait(WORKER_HEARTBEAT_INTERVAL_S)


def build_server(settings: Settings) -> AgentServer:
    max_calls = settings.max_concurrent_calls

    def load(server: AgentServer) -> float:
        # LiveKit stops offering jobs once load reaches the threshold (1.0): full at max_calls
        return min(1.0, len(server.active_jobs) / max_calls)

    server = AgentServer(
        ws_url=settings.livekit_url or None,
        api_key=settings.livekit_api_key or None,
        api_secret=settings.livekit_api_secret.get_secret_value() or None,
        setup_fnc=prewarm,
        load_fnc=load,
        load_threshold=1.0,
    )
    client = (
        SidecarClient(settings.sidecar_url, settings.sidecar_service_token.get_secret_value())
        if settings.sidecar_url
        else None
    )
    server.rtc_session(
        entrypoint,
        agent_name=settings.agent_name,
        on_request=make_request_handler(settings, client),
    )
    return server
