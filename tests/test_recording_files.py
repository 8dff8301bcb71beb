"""Encrypted recording files: a round trip in bounded chunks; a wrong or unknown key; every
kind of tampering (a flipped bit, a cut, a dropped, moved or duplicated chunk, a changed
header, bytes appended) refused; key rotation re-seals and old files stay readable with
their key; the keyring's settings refused clearly when malformed."""

from __future__ import annotations

import base64
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.recording_files import (
    CHUNK_BYTES,
    Keyring,
    RecordingTampered,
    RecordingWriter,
    UnknownRecordingKey,
    open_recording,
    pcm_length,
    reseal,
    wav_header,
)

OLD, NEW = os.urandom(32), os.urandom(32)
RING = Keyring({"k1": OLD}, "k1")


def write(path: Path, pcm: bytes, ring: Keyring = RING, *, piece: int = 3_000) -> None:
    writer = RecordingWriter(path, ring, sample_rate=16_000, channels=2)
    for i in range(0, len(pcm), piece):
        writer.write(pcm[i : i + piece])
    writer.close()


def read(path: Path, ring: Keyring = RING) -> bytes:
    _, chunks = open_recording(path, ring)
    return b"".join(chunks)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 3 * CHUNK_BYTES + 10), piece=st.integers(1, 100_000))
def test_what_is_written_reads_back_exactly(tmp_path_factory, size, piece):
    path = tmp_path_factory.mktemp("rec") / "call.varec"
    pcm = os.urandom(size)
    write(path, pcm, piece=piece)
    assert read(path) == pcm
    assert pcm_length(path) == size
    assert not path.with_name("call.varec.partial").exists()


def test_the_header_names_the_key_and_the_format(tmp_path):
    path = tmp_path / "call.varec"
    write(path, b"\x01\x00" * 100)
    info, _ = open_recording(path, RING)
    assert (info.key_id, info.sample_rate, info.channels) == ("k1", 16_000, 2)
    assert OLD not in path.read_bytes() and b"\x01\x00" * 50 not in path.read_bytes()


def test_a_wrong_key_or_an_unknown_key_id_opens_nothing(tmp_path):
    path = tmp_path / "call.varec"
    write(path, os.urandom(1000))
    with pytest.raises(RecordingTampered):
        read(path, Keyring({"k1": NEW}, "k1"))
    with pytest.raises(UnknownRecordingKey, match="'k1'") as err:
        read(path, Keyring({"k2": NEW}, "k2"))
    assert base64.b64encode(NEW).decode() not in str(err.value)


def _chunks(data: bytes, header_len: int) -> tuple[bytes, list[bytes]]:
    header, rest, chunks = data[:header_len], data[header_len:], []
    while rest:
        (n,) = struct.unpack("<I", rest[:4])
        chunks.append(rest[: 4 + n])
        rest = rest[4 + n :]
    return header, chunks


HEADER_LEN = 6 + 1 + 2 + 5 + 8  # magic, id length, "k1", rate and channels, nonce prefix


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, c: h + b"".join(c[:1] + [c[1][:-1] + bytes([c[1][-1] ^ 1])] + c[2:]),
        lambda h, c: h + b"".join(c[:-1]),  # the last chunk cut off
        lambda h, c: h + b"".join(c)[:-100],  # cut mid-chunk
        lambda h, c: h + b"".join([c[1], c[0], *c[2:]]),  # re-ordered
        lambda h, c: h + b"".join([c[0], *c[2:]]),  # a chunk dropped
        lambda h, c: h + b"".join([c[0], c[0], *c[1:]]),  # a chunk duplicated
        lambda h, c: h[:-13] + struct.pack("<IB", 8_000, 2) + h[-8:] + b"".join(c),  # rate
        lambda h, c: h + b"".join(c) + b"\x00\x00\x00\x00",  # bytes appended
        lambda h, c: b"NOTREC" + h[6:] + b"".join(c),
    ],
    ids=["bit", "last", "cut", "reorder", "drop", "duplicate", "header", "append", "magic"],
)
def test_any_tampering_is_detected(tmp_path, tamper):
    path = tmp_path / "call.varec"
    write(path, os.urandom(3 * CHUNK_BYTES + 5))
    header, chunks = _chunks(path.read_bytes(), HEADER_LEN)
    assert len(chunks) == 4
    path.write_bytes(tamper(header, chunks))
    with pytest.raises(RecordingTampered):
        read(path)


def test_an_unfinished_recording_does_not_pass_for_whole(tmp_path):
    path = tmp_path / "call.varec"
    writer = RecordingWriter(path, RING, sample_rate=16_000, channels=2)
    writer.write(os.urandom(2 * CHUNK_BYTES + 1))  # a crash: never closed
    writer._file.flush()  # what the OS had written when the process died
    partial = path.with_name("call.varec.partial")
    assert partial.exists() and not path.exists()
    partial.rename(path)
    with pytest.raises(RecordingTampered, match="cut short"):
        read(path)


def test_rotation_reseals_under_the_new_key_and_old_files_stay_readable(tmp_path):
    old_file, new_file = tmp_path / "old.varec", tmp_path / "new.varec"
    pcm = os.urandom(CHUNK_BYTES * 2 + 17)
    write(old_file, pcm)
    rotated = Keyring({"k1": OLD, "k2": NEW}, "k2")
    write(new_file, pcm, rotated)
    assert read(old_file, rotated) == pcm  # an old file, read with the old key
    assert reseal(old_file, rotated) is True
    assert reseal(old_file, rotated) is False  # already under the current key
    assert read(old_file, Keyring({"k2": NEW}, "k2")) == pcm
    assert read(new_file, Keyring({"k2": NEW}, "k2")) == pcm


def test_a_long_recording_is_written_and_read_in_bounded_memory(tmp_path):
    path = tmp_path / "long.varec"
    second = np.zeros(16_000 * 2, dtype=np.int16).tobytes()  # 1 s of stereo 16 kHz
    tracemalloc.start()
    writer = RecordingWriter(path, RING, sample_rate=16_000, channels=2)
    for _ in range(600):  # 10 minutes
        writer.write(second)
    writer.close()
    _, peak_write = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    total = sum(len(c) for c in open_recording(path, RING)[1])
    _, peak_read = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 600 * len(second)
    assert peak_write < 2_000_000 and peak_read < 2_000_000, (peak_write, peak_read)


@pytest.mark.parametrize(
    "keys, current, complaint",
    [
        ({"k1": "not base64!"}, "k1", "not base64"),
        ({"k1": base64.b64encode(b"short").decode()}, "k1", "32 bytes"),
        ({"k1": base64.b64encode(OLD).decode()}, "k9", "not in RECORDING_KEYS"),
        ({"bad id": base64.b64encode(OLD).decode()}, "bad id", "key id"),
    ],
)
def test_malformed_key_settings_are_refused(keys, current, complaint):
    with pytest.raises(ValueError, match=complaint) as err:
        Keyring.from_settings(keys, current)
    assert base64.b64encode(OLD).decode() not in str(err.value)


def test_the_wav_header_describes_the_pcm():
    import io
    import wave

    pcm = np.arange(200, dtype=np.int16).tobytes()
    with wave.open(io.BytesIO(wav_header(len(pcm), 16_000, 2) + pcm)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 2, 2)
        assert w.readframes(1000) == pcm
