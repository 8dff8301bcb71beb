"""Offline diarization on the corpus: DER (pyannote.metrics, without and with a 0.25 s
collar) and real-time factor of each model path we have, beside the one-speaker baseline;
channel attribution on two-party calls built from the corpus's real speech; voiceprint
identification accuracy.

    python -m bench.diarization

Needs the diarization extra (``bash setup.sh --diarization``). A pyannote pipeline is
added as a row when ``DIARIZATION_MODEL_DIR`` names one (and pyannote.audio is installed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from storage.diarization import DiarizationError, EmbeddingDiarizer, diarizer_for, identify
from storage.speakers import Turn, channel_turns

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FILES = [
    ("sample", DATA / "sample.wav", DATA / "sample.rttm"),
    ("tst00", DATA / "ami" / "tst00.flac", DATA / "ami" / "test.rttm"),
    ("tst01", DATA / "ami" / "tst01.flac", DATA / "ami" / "test.rttm"),
    ("dev00", DATA / "ami" / "dev00.flac", DATA / "ami" / "development.rttm"),
    ("dev01", DATA / "ami" / "dev01.flac", DATA / "ami" / "development.rttm"),
]
ENROL_S = 6.0


@dataclass
class Item:
    uri: str
    audio: np.ndarray
    reference: Annotation

    @property
    def duration_s(self) -> float:
        return len(self.audio) / 16_000

    @property
    def uem(self) -> Timeline:
        return Timeline([Segment(0, self.duration_s)])


def load(uri: str, audio_path: Path, rttm: Path) -> Item:
    audio, rate = sf.read(audio_path, dtype="float32")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate != 16_000:
        audio = soxr.resample(audio, rate, 16_000)
    reference = Annotation(uri=uri)
    for line in rttm.read_text().splitlines():
        f = line.split()
        if f[1] == uri:
            reference[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    return Item(uri, audio.astype(np.float32), reference)


def annotation(turns: list[Turn], uri: str) -> Annotation:
    result = Annotation(uri=uri)
    for turn in turns:
        result[Segment(turn.start_s, turn.end_s)] = turn.speaker
    return result


def one_speaker(item: Item) -> Annotation:
    result = Annotation(uri=item.uri)
    for segment in item.reference.get_timeline().support():
        result[segment] = "SPEAKER_00"
    return result


def der_table(items: list[Item]) -> tuple[list[str], dict[str, float]]:
    """DER per file and model path; totals per path (no collar)."""
    paths: list[tuple[str, object, bool]] = [("one speaker (baseline)", None, False)]
    embedding = EmbeddingDiarizer()
    paths += [("embedding, speakers counted", embedding, False),
              ("embedding, speakers given", embedding, True)]  # fmt: skip
    model_dir = os.environ.get("DIARIZATION_MODEL_DIR")
    if model_dir:
        try:
            paths.append((f"pyannote ({model_dir})", diarizer_for(Path(model_dir)), True))
        except DiarizationError as exc:
            print(f"pyannote pipeline not measured: {exc}\n")
    lines = [
        "| model path | file | DER | DER, 0.25 s collar | speakers found / true | "
        "real-time factor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    totals: dict[str, float] = {}
    for name, diarizer, given in paths:
        total = DiarizationErrorRate()
        total_collar = DiarizationErrorRate(collar=0.25)
        for item in items:
            started = time.perf_counter()
            if diarizer is None:
                hypothesis = one_speaker(item)
            else:
                count = len(item.reference.labels()) if given else None
                turns = diarizer.diarize(item.audio, speakers=count)  # type: ignore[attr-defined]
                hypothesis = annotation(turns, item.uri)
            rtf = (time.perf_counter() - started) / item.duration_s
            der = total(item.reference, hypothesis, uem=item.uem)
            collared = total_collar(item.reference, hypothesis, uem=item.uem)
            lines.append(
                f"| {name} | {item.uri} | {der:.1%} | {collared:.1%} | "
                f"{len(hypothesis.labels())} / {len(item.reference.labels())} | "
                f"{rtf:.3f} |"
            )
        totals[name] = abs(total)
        lines.append(f"| {name} | **all** | **{abs(total):.1%}** | **{abs(total_collar):.1%}** "
                     "| | |")  # fmt: skip
    return lines, totals


def channel_table(item: Item) -> tuple[list[str], float]:
    """Two-party calls built from the corpus call: one speaker per channel (the caller on
    a noisy phone line left, the agent clean right), turned back into turns by
    storage.speakers.channel_turns, as for every call the worker records."""
    lines = ["| call | DER | DER, 0.25 s collar |", "|---|---:|---:|"]
    speakers = sorted(item.reference.labels())
    rng = np.random.default_rng(7)
    metric = DiarizationErrorRate()
    collar = DiarizationErrorRate(collar=0.25)
    for noise_db in (-60, -45):
        stereo = np.zeros((len(item.audio), 2), dtype=np.float32)
        for segment, _, who in item.reference.itertracks(yield_label=True):
            a, b = int(segment.start * 16_000), int(segment.end * 16_000)
            stereo[a:b, speakers.index(who)] = item.audio[a:b]
        stereo[:, 0] += rng.normal(0, 10 ** (noise_db / 20), len(stereo)).astype(np.float32)
        pcm = (np.clip(stereo, -1, 1) * 32767).astype("<i2")
        turns = channel_turns([pcm.tobytes()], 16_000)
        names = {"caller": speakers[0], "agent": speakers[1]}
        hypothesis = annotation([Turn(t.start_s, t.end_s, names[t.speaker]) for t in turns],
                                item.uri)  # fmt: skip
        der = metric(item.reference, hypothesis, uem=item.uem)
        collared = collar(item.reference, hypothesis, uem=item.uem)
        lines.append(f"| caller line noise {noise_db} dBFS | {der:.1%} | {collared:.1%} |")
    return lines, abs(metric)


def identification_table(items: list[Item]) -> tuple[list[str], float]:
    """Each speaker with enough speech is enrolled from the first 6 s of it; the file is
    diarized (speaker count given) with identification: the share of each person's
    reference speech labelled with their name, and how often a stranger (JFK, enrolled
    too) names anyone."""
    diarizer = EmbeddingDiarizer()
    jfk, rate = sf.read(DATA / "jfk.flac", dtype="float32")
    stranger = diarizer.encoder.embed_utterance(soxr.resample(jfk.mean(axis=1), rate, 16_000))
    lines = ["| file | person | enrolled s | their speech named right | named a stranger |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    right = spoken = 0.0
    for item in items:
        prints = {}
        for who in item.reference.labels():
            timeline = item.reference.label_timeline(who).support()
            clip = np.concatenate(
                [item.audio[int(s.start * 16_000) : int(s.end * 16_000)] for s in timeline]
            )
            if len(clip) >= ENROL_S * 16_000 * 1.5:
                prints[who] = diarizer.encoder.embed_utterance(clip[: int(ENROL_S * 16_000)])
        if not prints:
            continue
        clustered = diarizer.cluster(item.audio, speakers=len(item.reference.labels()))
        named = annotation(identify(clustered, {**prints, "JFK": stranger}), item.uri)
        for who in prints:
            own = item.reference.label_timeline(who).support()
            total = own.duration()
            correct = sum(
                (seg & other).duration
                for seg in own
                for other in named.label_timeline(who).support()
                if seg.intersects(other)
            )
            right += correct
            spoken += total
            lines.append(f"| {item.uri} | {who} | {ENROL_S:.0f} | {correct / total:.0%} | "
                         f"{'yes' if 'JFK' in named.labels() else 'no'} |")  # fmt: skip
    return lines, right / max(spoken, 1e-9)


def main() -> None:
    items = [load(*f) for f in FILES]
    print("## Diarization error rate\n")
    print("On the corpus (tests/data: a 30 s two-speaker phone call, four 30 s AMI meeting "
          "excerpts with up to 4 speakers and overlap), pyannote.metrics, no collar and "
          "0.25 s.\n")  # fmt: skip
    lines, totals = der_table(items)
    print("\n".join(lines))
    print("\n## Channel attribution (our own calls)\n")
    channel_lines, channel_der = channel_table(items[0])
    print("\n".join(channel_lines))
    print("\n## Voiceprint identification\n")
    id_lines, accuracy = identification_table(items)
    print("\n".join(id_lines))
    baseline = totals["one speaker (baseline)"]
    ours = totals["embedding, speakers given"]
    counted = totals["embedding, speakers counted"]
    print(
        f"\nDER on the corpus: {ours:.1%} with the speaker count given, {counted:.1%} counted, "
        f"one-speaker baseline {baseline:.1%}; channel attribution {channel_der:.1%}; "
        f"voiceprints name {accuracy:.0%} of enrolled speakers' speech"
    )


if __name__ == "__main__":
    main()
