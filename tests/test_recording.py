"""A call's recording (agent.recording): caller left, agent right, on the caller's clock.

Frame by frame: the agent's audio is laid beside the caller's at the pace it is heard,
silent while paused, dropped when cleared (an interruption). A whole simulated call:
the file decrypts, the caller channel is the caller's recording, and the agent channel's
speech sits where the caller heard it (``simulate`` renders the agent's audio at its
playback times; the two agree)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from agent.cli import main
from agent.recording import RATE, CallRecorder
from agent.settings import Settings
from agent.wav_io import CapturedAudioOutput
from storage.recording_files import Keyring, open_recording

KEY = os.urandom(32)
RING = Keyring({"r1": KEY}, "r1")


class Frames:
    """An AudioInput source: the frames given, then stop."""

    def __init__(self, frames: list[rtc.AudioFrame]) -> None:
        self._frames = iter(frames)
        self.label = "frames"
        self.source = None

    def __aiter__(self) -> Frames:
        return self

    async def __anext__(self) -> rtc.AudioFrame:
        try:
            return next(self._frames)
        except StopIteration:
            raise StopAsyncIteration from None

    def on_attached(self) -> None: ...

    def on_detached(self) -> None: ...


def frame(value: int, ms: int, rate: int) -> rtc.AudioFrame:
    n = rate * ms // 1000
    return rtc.AudioFrame(np.full(n, value, dtype=np.int16).tobytes(), rate, 1, n)


def channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    info, chunks = open_recording(path, RING)
    assert (info.sample_rate, info.channels) == (RATE, 2)
    pcm = np.frombuffer(b"".join(chunks), dtype=np.int16)
    return pcm[0::2], pcm[1::2]


async def test_the_agent_is_laid_beside_the_caller_at_the_pace_it_is_heard(tmp_path):
    recorder = CallRecorder(tmp_path / "c.varec", RING)
    output = recorder.output(CapturedAudioOutput())
    # 300 ms of the agent at 24 kHz arrive at once, faster than real time
    await output.capture_frame(frame(1000, 300, 24_000))
    output.flush()  # the reply's end
    caller = recorder.input(Frames([frame(7, 10, 48_000) for _ in range(50)]))  # type: ignore[arg-type]
    async for _ in caller:
        pass
    summary = recorder.close()
    assert summary is not None and abs(summary.duration_s - 0.5) < 0.02
    left, right = channels(tmp_path / "c.varec")
    assert len(left) == len(right) and abs(len(left) - 8_000) < 100
    assert np.all(np.abs(left[200:-200] - 7) <= 1)  # the caller, resampled from 48 kHz
    heard = np.flatnonzero(np.abs(right) > 500)
    assert heard[0] < 100 and abs(heard[-1] - 0.3 * RATE) < 150  # 0 to 300 ms
    assert not right[int(0.32 * RATE) :].any()  # then silence
    assert abs(summary.agent_audible_s - 0.3) < 0.02


async def test_a_pause_holds_the_agent_and_a_clear_drops_what_was_queued(tmp_path):
    recorder = CallRecorder(tmp_path / "c.varec", RING)
    output = recorder.output(CapturedAudioOutput())
    await output.capture_frame(frame(1000, 400, 16_000))
    output.flush()

    async def caller_ms(ms: int) -> None:
        async for _ in recorder.input(Frames([frame(5, 10, 16_000)] * (ms // 10))):  # type: ignore[arg-type]
            pass

    await caller_ms(100)  # 100 ms heard
    output.pause()  # the caller may be barging in
    await caller_ms(200)
    output.resume()  # a false interruption: it goes on where it paused
    await caller_ms(100)  # 100 ms more heard (200 of 400)
    output.clear_buffer()  # a real one: the rest is never heard
    await caller_ms(300)
    recorder.close()
    _, right = channels(tmp_path / "c.varec")
    spoken = (np.abs(right) > 500).astype(int)
    ms = spoken.reshape(-1, 160).max(axis=1)  # per 10 ms
    assert list(ms) == [1] * 10 + [0] * 20 + [1] * 10 + [0] * 30


def test_a_call_without_caller_audio_leaves_no_file(tmp_path):
    recorder = CallRecorder(tmp_path / "c.varec", RING)
    assert recorder.close() is None
    assert list(tmp_path.iterdir()) == []


def _settings(tmp_path: Path, **kw: object) -> Settings:
    keys = {"r1": base64.b64encode(KEY).decode()}
    return Settings(_env_file=None, data_dir=tmp_path, record_calls=True,  # type: ignore[call-arg]
                    recording_keys=keys, recording_key_id="r1", **kw)  # fmt: skip


@pytest.mark.slow
async def test_a_simulated_call_is_recorded_with_both_channels_aligned(
    tmp_path, vad_model, sample_wav_pcm
):
    from agent.simulate import SimulationOptions, simulate_call

    clip = sample_wav_pcm[int(12.3 * 16_000) : int(14.5 * 16_000)]
    report, agent_pcm = await simulate_call(
        clip, _settings(tmp_path), vad_model, options=SimulationOptions(realtime=True)
    )
    assert report.recording is not None
    path = Path(report.recording)
    assert path.parent == tmp_path / "recordings" / "pending"
    left, right = channels(path)

    # the caller channel holds the caller's clip, once, in order
    corr = np.correlate(left.astype(np.float64), clip[:8000].astype(np.float64), "valid")
    assert np.max(corr) > 0.9 * float(np.dot(clip[:8000].astype(np.float64), clip[:8000]))

    # the agent's channel on the caller's clock: the greeting, then the caller's clip
    # (played once the greeting was heard), then the reply, as late after the clip's end
    # as the call measured its own latency
    start = int(np.argmax(corr))
    clip_end = (start + len(clip)) / RATE
    speech = _segments(right)
    greeting, reply = speech[0], speech[1]
    assert greeting[1] <= start / RATE + 0.05 and start / RATE - greeting[1] < 0.5
    latency = report.turns[0].end_of_speech_to_first_audio_s
    assert latency is not None and abs((reply[0] - clip_end) - latency) < 0.25, (
        reply,
        clip_end,
        latency,
    )
    assert report.transcript and report.transcript[0].role == "agent"

    # speaker turns by channel (storage.speakers): the caller's turn starts where its clip's
    # speech does, the agent has its greeting and its reply
    from storage.speakers import channel_turns

    info, chunks = open_recording(path, RING)
    turns = channel_turns(chunks, info.sample_rate)
    caller_turns = [t for t in turns if t.speaker == "caller"]
    onset = (start + int(np.flatnonzero(np.abs(clip.astype(np.int32)) > 300)[0])) / RATE
    assert len(caller_turns) == 1 and abs(caller_turns[0].start_s - onset) < 0.05
    assert len([t for t in turns if t.speaker == "agent"]) == 2


def _segments(pcm: np.ndarray, gap_s: float = 0.4) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of sound, split at silences over ``gap_s``."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300) / RATE
    if len(loud) == 0:
        return []
    cuts = np.flatnonzero(np.diff(loud) > gap_s)
    starts = np.concatenate([[loud[0]], loud[cuts + 1]])
    ends = np.concatenate([loud[cuts], [loud[-1]]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@pytest.mark.parametrize(
    "env, complaint",
    [
        ({"RECORD_CALLS": "true"}, "RECORDING_KEYS and RECORDING_KEY_ID"),
        ({"RECORD_CALLS": "true", "RECORDING_KEYS": '{"r1": "c2hvcnQ="}', "RECORDING_KEY_ID": "r1"},
         "32 bytes"),
        ({"RECORD_CALLS": "true", "RECORDING_KEYS": f'{{"r1": "{base64.b64encode(KEY).decode()}"}}',
          "RECORDING_KEY_ID": "r9"}, "not in RECORDING_KEYS"),
    ],
)  # fmt: skip
def test_recording_without_usable_keys_stops_simulate_with_one_line(
    env, complaint, monkeypatch, capsys, tmp_path
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    code = main(["simulate", "--input", str(Path(__file__).parent / "data" / "sample.wav"),
                 "--end", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and complaint in err and base64.b64encode(KEY).decode() not in err


# -- to the sidecar and back ---------------------------------------------------------------


def _sealed(directory: Path, org: int, call_id: str, pcm: bytes, ring: Keyring = RING) -> Path:
    from agent.recording import recording_path
    from storage.recording_files import RecordingWriter

    path = recording_path(directory, org, call_id)
    writer = RecordingWriter(path, ring, sample_rate=RATE, channels=2)
    writer.write(pcm)
    writer.close()
    return path


async def test_the_worker_hands_recordings_to_the_sidecar_which_serves_them_as_wav(
    engine, database_url, tmp_path
):
    import io
    import wave

    import httpx

    from agent.recording import RecordingUploader
    from agent.sidecar_client import SidecarClient
    from billing.api.app import create_app
    from storage.models import Recording, Role
    from tests.api_client import SERVICE_TOKEN, Seeder, make_config, serving

    rec_dir = tmp_path / "sidecar-recordings"
    seed = Seeder(engine, rec_dir)
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    pending = tmp_path / "pending"
    pcm = np.arange(-8000, 8000, dtype=np.int16).tobytes() * 3
    _sealed(pending, org, "call-A1", pcm)
    tampered = _sealed(pending, org, "call-B2", pcm)
    data = bytearray(tampered.read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    _sealed(pending, None, "call-local", pcm)  # unmetered: stays here

    config = make_config(database_url, rec_dir, recording_keyring=RING)
    with serving(create_app(config, engine=engine)) as url:
        client = SidecarClient(url, SERVICE_TOKEN)
        assert await RecordingUploader(pending, client).upload_ready() == 1
        await client.aclose()
        [row] = seed_rows(engine, Recording)
        assert (row.call_id, row.key_id, row.channels) == ("call-A1", "r1", 2)
        assert row.duration_s == pytest.approx(len(pcm) / 4 / RATE, abs=0.001)
        assert sorted(p.name for p in pending.iterdir()) == ["local--call-local.varec", "rejected"]
        assert [p.name for p in (pending / "rejected").iterdir()] == [f"{org}--call-B2.varec"]
        assert b"\x00\x01" * 10 not in (rec_dir / row.path).read_bytes()  # sealed at rest

        async with httpx.AsyncClient(base_url=url) as http:
            resp = await http.get(f"/v1/recordings/{row.id}/download", headers=admin.headers)
            assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
            with wave.open(io.BytesIO(resp.content)) as w:
                assert (w.getnchannels(), w.getframerate()) == (2, RATE)
                assert w.readframes(10**7) == pcm

            # a wrong token, a bad call id, a file that is not sealed are refused
            bearer = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
            path = f"/internal/recordings/{org}"
            assert (await http.put(f"{path}/call-A1", content=pcm)).status_code == 401
            bad_id = await http.put(f"{path}/bad%20id", content=pcm, headers=bearer)
            assert bad_id.status_code == 422
            refused = await http.put(f"{path}/call-C3", content=pcm, headers=bearer)
            assert refused.status_code == 422 and "VAREC1" in refused.json()["detail"]
        assert not list((rec_dir / ".incoming").iterdir())  # nothing half-kept


def seed_rows(engine, model):  # type: ignore[no-untyped-def]
    from sqlmodel import Session, select

    with Session(engine) as session:
        return list(session.exec(select(model)).all())


def test_rotating_the_key_reseals_stored_recordings(engine, database_url, tmp_path, monkeypatch):
    import subprocess
    import sys

    from billing.api.app import create_app
    from storage.models import Recording
    from tests.api_client import SERVICE_TOKEN, make_config
    from tests.test_sidecar_cli import REPO

    rec_dir = tmp_path / "data" / "recordings"
    new_key = os.urandom(32)
    pcm = os.urandom(5000)
    _sealed(rec_dir / "1", 1, "x", pcm)  # a file as the worker left it, moved in place
    from sqlmodel import Session

    create_app(make_config(database_url, rec_dir), engine=engine)  # the schema is there
    with Session(engine) as session:
        from tests.billing_seed import seed_org

        org, _, _ = seed_org(session, admins=0)
        session.add(Recording(organisation_id=org.id, call_id="x", path="1/1--x.varec",
                              size_bytes=1, sha256="0" * 64, key_id="r1"))  # fmt: skip
        session.commit()
    keys = {"r1": base64.b64encode(KEY).decode(), "r2": base64.b64encode(new_key).decode()}
    env = {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
           "SIDECAR_SERVICE_TOKEN": SERVICE_TOKEN, "RECORDING_KEYS": json.dumps(keys),
           "RECORDING_KEY_ID": "r2", "PATH": "/usr/bin:/bin"}  # fmt: skip
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "agent.py"), "sidecar", "rotate-recording-key"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    first = run()
    assert first.returncode == 0, first.stderr
    assert "1 recording(s) re-sealed under r2, 0 already were, 0 failed" in first.stdout
    assert "0 recording(s) re-sealed under r2, 1 already were" in run().stdout
    _, chunks = open_recording(rec_dir / "1" / "1--x.varec", Keyring({"r2": new_key}, "r2"))
    assert b"".join(chunks) == pcm
    [row] = seed_rows(engine, Recording)
    assert row.key_id == "r2" and row.sha256 != "0" * 64
