"""Idempotent billing events applied per second on the sidecar's batch path, against a
same-run ``pgbench -N`` on the same PostgreSQL server.

``CLIENTS`` threads share one engine; each takes the next ``--batch`` deliveries (100, the
worker outbox's batch) and applies them in one transaction with
``billing.ledger.apply_event_batch``, as ``POST /internal/billing-events`` does. The
deliveries are ``--events`` unique events plus 30 % duplicates of them (a duplicate may
arrive before its original, or in a concurrent batch), spread over ``ORGANISATIONS``
organisations and shuffled with a fixed seed. Rows: PostgreSQL and SQLite on the batch
path, and PostgreSQL one event per transaction (the path before batches, for scale). Each
row gets its own organisations and the same number of deliveries, in ``ROUNDS``
alternating slices, so a neighbour's burst of CPU on this shared machine slows every row
alike; ``pgbench -N`` (simple updates, ``CLIENTS`` clients) runs between the rounds, and
its transactions/s is the baseline the ratio column divides by. After the run the
ledger is checked: one row per unique event and every balance down by exactly its
events' prices.

Run from the repository root: ``python -m bench.billing_events [--events N] [--batch N]``.
Prints Markdown, the headline on the last line. ``BENCH_POSTGRES_URL`` overrides the
PostgreSQL maintenance database URL; ``pgbench`` must be on the PATH (Debian's
postgresql-client).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import Engine, func
from sqlmodel import Session, select

from billing.ledger import apply_event, apply_event_batch, balance_minor
from billing.pricing import EventDraft, price_minor
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import BillingEvent, Organisation, Plan, UsageKind
from tests.billing_seed import seed_org
from tests.services import create_postgres_database, drop_postgres_database

CLIENTS = 8
ORGANISATIONS = 16
DUPLICATE_SHARE = 0.3
DEFAULT_EVENTS = 6000
DEFAULT_BATCH = 100
ROUNDS = 4
PGBENCH_SECONDS = 5
START_BALANCE_MINOR = 10**9
PRICES: dict[str, Any] = {
    "price_per_minute_minor": 100,
    "price_per_stt_minute_minor": 30,
    "price_per_1k_llm_input_tokens_minor": 5,
    "price_per_1k_llm_output_tokens_minor": 15,
    "price_per_1k_tts_characters_minor": 20,
}
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Result:
    name: str
    batch: int
    deliveries: int = 0
    applied: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    """One per transaction (a batch, or one event)."""

    @property
    def per_second(self) -> float:
        return self.deliveries / self.wall_s

    def percentile_ms(self, q: int) -> float:
        """The ``q``-th percentile (1..99) of one transaction's latency, milliseconds."""
        return statistics.quantiles(self.latencies_s, n=100)[q - 1] * 1000


@dataclass
class Row:
    """One configuration: a database, a batch size, its own organisations and workload."""

    result: Result
    engine: Engine
    deliveries: list[EventDraft]


def seed(engine: Engine) -> list[int]:
    with session_scope(engine) as session:
        orgs = [
            seed_org(session, admins=0, balance_minor=START_BALANCE_MINOR, **PRICES)[0]
            for _ in range(ORGANISATIONS)
        ]
        return [org.id for org in orgs if org.id is not None]


def workload(org_ids: Sequence[int], events: int, rng: random.Random) -> list[EventDraft]:
    """``events`` unique drafts and ``DUPLICATE_SHARE`` of all deliveries as repeats."""
    kinds = list(UsageKind)
    unique = []
    for i in range(events):
        org = rng.choice(org_ids)
        call_id = f"bench-{org}-{i // len(kinds)}"
        kind = kinds[i % len(kinds)]
        unique.append(
            EventDraft(f"{call_id}:{kind}:0", org, call_id, kind, rng.randint(1, 100_000))
        )
    repeats = round(events * DUPLICATE_SHARE / (1 - DUPLICATE_SHARE))
    deliveries = unique + [rng.choice(unique) for _ in range(repeats)]
    rng.shuffle(deliveries)
    return deliveries


def _apply_batch(engine: Engine, batch: list[EventDraft]) -> int:
    with session_scope(engine) as session:
        return sum(o.created for o in apply_event_batch(session, batch))


def _apply_one(engine: Engine, batch: list[EventDraft]) -> int:
    (draft,) = batch
    with session_scope(engine) as session:
        return int(apply_event(session, draft)[1])


def run(row: Row, part: list[EventDraft]) -> None:
    """Apply ``part`` from ``CLIENTS`` threads, ``row.result.batch`` per transaction."""
    size = row.result.batch
    apply: Callable[[Engine, list[EventDraft]], int] = _apply_batch if size > 1 else _apply_one
    batches = iter([part[i : i + size] for i in range(0, len(part), size)])
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    applied = [0] * CLIENTS
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while True:
                with lock:
                    batch = next(batches, None)
                if batch is None:
                    return
                started = time.perf_counter()
                applied[i] += apply(row.engine, batch)
                latencies[i].append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    row.result.deliveries += len(part)
    row.result.applied += sum(applied)
    row.result.wall_s += wall_s
    row.result.latencies_s += [s for per_client in latencies for s in per_client]


def check(row: Row) -> None:
    """The ledger holds each unique event once and every balance is exact."""
    unique = {d.idempotency_key: d for d in row.deliveries}
    orgs = {d.organisation_id for d in unique.values()}
    with Session(row.engine) as session:
        events = session.exec(
            select(func.count())
            .select_from(BillingEvent)
            .where(BillingEvent.organisation_id.in_(orgs))  # type: ignore[attr-defined]
        ).one()
        assert events == len(unique), f"{row.result.name}: {events} events for {len(unique)} keys"
        assert row.result.applied == len(unique), f"{row.result.name}: applied count is off"
        charged: dict[int, int] = {}
        for d in unique.values():
            org = session.get(Organisation, d.organisation_id)
            assert org is not None
            plan = session.get(Plan, org.plan_id)
            assert plan is not None
            charged[d.organisation_id] = charged.get(d.organisation_id, 0) + price_minor(
                plan, d.kind, d.quantity
            )
        for org_id, amount in charged.items():
            balance, _ = balance_minor(session, org_id)
            assert balance == START_BALANCE_MINOR - amount, f"organisation {org_id} is off"


def pgbench_tps(database_url: str) -> float:
    """Transactions/s of ``pgbench -N`` with ``CLIENTS`` clients on ``database_url``'s
    server (in a database of its own, initialised and dropped here)."""
    binary = shutil.which("pgbench")
    if binary is None:
        raise SystemExit("pgbench is not on the PATH (Debian: apt install postgresql-client)")
    admin = urlparse(database_url.replace("postgresql+psycopg://", "postgresql://"))
    url, name = create_postgres_database(POSTGRES_ADMIN_URL)
    try:
        target = [
            "-h", admin.hostname or "127.0.0.1", "-p", str(admin.port or 5432),
            "-U", admin.username or "postgres", name,
        ]  # fmt: skip
        subprocess.run([binary, "-i", "-q", *target], check=True, capture_output=True)
        out = subprocess.run(
            [binary, "-N", "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(PGBENCH_SECONDS),
             *target],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        drop_postgres_database(POSTGRES_ADMIN_URL, name)
    match = re.search(r"tps = ([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output: {out}")
    return float(match.group(1))


def bench(urls: dict[str, str], events: int, batch: int) -> tuple[list[Result], list[float]]:
    engines = {name: make_engine(url) for name, url in urls.items()}
    try:
        for url in urls.values():
            upgrade(url)
        configs = [
            (f"PostgreSQL, {batch} per transaction", "PostgreSQL", batch),
            ("PostgreSQL, 1 per transaction", "PostgreSQL", 1),
            (f"SQLite, {batch} per transaction", "SQLite", batch),
        ]
        rows = []
        for i, (name, database, size) in enumerate(configs):
            engine = engines[database]
            deliveries = workload(seed(engine), events, random.Random(20261201 + i))
            rows.append(Row(Result(name, size), engine, deliveries))
        pgbench: list[float] = []
        for round_ in range(ROUNDS):
            for row in rows:
                run(row, row.deliveries[round_::ROUNDS])
            if round_ % 2 == 0:
                pgbench.append(pgbench_tps(urls["PostgreSQL"]))
        for row in rows:
            check(row)
        return [row.result for row in rows], pgbench
    finally:
        for engine in engines.values():
            engine.dispose()


def table(results: list[Result], pgbench: list[float]) -> str:
    baseline = statistics.median(pgbench)
    lines = [
        f"Idempotent billing events, {CLIENTS} concurrent clients, "
        f"{round(DUPLICATE_SHARE * 100)} % duplicates, {ORGANISATIONS} organisations; "
        f"baseline `pgbench -N -c {CLIENTS}` on the same server, same run: "
        f"{baseline:.0f} transactions/s (median of {len(pgbench)})",
        "",
        "| path | deliveries | applied | events/s | x pgbench -N | P50 ms | P99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.deliveries} | {r.applied} | {r.per_second:.0f} "
            f"| {r.per_second / baseline:.2f} "
            f"| {r.percentile_ms(50):.2f} | {r.percentile_ms(99):.2f} |"
        )
    head = results[0]
    lines += [
        "",
        f"Batch path on PostgreSQL: {head.per_second:.0f} events/s with {CLIENTS} clients, "
        f"{head.per_second / baseline:.2f} x pgbench -N",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="unique events")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per batch")
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch < 2:
        parser.error("--events must be at least 1 and --batch at least 2")
    logging.basicConfig(level=logging.WARNING)
    url, name = create_postgres_database(POSTGRES_ADMIN_URL)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-billing-") as folder:
            sqlite_url = f"sqlite:///{Path(folder) / 'billing.db'}"
            results, pgbench = bench(
                {"PostgreSQL": url, "SQLite": sqlite_url}, args.events, args.batch
            )
    finally:
        drop_postgres_database(POSTGRES_ADMIN_URL, name)
    print(table(results, pgbench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
