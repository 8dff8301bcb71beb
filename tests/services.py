"""Real Redis and PostgreSQL for the tests.

Each fixture uses the server already running on 127.0.0.1 (Redis 6379, PostgreSQL 5432
with trust auth) when it answers, and otherwise starts its own on a free loopback port
from the installed binaries (``setup.sh`` installs them). Every run gets its own Redis key
prefix and its own PostgreSQL databases, so concurrent runs never collide.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

RUN_ID = uuid.uuid4().hex[:8]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if not found:
        pytest.fail(f"{name} not found: run ./setup.sh (it installs redis-server and postgresql)")
    return found


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """``redis://`` URL of a reachable Redis server (the machine's, or one started here)."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    if _port_open(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    port = _free_port()
    proc = subprocess.Popen(
        [_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test or run uses."""
    return f"test:{RUN_ID}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, for creating test databases."""
    if os.environ.get("TEST_POSTGRES_URL"):
        yield os.environ["TEST_POSTGRES_URL"]
        return
    if _port_open(5432):
        yield "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        return
    datadir = Path(tempfile.mkdtemp(prefix="va-pg-"))
    port = _free_port()
    user = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: use the postgres system user for the cluster
        shutil.chown(datadir, "postgres")
        user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*user, _binary("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [*user, _binary("postgres"), "-D", str(datadir), "-p", str(port), "-k", str(datadir),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, proc, "postgres")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(datadir, ignore_errors=True)


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database for one test; returns (its URL, its name)."""
    import psycopg

    name = f"va_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_database(kind: str, request: pytest.FixtureRequest, sqlite_dir: Path) -> Iterator[str]:
    """A freshly migrated, empty database of ``kind`` ("sqlite" or "postgresql"), dropped
    afterwards; yields its URL."""
    from storage.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{sqlite_dir / 'test.db'}"
        upgrade(url)
        yield url
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    url, name = create_postgres_database(admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_postgres_database(admin_url, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database: each test runs once on SQLite and once on
    PostgreSQL, with the same code and the same migrations."""
    with migrated_database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    """An engine on :func:`database_url`, disposed after the test."""
    from storage.db import make_engine

    eng = make_engine(database_url)
    yield eng
    eng.dispose()
