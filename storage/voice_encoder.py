"""Speaker embeddings without PyTorch: Resemblyzer's voice encoder (a 3-layer LSTM over
40-band mel frames, GE2E-trained; Apache-2.0) run in numpy, its weights read from the
``pretrained.pt`` that ships inside the ``resemblyzer`` wheel.

Why not the ``resemblyzer`` package itself: it imports torch, librosa and webrtcvad (about
1 GB installed) to run a 1.4 M-parameter network; ``setup.sh --diarization`` installs the
wheel with ``--no-deps`` for its weights, and this module is the network (forward pass
only, checked against Resemblyzer's published behaviour: one voice's windows score ~0.9
cosine, two voices ~0.5). The checkpoint is PyTorch's legacy (pre-1.6) pickle format,
which :func:`load_checkpoint` reads without torch; nothing in it is executed except the
few reconstructors it names (anything else is refused).
"""

from __future__ import annotations

import importlib.util
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SAMPLE_RATE_HZ = 16_000
N_MELS = 40
N_FFT = 400
"""25 ms windows."""
HOP = 160
"""10 ms steps: 100 mel frames a second."""
WINDOW_FRAMES = 160
"""One embedding per 1.6 s of audio (the encoder's training length)."""
HIDDEN = 256
LAYERS = 3


TARGET_DBFS = -30.0
"""Speech is brought to this level before embedding: the encoder is level-sensitive (one
voice's halves score 0.81 at -17 dBFS and 0.90 at -30)."""


def at_level(wav: np.ndarray, speech: np.ndarray | None = None) -> np.ndarray:
    """``wav`` scaled so its speech (the ``speech`` mask, else all of it) is at
    :data:`TARGET_DBFS`."""
    part = wav[speech] if speech is not None else wav
    level = float(np.sqrt(np.mean(part.astype(np.float64) ** 2))) if part.size else 0.0
    return (wav * (10 ** (TARGET_DBFS / 20) / max(level, 1e-6))).astype(np.float32)


class EncoderUnavailable(RuntimeError):
    """The encoder's weights are not installed (``bash setup.sh --diarization``)."""


def weights_path() -> Path:
    """``pretrained.pt`` inside the installed ``resemblyzer`` wheel (not imported: its
    ``__init__`` needs torch)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(
            "the speaker encoder is not installed: run `bash setup.sh --diarization`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise EncoderUnavailable(f"{path} is missing: reinstall with `bash setup.sh --diarization`")
    return path


@dataclass
class _TensorRef:
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda key, offset, size, stride, *_: _TensorRef(key, offset, size, stride)
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        kind, storage_type, key, *_ = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        self.storage_types[key] = storage_type
        return key

    storage_types: dict[str, str]


def load_checkpoint(source: Path | BinaryIO) -> dict[str, Any]:
    """A legacy-format PyTorch checkpoint as nested dicts of numpy arrays."""
    stream: BinaryIO = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
    try:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(stream)
        unpickler = _Unpickler(stream)
        unpickler.storage_types = {}
        tree = unpickler.load()
        keys = pickle.load(stream)
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            dtype = np.dtype(_STORAGE_DTYPES[unpickler.storage_types[key]])
            (count,) = struct.unpack("<q", stream.read(8))
            storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    finally:
        if isinstance(source, Path):
            stream.close()

    def build(node: Any) -> Any:
        if isinstance(node, _TensorRef):
            flat = storages[node.key]
            itemsize = flat.dtype.itemsize
            return np.lib.stride_tricks.as_strided(
                flat[node.offset :],
                shape=node.size,
                strides=tuple(s * itemsize for s in node.stride),
            ).copy()
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return node

    result = build(tree)
    if not isinstance(result, dict):
        raise pickle.UnpicklingError("a checkpoint is a dict")
    return result


def _mel_filters() -> np.ndarray:
    """Slaney-style mel filterbank (librosa's default), shape (N_MELS, N_FFT // 2 + 1)."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        mel = hz / f_sp
        log_part = hz >= min_log_hz
        mel[log_part] = min_log_mel + np.log(hz[log_part] / min_log_hz) / logstep
        return mel

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        hz = f_sp * mel
        log_part = mel >= min_log_mel
        hz[log_part] = min_log_hz * np.exp(logstep * (mel[log_part] - min_log_mel))
        return hz

    fft_freqs = np.linspace(0, SAMPLE_RATE_HZ / 2, N_FFT // 2 + 1)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([8000.0]))[0], N_MELS + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


_MEL = _mel_filters().astype(np.float32)
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """Mel power spectrogram frames of 16 kHz float audio, shape (frames, N_MELS), as
    Resemblyzer computes them (centred, zero-padded frames; not log-scaled)."""
    padded = np.pad(wav.astype(np.float32), N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    if count <= 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(count, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0])
    )
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    return (power.astype(np.float32) @ _MEL.T).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class VoiceEncoder:
    """Embeds 1.6 s windows of 16 kHz speech into unit vectors (256 values, all >= 0)."""

    def __init__(self, path: Path | None = None) -> None:
        checkpoint = load_checkpoint(path or weights_path())
        state = checkpoint.get("model_state", checkpoint)
        try:
            self._layers = [
                (
                    state[f"lstm.weight_ih_l{n}"].T.copy(),
                    state[f"lstm.weight_hh_l{n}"].T.copy(),
                    state[f"lstm.bias_ih_l{n}"] + state[f"lstm.bias_hh_l{n}"],
                )
                for n in range(LAYERS)
            ]
            self._linear = (state["linear.weight"].T.copy(), state["linear.bias"])
        except KeyError as exc:
            raise EncoderUnavailable(f"not a voice encoder checkpoint: no {exc}") from None

    def embed_mels(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of mel windows, shape (batch, frames, N_MELS) →
        (batch, 256), each L2-normalised."""
        x = mels.astype(np.float32)
        batch = x.shape[0]
        for w_ih, w_hh, bias in self._layers:
            inputs = x @ w_ih + bias  # all time steps at once
            h = np.zeros((batch, HIDDEN), dtype=np.float32)
            c = np.zeros((batch, HIDDEN), dtype=np.float32)
            out = np.empty((batch, x.shape[1], HIDDEN), dtype=np.float32)
            for t in range(x.shape[1]):
                gates = inputs[:, t] + h @ w_hh
                i, f, g, o = np.split(gates, 4, axis=1)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                out[:, t] = h
            x = out
        weight, bias = self._linear
        raw = np.maximum(0.0, h @ weight + bias)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return raw / np.maximum(norms, 1e-9)

    def embed_windows(self, wav: np.ndarray, starts_s: list[float]) -> np.ndarray:
        """One embedding per 1.6 s window of ``wav`` (16 kHz) starting at each of
        ``starts_s``; windows running past the end are zero-padded."""
        if not starts_s:
            return np.zeros((0, HIDDEN), dtype=np.float32)
        mels = mel_frames(wav)
        frames_per_s = SAMPLE_RATE_HZ / HOP
        windows = np.zeros((len(starts_s), WINDOW_FRAMES, N_MELS), dtype=np.float32)
        for n, start in enumerate(starts_s):
            first = int(round(start * frames_per_s))
            chunk = mels[first : first + WINDOW_FRAMES]
            windows[n, : len(chunk)] = chunk
        return np.concatenate(
            [self.embed_mels(windows[i : i + 32]) for i in range(0, len(windows), 32)]
        )

    def embed_utterance(self, wav: np.ndarray) -> np.ndarray:
        """One voice's embedding: the normalised mean of its windows (every 0.8 s), at
        :data:`TARGET_DBFS`."""
        wav = at_level(wav)
        duration_s = len(wav) / SAMPLE_RATE_HZ
        last = max(0.0, duration_s - WINDOW_FRAMES / 100)
        starts = list(np.arange(0.0, last + 1e-6, 0.8)) or [0.0]
        mean = self.embed_windows(wav, [float(s) for s in starts]).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-9))


def to_bytes(embedding: np.ndarray) -> bytes:
    """A stored voiceprint: float32 little-endian."""
    return embedding.astype("<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    if len(blob) != HIDDEN * 4:
        raise ValueError(f"a voiceprint is {HIDDEN} float32 values; got {len(blob)} bytes")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
