"""The worker's job, run for real in its own process: ``prewarm`` and ``entrypoint`` in a
livekit ``JobContext`` whose room holds a SIP caller, logging through livekit's production
set-up with our masking. No line the process writes holds the caller's or the trunk's
number, and every line of the call carries its id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.settings import Settings
from agent.worker import build_server, entrypoint
from tests.worker_job import CALLER, TRUNK

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.worker_job", "1.0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path_factory.mktemp("data"))},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_no_line_of_the_job_process_holds_a_phone_number(job_output: str):
    digits = re.sub(r"\D", "", job_output.replace("\n", "|"))
    for number in (CALLER, TRUNK):
        assert number[2:] not in digits, number
    assert "+*******4567" in job_output  # masked, not dropped


def test_every_line_of_the_call_carries_its_id(job_output: str):
    records = [json.loads(line) for line in job_output.splitlines() if line.startswith("{")]
    assert len(records) >= 4
    assert {r.get("call_id") for r in records} == {"AJ_sipjob1"}


def test_the_job_runs_the_call_object_from_join_to_teardown(job_output: str):
    records = [json.loads(line) for line in job_output.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert messages.index("sip caller joined") < messages.index("call started")
    started = records[messages.index("call started")]
    assert started["caller"] == "+*******4567" and started["dialled_number"] == "+*******7788"
    assert records[messages.index("call ended")]["status"] == "ended"


def test_the_job_hangs_up_the_sip_caller_when_the_call_ends(job_output: str):
    [api_line] = [line for line in job_output.splitlines() if line.startswith("livekit api: ")]
    assert json.loads(api_line.removeprefix("livekit api: ")) == ["RoomService/DeleteRoom"]
    records = [json.loads(line) for line in job_output.splitlines() if line.startswith("{")]
    joined = next(r for r in records if r["message"] == "sip caller joined")
    assert joined["direction"] == "inbound"


def test_the_server_registers_the_entrypoint_and_reports_full_at_the_limit():
    server = build_server(Settings(_env_file=None, max_concurrent_calls=4))  # type: ignore[call-arg]
    assert server._entrypoint_fnc is entrypoint  # type: ignore[attr-defined]
    assert server._load_threshold == 1.0  # type: ignore[attr-defined]
    load = server.load_fnc
    assert [load(SimpleNamespace(active_jobs=[0] * n)) for n in (0, 2, 4, 9)] == [0, 0.5, 1, 1]  # type: ignore[call-arg,arg-type]
