"""A private PulseAudio daemon with two null sinks: a virtual mic and a virtual speaker.

``mic_sink`` is where a test plays the caller (``paplay --device=mic_sink``); its monitor,
``mic_sink.monitor``, is the default source the console records from. ``spk_sink`` is the
default sink the console plays to; record it from ``spk_sink.monitor``. PortAudio reaches
the daemon through ALSA's "pulse" device (Debian ``libasound2-plugins``, a dependency of
``pulseaudio``).

Import the fixture in ``tests/conftest.py``: ``from tests.pulse import pulse_null_sinks``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MIC_SINK = "mic_sink"
SPEAKER_SINK = "spk_sink"

# client-side variables that would point libpulse (and PortAudio through ALSA) elsewhere
_FOREIGN_PULSE_VARS = ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE", "PULSE_CLIENTCONFIG")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _read_pid(runtime_dir: Path) -> int | None:
    try:
        return int((runtime_dir / "pulse" / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def start_null_sink_daemon(runtime_dir: Path) -> dict[str, str]:
    """Starts ``pulseaudio`` with its socket in ``runtime_dir``; returns the clients' env."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_PULSE_VARS}
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    # explicit, so that no client falls back to a user session's daemon
    env["PULSE_SERVER"] = f"unix:{runtime_dir / 'pulse' / 'native'}"
    cmd = [
        "pulseaudio",
        "--daemonize",
        "--exit-idle-time=-1",
        "--disallow-exit",
        "-n",  # no default.pa: only the modules below
        "--load=module-native-protocol-unix",
        f"--load=module-null-sink sink_name={MIC_SINK}",
        f"--load=module-null-sink sink_name={SPEAKER_SINK}",
        "--load=module-always-sink",
    ]
    # the daemon's cookie and state files go here, not to ~/.config/pulse
    daemon_env = {**env, "XDG_CONFIG_HOME": str(runtime_dir / "config")}
    # --daemonize returns once the daemon is up (its stderr warns when run as root)
    started = subprocess.run(cmd, env=daemon_env, capture_output=True, text=True, timeout=20)
    if started.returncode != 0:
        raise RuntimeError(
            f"pulseaudio failed to start (exit {started.returncode}): {started.stderr.strip()}"
        )
    for args in (
        ["pactl", "set-default-sink", SPEAKER_SINK],
        ["pactl", "set-default-source", f"{MIC_SINK}.monitor"],
    ):
        subprocess.run(args, env=env, capture_output=True, text=True, timeout=10, check=True)
    info = subprocess.run(
        ["pactl", "info"], env=env, capture_output=True, text=True, timeout=10, check=True
    ).stdout
    if f"Default Sink: {SPEAKER_SINK}" not in info:
        raise RuntimeError(f"pulseaudio did not take the default sink:\n{info}")
    return env


def stop_daemon(runtime_dir: Path, env: dict[str, str], *, wait_s: float = 5.0) -> None:
    """``pulseaudio --kill`` for this runtime dir, then SIGKILL its pid if it lingers."""
    pid = _read_pid(runtime_dir)
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=10)
    if pid is None:
        return
    deadline = time.monotonic() + wait_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pulse_null_sinks() -> Iterator[dict[str, str]]:
    """Environment for subprocesses that talk to a private PulseAudio with null sinks.

    Skips when PulseAudio is not installed. The daemon is killed when the test ends.
    """
    missing = [b for b in ("pulseaudio", "pactl", "paplay", "parecord") if not shutil.which(b)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not found: install the Debian packages "
            "pulseaudio pulseaudio-utils"
        )
    # short path: the daemon's unix socket path must stay under ~108 characters
    runtime_dir = Path(tempfile.mkdtemp(prefix="pulse-"))
    env: dict[str, str] = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    try:
        env = start_null_sink_daemon(runtime_dir)
        yield env
    finally:
        stop_daemon(runtime_dir, env)
        shutil.rmtree(runtime_dir, ignore_errors=True)
