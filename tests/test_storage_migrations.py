"""The schema comes from the Alembic migrations and matches the SQLModel tables."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert
from sqlmodel import Session, SQLModel

from storage.db import make_engine, session_scope
from storage.migrate import alembic_config, upgrade
from storage.models import Organisation, Plan
from tests.billing_seed import PLAN_DEFAULTS


def test_migrations_create_exactly_the_models_schema(engine, database_url):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_upgrading_twice_changes_nothing(engine, database_url):
    upgrade(database_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0008"


def test_an_existing_database_is_upgraded_to_64_bit_money_keeping_its_rows(database_url):
    command.downgrade(alembic_config(database_url), "0001")
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            plan = Plan(**{"name": "plan-0001", **PLAN_DEFAULTS})
            session.add(plan)
            session.flush()
            # only the columns revision 0001 has (the model has grown since)
            org_id = session.execute(
                insert(Organisation.__table__)  # type: ignore[arg-type]
                .values(name="org-0001", plan_id=plan.id, currency=plan.currency,
                        balance_minor=2**31 - 1, created_at=datetime.now(UTC))
                .returning(Organisation.__table__.c.id)  # type: ignore[attr-defined]
            ).scalar_one()  # fmt: skip
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
