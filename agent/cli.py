"""The product's CLI, on top of livekit-agents' own.

``console``, ``dev``, ``start`` and ``connect`` are livekit-agents' commands, run after a
pre-flight check: livekit-agents 1.8.9 exits 0 silently when the server URL or keys are
missing, retries a closed port for minutes, and exits 0 after ~15 s without an audio
device. Here every failure to start exits non-zero with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlparse

import numpy as np
from pydantic import ValidationError
from pydantic_settings import SettingsError

from agent.dtmf import KeyPresses, parse_dtmf_script
from agent.settings import Settings
from billing.cli import add_commands as add_sidecar_commands
from billing.settings import SidecarSettings
from storage.speakers import EXPORT_FORMATS

_Settings = TypeVar("_Settings", Settings, SidecarSettings)

LIVEKIT_COMMANDS = ("console", "dev", "start", "connect")


class StartupError(Exception):
    """A reason the command cannot run, phrased as what the operator should fix."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line, not argparse's usage block: say what is wrong and where help is
        raise StartupError(f"{message} (see: python {self.prog} --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent.py", description="Real-time voice agent worker.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    console = sub.add_parser("console", help="talk to the agent with the local mic and speakers")
    console.add_argument("--text", action="store_true", help="type instead of speaking")
    console.add_argument("--input-device", help="input device id or name substring")
    console.add_argument("--output-device", help="output device id or name substring")
    console.add_argument("--list-devices", action="store_true", help="list audio devices")
    console.add_argument("--agent", type=Path, help=AGENT_HELP)

    for name, text in (
        ("dev", "run as a LiveKit worker in development mode (console when no server is set)"),
        ("start", "run as a LiveKit worker in production mode"),
        ("connect", "join one LiveKit room directly (--room NAME)"),
    ):
        sub.add_parser(name, help=text, add_help=False)

    add_sidecar_commands(sub, _Parser)

    sim = sub.add_parser("simulate", help="run a whole call from a caller recording, headless")
    sim.add_argument("--input", required=True, type=Path, help="caller audio (WAV/FLAC, any rate)")
    sim.add_argument("--output", type=Path, help="write the agent's audio to this WAV")
    sim.add_argument("--report", type=Path, help="write the call report (JSON) here")
    sim.add_argument("--start", type=float, default=0.0, help="use the recording from S seconds")
    sim.add_argument("--end", type=float, help="use the recording up to S seconds")
    sim.add_argument("--fast", action="store_true", help="feed the caller's audio unpaced")
    sim.add_argument("--no-greeting", action="store_true", help="skip the agent's greeting")
    sim.add_argument("--agent", type=Path, help=AGENT_HELP)
    sim.add_argument(
        "--sidecar",
        metavar="URL",
        type=_http_url,
        help="run the production path against this sidecar: admission, lease, metering "
        "through the outbox into its ledger (default: SIDECAR_URL; unset: unmetered)",
    )
    sim.add_argument("--agent-id", type=_positive_int, help="the sidecar's agent to call")
    sim.add_argument("--organisation-id", type=_positive_int, help="bill this organisation")
    sim.add_argument("--dialled-number", type=_phone_number, help="the number called (E.164)")
    sim.add_argument("--caller-number", type=_phone_number, help="the caller's number (E.164)")
    sim.add_argument(
        "--dtmf",
        type=_dtmf_script,
        default=[],
        metavar="t=SECONDS:KEYS[,...]",
        help='keypad presses during the call, e.g. "t=12.5:1234#" (seconds from the start)',
    )
    prov = sub.add_parser(
        "provision-sip",
        help="create or update the SIP trunks and dispatch rules a numbers file describes",
    )
    prov.add_argument("--config", required=True, type=Path, help="the numbers file (sip.yaml)")
    prov.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    diarize = sub.add_parser("diarize", help="who spoke when in an audio file, offline")
    diarize.add_argument("file", type=Path, help="WAV, FLAC, Ogg, MP3 or AIFF, any rate")
    diarize.add_argument("--speakers", type=_speaker_count, help="how many people speak (1-20)")
    diarize.add_argument(
        "--format", choices=EXPORT_FORMATS, default="rttm", help="what to print (default: rttm)"
    )
    diarize.add_argument(
        "--model-dir", type=Path, help="a pyannote pipeline directory (DIARIZATION_MODEL_DIR)"
    )
    diarize.add_argument(
        "--transcript",
        action="store_true",
        help="print the speaker-attributed transcript (English) instead of the turns",
    )
    diarize.add_argument(
        "--voiceprint",
        type=_voiceprint,
        action="append",
        default=[],
        metavar="NAME=CLIP",
        help="name the speaker whose voice matches CLIP (a few seconds of NAME); repeatable",
    )
    sub.add_parser(
        "diarize-worker",
        help="run the sidecar's diarization jobs from Redis (RQ), until stopped",
    )

    call = sub.add_parser("call", help="phone a number: the agent calls out through the trunk")
    call.add_argument("number", type=_phone_number, help="the number to call (E.164)")
    call.add_argument("--agent-id", type=_positive_int, help="the sidecar's agent that talks")
    call.add_argument("--organisation-id", type=_positive_int, help="bill this organisation")
    return parser


AGENT_HELP = "the agent profile to run (YAML; default: AGENT_PROFILE, else the built-in demo)"


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number 1..2147483647, got {text!r}")
    return int(text)


def _voiceprint(text: str) -> tuple[str, Path]:
    name, sep, clip = text.partition("=")
    if not sep or not name.strip() or not clip:
        raise argparse.ArgumentTypeError(f"NAME=CLIP (e.g. Maria=maria.wav), not {text!r}")
    if not Path(clip).is_file():
        raise argparse.ArgumentTypeError(f"{clip}: no such file")
    return name.strip(), Path(clip)


def _speaker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 20:
        raise argparse.ArgumentTypeError(f"a number of speakers from 1 to 20, not {text!r}")
    return int(text)


def _http_url(text: str) -> str:
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(
            f"must be an http(s) URL like http://127.0.0.1:8700, got {text!r}"
        )
    return text


def _phone_number(text: str) -> str:
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", text):
        raise argparse.ArgumentTypeError("must be an E.164 number like +15550100")
    return text


def _dtmf_script(text: str) -> list[KeyPresses]:
    try:
        return parse_dtmf_script(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def take_agent_option(rest: list[str]) -> tuple[Path | None, list[str]]:
    """``--agent FILE`` (or ``--agent=FILE``) out of a livekit command's arguments, which
    livekit's own parser would refuse."""
    kept: list[str] = []
    path: Path | None = None
    args = iter(rest)
    for arg in args:
        if arg == "--agent":
            value = next(args, None)
            if value is None:
                raise StartupError("--agent needs a profile file (see: python agent.py --help)", 2)
            path = Path(value)
        elif arg.startswith("--agent="):
            path = Path(arg.partition("=")[2])
        else:
            kept.append(arg)
    return path, kept


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("dev", "start", "connect"):
            # livekit-agents owns these flags; we only check the set-up before handing over
            profile_path, rest = take_agent_option(argv[1:])
            return run_livekit(argv[0], rest, with_profile(load_settings(), profile_path))
        args = build_parser().parse_args(argv)
        if args.command == "sidecar":
            return run_sidecar(args, load_settings(SidecarSettings))
        if args.command == "diarize":
            return run_diarize(args)
        if args.command == "diarize-worker":
            return run_diarize_worker(load_settings(SidecarSettings))
        settings = load_settings()
        if args.command == "console":
            _, rest = take_agent_option(argv[1:])
            return run_livekit("console", rest, with_profile(settings, args.agent))
        if args.command == "simulate":
            return run_simulate(args, settings)
        if args.command == "provision-sip":
            return asyncio.run(run_provision_sip(args, settings))
        if args.command == "call":
            return asyncio.run(run_call(args, settings))
        raise StartupError(f"unknown command {args.command!r}", 2)
    except StartupError as exc:
        one_line = " ".join(str(exc).split())  # driver errors span several lines
        print(f"error: {one_line}", file=sys.stderr)
        return exc.exit_code


def load_settings(kind: type[_Settings] = Settings) -> _Settings:  # type: ignore[assignment]
    """The worker's (or the sidecar's) settings from the environment and .env; a bad value
    is a StartupError naming it."""
    try:
        return kind()
    except ValidationError as exc:
        problems = "; ".join(
            f"{_setting_name(err['loc'])}{_shown_value(err)}: {err['msg']}" for err in exc.errors()
        )
        raise StartupError(f"invalid setting {problems}") from exc
    except SettingsError as exc:
        # a value that must be JSON (PAYMENT_WEBHOOK_SECRETS) is not; never show the value
        field = str(exc).partition('field "')[2].partition('"')[0]
        raise StartupError(f"invalid setting {field.upper()}: not valid JSON") from exc


def with_profile(settings: Settings, path: Path | None) -> Settings:
    """``settings`` running the profile at ``path`` (else ``AGENT_PROFILE``), checked now:
    a bad profile stops the command with one line naming the file and the fields. The
    path reaches livekit's job processes through the environment."""
    from agent.profile import ProfileError, local_profile

    if path is not None:
        settings = settings.model_copy(update={"agent_profile": path.resolve()})
        os.environ["AGENT_PROFILE"] = str(path.resolve())
    try:
        local_profile(settings.agent_profile)
    except ProfileError as exc:
        raise StartupError(str(exc)) from exc
    return settings


def _setting_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc).upper()


def _shown_value(err: Any) -> str:
    # never echo a secret into a terminal or a log
    secret = any(w in _setting_name(err["loc"]) for w in ("SECRET", "TOKEN", "KEY", "URL"))
    return "" if secret else f"={err.get('input')!r}"


def run_livekit(command: str, rest: list[str], settings: Settings) -> int:
    check_recording_keys(settings)
    if command == "dev" and not settings.livekit_url:
        print(
            "no LiveKit server configured (LIVEKIT_URL is not set): running the console instead",
            file=sys.stderr,
        )
        command, rest = "console", []
    if command == "console":
        if "--list-devices" not in rest:
            check_audio_devices(text_mode="--text" in rest)
    else:
        check_livekit_server(settings, command)

    from livekit.agents import cli

    from agent.health import start_health_server
    from agent.logs import mask_livekit_logging
    from agent.worker import build_server, start_sidecar_link

    sys.argv = ["agent.py", command, *rest]
    stop_health = None
    if command != "console":
        # livekit logs a busy port and exits 0: say it in one line, and fail
        check_port_free(settings.worker_http_port, "WORKER_HTTP_PORT")
        if settings.metrics_port is not None:
            check_port_free(settings.metrics_port, "METRICS_PORT")
        try:
            stop_health = start_health_server(settings)
        except OSError as exc:
            raise StartupError(f"{exc} (HEALTH_PORT: choose a free port)") from None
    console = None
    if command == "console" and "--text" not in rest and "--list-devices" not in rest:
        from agent.console_audio import install_hardened_console

        console = install_hardened_console()
    link = start_sidecar_link(settings)
    try:
        with mask_livekit_logging(settings.log_format):
            cli.run_app(build_server(settings))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if console is not None:
            print(console.audio_counters.summary(), file=sys.stderr)
        if stop_health is not None:
            stop_health.set()
        if link is not None:
            link.stop()  # the calls have drained: deliver what they metered
    return 0


def check_recording_keys(settings: Settings) -> None:
    """Raises StartupError when RECORD_CALLS is on without usable keys."""
    try:
        settings.recording_keyring()
    except ValueError as exc:
        raise StartupError(f"call recordings: {exc}") from None


def check_port_free(port: int, setting: str) -> None:
    """Raises StartupError when nothing may listen on ``port`` (the worker's own ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on port {port} ({exc.strerror or exc}): {setting} is taken; "
                "choose a free port"
            ) from None


def check_livekit_server(settings: Settings, command: str) -> None:
    """Raises StartupError unless the LiveKit server is configured and accepts connections."""
    missing = [
        name
        for name, value in (
            ("LIVEKIT_URL", settings.livekit_url),
            ("LIVEKIT_API_KEY", settings.livekit_api_key),
            ("LIVEKIT_API_SECRET", settings.livekit_api_secret.get_secret_value()),
        )
        if not value
    ]
    if missing:
        raise StartupError(
            f"`{command}` needs a LiveKit server: set {', '.join(missing)} "
            "(environment or .env; see README, 'Running against a LiveKit server')"
        )
    url = urlparse(settings.livekit_url)
    if url.scheme not in ("ws", "wss", "http", "https") or not url.hostname:
        raise StartupError(
            f"LIVEKIT_URL must look like ws://host:7880, got {settings.livekit_url!r}"
        )
    port = url.port or (443 if url.scheme in ("wss", "https") else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=3.0):
            pass
    except OSError as exc:
        raise StartupError(
            f"cannot reach the LiveKit server at {url.hostname}:{port} ({exc.strerror or exc}); "
            "is it running? (see README, 'Running against a LiveKit server')"
        ) from exc


def check_audio_devices(*, text_mode: bool) -> None:
    """Raises StartupError when the console cannot open a microphone and a speaker."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise StartupError(
            "PortAudio library not found: install it with `sudo apt-get install libportaudio2` "
            f"({exc})"
        ) from exc
    if text_mode:
        return
    try:
        sd.query_devices(kind="input")
        sd.query_devices(kind="output")
    except (sd.PortAudioError, ValueError) as exc:
        raise StartupError(
            f"no audio device for the console ({exc}): plug in a headset or start PulseAudio; "
            "without audio use `python agent.py console --text` or `python agent.py simulate`"
        ) from exc


def cut_recording(pcm: np.ndarray, start_s: float, end_s: float | None) -> np.ndarray:
    # imported here: agent.wav_io imports livekit, which `agent.py sidecar` must not load
    from agent.wav_io import CALLER_SAMPLE_RATE_HZ

    duration_s = len(pcm) / CALLER_SAMPLE_RATE_HZ
    end_s = duration_s if end_s is None else end_s
    if not (0 <= start_s < end_s <= duration_s + 1e-6):
        raise StartupError(
            f"--start/--end must satisfy 0 <= start < end <= {duration_s:.2f} s "
            f"(the recording's length), got {start_s} and {end_s}",
            2,
        )
    return pcm[int(start_s * CALLER_SAMPLE_RATE_HZ) : int(end_s * CALLER_SAMPLE_RATE_HZ)]


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from agent.logs import configure_logging
    from agent.pipeline import load_vad
    from agent.profile import local_profile
    from agent.simulate import SimulationOptions, simulate_call, write_agent_audio
    from agent.wav_io import CallerAudioError, load_caller_audio

    level = settings.log_level if settings.log_level != "INFO" else "WARNING"
    configure_logging(level, settings.log_format or "text")
    try:
        pcm = load_caller_audio(args.input)
    except CallerAudioError as exc:
        raise StartupError(str(exc)) from exc
    pcm = cut_recording(pcm, args.start, args.end)
    for target in (args.output, args.report):
        if target is not None and target.exists() and target.is_dir():
            raise StartupError(f"output path is a directory: {target}")

    settings = with_profile(settings, args.agent)
    check_recording_keys(settings)
    if args.sidecar:
        settings = settings.model_copy(update={"sidecar_url": args.sidecar})
    profile = local_profile(args.agent) if args.agent else None
    options = SimulationOptions(
        realtime=not args.fast,
        greeting=not args.no_greeting,
        agent_id=args.agent_id,
        organisation_id=args.organisation_id,
        dialled_number=args.dialled_number,
        caller_number=args.caller_number,
        dtmf=args.dtmf,
    )
    report, agent_pcm = asyncio.run(
        simulate_call(
            pcm,
            settings,
            load_vad(),
            options=options,
            input_name=str(args.input),
            profile=profile,
        )
    )
    if args.output:
        write_agent_audio(args.output, agent_pcm)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.to_json())

    for u in report.transcript:
        when = f"{u.start_s:6.2f}s" if u.start_s is not None else "      -"
        cut = " [interrupted]" if u.interrupted else ""
        print(f"{when} {u.role:>6}: {u.text}{cut}")
    for call in report.tool_calls:
        print(f"  tool {call['name']}({call['arguments']})")
    median = report.median_latency_s()
    if median is not None:
        print(
            f"median end-of-speech -> first agent audio: {median:.2f} s "
            f"over {len(report.turns)} turn(s)"
        )
    if report.billing_events_pending is not None:
        print(
            f"call {report.call_id}: {report.admission}, "
            f"{report.billing_events_pending} billing event(s) not yet delivered"
        )
    if report.recording:
        print(f"recording (encrypted): {report.recording}")
    for err in report.errors:
        print(f"  error: {err}")
    return 0 if not report.errors else 1


async def run_provision_sip(args: argparse.Namespace, settings: Settings) -> int:
    from livekit import api

    from agent.logs import configure_logging
    from agent.provisioning import Provisioner, ProvisioningError, load_config

    configure_logging(settings.log_level, settings.log_format or "text")
    try:
        config = load_config(args.config)
        check_livekit_server(settings, "provision-sip")
        lkapi = api.LiveKitAPI(
            settings.livekit_url,
            settings.livekit_api_key,
            settings.livekit_api_secret.get_secret_value(),
        )
        try:
            provisioner = Provisioner(lkapi, config, settings.agent_name)
            plan = await provisioner.plan()
            for line in plan.lines():
                print(line)
            if args.dry_run:
                print(f"dry run: {len(plan.writes)} change(s) planned, none made")
                return 0
            ids = await provisioner.apply(plan)
        except api.ServerError as exc:
            raise StartupError(f"the LiveKit server refused: {exc.message or exc.code}") from None
        finally:
            await lkapi.aclose()
    except ProvisioningError as exc:
        raise StartupError(str(exc)) from None
    print(f"{len(plan.writes)} change(s) made")
    outbound = ids.get("voice-agent:out")
    if outbound:
        print(f"SIP_OUTBOUND_TRUNK_ID={outbound}")
    return 0


async def run_call(args: argparse.Namespace, settings: Settings) -> int:
    from livekit import api

    from agent.logs import configure_logging
    from agent.telephony import SipUnavailable, place_call

    configure_logging(settings.log_level, settings.log_format or "text")
    check_livekit_server(settings, "call")
    if not settings.sip_outbound_trunk_id:
        raise StartupError(
            "`call` needs SIP_OUTBOUND_TRUNK_ID (python agent.py provision-sip prints it)"
        )
    lkapi = api.LiveKitAPI(
        settings.livekit_url,
        settings.livekit_api_key,
        settings.livekit_api_secret.get_secret_value(),
    )
    try:
        placed = await place_call(
            lkapi,
            settings,
            args.number,
            agent_id=args.agent_id,
            organisation_id=args.organisation_id,
        )
    except SipUnavailable as exc:
        raise StartupError(f"the call did not connect ({exc.status}): {exc.detail}") from None
    finally:
        await lkapi.aclose()
    print(f"answered: room {placed.room_name}, SIP call {placed.sip_call_id}")
    return 0


def run_sidecar(args: argparse.Namespace, settings: SidecarSettings) -> int:
    from agent.logs import configure_logging
    from billing.cli import SidecarCommandError, run

    configure_logging(settings.log_level, settings.log_format or "json")
    try:
        return run(args, settings)
    except SidecarCommandError as exc:
        raise StartupError(str(exc)) from exc


def run_diarize(args: argparse.Namespace) -> int:
    """One file, here and now: turns on stdout, progress on stderr."""
    from storage.diarization import (
        ENROL_MAX_S,
        DiarizationError,
        EmbeddingDiarizer,
        diarizer_for,
        identify,
    )
    from storage.speakers import attribute_words, export
    from storage.transcripts import transcribe_words
    from storage.uploads import UploadRefused, read_mono
    from storage.voice_encoder import SAMPLE_RATE_HZ

    if not args.file.is_file():
        raise StartupError(f"{args.file}: no such file")
    try:
        audio = read_mono(args.file, SAMPLE_RATE_HZ, max_seconds=DIARIZE_MAX_S)
        diarizer = diarizer_for(args.model_dir or _env_path("DIARIZATION_MODEL_DIR"))

        def progress(share: float) -> None:
            filled = int(share * 30)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}", end="", file=sys.stderr)

        share = 0.6 if args.transcript else 1.0
        step = lambda done: progress(done * share)  # noqa: E731
        if args.voiceprint:
            if not isinstance(diarizer, EmbeddingDiarizer):
                raise StartupError("--voiceprint works with the embedding diarizer only")
            prints = {
                name: diarizer.encoder.embed_utterance(
                    read_mono(clip, SAMPLE_RATE_HZ, max_seconds=ENROL_MAX_S)
                )
                for name, clip in args.voiceprint
            }
            clustered = diarizer.cluster(audio, speakers=args.speakers, progress=step)
            turns = identify(clustered, prints)
        else:
            turns = diarizer.diarize(audio, speakers=args.speakers, progress=step)
        if args.transcript:
            words = transcribe_words(audio, lambda done: progress(share + (1 - share) * done))
            turns = attribute_words(turns, words)
    except (UploadRefused, DiarizationError) as exc:
        raise StartupError(f"{args.file}: {exc}") from None
    finally:
        print(file=sys.stderr)
    sys.stdout.write(export(turns, args.format, name=args.file.stem))
    return 0


DIARIZE_MAX_S = 4 * 3600.0
"""The CLI decodes the whole file into memory (16 kHz float: 230 MB an hour)."""


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def run_diarize_worker(settings: SidecarSettings) -> int:
    """An RQ worker on the sidecar's diarization queue (needs REDIS_URL and the
    recording keys; the sidecar enqueues, this runs)."""
    import redis
    from rq import Worker

    from agent.logs import configure_logging
    from storage import diarization_jobs
    from storage.db import make_engine

    configure_logging(settings.log_level, settings.log_format or "json")
    try:
        config = settings.config()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if config.redis_url is None:
        raise StartupError("diarize-worker needs REDIS_URL (without it the sidecar runs jobs)")
    if config.recording_keyring is None:
        raise StartupError("diarize-worker needs RECORDING_KEYS to open recordings")
    connection = redis.Redis.from_url(config.redis_url)
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise StartupError(f"Redis at REDIS_URL is not reachable: {exc}") from None
    diarization_jobs.RQ_CONTEXT = diarization_jobs.JobContext(
        make_engine(config.database_url),
        config.recordings_dir,
        config.recording_keyring,
        config.diarization_model_dir,
    )
    queue = diarization_jobs.queue_name(config.key_prefix)
    Worker([queue], connection=connection).work(with_scheduler=True)
    return 0
