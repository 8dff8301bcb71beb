"""The worker's Prometheus metrics: a call's turns, interruptions and end are counted with
bounded labels, in one process (``simulate``) and across job processes (prometheus-client's
multiprocess mode, as ``start`` runs them); the worker serves them on ``METRICS_PORT``."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from agent.settings import Settings
from agent.simulate import SimulationOptions, simulate_call
from tests.conftest import DATA_DIR, silence

REPO = Path(__file__).resolve().parents[1]
STAGES = ("end_of_utterance", "stt", "llm_first_token", "tts_first_byte", "end_to_end")


def sample(registry, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_simulated_call_is_counted_turn_by_turn(vad_model, piper_caller):
    before = {
        "ended": sample(REGISTRY, "voice_agent_calls_total", status="ended"),
        "duration": sample(REGISTRY, "voice_agent_call_duration_seconds_count"),
        "active": sample(REGISTRY, "voice_agent_calls_active"),
        **{s: sample(REGISTRY, "voice_agent_stage_latency_seconds_count", stage=s) for s in STAGES},
    }
    caller = np.concatenate(
        [silence(0.3), piper_caller("Is there an outage in Springfield?"), silence(1.0)]
    )
    report, _ = await simulate_call(
        caller,
        Settings(_env_file=None),  # type: ignore[call-arg]
        vad_model,
        options=SimulationOptions(greeting=False, quiet_after_s=1.5),
    )
    assert len(report.turns) == 1, report.transcript
    assert sample(REGISTRY, "voice_agent_calls_total", status="ended") == before["ended"] + 1
    assert sample(REGISTRY, "voice_agent_call_duration_seconds_count") == before["duration"] + 1
    assert sample(REGISTRY, "voice_agent_calls_active") == before["active"]  # back down
    for stage in STAGES:
        count = sample(REGISTRY, "voice_agent_stage_latency_seconds_count", stage=stage)
        assert count == before[stage] + 1, stage
    # what the histogram saw is what the report says
    e2e = report.turns[0].end_of_speech_to_first_audio_s
    assert e2e is not None and 0 < e2e < 10


@pytest.mark.slow
def test_job_processes_metrics_are_gathered_in_multiprocess_mode(tmp_path: Path):
    """``start`` runs calls in job processes; livekit's /metrics reads what they wrote
    under PROMETHEUS_MULTIPROC_DIR. A simulated call in another process stands in for a
    job (no LiveKit server here)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "agent.py"),
            "simulate",
            "--input",
            str(DATA_DIR / "sample.wav"),
            "--start",
            "12.3",
            "--end",
            "14.5",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    assert sample(registry, "voice_agent_calls_total", status="ended") == 1
    assert sample(registry, "voice_agent_calls_active") == 0
    assert sample(registry, "voice_agent_stage_latency_seconds_count", stage="end_to_end") >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def not_livekit() -> Iterator[int]:
    """A port that answers HTTP but is no LiveKit server: the worker starts, and keeps
    trying to register."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_the_worker_serves_metrics_and_health_on_its_ports_while_it_looks_for_livekit(
    tmp_path: Path, not_livekit: int
):
    port, health_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {
        "LIVEKIT_URL": f"ws://127.0.0.1:{not_livekit}",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret-secret-secret-secret-secret",
        "METRICS_PORT": str(port),
        "HEALTH_PORT": str(health_port),
        "WORKER_HTTP_PORT": str(free_port()),
        "DATA_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "agent.py"), "start"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker.log").open("w"),
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            body = response.text
            if "voice_agent_calls_active" in body:  # a job process has started
                break
            time.sleep(0.5)
        assert body is not None, "no /metrics within 60 s"
        assert "voice_agent_calls_active 0.0" in body, body[:2000]
        assert (tmp_path / "metrics").is_dir()
        health = httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=10)
        report = health.json()
        # livekit's endpoint says OK while the worker retries; no sidecar is configured
        assert health.status_code == 200 and report["status"] == "healthy", report
        assert report["checks"]["models"]["status"] == "healthy"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
