"""Idempotent billing events applied per second: PostgreSQL against SQLite, same run.

``CLIENTS`` threads share one engine and each applies events through its own session, one
transaction per event (as the sidecar's route does). The deliveries are ``--events``
unique events plus 30 % duplicates of them (a duplicate may arrive before its original),
spread over ``ORGANISATIONS`` organisations and shuffled with a fixed seed. Each database
gets the same deliveries, in ``ROUNDS`` alternating slices; events/s is deliveries over
the summed wall time of a database's slices. Each database is fresh: PostgreSQL gets a
database of its own (dropped afterwards), SQLite a file in a temporary folder, both
migrated. After the run the ledger is checked: one row per unique event, and every
balance down by exactly its events' prices.

Run from the repository root: ``python -m bench.billing_events [--events N]``. Prints
Markdown. ``BENCH_POSTGRES_URL`` overrides the PostgreSQL maintenance database URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import select

from billing.ledger import apply_event, balance_minor
from billing.pricing import EventDraft, price_minor
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import BillingEvent, Plan, UsageKind
from tests.billing_seed import seed_org
from tests.services import create_postgres_database, drop_postgres_database

CLIENTS = 8
ORGANISATIONS = 16
DUPLICATE_SHARE = 0.3
DEFAULT_EVENTS = 2000
ROUNDS = 4
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
    database: str
    deliveries: int
    applied: int
    wall_s: float
    latencies_s: list[float]

    @property
    def per_second(self) -> float:
        return self.deliveries / self.wall_s

    def add(self, other: Result) -> None:
        self.deliveries += other.deliveries
        self.applied += other.applied
        self.wall_s += other.wall_s
        self.latencies_s += other.latencies_s

    def percentile_ms(self, q: int) -> float:
        """The ``q``-th percentile (1..99) of one apply's latency, milliseconds."""
        return statistics.quantiles(self.latencies_s, n=100)[q - 1] * 1000


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


def run(database: str, engine: Engine, deliveries: list[EventDraft]) -> Result:
    """Apply ``deliveries`` from ``CLIENTS`` threads; one transaction per delivery."""
    lock = threading.Lock()
    queue = iter(deliveries)
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    applied = [0] * CLIENTS
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while True:
                with lock:
                    draft = next(queue, None)
                if draft is None:
                    return
                started = time.perf_counter()
                with session_scope(engine) as session:
                    applied[i] += apply_event(session, draft)[1]
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
    return Result(
        database,
        len(deliveries),
        sum(applied),
        wall_s,
        [s for per_client in latencies for s in per_client],
    )


def check(engine: Engine, deliveries: list[EventDraft]) -> None:
    """The ledger holds each unique event once and every balance is exact."""
    unique = {d.idempotency_key: d for d in deliveries}
    with session_scope(engine) as session:
        plan = session.exec(select(Plan)).first()
        assert plan is not None
        events = session.exec(select(func.count()).select_from(BillingEvent)).one()
        assert events == len(unique), f"{events} events for {len(unique)} keys"
        charged: dict[int, int] = {}
        for d in unique.values():
            charged[d.organisation_id] = charged.get(d.organisation_id, 0) + price_minor(
                plan, d.kind, d.quantity
            )
        for org, amount in charged.items():
            balance, _ = balance_minor(session, org)
            assert balance == START_BALANCE_MINOR - amount, f"organisation {org} is off"


def bench(urls: dict[str, str], events: int) -> list[Result]:
    """Run the same workload on each database, in ``ROUNDS`` alternating slices so that a
    neighbour's burst of CPU on this shared machine slows every database alike."""
    engines = {name: make_engine(url) for name, url in urls.items()}
    try:
        workloads = {}
        for name, url in urls.items():
            upgrade(url)
            workloads[name] = workload(seed(engines[name]), events, random.Random(20261122))
        results = {name: Result(name, 0, 0, 0.0, []) for name in urls}
        for round_ in range(ROUNDS):
            for name, deliveries in workloads.items():
                part = deliveries[round_::ROUNDS]
                results[name].add(run(name, engines[name], part))
        for name, deliveries in workloads.items():
            check(engines[name], deliveries)
        return list(results.values())
    finally:
        for engine in engines.values():
            engine.dispose()


def table(results: list[Result]) -> str:
    baseline = next(r for r in results if r.database == "SQLite")
    lines = [
        f"Idempotent billing events, {CLIENTS} concurrent clients, "
        f"{round(DUPLICATE_SHARE * 100)} % duplicates, {ORGANISATIONS} organisations, "
        "one transaction per event",
        "",
        "| database | deliveries | applied | events/s | x SQLite | P50 ms | P99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.database} | {r.deliveries} | {r.applied} | {r.per_second:.0f} "
            f"| {r.per_second / baseline.per_second:.2f} "
            f"| {r.percentile_ms(50):.2f} | {r.percentile_ms(99):.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="unique events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    url, name = create_postgres_database(POSTGRES_ADMIN_URL)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-billing-") as folder:
            sqlite_url = f"sqlite:///{Path(folder) / 'billing.db'}"
            results = bench({"PostgreSQL": url, "SQLite": sqlite_url}, args.events)
    finally:
        drop_postgres_database(POSTGRES_ADMIN_URL, name)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
