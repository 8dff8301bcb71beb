"""`python agent.py console` end to end, headless: PulseAudio null sinks stand in for the
sound card, tmux for the terminal, a corpus recording for the caller.

The agent's speech is recorded from the virtual speaker and transcribed with the project's
own Whisper STT, so the test checks what a caller would hear.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import soundfile as sf
import soxr

from agent.profile import builtin_profile
from tests.hearing import share_of_words_heard, transcribe
from tests.pulse import MIC_SINK, SPEAKER_SINK, pid_alive

REPO = Path(__file__).resolve().parents[1]
SAMPLE_WAV = REPO / "tests" / "data" / "sample.wav"
# sample.stm: "Diane 12.542 14.184 This is Diane in New Jersey."
CALLER_TURN_S = (12.3, 14.5)
CALLER_WORDS = "This is Diane in New Jersey."
CALLER_RATE_HZ = 16_000

GREETING_TIMEOUT_S = 90.0  # process start + model loading + the greeting's playout
REPLY_TIMEOUT_S = 60.0  # caller turn + endpointing + STT + LLM + TTS playout
PLAYOUT_MARGIN_S = 1.0  # PulseAudio buffers after the agent marks its turn as played

# Whisper tiny is not exact on either side, so turns are compared word by word:
# - the agent, through the console's audio processing (AGC, noise suppression, echo
#   cancellation), hears "This is Diane in New Jersey." as "This is Diana New Jersey."
#   in ~4 calls of 10 and now and then as "This is Dot-In in New Jersey.";
# - re-transcribing the recorded agent misses a word in ~1 call of 10
#   ("Northwind" -> "North when", "Diana" -> "I am").
MIN_SHARE_OF_CALLER_WORDS = 0.5
MIN_SHARE_OF_AGENT_WORDS = 0.8
# how the support agent's dialogue policy picks a name out of an introduction
INTRODUCED_NAME = re.compile(r"\b(?:this is|my name is|i am|i'm)\s+((?-i:[A-Z][a-z]+))\b", re.I)

# livekit-agents logs each chat item at DEBUG once it has been played out (console only)
ASSISTANT_ITEM = re.compile(r'conversation_item_added\s*\{"role":\s*"assistant"')
CHAT_ITEM = re.compile(r"conversation_item_added\s*(\{.*\})")

GREETING = builtin_profile().greeting
CONSOLE_AUDIO_SUMMARY = re.compile(r"console audio: .*")


class Tmux:
    """A private tmux server (own socket, no user config) running one command in one pane."""

    def __init__(self, env: dict[str, str], workdir: Path, scratch: Path) -> None:
        self.socket = scratch / "tmux.sock"
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}
        self.conf = scratch / "tmux.conf"
        # keep a crashed command's last screen for the failure message
        self.conf.write_text("set-option -g remain-on-exit on\nset-option -g history-limit 5000\n")
        self.workdir = workdir

    def _tmux(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, argv: list[str]) -> None:
        started = self._tmux(
            "new-session", "-d", "-s", "agent", "-x", "200", "-y", "50",
            "-c", str(self.workdir), "--", *argv,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(f"tmux new-session failed: {started.stderr.strip()}")

    def capture(self) -> str:
        out = self._tmux("capture-pane", "-p", "-J", "-S", "-5000", "-t", "agent")
        return out.stdout if out.returncode == 0 else f"(capture-pane failed: {out.stderr})"

    def pane_dead(self) -> str | None:
        """The exit status of the pane's command once it has exited, else None."""
        out = self._tmux("display-message", "-p", "-t", "agent", "#{pane_dead} #{pane_dead_status}")
        dead, _, status = out.stdout.strip().partition(" ")
        return (status or "?") if dead == "1" else None

    def pane_pid(self) -> int | None:
        out = self._tmux("display-message", "-p", "-t", "agent", "#{pane_pid}")
        return int(out.stdout.strip()) if out.stdout.strip().isdigit() else None

    def stop(self, grace_s: float = 10.0) -> str:
        """Ctrl-C to the agent, bounded wait, then kill the server (SIGHUP to the pane).
        Returns the pane's last screen."""
        pid = self.pane_pid()
        if pid is not None and self.pane_dead() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + grace_s
            while self.pane_dead() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        last_screen = self.capture()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._tmux("kill-server")
        self.socket.unlink(missing_ok=True)
        if pid is not None:
            deadline = time.monotonic() + 5.0
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return last_screen


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, tmux: Tmux) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        status = tmux.pane_dead()
        if status is not None:
            pytest.fail(f"agent.py console exited ({status}) before {what}:\n{tmux.capture()}")
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{tmux.capture()}")


def assistant_items(tmux: Tmux) -> int:
    return len(ASSISTANT_ITEM.findall(tmux.capture()))


def chat_items(pane: str) -> list[tuple[str, str]]:
    """(role, text) of each chat item in the console's log."""
    items = []
    for match in CHAT_ITEM.finditer(pane):
        with contextlib.suppress(ValueError):
            item = json.loads(match.group(1))
            items.append((item.get("role", ""), item.get("lk.pii.text", "")))
    return items


def transcribe_wav(path: Path) -> str:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return transcribe(audio.mean(axis=1), rate)


@pytest.fixture
def caller_wav(tmp_path: Path) -> Path:
    """The caller's turn "This is Diane in New Jersey.", 16 kHz mono, from the corpus."""
    audio, rate = sf.read(SAMPLE_WAV, dtype="int16", always_2d=True)
    start, end = (int(t * rate) for t in CALLER_TURN_S)
    turn = audio[start:end, 0]
    if rate != CALLER_RATE_HZ:
        turn = soxr.resample(turn, rate, CALLER_RATE_HZ)
    path = tmp_path / "caller.wav"
    sf.write(path, turn, CALLER_RATE_HZ, subtype="PCM_16")
    return path


@pytest.fixture
def recorder(pulse_null_sinks: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """Records the virtual speaker from now on; call the returned function to stop."""
    out = tmp_path / "speaker.wav"
    with (tmp_path / "parecord.log").open("wb") as log:
        proc = subprocess.Popen(
            ["parecord", f"--device={SPEAKER_SINK}.monitor", "--file-format=wav", str(out)],
            env=pulse_null_sinks,
            stdout=log,
            stderr=log,
        )

    def stop() -> Path:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # parecord finishes the WAV header on SIGINT
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return out

    try:
        yield stop
    finally:
        stop()


@pytest.mark.console
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_console_greets_then_answers_the_caller_by_name(
    pulse_null_sinks: dict[str, str],
    recorder: Callable[[], Path],
    caller_wav: Path,
    tmp_path: Path,
) -> None:
    if not shutil.which("tmux"):
        pytest.skip("tmux not found (Debian package tmux): the console needs a terminal")
    env = {**pulse_null_sinks, "LIVEKIT_LOG_LEVEL": "DEBUG"}  # the waits read DEBUG lines
    tmux = Tmux(env, REPO, tmp_path)
    started = time.monotonic()
    try:
        tmux.start([sys.executable, "agent.py", "console"])
        wait_for("the greeting", lambda: assistant_items(tmux) >= 1, GREETING_TIMEOUT_S, tmux)
        greeted = time.monotonic()
        time.sleep(0.5)  # let the agent go back to listening

        played = subprocess.run(
            ["paplay", f"--device={MIC_SINK}", str(caller_wav)],
            env=pulse_null_sinks,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert played.returncode == 0, f"paplay failed: {played.stderr}"
        wait_for("the reply", lambda: assistant_items(tmux) >= 2, REPLY_TIMEOUT_S, tmux)
        replied = time.monotonic()
        time.sleep(PLAYOUT_MARGIN_S)
        recording = recorder()
        pane = tmux.capture()
    finally:
        recorder()
        last_screen = tmux.stop()

    heard = transcribe_wav(recording)
    items = chat_items(pane)
    said = [text for role, text in items if role == "assistant"]
    caller = " ".join(text for role, text in items if role == "user")
    context = (
        f"greeting after {greeted - started:.1f} s, reply after {replied - greeted:.1f} s; "
        f"the agent heard {caller!r} and said {said!r}; the speaker's recording says {heard!r}"
        f"\n--- console pane ---\n{pane}"
    )
    assert len(said) >= 2 and said[0] == GREETING, context
    reply = said[1]
    # the caller's turn came through the virtual mic ...
    share = share_of_words_heard(CALLER_WORDS, caller)
    assert share >= MIN_SHARE_OF_CALLER_WORDS, (
        f"the agent heard {share:.0%} of the caller; {context}"
    )
    # ... and the agent answered it by the name it heard ("Diane", most of the time)
    name = INTRODUCED_NAME.search(caller)
    assert name is None or name.group(1) in reply, f"the reply ignores the caller's name; {context}"
    # both turns came out of the virtual speaker, in order
    for turn in (GREETING, f"{GREETING} {reply}"):
        share = share_of_words_heard(turn, heard)
        assert share >= MIN_SHARE_OF_AGENT_WORDS, (
            f"the recording has only {share:.0%} of the words of {turn!r}; {context}"
        )
    # on exit the console says how its sound card fared: the streams never had to reopen
    summary = CONSOLE_AUDIO_SUMMARY.search(last_screen)
    assert summary is not None, f"no console audio summary on exit:\n{last_screen}"
    assert " 0 restart" in summary.group(0) and " 0 stream open failure" in summary.group(0)


@pytest.fixture
def no_audio_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which no PulseAudio is reachable and none can be autospawned."""
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    client_conf = tmp_path / "client.conf"
    client_conf.write_text("autospawn = no\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        XDG_RUNTIME_DIR=str(runtime_dir),
        PULSE_SERVER=f"unix:{runtime_dir / 'no-such-socket'}",
        PULSE_CLIENTCONFIG=str(client_conf),
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import sounddevice as sd; print(len(sd.query_devices()))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode == 0 and probe.stdout.strip() != "0":
        pytest.skip("this machine has a sound card: the no-device pre-flight cannot be shown")
    return env


@pytest.mark.console
@pytest.mark.timeout(60)
def test_console_without_an_audio_device_fails_fast_with_one_line(
    no_audio_env: dict[str, str],
) -> None:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "agent.py", "console"],
        cwd=REPO,
        env=no_audio_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - started
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode != 0, f"exit 0 without an audio device: {lines}"
    assert elapsed < 10, f"took {elapsed:.1f} s to fail: {lines}"
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "audio device" in lines[0], lines


@pytest.mark.console
@pytest.mark.timeout(60)
def test_dev_without_a_livekit_server_says_so_then_runs_the_console(
    no_audio_env: dict[str, str],
) -> None:
    env = {k: v for k, v in no_audio_env.items() if not k.startswith("LIVEKIT_")}
    run = subprocess.run(
        [sys.executable, "agent.py", "dev"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    # here the console then stops at its own pre-flight: no audio device
    assert lines[0] == (
        "no LiveKit server configured (LIVEKIT_URL is not set): running the console instead"
    )
    assert len(lines) == 2 and lines[1].startswith("error: no audio device"), lines
    assert run.returncode == 1
