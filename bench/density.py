"""How many concurrent calls one worker holds on this 2-core machine: simulated calls are
added until the response latency or the caller's audio pacing gives way.

Every call is :func:`agent.simulate.simulate_call` in real time (no greeting) on the
cloud stack (Deepgram, Claude, OpenAI TTS) against the loopback servers of
``tests/loopback`` with bench.latency's realistic provider latencies (STT final 0.15 s
after the end of speech, LLM first token 0.3 s, TTS first byte 0.15 s). The servers run in
a process of their own, so what the worker's process(es) spend is the worker's own cost:
Silero VAD, resampling, the session's logic, the plugins' protocol handling. (They still
share the two cores: their CPU, and the whole machine's, are reported beside the
worker's.) The caller waits 3 s (where a greeting would be), then says four corpus turns
(``sample.wav``) with 6 s of silence after each for the reply: a 34 s call with four
replies. The loopback STT hears one fixed sentence in every utterance, and Claude answers
each with the same one-second sentence. N calls start staggered over 2 s, so every call
has started before any caller speaks.

Three ways of holding N calls, in fresh processes for every N, forked from a forkserver
that has imported the plugins as livekit's worker does on Linux, each process prewarmed
by ``agent.worker.prewarm`` (Silero, Whisper, Piper, the phrasebook) before the calls
start, as livekit prewarms its idle job processes:

- **shared**: the N calls as tasks on one event loop in one process, sharing one Silero
  model: what livekit's thread executor (jobs as threads of one process, one GIL) or a
  process holding several jobs amounts to;
- **pool**: the N calls dealt round robin to one such process per core;
- **process**: livekit's default, one process per job: N processes, one call each.

Per run: end of caller speech to first agent audio (P50 and P95 over every turn of every
call; a turn with no reply counts as infinitely late); how late the caller's 20 ms frames
were handed to the session against their real-time schedule (P99, max, and the share
later than 40 ms) once every call has started (from 1 s after the last start), and
separately the latest frame while calls were starting (starting a call blocks its
process's event loop); the worker's CPU time over the calls' wall time as a share of all
cores; and the peak during the calls of the processes' summed RSS and PSS (sampled from
``/proc/PID/smaps_rollup``; PSS splits the pages processes share, such as the
forkserver's imports, between them, so it is what each really adds). Memory per call:
shared, what each call adds to the one process, ``(peak(N) - peak(1)) / (N - 1)``; pool
and process, the total over N.

N is raised through ``--steps`` until a run fails: P95 above ``--target-p95-s`` (1.5 s:
twice stock livekit's P95 for one call on this loopback stack, 0.74 s in bench.latency,
and above the embedded stack's single-call stock P95 of 1.33 s; load may double a stock
idle response before the worker counts as full), or the P99 frame lateness above
``--late-p99-s`` (0.1 s: five frames behind, the caller's audio no longer flows in real
time), or a call errors or times out. Process mode also stops before a run whose memory,
extrapolated from the last one, would not fit in 80% of the machine's available memory.

Then the embedded stack (Whisper, the dialogue engine, Piper) in shared mode, 1, 2, 3 ...
calls until one fails the same target: its models are loaded once per process
(``functools.cache`` in plugins/local_stt.py and plugins/local_tts.py) and shared by its
calls, but every utterance is CPU-bound work on them (Whisper alone uses both cores), so
concurrent calls queue for the cores, not for memory.

Run from the repository root: ``python -m bench.density [--steps 1,5,10,...]
[--max-calls N] [--modes shared,pool,process] [--embedded-steps 1,2,3,4]``. Prints
Markdown, progress on stderr; the last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import psutil

from agent.simulate import SimulationOptions, simulate_call
from agent.wav_io import CALLER_SAMPLE_RATE_HZ, FRAME_MS, CallerAudioInput
from bench.corpus import cut_turn, load_sample_audio, load_stm
from bench.latency import OPTIONS, PROVIDER_LATENCIES_S, cloud_settings, local_settings

Mode = Literal["shared", "pool", "process"]
MODES: tuple[Mode, ...] = ("shared", "pool", "process")
Stack = Literal["cloud", "embedded"]

TARGET_P95_S = 1.5
LATE_P99_S = 0.1
LATE_FRAME_S = 0.04
"""A frame this late counts in the "late frames" share: two frames behind."""
CALLER_LINES = (
    "This is Diane in New Jersey.",
    "I'm in New Jersey now though.",
    "Well, there isn't that much difference.",
    "Oh, I don't hear that in New Jersey now.",
)
"""The STM turns a caller says, in order: ones the embedded Whisper hears above its
confidence gate, so every turn gets a reply from both stacks (and no other speaker's
words, which ``cut_turn``'s padding would take in here)."""
CALL_TURNS = len(CALLER_LINES)
REPLY_GAP_S = 6.0
"""Silence after each caller turn: room for the end of the turn (the VAD's 0.55 s), the
reply's start and the loopback's one-second reply; the dialogue engine's longest replies
(~9 s) are cut short by the caller's next turn, as a caller would."""
LOOPBACK_TRANSCRIPT = CALLER_LINES[0]
"""What the loopback Deepgram hears in every utterance."""
STAGGER_S = 2.0
SETTLE_S = 1.0
"""Frames count as steady state from this long after the last call's start."""
LEAD_S = STAGGER_S + SETTLE_S
"""Silence before the caller's first turn (where a greeting would be): every call of the
run has started by the time any caller speaks."""
CALL_OPTIONS: SimulationOptions = OPTIONS
"""bench.latency's: real time, no greeting, a call ends 1.5 s after it goes quiet."""
DEFAULT_STEPS = (1, 5, 10, 20, 30, 40, 50, 60, 80, 100)
EMBEDDED_STEPS = (1, 2, 3, 4, 6)
RUN_TIMEOUT_S = 600.0
MEMORY_HEADROOM = 0.8
"""Process mode runs only while the extrapolated memory fits in this share of what is
available."""
SAMPLE_INTERVAL_S = 0.5
CPU_COUNT = os.cpu_count() or 1

# livekit's worker preloads its registered plugins and its own warm-up in the forkserver
# its job processes fork from (livekit.agents.worker, Linux); ours registers these
FORKSERVER_PRELOAD = [
    "livekit.plugins.anthropic",
    "livekit.plugins.deepgram",
    "livekit.plugins.elevenlabs",
    "livekit.plugins.openai",
    "livekit.plugins.silero",
    "livekit.agents.ipc._preload",
    "livekit.agents.ipc._preload_freeze",
]


@dataclass
class FrameLog:
    """When each caller frame was handed to the session (unix time) and how late."""

    handed_at: list[float] = field(default_factory=list)
    lateness_s: list[float] = field(default_factory=list)

    def split(self, at: float) -> tuple[np.ndarray, np.ndarray]:
        """The lateness of the frames handed over before ``at``, and from ``at`` on."""
        handed = np.array(self.handed_at)
        late = np.array(self.lateness_s, dtype=np.float32)
        return late[handed < at], late[handed >= at]


class FrameLatenessProbe(CallerAudioInput):
    """The caller's audio input, logging how late each frame is handed to the session
    against the real-time schedule it paces to (the session asked late, or the event loop
    woke the pacing late)."""

    def __init__(self, pcm: np.ndarray, *, realtime: bool = True, log: FrameLog) -> None:
        super().__init__(pcm, realtime=realtime)
        self.log = log

    async def _pace(self) -> None:
        # the deadline before the pacer moves it: after a stall of more than 0.2 s the
        # pacer starts a new schedule, which would hide the stall
        previous = self._next_deadline
        await super()._pace()
        if previous is not None:
            self.log.lateness_s.append(time.monotonic() - (previous + FRAME_MS / 1000))
            self.log.handed_at.append(time.time())


@dataclass(frozen=True)
class Endpoints:
    """Where the loopback providers listen."""

    deepgram_url: str
    anthropic_url: str
    openai_url: str


@dataclass
class CallOutcome:
    e2e_s: list[float]
    """End of speech to first audio of every answered turn."""
    lateness_s: np.ndarray
    """Of the caller frames handed over once every call of the run had started."""
    start_lateness_s: np.ndarray
    """... and of those before: while calls were still starting."""
    errors: list[str] = field(default_factory=list)
    fallbacks: int = 0


@dataclass
class WorkerOutcome:
    """What one worker process reports after its calls."""

    calls: list[CallOutcome]
    cpu_s: float
    """CPU time (user + system, all threads) from the start signal to the last call's end."""
    ended_at: float


@dataclass
class WorkerJob:
    stack: Stack
    endpoints: Endpoints
    caller_pcm: np.ndarray
    offsets_s: list[float]
    """When each of this process's calls starts, after the common start."""
    call_timeout_s: float
    ready_timeout_s: float


@dataclass
class RunResult:
    mode: Mode
    stack: Stack
    calls: int
    expected_turns: int
    e2e_s: list[float] = field(default_factory=list)
    lateness_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Caller frames' lateness once every call had started."""
    start_lateness_max_s: float = 0.0
    """The latest frame while the calls were starting."""
    cpu_s: float = 0.0
    wall_s: float = 0.0
    """From the start signal to the last call's end."""
    loopback_cpu_s: float = 0.0
    machine_busy_share: float = 0.0
    """Every process's CPU, and time stolen by the hypervisor, as a share of all cores
    over the calls: the worker's and the loopback's, the sampler's, and a neighbour's."""
    prewarmed_rss_mb: float = 0.0
    """The processes' summed RSS once prewarmed, before the calls."""
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    errors: list[str] = field(default_factory=list)
    fallbacks: int = 0
    failure: str | None = None
    """Why the run did not complete (timeout, a process that died), else None."""

    @property
    def latencies_s(self) -> list[float]:
        """Every expected turn's e2e; an unanswered turn is infinitely late."""
        missing = max(0, self.expected_turns - len(self.e2e_s))
        return sorted(self.e2e_s) + [float("inf")] * missing

    def e2e_pct(self, q: float) -> float:
        values = self.latencies_s
        return float(np.percentile(values, q, method="higher")) if values else float("inf")

    def lateness_pct(self, q: float) -> float:
        return float(np.percentile(self.lateness_s, q)) if self.lateness_s.size else 0.0

    @property
    def lateness_max_s(self) -> float:
        return float(self.lateness_s.max()) if self.lateness_s.size else 0.0

    @property
    def late_share(self) -> float:
        if not self.lateness_s.size:
            return 0.0
        return float((self.lateness_s > LATE_FRAME_S).mean())

    @property
    def cpu_share(self) -> float:
        """The worker's CPU as a share of all the machine's cores over the calls."""
        return self.cpu_s / (self.wall_s * CPU_COUNT) if self.wall_s > 0 else 0.0

    @property
    def loopback_cpu_share(self) -> float:
        return self.loopback_cpu_s / (self.wall_s * CPU_COUNT) if self.wall_s > 0 else 0.0

    def verdict(self, limits: Limits) -> str | None:
        """Why this run does not hold its calls, or None when it does."""
        if self.failure:
            return self.failure
        if self.errors:
            return f"{len(self.errors)} session errors ({self.errors[0]})"
        if self.e2e_pct(95) > limits.target_p95_s:
            return f"P95 above {limits.target_p95_s:g} s"
        if self.lateness_pct(99) > limits.late_p99_s:
            return f"frames late (P99 above {limits.late_p99_s * 1000:.0f} ms)"
        return None


@dataclass(frozen=True)
class CallerScript:
    """What every caller says: ``turns`` corpus turns, each followed by ``gap_s`` of
    silence."""

    turns: int = CALL_TURNS
    gap_s: float = REPLY_GAP_S

    def audio(self, pcm: np.ndarray) -> np.ndarray:
        """The caller's side of the call, cut from the corpus recording ``pcm``."""
        by_text = {t.text: t for t in load_stm()}
        turns = [by_text[line] for line in CALLER_LINES[: self.turns]]
        lead = np.zeros(int(LEAD_S * CALLER_SAMPLE_RATE_HZ), dtype=np.int16)
        gap = np.zeros(int(self.gap_s * CALLER_SAMPLE_RATE_HZ), dtype=np.int16)
        return np.concatenate([lead, *(part for t in turns for part in (cut_turn(pcm, t), gap))])


# -- the loopback providers' process -------------------------------------------------------


def serve_loopback(ready: Any, stop: Any) -> None:
    """Child process: the three loopback providers with realistic latencies, until
    ``stop`` is set. Puts their :class:`Endpoints` on ``ready``."""
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    asyncio.run(_serve_loopback(ready, stop))


async def _serve_loopback(ready: Any, stop: Any) -> None:
    from tests.loopback.anthropic_server import AnthropicServer
    from tests.loopback.deepgram_server import DeepgramServer
    from tests.loopback.openai_server import OpenAIServer

    stt_s, llm_s, tts_s = PROVIDER_LATENCIES_S["realistic"]
    async with DeepgramServer() as stt_server, AnthropicServer() as llm_server, \
            OpenAIServer() as tts_server:  # fmt: skip
        stt_server.options.final_after_silence_s = stt_s
        # the chain's own idea of audible (plugins.stt_chain.AUDIBLE_RMS), as bench.latency
        stt_server.options.speech_rms_threshold = 300.0
        # every connection takes the next transcript from one list: enough for any run
        stt_server.options.transcripts = [LOOPBACK_TRANSCRIPT] * 1_000_000
        llm_server.options.first_byte_delay_s = llm_s
        tts_server.options.first_byte_delay_s = tts_s
        ready.put(Endpoints(stt_server.listen_url, llm_server.base_url, tts_server.base_url))
        while not stop.is_set():
            await asyncio.sleep(0.2)
            # what the servers record of every request would grow through a long ramp
            stt_server.connections.clear()
            llm_server.message_requests.clear()
            tts_server.speech_requests.clear()


# -- a worker process --------------------------------------------------------------------


def worker_process(job: WorkerJob, results: Any, go: Any, start_at: Synchronized) -> None:  # type: ignore[type-arg]
    """Child process: prewarm as the worker does, report ready, wait for the start, run
    this process's calls, report a :class:`WorkerOutcome` (or the error)."""
    logging.basicConfig(level=logging.ERROR)
    pid = os.getpid()
    try:
        from agent.worker import prewarm

        proc = SimpleNamespace(userdata={})
        prewarm(proc)  # type: ignore[arg-type]
        results.put(("ready", pid, None))
        if not go.wait(job.ready_timeout_s):
            return
        cpu_before = _cpu_s()
        calls = asyncio.run(_run_calls(job, proc.userdata["vad"], float(start_at.value)))
        results.put(("done", pid, WorkerOutcome(calls, _cpu_s() - cpu_before, time.time())))
    except BaseException:
        results.put(("error", pid, traceback.format_exc(limit=8)))


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def _run_calls(job: WorkerJob, vad_model: Any, start_at: float) -> list[CallOutcome]:
    endpoints = job.endpoints
    settings = (
        cloud_settings(endpoints.deepgram_url, endpoints.anthropic_url, endpoints.openai_url)
        if job.stack == "cloud"
        else local_settings()
    )

    async def one(offset_s: float) -> CallOutcome:
        await asyncio.sleep(max(0.0, start_at + offset_s - time.time()))
        frames = FrameLog()
        options = dataclasses.replace(
            CALL_OPTIONS, caller_input=functools.partial(FrameLatenessProbe, log=frames)
        )
        try:
            report, _audio = await asyncio.wait_for(
                simulate_call(job.caller_pcm, settings, vad_model, options=options),
                timeout=job.call_timeout_s,
            )
        except TimeoutError:
            e2e: list[float | None] = []
            errors, fallbacks = [f"call timed out ({job.call_timeout_s:.0f} s)"], 0
        else:
            e2e = [t.end_of_speech_to_first_audio_s for t in report.turns]
            errors, fallbacks = list(report.errors), len(report.fallback_events)
        starting, steady = frames.split(start_at + STAGGER_S + SETTLE_S)
        return CallOutcome([v for v in e2e if v is not None], steady, starting, errors, fallbacks)

    return list(await asyncio.gather(*(one(o) for o in job.offsets_s)))


# -- the measuring process -----------------------------------------------------------------


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB; (0, 0) once it has gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0
    fields = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return fields.get("Rss", 0), fields.get("Pss", 0)


class MemorySampler:
    """The peak of the summed RSS and PSS of ``pids``, sampled on a thread."""

    def __init__(self, pids: Sequence[int], interval_s: float) -> None:
        self.pids = list(pids)
        self.interval_s = interval_s
        self.first_rss_kb = sum(memory_kb(pid)[0] for pid in self.pids)
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            samples = [memory_kb(pid) for pid in self.pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(rss for rss, _ in samples))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(pss for _, pss in samples))


def _process_cpu_s(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


@dataclass
class Limits:
    target_p95_s: float = TARGET_P95_S
    late_p99_s: float = LATE_P99_S
    timeout_s: float = RUN_TIMEOUT_S


@dataclass
class Rig:
    """What every run shares: how processes start, the caller, the loopback providers."""

    ctx: BaseContext
    caller_pcm: np.ndarray
    turns: int
    """Caller turns per call: the replies each call expects."""
    endpoints: Endpoints
    loopback_pid: int
    limits: Limits


def _busy_share(before: Any, after: Any) -> float:
    """The share of all cores busy (steal included) between two ``psutil.cpu_times()``."""
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(spent.values()) - spent.get("guest", 0.0) - spent.get("guest_nice", 0.0)
    idle = spent["idle"] + spent.get("iowait", 0.0)
    return (total - idle) / total if total > 0 else 0.0


def run_step(rig: Rig, mode: Mode, stack: Stack, n: int) -> RunResult:
    """N calls in ``mode``, in fresh processes; bounded by ``rig.limits.timeout_s`` from
    the first process's start to the last call's end."""
    timeout_s = rig.limits.timeout_s
    deadline = time.monotonic() + timeout_s
    offsets = [i * STAGGER_S / n for i in range(n)]
    call_timeout_s = len(rig.caller_pcm) / CALLER_SAMPLE_RATE_HZ + CALL_OPTIONS.max_tail_s + 30
    groups = {
        "shared": [offsets],
        # round robin: each process's calls start spread over the same 2 s
        "pool": [offsets[i::CPU_COUNT] for i in range(min(CPU_COUNT, n))],
        "process": [[o] for o in offsets],
    }[mode]
    ctx: Any = rig.ctx
    results, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    jobs = [
        WorkerJob(stack, rig.endpoints, rig.caller_pcm, group, call_timeout_s, timeout_s)
        for group in groups
    ]
    procs = [
        ctx.Process(target=worker_process, args=(job, results, go, start_at), daemon=True)
        for job in jobs
    ]
    result = RunResult(mode, stack, n, n * rig.turns)
    for proc in procs:
        proc.start()
    outcomes: list[WorkerOutcome] = []
    try:
        if _collect(results, "ready", len(procs), deadline, result) == len(procs):
            pids = [proc.pid for proc in procs]
            # memory from the calls' start: the prewarmed processes are the baseline
            # reading smaps_rollup costs ~10 ms a process: keep the sampler's share small
            interval_s = max(SAMPLE_INTERVAL_S, 0.1 * len(procs))
            with MemorySampler(pids, interval_s) as memory:
                loopback_cpu_s = _process_cpu_s(rig.loopback_pid)
                machine = psutil.cpu_times()
                start_at.value = time.time() + 0.2
                go.set()
                outcomes = [o for *_, o in _drain(results, "done", len(procs), deadline, result)]
                result.loopback_cpu_s = _process_cpu_s(rig.loopback_pid) - loopback_cpu_s
                result.machine_busy_share = _busy_share(machine, psutil.cpu_times())
            result.prewarmed_rss_mb = memory.first_rss_kb / 1024
            result.peak_rss_mb = memory.peak_rss_kb / 1024
            result.peak_pss_mb = memory.peak_pss_kb / 1024
    finally:
        for proc in procs:
            proc.join(timeout=1.0 if result.failure else max(1.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
    calls = [c for o in outcomes for c in o.calls]
    result.e2e_s = [v for c in calls for v in c.e2e_s]
    result.lateness_s = np.concatenate([np.zeros(0), *(c.lateness_s for c in calls)])
    starting = np.concatenate([np.zeros(0), *(c.start_lateness_s for c in calls)])
    result.start_lateness_max_s = float(starting.max()) if starting.size else 0.0
    result.errors = [e for c in calls for e in c.errors]
    result.fallbacks = sum(c.fallbacks for c in calls)
    result.cpu_s = sum(o.cpu_s for o in outcomes)
    if outcomes:
        result.wall_s = max(o.ended_at for o in outcomes) - float(start_at.value)
    if len(calls) < n and not result.failure:
        result.failure = f"{n - len(calls)} calls did not report"
    return result


def _collect(results: Any, kind: str, count: int, deadline: float, result: RunResult) -> int:
    return sum(1 for _ in _drain(results, kind, count, deadline, result))


def _drain(results: Any, kind: str, count: int, deadline: float, result: RunResult) -> Any:
    """Yield ``count`` messages of ``kind`` from the worker processes; a worker's error or
    the deadline ends the run (recorded in ``result.failure``)."""
    got = 0
    while got < count:
        try:
            msg = results.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            result.failure = f"timed out waiting for {count - got} processes ({kind})"
            return
        if msg[0] == "error":
            result.failure = "a worker process failed"
            print(f"worker {msg[1]} failed:\n{msg[2]}", file=sys.stderr)
            return
        if msg[0] == kind:
            got += 1
            yield msg


# -- the ramp ------------------------------------------------------------------------------


def ramp(
    rig: Rig, mode: Mode, stack: Stack, steps: Sequence[int]
) -> tuple[list[RunResult], str | None]:
    """Run ``steps`` in order until one fails; returns the runs and why the ramp stopped
    early (None: every step held)."""
    runs: list[RunResult] = []
    for n in steps:
        if mode == "process" and runs:
            per_call_mb = runs[-1].peak_pss_mb / runs[-1].calls
            available_mb = psutil.virtual_memory().available / 2**20
            if per_call_mb * n > MEMORY_HEADROOM * available_mb:
                return runs, (
                    f"{n} processes would need ~{per_call_mb * n:.0f} MB, more than "
                    f"{MEMORY_HEADROOM:.0%} of the {available_mb:.0f} MB available"
                )
        started = time.monotonic()
        run = run_step(rig, mode, stack, n)
        runs.append(run)
        verdict = run.verdict(rig.limits)
        print(
            f"{stack} {mode} {n} calls: P95 {_s(run.e2e_pct(95))} s, frame lateness P99 "
            f"{run.lateness_pct(99) * 1000:.0f} ms, CPU {run.cpu_share:.0%}, peak PSS "
            f"{run.peak_pss_mb:.0f} MB: {verdict or 'holds'} "
            f"({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
        )
        if verdict:
            return runs, verdict
    return runs, None


def held(runs: Sequence[RunResult], limits: Limits) -> RunResult | None:
    """The largest run that held its calls."""
    ok = [r for r in runs if r.verdict(limits) is None]
    return max(ok, key=lambda r: r.calls) if ok else None


# -- the report ----------------------------------------------------------------------------


def per_call_mb(run: RunResult, runs: Sequence[RunResult]) -> tuple[float, float] | None:
    """(RSS, PSS) MB per call: shared, what each call added to one call's process;
    pool and process, the total over N. None for one shared call (nothing added)."""
    if run.mode != "shared":
        return run.peak_rss_mb / run.calls, run.peak_pss_mb / run.calls
    base = next((r for r in runs if r.calls == 1), None)
    if base is None or run.calls == 1:
        return None
    added = run.calls - 1
    return (
        (run.peak_rss_mb - base.peak_rss_mb) / added,
        (run.peak_pss_mb - base.peak_pss_mb) / added,
    )


def render(runs: Sequence[RunResult], limits: Limits) -> str:
    lines = [
        "| stack | mode | calls | turns answered | e2e P50 s | e2e P95 s "
        "| frame lateness P99 / max ms | frames > 40 ms | while starting: max ms "
        "| worker CPU (of 2 cores) "
        "| loopback CPU | machine busy | prewarmed RSS MB | peak RSS MB | peak PSS MB "
        "| per call RSS / PSS MB | holds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        same = [r for r in runs if r.mode == run.mode and r.stack == run.stack]
        per_call = per_call_mb(run, same)
        per_call_cell = "—" if per_call is None else f"{per_call[0]:.1f} / {per_call[1]:.1f}"
        verdict = run.verdict(limits)
        lines.append(
            f"| {run.stack} | {run.mode} | {run.calls} | {len(run.e2e_s)} / "
            f"{run.expected_turns} | {_s(run.e2e_pct(50))} | {_s(run.e2e_pct(95))} | "
            f"{run.lateness_pct(99) * 1000:.0f} / {run.lateness_max_s * 1000:.0f} | "
            f"{run.late_share:.1%} | {run.start_lateness_max_s * 1000:.0f} | "
            f"{run.cpu_share:.0%} | {run.loopback_cpu_share:.0%} | "
            f"{run.machine_busy_share:.0%} | "
            f"{run.prewarmed_rss_mb:.0f} | {run.peak_rss_mb:.0f} | {run.peak_pss_mb:.0f} | "
            f"{per_call_cell} | {'yes' if verdict is None else 'no: ' + verdict} |"
        )
    return "\n".join(lines)


def headline(ramps: dict[tuple[Stack, Mode], list[RunResult]], limits: Limits) -> str:
    """The last line: the calls each way holds, and their memory."""
    target = f"P95 ≤ {limits.target_p95_s:g} s"
    pieces = []
    if (runs := ramps.get(("cloud", "shared"))) is not None:
        best = held(runs, limits)
        if best is None:
            pieces.append(f"shared process holds no cloud call within {target}")
        else:
            mb = per_call_mb(best, runs)
            per = f" at {mb[0]:.1f} MB RSS ({mb[1]:.1f} MB PSS) per added call" if mb else ""
            held_calls = _calls(best.calls, "cloud ")
            pieces.append(f"shared process holds {held_calls} within {target}{per}")
    labels: dict[Mode, str] = {
        "pool": f"pool of {CPU_COUNT} processes",
        "process": "process-per-job",
    }
    for mode, label in labels.items():
        if (runs := ramps.get(("cloud", mode))) is None:
            continue
        best = held(runs, limits)
        if best is None:
            pieces.append(f"{label}: no call held")
        else:
            rss, pss = best.peak_rss_mb / best.calls, best.peak_pss_mb / best.calls
            pieces.append(
                f"{label}: {_calls(best.calls)}, {rss:.0f} MB RSS ({pss:.0f} MB PSS) per call"
            )
    if (runs := ramps.get(("embedded", "shared"))) is not None:
        best = held(runs, limits)
        pieces.append(f"embedded: {_calls(best.calls if best else 0)}")
    return "headline: " + "; ".join(pieces)


def _calls(n: int, kind: str = "") -> str:
    return f"{n} {kind}call" + ("" if n == 1 else "s")


def _s(v: float) -> str:
    return "none" if v == float("inf") else f"{v:.3f}"


def _counts(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts >= 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=_counts, default=list(DEFAULT_STEPS), metavar="N,N,...",
        help="concurrent cloud calls to try, in order (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-calls", type=int, default=None, metavar="N", help="leave out steps above N"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES),
        help="cloud-stack modes to ramp: shared, pool, process (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--embedded-steps", type=_counts, default=list(EMBEDDED_STEPS), metavar="N,N,...",
        help="concurrent embedded calls to try in shared mode (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded stack")
    parser.add_argument(
        "--target-p95-s", type=float, default=TARGET_P95_S,
        help="a run holds while the P95 end of speech to first audio stays within this "
        "(default %(default)s s: twice stock livekit's single-call P95 on this stack)",
    )  # fmt: skip
    parser.add_argument(
        "--late-p99-s", type=float, default=LATE_P99_S,
        help="... and the P99 caller-frame lateness within this (default %(default)s s)",
    )  # fmt: skip
    parser.add_argument(
        "--run-timeout-s", type=float, default=RUN_TIMEOUT_S,
        help="bound on one run, first process start to last call end (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--turns", type=int, default=CALL_TURNS, help="caller turns per call (default %(default)s)"
    )
    parser.add_argument(
        "--reply-gap-s", type=float, default=REPLY_GAP_S,
        help="silence after each caller turn (default %(default)s s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {', '.join(MODES)}, not {args.modes!r}")
    steps = [n for n in args.steps if args.max_calls is None or n <= args.max_calls]
    if not steps:
        parser.error("no step left under --max-calls")
    if not 1 <= args.turns <= CALL_TURNS:
        parser.error(f"--turns must be 1 to {CALL_TURNS}")

    # the sessions log at INFO per call; the table is the output
    logging.basicConfig(level=logging.WARNING)
    script = CallerScript(args.turns, args.reply_gap_s)
    caller_pcm = script.audio(load_sample_audio())
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    server_ctx = multiprocessing.get_context("spawn")
    ready, stop = server_ctx.Queue(), server_ctx.Event()
    server = server_ctx.Process(target=serve_loopback, args=(ready, stop), daemon=True)
    server.start()
    ramps: dict[tuple[Stack, Mode], list[RunResult]] = {}
    stopped: dict[tuple[Stack, Mode], str | None] = {}
    limits = Limits(args.target_p95_s, args.late_p99_s, args.run_timeout_s)
    wall = time.perf_counter()
    try:
        assert server.pid is not None
        rig = Rig(ctx, caller_pcm, script.turns, ready.get(timeout=60), server.pid, limits)
        for mode in modes:
            ramps["cloud", mode], stopped["cloud", mode] = ramp(rig, mode, "cloud", steps)
        if not args.no_embedded:
            embedded = ramp(rig, "shared", "embedded", args.embedded_steps)
            ramps["embedded", "shared"], stopped["embedded", "shared"] = embedded
    finally:
        stop.set()
        server.join(timeout=5)
        if server.is_alive():
            server.kill()

    all_runs = [r for runs in ramps.values() for r in runs]
    print(render(all_runs, limits))
    print()
    for (stack, mode), reason in stopped.items():
        print(f"- {stack} {mode}: " + (f"stopped: {reason}" if reason else "every step held"))
    fallbacks = [f"{r.stack} {r.mode} {r.calls}: {r.fallbacks}" for r in all_runs if r.fallbacks]
    print(f"- provider fallbacks: {', '.join(fallbacks) or 'none'}")
    print(
        f"- each call: {script.turns} corpus turns, each followed by {script.gap_s:g} s of "
        f"silence ({len(caller_pcm) / CALLER_SAMPLE_RATE_HZ:.1f} s); N calls started over "
        f"{STAGGER_S:g} s; {CPU_COUNT} cores; wall time {time.perf_counter() - wall:.0f} s"
    )
    print()
    print(headline(ramps, limits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
