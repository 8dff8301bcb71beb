"""The production call path driven whole: ``simulate`` with a sidecar runs admission (by the
dialled number), the agent's profile as created through the API, the call object, metering
through the outbox, and ends in the sidecar's ledger (uvicorn, PostgreSQL)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlmodel import Session, select

from agent.profile import PROFILES_DIR, load_profile_file
from agent.settings import Settings
from agent.sidecar_client import SidecarClient
from agent.simulate import SimulationOptions, simulate_call
from billing.admission import CALLER_MESSAGES, CONCURRENT_CALLS_LIMIT
from billing.api.app import create_app
from storage.db import make_engine
from storage.models import BillingEvent, Role
from tests.api_client import SERVICE_TOKEN, Seeder, make_config, serving
from tests.conftest import silence
from tests.services import migrated_database

pytestmark = pytest.mark.slow

CLINIC = load_profile_file(PROFILES_DIR / "clinic.yaml")
DIALLED = "+15550142000"
CALLER = "+15557654321"


@pytest.fixture
def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Seeder]]:
    """The sidecar app served by uvicorn on a fresh PostgreSQL database."""
    with migrated_database("postgresql", request, tmp_path) as database_url:
        engine = make_engine(database_url)
        app = create_app(make_config(database_url, tmp_path / "recordings"), engine=engine)
        with serving(app) as url:
            yield url, Seeder(engine, tmp_path / "recordings")


async def test_a_simulated_call_speaks_the_api_profile_and_ends_in_the_ledger(
    sidecar: tuple[str, Seeder],
    tmp_path: Path,
    vad_model: Any,
    piper_caller: Any,
    openai_server: Any,
) -> None:
    url, seed = sidecar
    org = seed.organisation(max_concurrent_calls=1)
    admin = seed.member(org, Role.admin)
    owner = seed.member(org, Role.agent)
    profile = {
        **CLINIC.model_dump(mode="json"),
        "voices": {"openai": "nova"},
        "providers": {"tts": "openai"},
        "phone_number": DIALLED,
        "owner_user_id": owner.user_id,
    }
    async with httpx.AsyncClient(base_url=url) as http:
        created = await http.post("/v1/agents", json=profile, headers=admin.headers)
    assert created.status_code == 201, created.text
    agent_id = created.json()["id"]

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        sidecar_url=url,
        sidecar_service_token=SERVICE_TOKEN,
        data_dir=tmp_path / "worker",
        stt_provider="local",
        llm_provider="local",
        openai_api_key="sk-loopback",
        openai_base_url=openai_server.base_url,
    )
    caller = np.concatenate([piper_caller("I would like to book an appointment."), silence(1.5)])
    options = SimulationOptions(
        dialled_number=DIALLED, caller_number=CALLER, quiet_after_s=1.5, realtime=True
    )
    report, _ = await simulate_call(caller, settings, vad_model, options=options)

    # the API's profile answered: its greeting, its dialogue, its voice
    said = [u.text for u in report.transcript if u.role == "agent"]
    assert report.agent == CLINIC.name and report.admission == "admitted", report
    assert said[0] == CLINIC.greeting
    assert any("Which day would suit you?" in text for text in said), report.transcript
    assert {r["voice"] for r in openai_server.speech_requests} == {"nova"}
    assert report.errors == [] and report.billing_events_pending == 0

    # the call's row, as the agent's owner (an agent-role user) sees it
    async with httpx.AsyncClient(base_url=url) as http:
        calls = (await http.get("/v1/calls", headers=owner.headers)).json()
    (row,) = [c for c in calls if c["id"] == report.call_id]
    assert row["agent_id"] == agent_id
    assert row["caller_number_masked"] == "+*******4321"
    assert row["dialled_number"] == DIALLED
    assert row["status"] == "ended"
    assert row["started_at"] < row["ended_at"]

    # its usage, metered through the outbox: the call's seconds, as long as its row says
    with Session(seed.engine) as session:
        events = session.exec(
            select(BillingEvent).where(BillingEvent.call_id == report.call_id)
        ).all()
    seconds = sum(e.quantity for e in events if e.kind == "call_seconds")
    lasted_s = (
        datetime.fromisoformat(row["ended_at"]) - datetime.fromisoformat(row["started_at"])
    ).total_seconds()
    assert math.ceil(lasted_s) - 1 <= seconds <= math.ceil(lasted_s) + 1, (seconds, lasted_s)
    assert all(e.organisation_id == org for e in events)
    assert {e.kind for e in events} >= {"call_seconds", "tts_characters"}

    # the lease was released: the organisation's one slot takes the next call at once
    client = SidecarClient(url, SERVICE_TOKEN)
    try:
        next_call = await client.admit(
            "next-call", organisation_id=None, agent_id=None, dialled_number=DIALLED
        )
    finally:
        await client.aclose()
    assert next_call.admitted, next_call


async def test_a_call_over_the_limit_hears_the_refusal_and_is_not_billed(
    sidecar: tuple[str, Seeder], tmp_path: Path, vad_model: Any
) -> None:
    url, seed = sidecar
    org = seed.organisation(max_concurrent_calls=1)
    client = SidecarClient(url, SERVICE_TOKEN)
    try:
        held = await client.admit(
            "live-call", organisation_id=org, agent_id=None, dialled_number=None
        )
        assert held.admitted
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            sidecar_url=url,
            sidecar_service_token=SERVICE_TOKEN,
            data_dir=tmp_path / "worker",
            tts_provider="local",
        )
        options = SimulationOptions(organisation_id=org, quiet_after_s=0.5)
        report, _ = await simulate_call(silence(0.5), settings, vad_model, options=options)
    finally:
        await client.aclose()
    assert (report.admission, report.refusal_reason, report.status) == (
        "refused",
        "concurrent_calls_limit",
        "refused",
    )
    (message,) = [u.text for u in report.transcript if u.role == "agent"]
    assert message == CALLER_MESSAGES[CONCURRENT_CALLS_LIMIT]
    with Session(seed.engine) as session:
        assert not session.exec(
            select(BillingEvent).where(BillingEvent.call_id == report.call_id)
        ).all()


def test_every_cloud_plugin_a_call_may_build_is_registered_by_the_worker_module():
    """livekit registers a plugin on its first import, and only on the main thread; the
    console builds a call's pipeline in a thread. With every key set, building each stage
    in a thread after importing agent.worker must not import a plugin for the first time."""
    script = """
import threading
import agent.worker
from pydantic import SecretStr
from agent.pipeline import build_llm, build_stt, build_tts, load_vad
from agent.profile import builtin_profile
from agent.settings import Settings
keys = {k: SecretStr("k") for k in (
    "openai_api_key", "anthropic_api_key", "elevenlabs_api_key", "deepgram_api_key")}
settings = Settings(_env_file=None, **keys)
errors = []
def build():
    try:
        build_llm(settings, builtin_profile())
        build_tts(settings, builtin_profile())
        build_stt(settings, load_vad())
    except Exception as exc:
        errors.append(repr(exc))
thread = threading.Thread(target=build)
thread.start()
thread.join()
assert not errors, errors
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
