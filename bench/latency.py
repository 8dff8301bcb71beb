"""Response latency on real caller turns, ours against stock livekit-agents in the same
run: the embedded stack, and the cloud stack (Deepgram, Claude, OpenAI TTS) on the
loopback servers with realistic provider latencies (STT final 0.15 s after the end of
speech, LLM first token 0.3 s, TTS first byte 0.15 s) and with none, where what is left
is the pipeline's own part.

Every ``sample.stm`` turn is cut out (0.3 s padding each side) and played, paced in real
time, as its own call through :func:`agent.simulate.simulate_call` (no greeting), once
with each configuration, alternating, so both meet the same machine load:

- **ours**: the product's defaults (plugins.speculative_stt: Whisper starts at the
  caller's first 0.15 s pause; preemptive TTS: the drafted reply is voiced before the
  turn is committed);
- **stock**: livekit-agents' defaults with the same plugins: its ``stt.StreamAdapter``
  (Whisper starts once Silero has heard 0.55 s of silence), preemptive generation of the
  LLM only, interruption ``min_duration`` 0.5 s and ``false_interruption_timeout`` 2 s.
  Endpointing (0.5-3 s) is livekit's default in both.

**Cut-offs**: the same turns with a pause inserted at a word gap near their middle (0.4,
0.7 and 1.0 s of silence, as a caller hesitating): a call where the agent spoke before the
caller's last words (an agent utterance before a caller utterance in the transcript) cut
the caller off.

The report gives P50/P95/P99 of end of speech to first agent audio and of each stage, the
ratio ours / stock, the cut-off rate of each, and a CPU baseline measured in the same run
(Whisper on ``jfk.flac``), because this 2-core machine is shared.

Run from the repository root: ``python -m bench.latency [--turns N]``. Prints Markdown;
the last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.pipeline import load_vad
from agent.settings import Settings
from agent.simulate import CallReport, SimulationOptions, TurnLatency, simulate_call
from agent.wav_io import CALLER_SAMPLE_RATE_HZ
from bench.corpus import (
    CorpusTurn,
    cut_turn,
    int16_to_float32,
    load_jfk,
    load_sample_audio,
    load_stm,
)

TURN_PAD_S = 0.3
# max_tail_s (default 30 s) only bounds a call that never goes quiet, so one stuck call
# cannot stretch the run; 20 s covers STT + the longest reply (~9 s of speech) + 1.5 s.
OPTIONS = SimulationOptions(realtime=True, greeting=False, quiet_after_s=1.5, max_tail_s=20.0)

# (column header, TurnLatency attribute), in pipeline order
METRICS: list[tuple[str, str]] = [
    ("end of speech -> first audio (e2e)", "end_of_speech_to_first_audio_s"),
    ("end-of-utterance delay", "end_of_utterance_delay_s"),
    ("STT delay", "stt_delay_s"),
    ("LLM first token", "llm_first_token_s"),
    ("TTS first byte", "tts_first_byte_s"),
]


@dataclass
class CallResult:
    """One STM turn played as one call."""

    turn: CorpusTurn
    report: CallReport
    caller_heard: str
    """Every caller utterance the agent's STT produced, joined."""
    agent_said: str
    """Every agent utterance, joined."""


BASELINE_RUNS = 3
"""Baseline repetitions before and after the calls; one run alone swung 0.6-1.6 s here."""


@dataclass
class Baseline:
    """Wall times of a fixed CPU workload: Whisper tiny.en transcribing jfk.flac once."""

    runs_s: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The median run: robust to one run that a neighbour's burst slowed down."""
        return statistics.median(self.runs_s)


def measure_baseline() -> float:
    """Seconds to transcribe jfk.flac with the agent's Whisper (model already loaded)."""
    from plugins.local_stt import WhisperSTT

    pcm, _ = load_jfk()
    audio = int16_to_float32(pcm)
    stt = WhisperSTT()
    t = time.perf_counter()
    stt.transcribe(audio)
    return time.perf_counter() - t


def warm_up() -> None:
    """Load the models and run each once, so the first measured turn does not pay for it
    (Whisper loads lazily on its first utterance, and ONNX sessions are slow on their
    first run)."""
    from plugins.local_stt import WhisperSTT
    from plugins.local_tts import PiperTTS

    stt = WhisperSTT()
    stt.prewarm()
    stt.transcribe(np.zeros(16_000, dtype=np.float32))
    PiperTTS().render_pcm("Hello, how can I help?")


def local_settings() -> Settings:
    """Default settings pinned to the embedded stack: a stray key in the environment or
    ``.env`` would otherwise send a stage to a cloud provider we cannot reach here."""
    return Settings(stt_provider="local", llm_provider="local", tts_provider="local")


STOCK = {
    "speculative_stt": False,
    "preemptive_tts": False,
    "interrupt_onset_s": 0.5,
    "interrupt_resume_s": 2.0,
}
"""What livekit-agents does by default where the product differs."""


def configurations(base: Settings | None = None) -> dict[str, Settings]:
    ours = base or local_settings()
    return {"ours": ours, "stock": ours.model_copy(update=STOCK)}


# the cloud stack on the loopback servers: realistic provider latencies, and none
PROVIDER_LATENCIES_S = {"realistic": (0.15, 0.30, 0.15), "zero": (0.0, 0.0, 0.0)}
"""(STT final after the end of speech, LLM first token, TTS first byte)."""


def cloud_settings(deepgram_url: str, anthropic_url: str, openai_url: str) -> Settings:
    """The cloud stack (Deepgram, Claude, OpenAI TTS) at the loopback servers' URLs, with
    no ``.env`` in the way."""
    from pydantic import SecretStr

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        stt_provider="deepgram", llm_provider="anthropic", tts_provider="openai",
        deepgram_api_key=SecretStr("k"), deepgram_base_url=deepgram_url,
        anthropic_api_key=SecretStr("k"), anthropic_base_url=anthropic_url,
        openai_api_key=SecretStr("k"), openai_base_url=openai_url,
    )  # fmt: skip


async def run_cloud(
    turns: Sequence[CorpusTurn], pcm: np.ndarray
) -> dict[str, dict[str, list[float]]]:
    """e2e latency of the cloud stack (Deepgram, Claude, OpenAI TTS on loopback servers)
    per latency profile and configuration, every turn once each."""

    from tests.loopback.anthropic_server import AnthropicServer
    from tests.loopback.deepgram_server import DeepgramServer
    from tests.loopback.openai_server import OpenAIServer

    vad_model = load_vad()
    out: dict[str, dict[str, list[float]]] = {}
    async with DeepgramServer() as stt_server, AnthropicServer() as llm_server, \
            OpenAIServer() as tts_server:  # fmt: skip
        base = cloud_settings(stt_server.listen_url, llm_server.base_url, tts_server.base_url)
        for profile, (stt_s, llm_s, tts_s) in PROVIDER_LATENCIES_S.items():
            stt_server.options.final_after_silence_s = stt_s
            # the chain's own idea of audible (plugins.stt_chain.AUDIBLE_RMS): a breath in
            # the padding is not a second utterance
            stt_server.options.speech_rms_threshold = 300.0
            llm_server.options.first_byte_delay_s = llm_s
            tts_server.options.first_byte_delay_s = tts_s
            for name, settings in configurations(base).items():
                key = f"{profile}/{name}"
                out[key] = []
                for turn in turns:
                    stt_server.options.transcripts = [turn.text]
                    caller = cut_turn(pcm, turn, pad_s=TURN_PAD_S)
                    report, _ = await simulate_call(caller, settings, vad_model, options=OPTIONS)
                    out[key] += _values(report.turns, "end_of_speech_to_first_audio_s")[:1]
            print(f"cloud {profile} done", file=sys.stderr)
    return out


def render_cloud(cloud: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| provider latencies (STT final, LLM first token, TTS first byte) | configuration "
        "| n | e2e P50 | e2e P95 | e2e P99 | pipeline overhead P50 / P95 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, vals in cloud.items():
        profile, name = key.split("/")
        if not vals:
            lines.append(f"| {profile} | {name} | 0 | — | — | — | — |")
            continue
        stt_s, llm_s, tts_s = PROVIDER_LATENCIES_S[profile]
        # with providers that cost nothing, what is left beyond the VAD's 0.55 s of silence
        # (which ends a turn in both configurations) is the pipeline's own; with realistic
        # ones the providers run inside that silence, so nothing clean is left to subtract
        if profile == "zero":
            own = [v - VAD_SILENCE_S for v in vals]
            overhead = f"{statistics.median(own):.3f} / {_pct(own, 95):.3f}"
        else:
            overhead = "—"
        label = f"{profile} ({stt_s:.2f}, {llm_s:.2f}, {tts_s:.2f} s)"
        lines.append(
            f"| {label} | {name} | {len(vals)} | {statistics.median(vals):.3f} | "
            f"{_pct(vals, 95):.3f} | {_pct(vals, 99):.3f} | {overhead} |"
        )
    return "\n".join(lines)


VAD_SILENCE_S = 0.55
"""Silero's silence before it ends an utterance (livekit's default): the turn cannot end
sooner in either configuration."""


PAUSES_S = (0.4, 0.7, 1.0)
MIN_PAUSED_TURN_S = 1.5


def with_pause(audio: np.ndarray, pause_s: float) -> np.ndarray:
    """``audio`` with ``pause_s`` of silence inserted at the quietest 20 ms near its middle
    (a gap between words, not inside one)."""
    frame = CALLER_SAMPLE_RATE_HZ // 50
    frames = len(audio) // frame
    middle = range(frames * 3 // 10, frames * 7 // 10)
    levels = [float(np.abs(audio[i * frame : (i + 1) * frame].astype(np.float32)).mean())
              for i in middle]  # fmt: skip
    cut = (middle[int(np.argmin(levels))] + 1) * frame
    gap = np.zeros(int(pause_s * CALLER_SAMPLE_RATE_HZ), dtype=audio.dtype)
    return np.concatenate([audio[:cut], gap, audio[cut:]])


def cut_off(report: CallReport) -> bool:
    """The agent spoke, then the caller went on: it did not wait for the end of the turn."""
    roles = [u.role for u in report.transcript]
    return "agent" in roles and "caller" in roles[roles.index("agent") :]


async def run_calls(
    turns: Sequence[CorpusTurn], pcm: np.ndarray
) -> tuple[dict[str, list[CallResult]], dict[str, list[bool]]]:
    """Each turn as its own call, one after another (calls in parallel would compete for
    the two cores and measure contention instead), once per configuration, alternating;
    then the paused variants for the cut-off rate."""
    configs = configurations()
    vad_model = load_vad()
    results: dict[str, list[CallResult]] = {name: [] for name in configs}
    cut_offs: dict[str, list[bool]] = {name: [] for name in configs}
    for i, turn in enumerate(turns, start=1):
        caller = cut_turn(pcm, turn, pad_s=TURN_PAD_S)
        for name, settings in configs.items():
            report, _audio = await simulate_call(
                caller, settings, vad_model, options=OPTIONS, input_name=f"turn {i}"
            )
            heard = " ".join(u.text for u in report.transcript if u.role == "caller").strip()
            said = " ".join(u.text for u in report.transcript if u.role == "agent").strip()
            results[name].append(CallResult(turn, report, heard, said))
        print(f"turn {i}/{len(turns)} done", file=sys.stderr)
    paused = [t for t in turns if t.duration_s >= MIN_PAUSED_TURN_S]
    for i, turn in enumerate(paused, start=1):
        for pause_s in PAUSES_S:
            caller = with_pause(cut_turn(pcm, turn, pad_s=TURN_PAD_S), pause_s)
            for name, settings in configs.items():
                report, _audio = await simulate_call(
                    caller, settings, vad_model, options=OPTIONS, input_name=f"paused {i}"
                )
                cut_offs[name].append(cut_off(report))
        print(f"paused turn {i}/{len(paused)} done", file=sys.stderr)
    return results, cut_offs


def _values(turns: Sequence[TurnLatency], attr: str) -> list[float]:
    return [v for t in turns if (v := getattr(t, attr)) is not None]


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "*(empty)*"


def render(results: Sequence[CallResult], baseline: Baseline, wall_s: float) -> str:
    """Markdown: summary per stage, reply counts, baseline, then one row per call."""
    latencies = [t for r in results for t in r.report.turns]
    answered = [t for t in latencies if t.end_of_speech_to_first_audio_s is not None]
    no_reply_calls = [r for r in results if not r.report.turns]
    unheard_calls = [r for r in results if not r.caller_heard]
    errors = [e for r in results for e in r.report.errors]
    stacks = {tuple(sorted(r.report.stack.items())) for r in results}

    lines = [
        f"| stage (s) | n | median | P90 | median / baseline ({baseline.seconds:.3f} s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for header, attr in METRICS:
        vals = _values(latencies, attr)
        if vals:
            med = statistics.median(vals)
            p90 = float(np.percentile(vals, 90))
            lines.append(
                f"| {header} | {len(vals)} | {med:.3f} | {p90:.3f} | {med / baseline.seconds:.2f} |"
            )
        else:
            lines.append(f"| {header} | 0 | — | — | — |")
    lines += [
        "",
        f"- calls (STM turns): {len(results)}; agent turns recorded: {len(latencies)}; "
        f"with a measured reply (e2e not None): {len(answered)}; "
        f"agent turns without e2e: {len(latencies) - len(answered)}",
        f"- calls with no agent reply: {len(no_reply_calls)} "
        f"(of which the STT heard nothing: "
        f"{sum(1 for r in no_reply_calls if not r.caller_heard)}); "
        f"calls where the STT heard nothing: {len(unheard_calls)}",
        "- baseline (Whisper tiny.en on jfk.flac, 11 s audio) runs: "
        + ", ".join(f"{s:.3f} s" for s in baseline.runs_s)
        + f" ({BASELINE_RUNS} before, {BASELINE_RUNS} after the calls); ratios use the median",
        f"- stack: {', '.join(f'{k}={v}' for k, v in sorted(stacks)[0]) if stacks else '—'}",
        f"- session errors: {len(errors)}" + (f" (first: {_cell(errors[0])})" if errors else ""),
        f"- wall time {wall_s:.1f} s",
        "",
        "| # | speaker | reference (STM) | caller text (STT) | agent reply | e2e | EOU | STT "
        "| LLM | TTS |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results, start=1):
        first = r.report.turns[0] if r.report.turns else None
        extra = f" (+{len(r.report.turns) - 1} more turns)" if len(r.report.turns) > 1 else ""
        nums = " | ".join(_s(getattr(first, a) if first else None) for _, a in METRICS)
        lines.append(
            f"| {i} | {r.turn.speaker} | {_cell(r.turn.text)} | {_cell(r.caller_heard)} "
            f"| {_cell(r.agent_said)}{extra} | {nums} |"
        )
    return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def render_comparison(
    results: dict[str, list[CallResult]], cut_offs: dict[str, list[bool]], baseline: Baseline
) -> tuple[str, str]:
    """The ours-vs-stock table, and the headline."""
    lines = [
        "| configuration | stage (s) | n | P50 | P95 | P99 | P50 / baseline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    e2e: dict[str, list[float]] = {}
    for name, calls in results.items():
        latencies = [t for r in calls for t in r.report.turns]
        for header, attr in METRICS:
            vals = _values(latencies, attr)
            if not vals:
                continue
            if attr == "end_of_speech_to_first_audio_s":
                e2e[name] = vals
            lines.append(
                f"| {name} | {header} | {len(vals)} | {statistics.median(vals):.3f} | "
                f"{_pct(vals, 95):.3f} | {_pct(vals, 99):.3f} | "
                f"{statistics.median(vals) / baseline.seconds:.2f} |"
            )
    lines += ["", "| configuration | paused calls | cut off | rate |", "|---|---:|---:|---:|"]
    for name, flags in cut_offs.items():
        rate = sum(flags) / len(flags) if flags else 0.0
        lines.append(f"| {name} | {len(flags)} | {sum(flags)} | {rate:.0%} |")
    ours, stock = e2e.get("ours", []), e2e.get("stock", [])
    if not ours or not stock:
        return "\n".join(lines), "no replies measured"
    ratio = statistics.median(ours) / statistics.median(stock)
    rates = {n: (sum(f) / len(f) if f else 0.0) for n, f in cut_offs.items()}
    headline = (
        f"embedded stack, end of speech to first audio: ours P50 {statistics.median(ours):.2f} s "
        f"/ P95 {_pct(ours, 95):.2f} s, stock livekit P50 {statistics.median(stock):.2f} s / "
        f"P95 {_pct(stock, 95):.2f} s (ours / stock {ratio:.2f}); cut-offs ours "
        f"{rates.get('ours', 0):.0%}, stock {rates.get('stock', 0):.0%}"
    )
    return "\n".join(lines), headline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--turns", type=int, default=None, metavar="N", help="only the first N STM turns"
    )
    args = parser.parse_args(argv)
    if args.turns is not None and args.turns < 1:
        parser.error("--turns must be >= 1")

    # the session logs at INFO per call; the tables are the output
    logging.basicConfig(level=logging.WARNING)
    wall = time.perf_counter()
    turns = load_stm()[: args.turns]
    pcm = load_sample_audio()

    warm_up()
    baseline = Baseline()
    # before and after: the machine's load can change during the few minutes of calls
    baseline.runs_s += [measure_baseline() for _ in range(BASELINE_RUNS)]
    results, cut_offs = asyncio.run(run_calls(turns, pcm))
    cloud = asyncio.run(run_cloud(turns, pcm))
    baseline.runs_s += [measure_baseline() for _ in range(BASELINE_RUNS)]

    table, headline = render_comparison(results, cut_offs, baseline)
    print("## Ours against stock livekit-agents: embedded stack\n")
    print(table)
    print("\n## Ours against stock livekit-agents: cloud stack on the loopback servers\n")
    print(render_cloud(cloud))
    realistic = {n: cloud.get(f"realistic/{n}", []) for n in ("ours", "stock")}
    if realistic["ours"] and realistic["stock"]:
        ratio = statistics.median(realistic["ours"]) / statistics.median(realistic["stock"])
        headline += f"; cloud stack ours / stock {ratio:.2f}"
    for name, calls in results.items():
        print(f"\n## {name}: per stage and per call\n")
        print(render(calls, baseline, time.perf_counter() - wall))
    print(f"\n{headline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
