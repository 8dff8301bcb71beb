"""The schema comes from the Alembic migrations and matches the SQLModel tables."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel

from storage.db import make_engine, session_scope
from storage.migrate import alembic_config, upgrade
from storage.models import Organisation
from tests.billing_seed import seed_org


def test_migrations_create_exactly_the_models_schema(engine, database_url):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_upgrading_twice_changes_nothing(engine, database_url):
    upgrade(database_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0005"


def test_an_existing_database_is_upgraded_to_64_bit_money_keeping_its_rows(database_url):
    command.downgrade(alembic_config(database_url), "0001")
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            org, _, _ = seed_org(session, balance_minor=2**31 - 1)
            org_id = org.id
        upgrade(database_url)
        with session_scope(engine) as session:
            stored = session.get(Organisation, org_id)
            assert stored is not None and stored.balance_minor == 2**31 - 1
            stored.balance_minor = 2**40  # refused by a 32-bit column on PostgreSQL
        with Session(engine) as session:
            stored = session.get(Organisation, org_id)
            assert stored is not None and stored.balance_minor == 2**40
    finally:
        engine.dispose()
