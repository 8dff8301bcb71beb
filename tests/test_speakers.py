"""Speaker turns and exports (storage.speakers): a two-channel call recording's turns come
from its channels, line noise on the caller's side does not count, short gaps are closed;
every export format is what its readers expect; words are attributed to the speaker
talking; the API serves the turns of a call recording and refuses other audio."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest

from storage.speakers import Turn, Word, attribute_words, channel_turns, export, split_caller

RATE = 16_000


def stereo(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    caller = rng.normal(0, 50, int(seconds * RATE))  # line noise, always there
    return np.stack([caller, np.zeros_like(caller)], axis=1)


def speak(audio: np.ndarray, channel: int, start: float, end: float, level: float) -> None:
    a, b = int(start * RATE), int(end * RATE)
    t = np.arange(b - a) / RATE
    audio[a:b, channel] += level * np.sin(2 * np.pi * 220 * t)


def chunks(audio: np.ndarray, size: int = 3000) -> list[bytes]:
    pcm = np.clip(audio, -32768, 32767).astype(np.int16).reshape(-1).tobytes()
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def test_turns_come_from_the_channels_and_line_noise_is_not_speech():
    audio = stereo(5.0)
    speak(audio, 1, 0.2, 1.4, 4000)  # the agent's greeting
    speak(audio, 0, 1.8, 2.6, 3000)  # the caller
    speak(audio, 0, 2.75, 3.3, 3000)  # the caller again, after a 0.15 s pause: one turn
    speak(audio, 1, 3.9, 4.6, 4000)
    turns = channel_turns(chunks(audio), RATE)
    assert [t.speaker for t in turns] == ["agent", "caller", "agent"]
    expected = [(0.2, 1.4), (1.8, 3.3), (3.9, 4.6)]
    for turn, (start, end) in zip(turns, expected, strict=True):
        assert abs(turn.start_s - start) <= 0.04 and 0 <= turn.end_s - end <= 0.2, turn


def test_talk_over_gives_overlapping_turns():
    audio = stereo(3.0)
    speak(audio, 1, 0.5, 2.0, 4000)
    speak(audio, 0, 1.2, 2.5, 3000)  # the caller barges in
    turns = channel_turns(chunks(audio), RATE)
    agent, caller = (next(t for t in turns if t.speaker == s) for s in ("agent", "caller"))
    assert caller.start_s < agent.end_s  # both speaking at once


TURNS = [Turn(0.5, 1.25, "agent", "Hello, how can I help?"), Turn(61.0, 3662.5, "caller")]


def test_rttm_srt_vtt_txt():
    rttm = export(TURNS, "rttm", name="call-1").splitlines()
    assert rttm[0].split() == ["SPEAKER", "call-1", "1", "0.500", "0.750", "<NA>", "<NA>",
                               "agent", "<NA>", "<NA>"]  # fmt: skip
    srt = export(TURNS, "srt")
    assert srt.startswith("1\n00:00:00,500 --> 00:00:01,250\nagent: Hello, how can I help?\n")
    assert "2\n00:01:01,000 --> 01:01:02,500\ncaller\n" in srt
    vtt = export(TURNS, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.250\n")
    assert export(TURNS, "txt").splitlines()[1] == "[00:01:01.000 - 01:01:02.500] caller"


def test_json_csv_tsv_read_back():
    data = json.loads(export(TURNS, "json", name="r"))
    assert data["uri"] == "r" and data["turns"][0]["speaker"] == "agent"
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        rows = list(csv.reader(io.StringIO(export(TURNS, fmt)), delimiter=sep))
        assert rows[0] == ["start_s", "end_s", "speaker", "text"]
        assert rows[1] == ["0.500", "1.250", "agent", "Hello, how can I help?"]


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="one of rttm, json"):
        export(TURNS, "docx")


def test_words_go_to_the_speaker_talking_and_runs_are_merged():
    turns = [Turn(0.0, 2.0, "agent"), Turn(2.5, 5.0, "caller"), Turn(5.5, 6.0, "agent")]
    words = [
        Word(0.1, 0.4, "Hello"),
        Word(0.5, 0.9, "there."),
        Word(2.6, 3.0, "Hi,"),
        Word(3.1, 3.5, "Diane"),
        Word(5.05, 5.15, "here."),
        Word(5.6, 5.9, "Great."),
    ]
    lines = attribute_words(turns, words)
    assert [(line.speaker, line.text) for line in lines] == [
        ("agent", "Hello there."),
        ("caller", "Hi, Diane here."),  # 5.1 s: nearer the end of the caller's turn
        ("agent", "Great."),
    ]
    assert attribute_words([], words) == []


async def test_the_api_serves_a_call_recordings_turns_and_refuses_other_audio(
    engine, database_url, tmp_path
):
    import httpx

    from agent.recording import recording_path
    from billing.api.app import create_app
    from storage.models import Role
    from storage.recording_files import Keyring, RecordingWriter
    from tests.api_client import SERVICE_TOKEN, Seeder, make_config, serving

    ring = Keyring({"s1": os.urandom(32)}, "s1")
    seed = Seeder(engine, tmp_path / "rec")
    org = seed.organisation()
    admin, viewer = seed.member(org, Role.admin), seed.member(org, Role.viewer)
    audio = stereo(3.0)
    speak(audio, 1, 0.2, 1.0, 4000)
    speak(audio, 0, 1.5, 2.5, 3000)
    path = recording_path(tmp_path / "pending", org, "call-S1")
    writer = RecordingWriter(path, ring, sample_rate=RATE, channels=2)
    for piece in chunks(audio):
        writer.write(piece)
    writer.close()
    config = make_config(database_url, tmp_path / "rec", recording_keyring=ring)
    with serving(create_app(config, engine=engine)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            put = await http.put(f"/internal/recordings/{org}/call-S1", content=path.read_bytes(),
                                 headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})  # fmt: skip
            rid = put.json()["id"]
            resp = await http.get(f"/v1/recordings/{rid}/speakers", headers=admin.headers)
            assert resp.status_code == 200
            turns = resp.json()["turns"]
            assert [t["speaker"] for t in turns] == ["agent", "caller"]
            srt = await http.get(f"/v1/recordings/{rid}/speakers?format=srt",
                                 headers=admin.headers)  # fmt: skip
            assert srt.headers["content-type"].startswith("application/x-subrip")
            bad = await http.get(f"/v1/recordings/{rid}/speakers?format=docx",
                                 headers=admin.headers)  # fmt: skip
            assert bad.status_code == 422
            denied = await http.get(f"/v1/recordings/{rid}/speakers", headers=viewer.headers)
            assert denied.status_code == 403
            mono = np.zeros(RATE, dtype=np.int16)
            wav = io.BytesIO()
            import wave

            with wave.open(wav, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
                w.writeframes(mono.tobytes())
            up = await http.post("/v1/recordings", content=wav.getvalue(), headers=admin.headers)
            refused = await http.get(f"/v1/recordings/{up.json()['id']}/speakers",
                                     headers=admin.headers)  # fmt: skip
            assert refused.status_code == 422 and "two-channel" in refused.json()["detail"]


CALL = [
    Turn(0.0, 2.0, "agent"),
    Turn(2.5, 6.0, "caller"),
    Turn(6.5, 8.0, "agent"),
    Turn(8.5, 10.0, "caller"),
]


def test_one_voice_on_the_caller_channel_leaves_the_turns_as_they_are():
    voices = [Turn(2.6, 5.9, "SPEAKER_00"), Turn(8.6, 9.8, "SPEAKER_00")]
    assert split_caller(CALL, voices) == CALL
    assert split_caller(CALL, []) == CALL


def test_a_second_voice_on_the_caller_channel_gets_its_own_name_where_it_speaks():
    # a speakerphone: the first caller hands over mid-turn at 4.1 s; the voices' edges
    # (VAD) do not match the channel's turns exactly
    voices = [
        Turn(2.6, 4.0, "SPEAKER_01"),
        Turn(4.2, 5.9, "SPEAKER_00"),
        Turn(8.7, 9.9, "SPEAKER_01"),
    ]
    assert split_caller(CALL, voices) == [
        Turn(0.0, 2.0, "agent"),
        Turn(2.5, 4.2, "caller"),
        Turn(4.2, 6.0, "caller 2"),
        Turn(6.5, 8.0, "agent"),
        Turn(8.5, 10.0, "caller"),
    ]


def test_a_caller_turn_no_voice_covers_takes_the_nearest_voice():
    voices = [Turn(2.6, 5.9, "A"), Turn(11.0, 12.0, "B")]
    turns = [*CALL, Turn(10.5, 10.8, "caller")]
    assert split_caller(turns, voices)[-1] == Turn(10.5, 10.8, "caller 2")
