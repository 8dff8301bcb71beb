"""The CLI: every failure to start exits non-zero with one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from agent.wav_io import CallerAudioError, load_caller_audio
from tests.conftest import DATA_DIR

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
):  # type: ignore[no-untyped-def]
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "agent.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=base,
        cwd=cwd or REPO,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_caller_file(tmp_path: Path):
    proc = run_cli("simulate", "--input", str(tmp_path / "nope.wav"))
    assert proc.returncode == 1
    assert "caller audio not found" in one_error_line(proc)


def test_non_audio_caller_file(tmp_path: Path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    proc = run_cli("simulate", "--input", str(bogus))
    assert proc.returncode == 1
    assert "not a readable audio file" in one_error_line(proc)


def test_empty_wav(tmp_path: Path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.int16), 16_000)
    proc = run_cli("simulate", "--input", str(empty))
    assert proc.returncode == 1
    assert "empty" in one_error_line(proc)


def test_caller_path_is_a_directory(tmp_path: Path):
    proc = run_cli("simulate", "--input", str(tmp_path))
    assert proc.returncode == 1
    assert "not a file" in one_error_line(proc)


def test_output_path_is_a_directory(tmp_path: Path):
    proc = run_cli("simulate", "--input", str(DATA_DIR / "sample.wav"), "--output", str(tmp_path))
    assert proc.returncode == 1
    assert "is a directory" in one_error_line(proc)


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "--input", "x.wav", "--bogus"),
        ("simulate",),
        ("fly",),
        (),
        ("simulate", "--input", "tests/data/sample.wav", "--start", "abc"),
        ("simulate", "--input", "tests/data/sample.wav", "--start", "5", "--end", "2"),
        ("simulate", "--input", "tests/data/sample.wav", "--end", "31"),
        ("simulate", "--input", "tests/data/sample.wav", "--start", "-1"),
        ("simulate", "--input", "tests/data/sample.wav", "--agent-id", "seven"),
        ("simulate", "--input", "tests/data/sample.wav", "--agent-id", "2147483648"),
        ("simulate", "--input", "tests/data/sample.wav", "--dialled-number", "555-0100"),
        ("simulate", "--input", "tests/data/sample.wav", "--caller-number", "+0123"),
        ("start", "--agent"),
        ("simulate", "--input", "tests/data/sample.wav", "--sidecar", "localhost:8700"),
        ("simulate", "--input", "tests/data/sample.wav", "--dtmf", "t=abc:12#"),
        ("simulate", "--input", "tests/data/sample.wav", "--dtmf", "t=3:12x"),
    ],
    ids=[
        "unknown-flag",
        "missing-input",
        "unknown-command",
        "no-command",
        "start-not-a-number",
        "end-before-start",
        "end-past-the-recording",
        "negative-start",
        "agent-id-not-a-number",
        "agent-id-past-32-bits",
        "dialled-number-not-e164",
        "caller-number-not-e164",
        "agent-without-a-file",
        "sidecar-not-a-url",
        "dtmf-time-not-a-number",
        "dtmf-not-a-key",
    ],
)
def test_bad_usage_exits_2_with_one_line(args: tuple[str, ...]):
    proc = run_cli(*args)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--help" in line or "--start/--end" in line


@pytest.mark.parametrize("command", ["simulate", "console", "start"])
def test_a_bad_agent_profile_stops_the_command_naming_file_and_field(command: str, tmp_path: Path):
    profile = tmp_path / "agent.yaml"
    profile.write_text("name: Front desk\ntools: [open_safe]\n")
    args = ("--input", str(DATA_DIR / "sample.wav")) if command == "simulate" else ("--text",)
    env = {"LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    proc = run_cli(
        command, *args[: 2 if command != "start" else 0], "--agent", str(profile), env=env
    )
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert str(profile) in line and "tools.0" in line


@pytest.mark.parametrize("command", ["start", "connect"])
def test_worker_without_livekit_config_names_the_missing_variables(command: str, tmp_path: Path):
    proc = run_cli(command, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "LIVEKIT_URL" in line and "LIVEKIT_API_SECRET" in line


def test_worker_with_unreachable_server_fails_fast(tmp_path: Path):
    env = {
        "LIVEKIT_URL": "ws://127.0.0.1:9",  # discard port: nothing listens
        "LIVEKIT_API_KEY": "key",
        "LIVEKIT_API_SECRET": "secret",
    }
    proc = run_cli("start", env=env, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot reach the LiveKit server at 127.0.0.1:9" in one_error_line(proc)


def test_malformed_livekit_url(tmp_path: Path):
    env = {"LIVEKIT_URL": "localhost", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    proc = run_cli("start", env=env, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    assert "LIVEKIT_URL must look like" in one_error_line(proc)


def test_bad_setting_value_is_one_line(tmp_path: Path):
    proc = run_cli(
        "simulate", "--input", "x.wav", env={"MAX_CONCURRENT_CALLS": "lots"}, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "MAX_CONCURRENT_CALLS" in one_error_line(proc).upper()


def test_resamples_8khz_and_44khz_stereo_to_16khz_mono(tmp_path: Path):
    jfk, rate = sf.read(str(DATA_DIR / "jfk.flac"), dtype="float32", always_2d=True)
    jfk = jfk.mean(axis=1)
    stereo = tmp_path / "stereo44.wav"
    sf.write(str(stereo), np.stack([jfk, jfk * 0.5], axis=1), rate)
    phone = tmp_path / "phone8k.wav"
    sf.write(str(phone), soxr.resample(jfk, rate, 8_000), 8_000)

    for path in (stereo, phone):
        pcm = load_caller_audio(path)
        assert pcm.dtype == np.int16 and pcm.ndim == 1
        assert abs(len(pcm) / 16_000 - len(jfk) / rate) < 0.01


def test_load_rejects_truncated_header(tmp_path: Path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(CallerAudioError, match="not a readable audio file"):
        load_caller_audio(broken)


@pytest.mark.slow
def test_simulate_command_on_44khz_stereo_writes_report_and_audio(tmp_path: Path):
    jfk, rate = sf.read(str(DATA_DIR / "jfk.flac"), dtype="float32", always_2d=True)
    jfk = jfk.mean(axis=1)
    caller = tmp_path / "jfk_stereo.wav"
    sf.write(str(caller), np.stack([jfk, jfk], axis=1), rate)
    out, report = tmp_path / "reply.wav", tmp_path / "report.json"
    proc = run_cli(
        "simulate", "--input", str(caller), "--output", str(out), "--report", str(report),
        "--no-greeting", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    caller_text = " ".join(u["text"] for u in data["transcript"] if u["role"] == "caller")
    caller_text = re.sub(r"[^\w\s']", "", caller_text.lower())
    assert "ask not what your country can do for you" in caller_text
    assert data["turns"] and data["turns"][0]["end_of_speech_to_first_audio_s"] > 0
    audio, out_rate = sf.read(str(out), dtype="int16")
    assert out_rate == 24_000 and np.abs(audio).max() > 1000
    assert "agent:" in proc.stdout


@pytest.mark.slow
def test_simulate_command_on_8khz_phone_audio(tmp_path: Path):
    pcm = load_caller_audio(DATA_DIR / "sample.wav", sample_rate_hz=8_000)
    caller = tmp_path / "diane8k.wav"
    sf.write(str(caller), pcm[int(12.3 * 8000) : int(14.5 * 8000)], 8_000)
    proc = run_cli("simulate", "--input", str(caller), "--fast", "--no-greeting", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Nice to meet you, Diane" in proc.stdout
