"""Admission decision latency: ``AdmissionController.admit`` + ``release`` on the Redis
lease store against the in-process one, in the same run.

One organisation with one agent in a fresh SQLite database (migrated like production).
Each sample is one admit (quota query + lease) followed by its release, timed together,
one call at a time. The stores take turns in blocks so that drift of this shared machine
hits both alike; the report gives P50, P99, decisions per second and the Redis /
in-process ratio, plus the lease operations alone (acquire + release, no database) to
show how much of the decision is the store.

Run from the repository root: ``python -m bench.billing_admission [--samples N]
[--redis-url URL]``. Needs a Redis server (default ``redis://127.0.0.1:6379/0``; the keys
it writes are under a unique prefix and deleted at the end). Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from billing.admission import AdmissionController, AdmissionRequest
from storage.db import make_engine, session_scope
from storage.leases import LeaseScope, LeaseStore, MemoryLeaseStore, RedisLeaseStore
from storage.migrate import upgrade
from tests.billing_seed import seed_agent, seed_org

DEFAULT_SAMPLES = 3000
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BLOCK = 250
"""Samples per turn of one store before the other takes over."""
WARMUP = 200


@dataclass
class Timings:
    samples_s: list[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.samples_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def per_second(self) -> float:
        return len(self.samples_s) / sum(self.samples_s)


def seed_one_agent(url: str) -> int:
    """Migrate the database at ``url`` and add one organisation with one agent; its id."""
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        org, _, [admin] = seed_org(session, max_concurrent_calls=10, monthly_minutes=100_000)
        agent_id = seed_agent(session, org, admin).id
    engine.dispose()
    assert agent_id is not None
    return agent_id


def measure(operations: dict[str, Callable[[int], None]], samples: int) -> dict[str, Timings]:
    """Run each operation ``samples`` times (after a warm-up), the operations taking
    turns in blocks of :data:`BLOCK`; the operation gets the sample's number."""
    for run in operations.values():
        for i in range(WARMUP):
            run(-1 - i)
    timings = {name: Timings() for name in operations}
    done = 0
    while done < samples:
        block = range(done, min(samples, done + BLOCK))
        for name, run in operations.items():
            for i in block:
                started = time.perf_counter()
                run(i)
                timings[name].samples_s.append(time.perf_counter() - started)
        done = block.stop
    return timings


def admit_and_release(
    admissions: AdmissionController, agent_id: int, store_name: str
) -> Callable[[int], None]:
    def run(i: int) -> None:
        call_id = f"{store_name}-{i}"
        decision = admissions.admit(AdmissionRequest(call_id, agent_id=agent_id))
        if not decision.admitted or decision.lease_id is None:
            raise RuntimeError(f"bench call refused: {decision.reason}")
        admissions.release(decision.lease_id)

    return run


def acquire_and_release(store: LeaseStore, store_name: str) -> Callable[[int], None]:
    scopes = [LeaseScope("org:bench", 10)]

    def run(i: int) -> None:
        lease_id = f"lease-{store_name}-{i}"
        if store.acquire(lease_id, scopes, 30.0) is not None:
            raise RuntimeError("bench lease refused")
        store.release(lease_id)

    return run


def render(title: str, timings: dict[str, Timings], rate_label: str) -> str:
    memory, on_redis = timings["in-process"], timings["redis"]
    lines = [
        f"### {title}",
        "",
        f"| lease store | P50 ms | P99 ms | {rate_label} |",
        "|---|---:|---:|---:|",
    ]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {t.percentile_ms(0.5):.3f} | {t.percentile_ms(0.99):.3f} "
            f"| {t.per_second:,.0f} |"
        )
    p50 = on_redis.percentile_ms(0.5) / memory.percentile_ms(0.5)
    p99 = on_redis.percentile_ms(0.99) / memory.percentile_ms(0.99)
    rate = on_redis.per_second / memory.per_second
    lines.append(f"| **ratio redis / in-process** | {p50:.2f} | {p99:.2f} | {rate:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="admissions per store")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    client = redis.Redis.from_url(args.redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 1
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="va-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        agent_id = seed_one_agent(url)
        engine = make_engine(url)
        stores: dict[str, LeaseStore] = {
            "in-process": MemoryLeaseStore(),
            "redis": RedisLeaseStore(client, prefix),
        }
        try:
            decisions = measure(
                {
                    name: admit_and_release(AdmissionController(engine, store), agent_id, name)
                    for name, store in stores.items()
                },
                args.samples,
            )
            leases_alone = measure(
                {name: acquire_and_release(store, name) for name, store in stores.items()},
                args.samples,
            )
        finally:
            engine.dispose()
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()

    print(f"## Admission decisions ({args.samples} per store, SQLite, one caller at a time)\n")
    print(render("admit + release (quota query + lease)", decisions, "decisions/s"))
    print()
    print(render("lease alone (acquire + release, no database)", leases_alone, "pairs/s"))
    lease_share = statistics.median(leases_alone["in-process"].samples_s) / statistics.median(
        decisions["in-process"].samples_s
    )
    print(
        f"\nwall time {time.perf_counter() - wall:.1f} s; the in-process lease is "
        f"{lease_share:.1%} of the in-process decision's median (the rest is SQLite)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
