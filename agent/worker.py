"""The LiveKit worker: one job per call, a browser user in a room or a SIP caller.

Kept thin on purpose: a job reads its admission decision, finds its caller and profile,
and runs an ``agent.call.Call`` (the same object ``simulate`` runs without a room).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

from livekit.agents import AgentServer, JobContext, JobProcess

# livekit-agents registers a plugin when it is first imported, and only on the main thread;
# `console` runs prewarm and the job in a thread, so import every plugin a call may use here.
from livekit.plugins import anthropic, deepgram, elevenlabs, openai, silero  # noqa: F401

from agent.admission import (
    AdmissionDecision,
    make_request_handler,
)
from agent.call import Call
from agent.logs import call_id_var
from agent.outbox import Outbox, OutboxSender
from agent.pipeline import build_tts, load_vad, phrasebook
from agent.profile import ProfileStore, local_profile
from agent.recording import RecordingUploader
from agent.settings import Settings
from agent.sidecar_client import SidecarClient, SidecarUnavailable, configured_sidecar
from agent.telephony import PhoneLine, SipCaller, sip_breaker
from agent.warm_transfer import room_consult
from plugins.local_stt import WhisperSTT

log = logging.getLogger("agent.worker")

WORKER_HEARTBEAT_INTERVAL_S = 15.0
OUTBOX_FLUSH_S = 15.0
"""At shutdown, how long the last delivery of billing events may take."""


def prewarm(proc: JobProcess) -> None:
    """Runs once per worker process, before any call: load models off the call path, and
    the profile cache every call of this process shares."""
    settings = Settings()
    profile = local_profile(settings.agent_profile)
    proc.userdata["vad"] = load_vad()
    proc.userdata["profiles"] = ProfileStore(profile)
    WhisperSTT().prewarm()  # every STT chain's last tier
    # the local voice (every TTS chain's last voice) and the default agent's fixed lines
    book = phrasebook(build_tts(settings, profile))
    if book is not None:
        book.prepare()
    # the ~470 k objects of the models and imports live as long as the process: out of the
    # collector's sight, a full collection no longer stops a call's event loop ~0.3 s every
    # 10-15 s with 10 calls in a process (bench.density), but well under 40 ms
    gc.freeze()


async def entrypoint(ctx: JobContext) -> None:
    """One job, one call: read the admission decision, wait for the caller, fetch the
    agent's profile and run the call until it ends."""
    settings = Settings()
    call_id = ctx.job.id or ctx.room.name
    call_id_var.set(call_id)
    # on every record of this job process, livekit's own included (forwarded, then masked
    # and formatted by the main process's handlers)
    ctx.log_context_fields = {**ctx.log_context_fields, "call_id": call_id}

    await ctx.connect()
    caller: SipCaller | None = None
    if ctx.is_fake_job():  # the console: no dispatch, no admission, the local mic is the caller
        decision = AdmissionDecision(status="unmetered")
        # livekit's console cancels the speakers' echo itself
        settings = settings.model_copy(update={"echo_cancellation": False})
    else:
        decision = AdmissionDecision.from_attributes(ctx.room.local_participant.attributes)
        caller = SipCaller.of(
            await ctx.wait_for_participant(), outbound=is_outbound(ctx.job.metadata)
        )
    if caller is not None and caller.direction == "inbound" and not decision.dialled_number:
        decision = decision.model_copy(update={"dialled_number": caller.trunk_number})
    sidecar = configured_sidecar(settings)
    profile = await ctx.proc.userdata["profiles"].for_call(decision.agent_id, sidecar)
    line = (
        PhoneLine(
            ctx.api,
            ctx.room.name,
            caller.identity,
            ctx.room.local_participant,
            sip_breaker(settings),
            outbound_trunk_id=settings.sip_outbound_trunk_id,
            consult=room_consult(settings),
        )
        if caller is not None
        else None
    )

    def on_ended(status: str) -> None:
        # the call is over for everyone (the call hung up a phone caller's line itself)
        async def end_job() -> None:
            if line is None:
                try:
                    await ctx.delete_room()
                except Exception as exc:
                    log.warning("could not delete the call's room", extra={"error": str(exc)})
            ctx.shutdown(reason=f"call {status}")

        asyncio.ensure_future(end_job())

    call = Call(
        decision.identity(call_id),
        decision,
        profile,
        settings=settings,
        vad_model=ctx.proc.userdata["vad"],
        sidecar=sidecar,
        caller_number=caller.number if caller else None,
        sip_call_id=caller.call_id if caller else None,
        direction=caller.direction if caller else None,
        line=line,
        on_ended=on_ended,
    )

    async def hang_up() -> None:  # the job ends: the room closed, SIGTERM, or on_ended
        await call.aclose()

    ctx.add_shutdown_callback(hang_up)
    await call.start(room=ctx.room)


def is_outbound(metadata: str) -> bool:
    """Whether the job was dispatched by ``python agent.py call`` (``agent.telephony``)."""
    try:
        value = json.loads(metadata or "{}")
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("direction") == "outbound"


@dataclass
class SidecarLink:
    """The worker main process's link to the sidecar, on a thread and event loop of its
    own (livekit owns the main one): deliver metered billing events from the outbox, and
    tell the sidecar this worker is alive (so a sidecar without Redis can warn that its
    in-process leases do not span several workers)."""

    stop_event: threading.Event
    thread: threading.Thread

    def stop(self) -> None:
        """Stop, after one last bounded flush of the outbox (what is not delivered stays
        on disk for the next start)."""
        self.stop_event.set()
        self.thread.join(OUTBOX_FLUSH_S + 5.0)


def start_sidecar_link(settings: Settings) -> SidecarLink | None:
    if not settings.sidecar_url:
        return None
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(_sidecar_link(settings, stop)), name="sidecar-link", daemon=True
    )
    thread.start()
    return SidecarLink(stop, thread)


async def _sidecar_link(settings: Settings, stop: threading.Event) -> None:
    client = SidecarClient.from_settings(settings)
    outbox = Outbox(settings.outbox_path)
    sender = OutboxSender(outbox, client)
    uploader = RecordingUploader(settings.recordings_dir, client)
    try:
        await asyncio.gather(sender.run(stop), _announce_worker(client, stop), uploader.run(stop))
        await sender.flush(OUTBOX_FLUSH_S)
        await uploader.upload_ready()
    finally:
        await client.aclose()
        outbox.close()


async def _announce_worker(client: SidecarClient, stop: threading.Event) -> None:
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    while not stop.is_set():
        try:
            await client.worker_heartbeat(worker_id)
        except SidecarUnavailable as exc:
            log.warning("worker heartbeat to the sidecar failed", extra={"error": str(exc)})
        await asyncio.to_thread(stop.wait, WORKER_HEARTBEAT_INTERVAL_S)


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
        port=settings.worker_http_port,
        # SIGTERM: take no new calls, let live ones finish for this long (a second
        # SIGTERM ends at once; livekit's cli)
        drain_timeout=settings.drain_timeout_s,
        # livekit's /metrics: every job process's metrics (prometheus-client's
        # multiprocess mode, files under the data directory)
        prometheus_port=settings.metrics_port,
        prometheus_multiproc_dir=(
            str(settings.data_dir.resolve() / "metrics") if settings.metrics_port else None
        ),
    )
    client = configured_sidecar(settings)
    server.rtc_session(
        entrypoint,
        agent_name=settings.agent_name,
        on_request=make_request_handler(settings, client),
    )
    return server
