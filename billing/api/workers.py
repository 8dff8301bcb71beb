"""Which workers are alive, from their heartbeats to this sidecar process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class LiveWorkers:
    """Workers seen within ``liveness_s``; thread-safe.

    With ``shared_leases`` False (no Redis), each sidecar process keeps its own leases, so
    quotas hold only if every worker talks to this one process; more than one live worker
    is worth a warning, logged once per process (not on every heartbeat).
    """

    def __init__(
        self,
        *,
        liveness_s: float,
        shared_leases: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._liveness_s = liveness_s
        self._shared_leases = shared_leases
        self._clock = clock
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._warned = False

    def heartbeat(self, worker_id: str) -> int:
        """Record that ``worker_id`` is alive; returns how many workers are."""
        with self._lock:
            now = self._clock()
            self._last_seen[worker_id] = now
            live = self._forget_dead(now)
            warn = not self._shared_leases and live > 1 and not self._warned
            self._warned = self._warned or warn
        if warn:
            logger.warning(
                "several workers but no REDIS_URL: leases are in-process, so concurrency "
                "quotas hold per sidecar process only; set REDIS_URL",
                extra={"live_workers": live},
            )
        return live

    def count(self) -> int:
        """Workers seen within the liveness window."""
        with self._lock:
            return self._forget_dead(self._clock())

    def _forget_dead(self, now: float) -> int:
        # expects self._lock held; dropping dead ids keeps the map bounded
        for worker_id in [
            w for w, seen in self._last_seen.items() if now - seen > self._liveness_s
        ]:
            del self._last_seen[worker_id]
        return len(self._last_seen)
