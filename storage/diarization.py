"""Who spoke when in audio we did not record ourselves: offline speaker diarization.

    audio (16 kHz mono), BLOCK_S at a time
      -> speech regions (Silero VAD, as shipped in faster-whisper)
      -> 1.6 s windows every HOP_S inside them -> speaker embeddings (storage.voice_encoder)
      -> agglomerative clustering (cosine, average linkage; N speakers if given, else a
         distance threshold; of at most MAX_CLUSTERED_WINDOWS windows, the others go to
         the nearest centroid) -> each 10 ms of speech to the cluster of the windows around it
      -> turns, labelled SPEAKER_00, SPEAKER_01, ... in order of first speech, or with an
         enrolled person's name when their voiceprint matches (:func:`identify`)

Two backends share :class:`Diarizer`: :class:`EmbeddingDiarizer` (above; no PyTorch, its
weights come with ``setup.sh --diarization``) and :class:`PyannoteDiarizer`, which loads a
``pyannote.audio`` pipeline from ``DIARIZATION_MODEL_DIR`` (a directory whose
``config.yaml`` names local checkpoints, as pyannote's own pipelines do; never a hub id).
Errors a person can act on are :class:`DiarizationError` with a reason code.

Memory: the embedding diarizer takes its audio as blocks (:data:`Audio`), so a long
recording read block by block from its file is never whole in memory: what it keeps is a
256-float embedding per window (~2.3 MB per hour of speech) and the 10 ms frame votes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from storage.speakers import Turn
from storage.voice_encoder import (
    SAMPLE_RATE_HZ,
    EncoderUnavailable,
    VoiceEncoder,
    at_level,
    cosine,
)

log = logging.getLogger("storage.diarization")

WINDOW_S = 1.6
HOP_S = 0.4
MIN_SPEECH_S = 0.5
"""Less speech than this is too short to tell voices apart."""
SAME_SPEAKER_DISTANCE = 0.30
"""Clusters closer than this (1 - cosine, average linkage) are one voice; calibrated on
the corpus (bench/diarization.py)."""
IDENTIFY_THRESHOLD = 0.90
"""A cluster is an enrolled person when its centroid's cosine with their voiceprint
clears this. On the corpus's phone call a speaker's centroid scores 0.96-0.97 against a
voiceprint from 6 s of their own speech and 0.85 against the other speaker's (two voices
on one phone line sound alike to the encoder); other recordings score ~0.6."""
MIN_TURN_S = 0.2
FRAME_S = 0.01
ENROL_MAX_S = 120.0
"""A voiceprint's clip: a few seconds to two minutes of one person speaking."""
VAD_THRESHOLD = 0.3
"""Silero's speech probability threshold: its default 0.5 misses a third of the quiet,
distant speech of the AMI meeting excerpts; 0.3 misses under a fifth (bench)."""
BLOCK_S = 600.0
"""Audio is read, searched for speech and embedded this much at a time."""
MAX_CLUSTERED_WINDOWS = 2000
"""Agglomerative clustering needs every pairwise distance (n^2 / 2 floats: 16 MB for
2000 windows, 1.3 GB for the 18000 of two hours of speech); past this many windows an
evenly spread sample is clustered and the rest join the nearest centroid."""
MIN_CLUSTER_SHARE = 0.1
"""A cluster with fewer of the windows than this is folded into its nearest neighbour:
average linkage leaves a few odd windows (laughter, crosstalk) as clusters of their own."""

Reason = Literal[
    "too_short", "unsupported", "model_missing", "model_incomplete", "timeout", "failed"
]
Progress = Callable[[float], None]
"""Called with the share done (0-1); may raise to cancel."""
Audio = np.ndarray | Iterable[np.ndarray]
"""16 kHz mono float audio: one array, or its consecutive blocks (read as needed)."""


def blocks_of(audio: Audio, block_s: float | None = None) -> Iterator[np.ndarray]:
    """``audio`` in blocks of ``block_s`` (default :data:`BLOCK_S`); blocks pass through."""
    if not isinstance(audio, np.ndarray):
        yield from audio
        return
    step = int((block_s or BLOCK_S) * SAMPLE_RATE_HZ)
    for start in range(0, max(len(audio), 1), step):
        yield audio[start : start + step]


def whole(audio: Audio) -> np.ndarray:
    """``audio`` as one array (for a backend that needs it so)."""
    if isinstance(audio, np.ndarray):
        return audio
    return np.concatenate([np.zeros(0, dtype=np.float32), *audio])


class DiarizationError(Exception):
    """A diarization that cannot be done, with a reason code and a sentence for people."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Diarizer(Protocol):
    name: str

    def diarize(
        self,
        audio: Audio,
        *,
        speakers: int | None = None,
        progress: Progress | None = None,
        duration_s: float | None = None,
    ) -> list[Turn]:
        """Turns of 16 kHz mono float audio, labelled ``SPEAKER_nn``; ``duration_s`` (the
        audio's, when given as blocks) scales the progress."""
        ...


def speech_regions(audio: np.ndarray) -> list[tuple[float, float]]:
    """Where someone speaks, in seconds (Silero VAD)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=VAD_THRESHOLD,
        min_silence_duration_ms=250,
        speech_pad_ms=60,
        min_speech_duration_ms=150,
    )
    stamps = get_speech_timestamps(audio.astype(np.float32), options)
    return [(s["start"] / SAMPLE_RATE_HZ, s["end"] / SAMPLE_RATE_HZ) for s in stamps]


def _window_starts(regions: Sequence[tuple[float, float]], duration_s: float) -> list[float]:
    """Window starts covering every region; a region shorter than a window gets one
    window centred on it."""
    starts: list[float] = []
    for begin, end in regions:
        if end - begin <= WINDOW_S:
            centre = (begin + end) / 2
            starts.append(min(max(0.0, centre - WINDOW_S / 2), max(0.0, duration_s - WINDOW_S)))
            continue
        t = begin
        while t + WINDOW_S < end:
            starts.append(t)
            t += HOP_S
        starts.append(end - WINDOW_S)
    return starts


def _cluster(embeddings: np.ndarray, speakers: int | None) -> np.ndarray:
    """Cluster ids (0..k-1) of unit embeddings."""
    if len(embeddings) > MAX_CLUSTERED_WINDOWS:
        sample = np.linspace(0, len(embeddings) - 1, MAX_CLUSTERED_WINDOWS).astype(int)
        sampled = _agglomerate(embeddings[sample], speakers)
        centroids = np.stack(
            [embeddings[sample][sampled == i].mean(axis=0) for i in range(sampled.max() + 1)]
        )
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
        nearest = np.argmax(embeddings @ centroids.T, axis=1)
        return np.unique(nearest, return_inverse=True)[1]
    return _agglomerate(embeddings, speakers)


def _agglomerate(embeddings: np.ndarray, speakers: int | None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(embeddings) == 1:
        return np.zeros(1, dtype=int)
    tree = linkage(embeddings, method="average", metric="cosine")
    labels = np.asarray(fcluster(tree, t=SAME_SPEAKER_DISTANCE, criterion="distance")) - 1
    if speakers is not None and labels.max() + 1 < speakers:
        labels = np.asarray(fcluster(tree, t=speakers, criterion="maxclust")) - 1
    # fold small clusters (or, with a known count, the smallest until it is reached) into
    # the cluster whose centroid is nearest
    while labels.max() > 0:
        ids, sizes = np.unique(labels, return_counts=True)
        smallest = ids[np.argmin(sizes)]
        too_many = speakers is not None and len(ids) > speakers
        if not too_many and sizes.min() >= MIN_CLUSTER_SHARE * len(labels):
            break
        centroids = {i: embeddings[labels == i].mean(axis=0) for i in ids}
        others = [i for i in ids if i != smallest]
        nearest = max(others, key=lambda i: cosine(centroids[i], centroids[smallest]))
        labels[labels == smallest] = nearest
        labels = np.unique(labels, return_inverse=True)[1]
    return labels


def _frames_to_turns(frame_labels: np.ndarray, names: Sequence[str]) -> list[Turn]:
    turns: list[Turn] = []
    start = 0
    for i in range(1, len(frame_labels) + 1):
        if i == len(frame_labels) or frame_labels[i] != frame_labels[start]:
            label = int(frame_labels[start])
            if label >= 0:
                turns.append(Turn(round(start * FRAME_S, 3), round(i * FRAME_S, 3), names[label]))
            start = i
    # a turn too short to be a turn goes to its neighbour
    kept: list[Turn] = []
    for turn in turns:
        if kept and turn.duration_s < MIN_TURN_S and kept[-1].end_s >= turn.start_s - FRAME_S:
            kept[-1] = Turn(kept[-1].start_s, turn.end_s, kept[-1].speaker)
        elif kept and kept[-1].speaker == turn.speaker and turn.start_s - kept[-1].end_s < 0.3:
            kept[-1] = Turn(kept[-1].start_s, turn.end_s, turn.speaker)
        else:
            kept.append(turn)
    return kept


@dataclass
class Clustered:
    """A diarization's turns and each speaker's centroid (for voiceprint matching)."""

    turns: list[Turn]
    centroids: dict[str, np.ndarray]


class EmbeddingDiarizer:
    """Silero speech regions, voice-encoder windows, agglomerative clustering."""

    name = "embedding"

    def __init__(self, encoder: VoiceEncoder | None = None) -> None:
        try:
            self.encoder = encoder or VoiceEncoder()
        except EncoderUnavailable as exc:
            raise DiarizationError("model_missing", str(exc)) from None

    def diarize(
        self,
        audio: Audio,
        *,
        speakers: int | None = None,
        progress: Progress | None = None,
        duration_s: float | None = None,
    ) -> list[Turn]:
        return self.cluster(
            audio, speakers=speakers, progress=progress, duration_s=duration_s
        ).turns

    def cluster(
        self,
        audio: Audio,
        *,
        speakers: int | None = None,
        progress: Progress | None = None,
        duration_s: float | None = None,
    ) -> Clustered:
        report = progress or (lambda share: None)
        if isinstance(audio, np.ndarray):
            duration_s = len(audio) / SAMPLE_RATE_HZ
        regions: list[tuple[float, float]] = []
        starts: list[float] = []
        embeddings: list[np.ndarray] = []
        offset_s = 0.0
        for block in blocks_of(audio):
            if not len(block):
                continue
            block_regions = speech_regions(block)
            if block_regions:
                mask = np.zeros(len(block), dtype=bool)
                for begin, end in block_regions:
                    mask[int(begin * SAMPLE_RATE_HZ) : int(end * SAMPLE_RATE_HZ)] = True
                scaled = at_level(block, mask)
                block_starts = _window_starts(block_regions, len(block) / SAMPLE_RATE_HZ)
                for i in range(0, len(block_starts), 16):
                    embeddings.append(self.encoder.embed_windows(scaled, block_starts[i : i + 16]))
                regions += [(offset_s + b, offset_s + e) for b, e in block_regions]
                starts += [offset_s + t for t in block_starts]
            offset_s += len(block) / SAMPLE_RATE_HZ
            report(0.9 * min(1.0, offset_s / duration_s) if duration_s else 0.0)
        duration_s = offset_s
        speech_s = sum(end - begin for begin, end in regions)
        if speech_s < MIN_SPEECH_S:
            raise DiarizationError(
                "too_short", f"{speech_s:.1f} s of speech; at least {MIN_SPEECH_S} s is needed"
            )
        windows = np.concatenate(embeddings)
        labels = _cluster(windows, speakers)

        # each frame of speech: the cluster with most weight among the windows over it,
        # a window weighing most at its centre
        frames = int(np.ceil(duration_s / FRAME_S))
        votes = np.zeros((frames, labels.max() + 1))
        span = int(WINDOW_S / FRAME_S)
        shape = 1.0 - np.abs(np.linspace(-1, 1, span)) * 0.9
        for start, label in zip(starts, labels, strict=True):
            first = int(round(start / FRAME_S))
            piece = votes[first : first + span, label]
            piece += shape[: len(piece)]
        speech = np.zeros(frames, dtype=bool)
        for begin, end in regions:
            speech[int(begin / FRAME_S) : int(np.ceil(end / FRAME_S))] = True
        frame_labels = np.where(speech & (votes.sum(axis=1) > 0), votes.argmax(axis=1), -1)

        # SPEAKER_00 is whoever speaks first
        order: list[int] = []
        for label in frame_labels:
            if label >= 0 and label not in order:
                order.append(int(label))
        names = [""] * (labels.max() + 1)
        for rank, label in enumerate(order):
            names[label] = f"SPEAKER_{rank:02d}"
        centroids = {}
        for label, name in enumerate(names):
            if name:
                mean = windows[labels == label].mean(axis=0)
                centroids[name] = mean / max(float(np.linalg.norm(mean)), 1e-9)
        report(1.0)
        return Clustered(_frames_to_turns(frame_labels, names), centroids)


def identify(
    clustered: Clustered, voiceprints: dict[str, np.ndarray], threshold: float = IDENTIFY_THRESHOLD
) -> list[Turn]:
    """The turns with each speaker whose centroid matches an enrolled voiceprint named
    after that person (best match first; one person names at most one speaker)."""
    pairs = sorted(
        (
            (cosine(centroid, print_), speaker, person)
            for speaker, centroid in clustered.centroids.items()
            for person, print_ in voiceprints.items()
        ),
        reverse=True,
    )
    renamed: dict[str, str] = {}
    for score, speaker, person in pairs:
        if score < threshold:
            break
        if speaker not in renamed and person not in renamed.values():
            renamed[speaker] = person
    return [
        Turn(t.start_s, t.end_s, renamed.get(t.speaker, t.speaker), t.text) for t in clustered.turns
    ]


class PyannoteDiarizer:
    """A ``pyannote.audio`` pipeline from a local model directory (``config.yaml`` naming
    its checkpoints). Needs ``bash setup.sh --pyannote`` (PyTorch); never downloads."""

    name = "pyannote"

    def __init__(self, model_dir: Path) -> None:
        config = model_dir / "config.yaml"
        if not config.is_file():
            raise DiarizationError(
                "model_missing", f"{model_dir} has no config.yaml (DIARIZATION_MODEL_DIR)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
        try:
            from pyannote.audio import Pipeline
        except ImportError:
            raise DiarizationError(
                "model_missing", "pyannote.audio is not installed (bash setup.sh --pyannote)"
            ) from None
        except OSError as exc:  # torchaudio's CUDA-linked extension on a CPU-only torch
            raise DiarizationError(
                "model_missing",
                f"pyannote.audio cannot load ({exc}); bash setup.sh --pyannote installs it "
                "with the CPU build of PyTorch",
            ) from None
        import huggingface_hub.constants
        import torch

        # read by huggingface_hub when it is first imported, which faster-whisper may have
        # done already: a config naming a hub id must fail here, not download
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        torch.set_num_threads(1)  # two threads spin on a 2-core machine (FACTS.md)
        try:
            pipeline = Pipeline.from_pretrained(model_dir)
        except Exception as exc:
            raise DiarizationError(
                "model_incomplete", f"{model_dir} could not be loaded: {exc}"
            ) from None
        if pipeline is None:  # what from_pretrained returns for a checkpoint it cannot find
            raise DiarizationError("model_incomplete", f"{model_dir} holds no pipeline")
        # called with keyword options its own annotations do not declare (num_speakers)
        self._pipeline: Any = pipeline

    def diarize(
        self,
        audio: Audio,
        *,
        speakers: int | None = None,
        progress: Progress | None = None,
        duration_s: float | None = None,
    ) -> list[Turn]:
        import torch

        # pyannote's pipeline takes the whole waveform
        waveform = torch.from_numpy(whole(audio).astype(np.float32)[None, :])
        options = {"num_speakers": speakers} if speakers else {}
        result = self._pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ}, **options)
        annotation: Any = getattr(result, "speaker_diarization", result)
        end_s = waveform.shape[1] / SAMPLE_RATE_HZ
        names: dict[str, str] = {}
        turns = []
        for segment, _, label in annotation.itertracks(yield_label=True):
            # its frames may reach a few ms past the end of the audio
            start, end = round(segment.start, 3), round(min(segment.end, end_s), 3)
            if end > start:
                names.setdefault(label, f"SPEAKER_{len(names):02d}")
                turns.append(Turn(start, end, names[label]))
        if progress:
            progress(1.0)
        return turns


def diarizer_for(model_dir: Path | None) -> Diarizer:
    """The pyannote pipeline in ``model_dir`` when given, else the embedding diarizer."""
    if model_dir is not None:
        return PyannoteDiarizer(model_dir)
    return EmbeddingDiarizer()
