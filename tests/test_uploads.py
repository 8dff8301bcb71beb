"""``POST /v1/recordings``: an organisation's own audio, streamed in, its format read from
its content (never its name), decoded block by block and kept sealed. Every common
format and rate is taken; text, an empty body, a damaged file, a 0.2 s clip, too many
channels and a file over the limit are refused with a clear status and nothing kept."""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from billing.api.app import create_app
from storage.models import Recording, Role
from storage.recording_files import Keyring
from tests.api_client import Member, Seeder, make_config

RING = Keyring({"u1": os.urandom(32)}, "u1")


@pytest.fixture
def upload(engine, database_url, tmp_path) -> Iterator[tuple[TestClient, Member, Seeder]]:  # type: ignore[no-untyped-def]
    config = make_config(database_url, tmp_path / "rec", recording_keyring=RING,
                         max_recording_bytes=3_000_000)  # fmt: skip
    seed = Seeder(engine, config.recordings_dir)
    org = seed.organisation()
    with TestClient(create_app(config, engine=engine)) as client:
        yield client, seed.member(org, Role.admin), seed


def encode(seconds: float, rate: int, channels: int, fmt: str, subtype: str | None = None) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([tone] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, subtype, rate, channels",
    [
        ("WAV", "PCM_16", 8_000, 1),
        ("WAV", "PCM_24", 48_000, 2),
        ("FLAC", None, 44_100, 2),
        ("OGG", "VORBIS", 16_000, 1),
        ("MP3", "MPEG_LAYER_III", 22_050, 1),
        ("AIFF", "PCM_16", 11_025, 1),
    ],
)
def test_common_formats_and_rates_are_kept_sealed(upload, fmt, subtype, rate, channels):
    client, member, seed = upload
    body = encode(1.5, rate, channels, fmt, subtype)
    resp = client.post("/v1/recordings", content=body, headers=member.headers)
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["channels"] == channels and abs(out["duration_s"] - 1.5) < 0.1
    row = seed.get(Recording, out["id"])
    assert row.call_id.startswith("upload-") and row.key_id == "u1" and row.sample_rate == rate
    stored = (seed.recordings_dir / row.path).read_bytes()
    assert stored.startswith(b"VAREC1") and body[100:164] not in stored


def test_a_wav_sent_as_mp3_is_read_as_what_it_is_and_downloads_as_sent(upload):
    client, member, _ = upload
    pcm = (np.sin(np.arange(16_000) / 5) * 8000).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    headers = {**member.headers, "Content-Type": "audio/mpeg"}
    resp = client.post("/v1/recordings", content=buf.getvalue(), headers=headers)
    assert resp.status_code == 201
    wav = client.get(f"/v1/recordings/{resp.json()['id']}/download", headers=member.headers)
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getframerate() == 16_000 and w.readframes(10**6) == pcm.tobytes()


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"just some text, not audio at all", 415, "unsupported audio format"),
        (b"", 415, "unsupported audio format"),
        (b"fLaC" + os.urandom(2000), 422, "cannot be decoded"),
        (encode(0.2, 16_000, 1, "WAV", "PCM_16"), 422, "too short"),
        (encode(1.0, 8_000, 9, "WAV", "PCM_16"), 422, "9 channels"),
        (encode(1.0, 16_000, 1, "WAV", "PCM_16")[:300], 422, "too short"),  # cut off
        (b"RIFF" + b"\x00" * 4 + b"WAVE" + os.urandom(500), 422, "decoded"),
    ],
    ids=["text", "empty", "corrupt-flac", "0.2s", "9-channels", "truncated-wav", "bad-header"],
)
def test_bad_input_is_refused_clearly_and_nothing_is_kept(upload, body, status, says):
    client, member, seed = upload
    resp = client.post("/v1/recordings", content=body, headers=member.headers)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["detail"]
    assert seed.count(Recording) == 0
    leftovers = [p for p in seed.recordings_dir.rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_file_over_the_limit_is_refused_before_it_is_kept(upload):
    client, member, seed = upload
    body = encode(40, 48_000, 1, "WAV", "PCM_16")  # 3.8 MB > the 3 MB limit here
    resp = client.post("/v1/recordings", content=body, headers=member.headers)
    assert resp.status_code == 413
    assert seed.count(Recording) == 0


def test_only_admins_upload(upload):
    client, _, seed = upload
    org = seed.organisation()
    body = encode(1.0, 16_000, 1, "WAV", "PCM_16")
    for role in (Role.agent, Role.viewer):
        member = seed.member(org, role)
        assert (
            client.post("/v1/recordings", content=body, headers=member.headers).status_code == 403
        )
