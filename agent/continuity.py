"""A caller whose call drops and who calls back within 5 minutes carries on the same
conversation.

When a call ends for any reason but the agent's own goodbye (``end_call``) or a refusal,
its chat context (every message and tool call, which is also all the dialogue engine's
state: it reads its slots from the history) is kept under a key made of the agent and the
caller's number (hashed: no number is stored). A new call with the same key within
``RESUME_WINDOW_S`` takes it (once) and the agent says it is picking up where it left off
instead of greeting.

Stores: a SQLite file under ``DATA_DIR`` by default (shared by the worker's job
processes, like the outbox), Redis when ``REDIS_URL`` is set (shared by every worker; the
key expires by itself).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("agent.continuity")

RESUME_WINDOW_S = 300.0
REDIS_PREFIX = "va:conversation:"


def conversation_key(agent: str, caller_number: str | None) -> str | None:
    """The key a caller's conversation with ``agent`` is kept under (None: an anonymous
    caller, whose conversation cannot be found again)."""
    if not caller_number:
        return None
    return hashlib.sha256(f"{agent}\n{caller_number}".encode()).hexdigest()


class ConversationStore(Protocol):
    def keep(self, key: str, items: list[dict[str, Any]]) -> None: ...

    def take(self, key: str) -> list[dict[str, Any]] | None: ...


class SqliteConversations:
    def __init__(
        self,
        path: Path,
        *,
        window_s: float = RESUME_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS conversations"
            " (key TEXT PRIMARY KEY, saved_at REAL NOT NULL, items TEXT NOT NULL)"
        )
        self._db.commit()
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()

    def keep(self, key: str, items: list[dict[str, Any]]) -> None:
        now = self._clock()
        with self._lock, self._db:
            self._db.execute(
                "DELETE FROM conversations WHERE saved_at < ?", (now - self._window_s,)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO conversations (key, saved_at, items) VALUES (?, ?, ?)",
                (key, now, json.dumps(items)),
            )

    def take(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT saved_at, items FROM conversations WHERE key = ?", (key,)
            ).fetchone()
            self._db.execute("DELETE FROM conversations WHERE key = ?", (key,))
        if row is None or self._clock() - row[0] > self._window_s:
            return None
        return _items(row[1])

    def close(self) -> None:
        self._db.close()


class RedisConversations:
    def __init__(self, url: str, *, window_s: float = RESUME_WINDOW_S, prefix: str = REDIS_PREFIX):
        import redis

        self._redis = redis.Redis.from_url(url)
        self._window_s = window_s
        self._prefix = prefix

    def keep(self, key: str, items: list[dict[str, Any]]) -> None:
        self._redis.set(self._prefix + key, json.dumps(items), ex=max(1, int(self._window_s)))

    def take(self, key: str) -> list[dict[str, Any]] | None:
        raw = self._redis.getdel(self._prefix + key)
        return _items(raw) if raw is not None else None

    def close(self) -> None:
        self._redis.close()


def _items(raw: str | bytes) -> list[dict[str, Any]] | None:
    try:
        items = json.loads(raw)
    except ValueError:
        log.warning("a kept conversation could not be read; starting afresh")
        return None
    return items if isinstance(items, list) else None


def conversations_for(redis_url: str, data_dir: Path) -> SqliteConversations | RedisConversations:
    """Redis when ``redis_url`` is set, else the SQLite file under ``data_dir``."""
    if redis_url:
        return RedisConversations(redis_url)
    return SqliteConversations(data_dir / "conversations.db")
