"""Word error rate and speed of the two embedded speech-to-text engines on real speech.

Engines: Whisper tiny.en (``plugins.local_stt.WhisperSTT``, what the agent uses) and
pocketsphinx 5 with its bundled English model (the streaming fallback). Corpora: the
``sample.stm`` turns of the telephone conversation, each cut out by its STM times with 0.2 s
padding and pooled into one WER; the JFK clip; and support-call lines said by six espeak-ng
voices on an 8 kHz line (voices the agent was never tuned on).

Run from the repository root: ``python -m bench.stt_wer [--verbose]``. Prints Markdown.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jiwer
import numpy as np

from agent.wav_io import CALLER_SAMPLE_RATE_HZ
from bench.corpus import cut_turn, int16_to_float32, load_jfk, load_sample_audio, load_stm

TURN_PAD_S = 0.2

# Transcribes 16 kHz mono int16 to text.
Recognizer = Callable[[np.ndarray], str]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
# anything that is not a letter, digit, apostrophe or whitespace is punctuation
_PUNCT = re.compile(r"[^\w'\s]|_")


def normalize(text: str) -> str:
    """Lowercase, punctuation replaced by spaces (apostrophes kept, so "I'm" stays one
    word), whitespace collapsed. Applied identically to references and hypotheses."""
    text = _PUNCT.sub(" ", text.translate(_APOSTROPHES).lower())
    # quotes used as quotation marks ("'hello'") are not apostrophes inside a word
    words = (w.strip("'") for w in text.split())
    return " ".join(w for w in words if w)


def pooled_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Total edits over total reference words across all pairs (not a mean of per-pair
    WERs, which would weight a one-word "Hello?" like a long sentence)."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    return float(jiwer.process_words(refs, hyps).wer)


def whisper_recognizer() -> Recognizer:
    """Whisper tiny.en as the agent runs it, model loaded and warmed up."""
    from plugins.local_stt import WhisperSTT

    stt = WhisperSTT()
    stt.prewarm()
    # the first decode allocates buffers; keep that out of the timed runs
    stt.transcribe(np.zeros(CALLER_SAMPLE_RATE_HZ, dtype=np.float32))

    def recognize(pcm: np.ndarray) -> str:
        return stt.transcribe(int16_to_float32(pcm))[0]

    return recognize


def pocketsphinx_recognizer() -> Recognizer:
    """pocketsphinx's default English acoustic model, dictionary and language model.

    One decoder serves every utterance of a recording, as it would on a call. The
    decoder keeps adaptation state between utterances (resetting the cepstral mean does
    not undo it: JFK decoded after the telephone turns came out markedly worse than
    fresh), so :func:`run_engine` makes a new recognizer for each recording.
    """
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")
    if int(decoder.config["samprate"]) != CALLER_SAMPLE_RATE_HZ:
        raise RuntimeError(f"pocketsphinx expects {decoder.config['samprate']} Hz audio")

    def recognize(pcm: np.ndarray) -> str:
        decoder.start_utt()
        decoder.process_raw(pcm.astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    return recognize


ENGINES: dict[str, Callable[[], Recognizer]] = {
    "whisper tiny.en (faster-whisper int8)": whisper_recognizer,
    "pocketsphinx 5 (default en-us)": pocketsphinx_recognizer,
}


@dataclass
class Utt:
    corpus: str
    label: str
    reference: str
    pcm: np.ndarray


@dataclass
class EngineResult:
    engine: str
    hypotheses: list[str] = field(default_factory=list)
    processing_s: float = 0.0
    audio_s: float = 0.0
    setup_s: float = 0.0

    def wer(self, utts: Sequence[Utt], corpus: str) -> float:
        """Pooled WER over the utterances of one corpus."""
        pairs = [(u.reference, h) for u, h in zip(utts, self.hypotheses, strict=True)]
        chosen = [pair for pair, u in zip(pairs, utts, strict=True) if u.corpus == corpus]
        return pooled_wer([r for r, _ in chosen], [h for _, h in chosen])

    @property
    def rtf(self) -> float:
        return self.processing_s / self.audio_s


PHONE_LINES = (
    "My internet has been down since this morning.",
    "I'd like to check the status of my order please.",
    "Can you tell me why my bill is higher this month?",
    "The router keeps blinking red and nothing works.",
    "I want to speak to a person about cancelling my account.",
    "Yes, that's right, the account number is four five six seven.",
    "No, I already tried restarting it twice.",
    "Could you send a technician on Thursday afternoon?",
    "What time do you close on Saturday?",
    "I moved last week and need to update my address.",
    "Is there an outage in Springfield right now?",
    "Thanks, that's all I needed. Goodbye.",
    "My name is Diane Carter and I'm calling about a refund.",
    "The wifi works upstairs but not in the kitchen.",
    "I was charged twice for the same payment.",
)
"""What callers of a support line say, for the espeak-ng corpus."""
PHONE_VOICES = ("en-us+m3", "en-us+f2", "en+m7", "en-gb+m1", "en-us+f4", "en-us")


def phone_utterances() -> list[Utt]:
    """Every line of :data:`PHONE_LINES` in every espeak-ng voice, on a telephone line."""
    from bench.bargein import espeak

    return [
        Utt("espeak phone", f"{voice}: {line[:24]}", line, espeak(line, voice))
        for line in PHONE_LINES
        for voice in PHONE_VOICES
    ]


def load_utterances() -> list[Utt]:
    """Every ``sample.stm`` turn (padded), the JFK clip, then the espeak-ng phone lines,
    with reference text."""
    pcm = load_sample_audio()
    utts = [
        Utt("sample.stm", f"{t.speaker} {t.start_s:.2f}-{t.end_s:.2f}", t.text, seg)
        for t in load_stm()
        for seg in [cut_turn(pcm, t, pad_s=TURN_PAD_S)]
    ]
    jfk_pcm, jfk_text = load_jfk()
    utts.append(Utt("jfk", "jfk.flac", jfk_text, jfk_pcm))
    return utts + phone_utterances()


def run_engine(name: str, make: Callable[[], Recognizer], utts: Sequence[Utt]) -> EngineResult:
    """Transcribe every utterance, in order, with a fresh recognizer per recording (so one
    corpus cannot tune the engine for the next); time only recognition, not setup."""
    result = EngineResult(engine=name)
    corpus: str | None = None
    recognize: Recognizer | None = None
    for utt in utts:
        if recognize is None or utt.corpus != corpus:
            t = time.perf_counter()
            recognize, corpus = make(), utt.corpus
            result.setup_s += time.perf_counter() - t
        t = time.perf_counter()
        hyp = recognize(utt.pcm)
        result.processing_s += time.perf_counter() - t
        result.audio_s += len(utt.pcm) / CALLER_SAMPLE_RATE_HZ
        result.hypotheses.append(hyp)
    return result


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "*(empty)*"


def render(results: Sequence[EngineResult], utts: Sequence[Utt], *, verbose: bool) -> str:
    """The Markdown report: one summary row per engine, then (verbose) every hypothesis."""
    n_turns = sum(u.corpus == "sample.stm" for u in utts)
    lines = [
        "| engine | WER sample.stm | WER jfk | WER espeak phone | RTF |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.engine} | {r.wer(utts, 'sample.stm'):.1%} | {r.wer(utts, 'jfk'):.1%} "
            f"| {r.wer(utts, 'espeak phone'):.1%} | {r.rtf:.2f} |"
        )
    audio_s = results[0].audio_s if results else 0.0
    lines += [
        "",
        f"sample.stm: {n_turns} turns cut by STM times +{TURN_PAD_S} s padding, pooled WER; "
        f"espeak phone: {len(PHONE_LINES)} lines x {len(PHONE_VOICES)} espeak-ng voices, 8 kHz; "
        f"text lowercased, punctuation removed (apostrophes kept). RTF = recognition time / "
        f"audio time over all {audio_s:.1f} s, model loading excluded "
        + "("
        + ", ".join(f"{r.engine.split()[0]} setup {r.setup_s:.1f} s" for r in results)
        + ").",
    ]
    if verbose:
        lines += ["", "| utterance | reference | " + " | ".join(r.engine for r in results) + " |"]
        lines.append("|---|---|" + "---|" * len(results))
        for i, u in enumerate(utts):
            hyps = " | ".join(_cell(r.hypotheses[i]) for r in results)
            lines.append(f"| {u.label} | {_cell(u.reference)} | {hyps} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every hypothesis")
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    utts = load_utterances()
    results = [run_engine(name, make, utts) for name, make in ENGINES.items()]
    print(render(results, utts, verbose=args.verbose))
    print(f"\nwall time {time.perf_counter() - wall:.1f} s")
    print(headline(results, utts))
    return 0


def headline(results: Sequence[EngineResult], utts: Sequence[Utt]) -> str:
    """The agent's Whisper (the first engine) on each corpus."""
    ours = results[0]
    return (
        f"whisper tiny.en WER: sample.stm {ours.wer(utts, 'sample.stm'):.1%}, "
        f"jfk {ours.wer(utts, 'jfk'):.1%}, espeak phone {ours.wer(utts, 'espeak phone'):.1%}"
    )


if __name__ == "__main__":
    sys.exit(main())
