"""The sidecar's commands (``python agent.py sidecar [serve|migrate|bootstrap]``): the
parser and what each runs. ``agent.cli`` dispatches here after setting up logging; nothing
here loads livekit."""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import socket
import sys

from billing.config import SidecarConfig
from billing.settings import SidecarSettings


class SidecarCommandError(Exception):
    """A reason the command cannot run, phrased as what the operator should fix."""


def add_commands(sub: argparse._SubParsersAction, parser_class: type) -> None:  # type: ignore[type-arg]
    """Register ``sidecar`` and its sub-commands on the product's parser."""
    sidecar = sub.add_parser("sidecar", help="run the billing sidecar (HTTP API on SIDECAR_PORT)")
    commands = sidecar.add_subparsers(dest="sidecar_command", parser_class=parser_class)
    commands.add_parser("serve", help="serve the API (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser("purge-expired", help="delete recordings past their retention, once")
    erase = commands.add_parser(
        "erase-organisation",
        help="delete an organisation and everything it has here (files and every row)",
    )
    erase.add_argument("--id", required=True, type=int, help="the organisation's id")
    erase.add_argument("--confirm", required=True, help="the organisation's exact name")
    commands.add_parser(
        "rotate-recording-key",
        help="re-seal every recording under RECORDING_KEY_ID (keep the old keys until done)",
    )
    boot = commands.add_parser("bootstrap", help="create an organisation and its admin key")
    boot.add_argument("--org", required=True, help="organisation name")
    boot.add_argument("--admin-email", required=True)
    boot.add_argument("--plan", default="starter", help="plan name (default: starter)")


def run(args: argparse.Namespace, settings: SidecarSettings) -> int:
    """Run the parsed sidecar command. Raises SidecarCommandError."""
    # before alembic is imported: its plugins log at import time
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from storage.migrate import upgrade

    command = args.sidecar_command or "serve"
    config = sidecar_config(settings) if command in ("serve", "rotate-recording-key") else None
    try:
        upgrade(settings.database_url)
    except Exception as exc:  # any driver error: the operator needs the URL and the cause
        cause = getattr(exc, "orig", None) or exc
        raise SidecarCommandError(f"cannot migrate the database at DATABASE_URL ({cause})") from exc
    if command == "migrate":
        print("database is up to date")
        return 0
    if command == "bootstrap":
        return _bootstrap(args, settings)
    if command == "purge-expired":
        return _purge_expired(settings)
    if command == "erase-organisation":
        return _erase_organisation(args, settings)
    if command == "rotate-recording-key":
        assert config is not None
        return _rotate_recording_key(config)
    assert config is not None  # built above for "serve"
    return _serve(config, settings)


def sidecar_config(settings: SidecarSettings) -> SidecarConfig:
    try:
        return settings.config()
    except ValueError as exc:
        raise SidecarCommandError(
            f"sidecar configuration: {exc} (settings: SIDECAR_SERVICE_TOKEN, "
            "PAYMENT_WEBHOOK_SECRETS, NOTIFY_WEBHOOK_URL, NOTIFY_WEBHOOK_SECRET)"
        ) from exc


def check_can_serve(config: SidecarConfig, host: str, port: int) -> None:
    """Raises SidecarCommandError (one line) when the port is taken or Redis cannot be
    reached: uvicorn would log a busy port as JSON and exit 3, and an unreachable Redis
    would only show on the first admission."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SidecarCommandError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): SIDECAR_PORT is "
                "taken; choose a free port"
            ) from None
    if config.redis_url is not None:
        import redis

        client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        except redis.RedisError as exc:
            # never the URL: it may hold a password
            raise SidecarCommandError(f"cannot reach Redis at REDIS_URL ({exc})") from None
        finally:
            client.close()


def _serve(config: SidecarConfig, settings: SidecarSettings) -> int:
    import uvicorn

    from billing.api.app import create_app

    check_can_serve(config, settings.sidecar_host, settings.sidecar_port)
    app = create_app(config)
    # uvicorn handles SIGTERM: stops accepting, finishes in-flight requests, runs the
    # app's shutdown (engine and Redis closed), then re-raises the signal to the handler
    # it found; make that handler a clean exit, so a drained shutdown exits 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=settings.sidecar_host,
        port=settings.sidecar_port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    return 0


def _erase_organisation(args: argparse.Namespace, settings: SidecarSettings) -> int:
    from sqlmodel import col, select

    from billing.retention import erase_organisation
    from storage.db import make_engine
    from storage.models import Organisation

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            name = connection.execute(
                select(Organisation.name).where(col(Organisation.id) == args.id)
            ).scalar()
        if name is None:
            raise SidecarCommandError(f"no organisation {args.id}")
        if name != args.confirm:
            raise SidecarCommandError(
                f"--confirm must be the organisation's exact name ({name!r}); nothing was deleted"
            )
        removed = erase_organisation(engine, settings.data_dir / "recordings", args.id)
    finally:
        engine.dispose()
    print(", ".join(f"{count} {what}" for what, count in removed.items()))
    return 0


def _purge_expired(settings: SidecarSettings) -> int:
    from billing.retention import purge_expired_recordings
    from storage.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        deleted = purge_expired_recordings(engine, settings.data_dir / "recordings")
    finally:
        engine.dispose()
    print(f"{sum(deleted.values())} expired recording(s) deleted in {len(deleted)} organisation(s)")
    return 0


def _rotate_recording_key(config: SidecarConfig) -> int:
    """Re-seal each stored recording that is under another key, one file at a time (a
    file is replaced only once its new copy is whole; running again finishes the job)."""
    from sqlmodel import col, select

    from storage.db import make_engine, session_scope
    from storage.models import Recording
    from storage.recording_files import RecordingError, reseal

    keyring = config.recording_keyring
    if keyring is None:
        raise SidecarCommandError("rotate-recording-key needs RECORDING_KEYS and RECORDING_KEY_ID")
    counts = {"resealed": 0, "current": 0, "failed": 0}
    engine = make_engine(config.database_url)
    try:
        with session_scope(engine) as session:
            rows = session.exec(
                select(Recording).where(
                    col(Recording.key_id).is_not(None), col(Recording.deleted_at).is_(None)
                )
            ).all()
            for recording in rows:
                if recording.key_id == keyring.current:
                    counts["current"] += 1
                    continue
                path = config.recordings_dir / recording.path
                try:
                    reseal(path, keyring)
                except (RecordingError, OSError) as exc:
                    counts["failed"] += 1
                    logging.getLogger(__name__).error(
                        "recording not re-sealed",
                        extra={"recording_id": recording.id, "error": str(exc)},
                    )
                    continue
                recording.key_id = keyring.current
                recording.size_bytes = path.stat().st_size
                with path.open("rb") as f:
                    recording.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
                session.add(recording)
                session.commit()
                counts["resealed"] += 1
    finally:
        engine.dispose()
    print(
        f"{counts['resealed']} recording(s) re-sealed under {keyring.current}, "
        f"{counts['current']} already were, {counts['failed']} failed"
    )
    return 1 if counts["failed"] else 0


def _bootstrap(args: argparse.Namespace, settings: SidecarSettings) -> int:
    from billing.bootstrap import create_organisation, ensure_default_plans
    from storage.db import make_engine, session_scope

    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            ensure_default_plans(session)
            org, key = create_organisation(session, args.org, args.plan, args.admin_email)
            org_id = org.id
    except (LookupError, ValueError) as exc:
        raise SidecarCommandError(str(exc)) from exc
    finally:
        engine.dispose()
    print(f"organisation {org_id} created; admin API key (shown once): {key}")
    return 0
