"""A dropped caller who calls back within 5 minutes carries on the same conversation:
the stores (SQLite by default, Redis when configured) and a whole call twice over."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agent.continuity import (
    RedisConversations,
    SqliteConversations,
    conversation_key,
)

ITEMS = [{"type": "message", "role": "user", "content": ["my bill"], "id": "m1"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_key_needs_a_caller_and_holds_no_number():
    assert conversation_key("Northwind", None) is None
    key = conversation_key("Northwind", "+15550100")
    assert key and "5550100" not in key
    assert key != conversation_key("Clinic", "+15550100")


def test_a_kept_conversation_is_taken_once_within_the_window(tmp_path: Path):
    clock = Clock()
    store = SqliteConversations(tmp_path / "c.db", clock=clock)
    store.keep("k", ITEMS)
    clock.now += 299
    assert store.take("k") == ITEMS
    assert store.take("k") is None  # picked up once


def test_a_conversation_older_than_the_window_is_gone(tmp_path: Path):
    clock = Clock()
    store = SqliteConversations(tmp_path / "c.db", clock=clock)
    store.keep("k", ITEMS)
    clock.now += 301
    assert store.take("k") is None


def test_a_damaged_kept_conversation_starts_afresh(tmp_path: Path):
    store = SqliteConversations(tmp_path / "c.db")
    store.keep("k", ITEMS)
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("UPDATE conversations SET items = '{not json'")
    assert store.take("k") is None


def test_redis_keeps_it_for_every_worker(redis_server_url: str, redis_prefix: str):
    store = RedisConversations(redis_server_url, window_s=300, prefix=redis_prefix)
    store.keep("k", ITEMS)
    other_worker = RedisConversations(redis_server_url, prefix=redis_prefix)
    assert other_worker.take("k") == ITEMS
    assert store.take("k") is None
    store.close()
    other_worker.close()


@pytest.mark.slow
async def test_a_caller_who_drops_and_calls_back_carries_on(vad_model, piper_caller, tmp_path):
    from agent.profile import RESUME_LINE
    from agent.settings import Settings
    from agent.simulate import SimulationOptions, simulate_call
    from tests.conftest import silence

    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    options = SimulationOptions(greeting=False, caller_number="+15550100", quiet_after_s=2.0)
    first = np.concatenate([piper_caller("I have a question about my bill."), silence(6.0)])
    report, _ = await simulate_call(first, settings, vad_model, options=options)
    assert "account number" in report.turns[0].agent_text  # ... and the line drops

    back = np.concatenate(
        [piper_caller("My account number is one two three four five six."), silence(6.0)]
    )
    options = SimulationOptions(greeting=True, caller_number="+15550100", quiet_after_s=2.0)
    report, _ = await simulate_call(back, settings, vad_model, options=options)
    agent = [u.text for u in report.transcript if u.role == "agent"]
    assert agent[0].startswith(RESUME_LINE) and "account number" in agent[0], agent
    assert report.tool_calls and report.tool_calls[0]["name"] == "billing_summary", report.to_json()
    assert report.tool_calls[0]["arguments"] == {"account_number": "123456"}
