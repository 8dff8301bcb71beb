"""The sidecar's billing benchmarks in one run: idempotent billing events per second on
the batch path (8 concurrent clients, against a same-run ``pgbench -N``;
``bench.billing_events``), then the
admission decision's latency (Redis lease store against the in-process one;
``bench.billing_admission``). Each also runs alone with its own options.

Run from the repository root: ``python -m bench.billing [--events N] [--samples N]
[--redis-url URL]``. Needs PostgreSQL, ``pgbench`` and Redis (the test set-up's defaults).
Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import billing_admission, billing_events


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=billing_events.DEFAULT_EVENTS)
    parser.add_argument("--samples", type=int, default=billing_admission.DEFAULT_SAMPLES)
    parser.add_argument("--redis-url", default=billing_admission.DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    print("## Idempotent billing events\n")
    status = billing_events.main(["--events", str(args.events)])
    print()
    return status or billing_admission.main(
        ["--samples", str(args.samples), "--redis-url", args.redis_url]
    )


if __name__ == "__main__":
    sys.exit(main())
