"""Database engines and sessions: SQLite by default, PostgreSQL via ``DATABASE_URL``.

One session per request or task, never shared between concurrent tasks: a session is one
connection's unit of work, and SQLAlchemy sessions are not safe to use concurrently.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

DEFAULT_DATABASE_URL = "sqlite:///data/voice_agent.db"


def make_engine(url: str = DEFAULT_DATABASE_URL) -> Engine:
    """An engine for ``url``; for a SQLite file, its folder is created and the connection
    set up for concurrent use (WAL, a busy timeout, foreign keys enforced)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # BEGIN IMMEDIATE: take the write lock at the start of a transaction, so two
        # read-then-write transactions cannot deadlock upgrading their locks
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # the driver's own transaction handling is replaced by the "begin" listener above
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
