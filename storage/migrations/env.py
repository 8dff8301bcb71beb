"""Alembic environment: runs migrations on the URL set by ``storage.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import event, text
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a column by rebuilding its table (batch mode), and dropping a
        # table that other rows reference fails while foreign keys are enforced. Off for
        # the migration only (the pragma is a no-op inside a transaction, hence at
        # connect), and every reference checked before the transaction commits.
        event.listen(engine, "connect", _foreign_keys_off)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.execute(text("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
    engine.dispose()


def _foreign_keys_off(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


run_migrations_online()
