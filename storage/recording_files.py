"""Call recordings at rest: AES-256-GCM in chunks, so a recording of any length is written
and read with bounded memory, under a named key, so keys can rotate.

File layout (``.varec``)::

    header   b"VAREC1" | u8 len | key id (ASCII) | u32 sample rate | u8 channels
             | 8-byte random nonce prefix
    chunks   u32 ciphertext length | ciphertext (plaintext + 16-byte tag), repeated

Chunk ``i`` is sealed with nonce ``prefix || u32 i`` and, as associated data, the whole
header, ``i`` and a last-chunk flag: a flipped bit, a chunk moved, dropped or duplicated,
a file cut short or a header changed (another key id, another rate) fails to open
(:class:`RecordingTampered`). The plaintext is 16-bit little-endian PCM, channels
interleaved (a call: caller left, agent right). The key never appears in a log or an
error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"VAREC1"
CHUNK_BYTES = 64 * 1024
"""Plaintext per chunk: memory stays this small whatever the recording's length."""
_TAG_BYTES = 16
_MAX_CHUNK = CHUNK_BYTES + _TAG_BYTES
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RecordingError(Exception):
    """A recording that cannot be written or read; the message says why (never a key)."""


class RecordingTampered(RecordingError):
    """The file is not what was written: changed, cut short, or not ours."""


class UnknownRecordingKey(RecordingError):
    """The file was sealed with a key this keyring does not hold."""


@dataclass(frozen=True)
class Keyring:
    """The recording keys by id (32 bytes each) and the one new recordings use."""

    keys: Mapping[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"RECORDING_KEY_ID {self.current!r} is not in RECORDING_KEYS")
        for key_id, key in self.keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"recording key id {key_id!r}: 1-64 of A-Z a-z 0-9 _ . -")
            if len(key) != 32:
                raise ValueError(f"recording key {key_id!r} must be 32 bytes (base64 of 32)")

    @classmethod
    def from_settings(cls, keys_b64: Mapping[str, str], current: str) -> Keyring:
        """``{"2026-12": "<base64 of 32 random bytes>"}`` and the id to write with.
        Raises ValueError naming the key id (never the key)."""
        decoded = {}
        for key_id, text in keys_b64.items():
            try:
                decoded[key_id] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"recording key {key_id!r} is not base64") from None
        return cls(decoded, current)

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise UnknownRecordingKey(
                f"recording sealed with key {key_id!r}, which RECORDING_KEYS does not hold"
            ) from None


@dataclass(frozen=True)
class RecordingInfo:
    key_id: str
    sample_rate: int
    channels: int
    header: bytes


def _header(key_id: str, sample_rate: int, channels: int, prefix: bytes) -> bytes:
    encoded = key_id.encode("ascii")
    return (
        MAGIC + bytes([len(encoded)]) + encoded + struct.pack("<IB", sample_rate, channels) + prefix
    )


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack("<I", index)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack("<IB", index, 1 if last else 0)


class RecordingWriter:
    """Seals PCM as it comes (``write``), a chunk at a time; ``close`` seals the last
    chunk (without it the file does not open: a crash mid-call leaves a file that says it
    is incomplete rather than one that looks whole). Writes to ``path.partial`` and moves
    it to ``path`` on close."""

    def __init__(self, path: Path, keyring: Keyring, *, sample_rate: int, channels: int) -> None:
        if not 1 <= channels <= 8 or not 1 <= sample_rate <= 384_000:
            raise ValueError("channels 1-8 and a sample rate of 1-384000 Hz")
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._aead = AESGCM(keyring.key(keyring.current))
        self._prefix = os.urandom(8)
        self._header = _header(keyring.current, sample_rate, channels, self._prefix)
        self._file: BinaryIO = open(self._partial, "wb")  # noqa: SIM115 (closed in close)
        self._file.write(self._header)
        self._pending = bytearray()
        self._index = 0
        self.pcm_bytes = 0
        self._closed = False

    def write(self, pcm: bytes) -> None:
        if self._closed:
            raise RecordingError("the recording is closed")
        self._pending += pcm
        self.pcm_bytes += len(pcm)
        while len(self._pending) > CHUNK_BYTES:
            self._seal(bytes(self._pending[:CHUNK_BYTES]), last=False)
            del self._pending[:CHUNK_BYTES]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seal(bytes(self._pending), last=True)
        self._pending.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Drop what was written (the call had nothing worth keeping)."""
        if not self._closed:
            self._closed = True
            self._file.close()
        self._partial.unlink(missing_ok=True)

    def _seal(self, plain: bytes, *, last: bool) -> None:
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._index), plain, _aad(self._header, self._index, last)
        )
        self._file.write(struct.pack("<I", len(sealed)) + sealed)
        self._index += 1


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise RecordingTampered("the recording is cut short")
    return data


def read_info(f: BinaryIO) -> RecordingInfo:
    """The header at the start of ``f`` (left positioned after it)."""
    if f.read(len(MAGIC)) != MAGIC:
        raise RecordingTampered("not a recording file (no VAREC1 header)")
    length = _read_exact(f, 1)[0]
    key_id_bytes = _read_exact(f, length)
    rate, channels = struct.unpack("<IB", _read_exact(f, 5))
    prefix = _read_exact(f, 8)
    try:
        key_id = key_id_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise RecordingTampered("the recording's header is corrupt") from None
    header = _header(key_id, rate, channels, prefix)
    return RecordingInfo(key_id, rate, channels, header)


def open_recording(path: Path, keyring: Keyring) -> tuple[RecordingInfo, Iterator[bytes]]:
    """The header, and the PCM chunk by chunk (each checked before it is yielded; a
    tampered chunk raises RecordingTampered when reached)."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    try:
        info = read_info(f)
        aead = AESGCM(keyring.key(info.key_id))
    except BaseException:
        f.close()
        raise
    prefix = info.header[-8:]

    def chunks() -> Iterator[bytes]:
        with f:
            index = 0
            size = f.read(4)
            while True:
                if len(size) != 4:
                    raise RecordingTampered("the recording is cut short (no last chunk)")
                (length,) = struct.unpack("<I", size)
                if not _TAG_BYTES <= length <= _MAX_CHUNK:
                    raise RecordingTampered("the recording is corrupt (bad chunk length)")
                sealed = _read_exact(f, length)
                size = f.read(4)
                last = not size
                try:
                    plain = aead.decrypt(
                        _nonce(prefix, index), sealed, _aad(info.header, index, last)
                    )
                except InvalidTag:
                    if last and _opens(aead, prefix, index, sealed, info.header):
                        raise RecordingTampered(
                            "the recording is cut short: it was never finished or lost its end"
                        ) from None
                    raise RecordingTampered(
                        "the recording was changed, cut or re-ordered (authentication failed)"
                    ) from None
                yield plain
                if last:
                    return
                index += 1

    return info, chunks()


def _opens(aead: AESGCM, prefix: bytes, index: int, sealed: bytes, header: bytes) -> bool:
    """Whether chunk ``index`` is a sound chunk that is not the last (the file stops there)."""
    try:
        aead.decrypt(_nonce(prefix, index), sealed, _aad(header, index, False))
    except InvalidTag:
        return False
    return True


def pcm_length(path: Path) -> int:
    """The recording's PCM bytes, from its chunk lengths (nothing decrypted)."""
    total = 0
    with open(path, "rb") as f:
        read_info(f)
        while size := f.read(4):
            if len(size) != 4:
                raise RecordingTampered("the recording is cut short")
            (length,) = struct.unpack("<I", size)
            if not _TAG_BYTES <= length <= _MAX_CHUNK:
                raise RecordingTampered("the recording is corrupt (bad chunk length)")
            f.seek(length, os.SEEK_CUR)
            total += length - _TAG_BYTES
    return total


def reseal(path: Path, keyring: Keyring) -> bool:
    """Re-encrypt ``path`` under the keyring's current key (rotation); False when it is
    already under it. Checked as a whole before the new file replaces the old."""
    with open(path, "rb") as f:
        info = read_info(f)
    if info.key_id == keyring.current:
        return False
    _, chunks = open_recording(path, keyring)
    fresh = path.with_name(path.name + ".reseal")
    writer = RecordingWriter(fresh, keyring, sample_rate=info.sample_rate, channels=info.channels)
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    except BaseException:
        writer.abort()
        fresh.unlink(missing_ok=True)
        raise
    os.replace(fresh, path)
    return True


def wav_header(pcm_bytes: int, sample_rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV header for ``pcm_bytes`` of audio (to stream a recording as WAV)."""
    block = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + pcm_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", pcm_bytes)
    )
