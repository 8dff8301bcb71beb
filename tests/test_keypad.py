"""Keypad input and the STT confidence gate: the DTMF collector (entries end with # or a
timeout, * starts again), the --dtmf script, the gate's verdicts, and a whole call whose
caller cannot be understood: asked to repeat, offered the keypad, heard through it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.dtmf import DtmfCollector, KeyPresses, parse_dtmf_script
from agent.profile import KEYPAD_LINE, REPEAT_LINE
from plugins.confidence_gate import ConfidenceGate


def collect(keys: str, *, max_digits: int = 32) -> list[str]:
    async def run() -> list[str]:
        entries: list[str] = []
        collector = DtmfCollector(entries.append, timeout_s=60, max_digits=max_digits)
        for key in keys:
            collector.press(key)
        collector.close()
        return entries

    return asyncio.run(run())


def model(keys: str, max_digits: int) -> list[str]:
    entries, typed = [], ""
    for key in keys:
        if key == "#":
            if typed:
                entries.append(typed)
            typed = ""
        elif key == "*":
            typed = ""
        else:
            typed += key
            if len(typed) >= max_digits:
                entries.append(typed)
                typed = ""
    return entries


@given(st.text(alphabet="0123456789*#", max_size=40), st.integers(min_value=1, max_value=8))
def test_entries_are_the_digits_between_hashes(keys, max_digits):
    assert collect(keys, max_digits=max_digits) == model(keys, max_digits)


async def test_an_entry_ends_when_no_key_comes_for_the_timeout():
    entries: list[str] = []
    done = asyncio.Event()
    collector = DtmfCollector(lambda e: (entries.append(e), done.set()), timeout_s=0.05)
    for key in "123":
        collector.press(key)
    await asyncio.wait_for(done.wait(), 2)
    assert entries == ["123"] and collector.typed == ""


@pytest.mark.parametrize("key", ["", "a", "12", "##", " "])
async def test_a_key_that_is_not_on_a_keypad_is_refused(key):
    collector = DtmfCollector(lambda e: None)
    with pytest.raises(ValueError, match="not a keypad key"):
        collector.press(key)


def test_the_dtmf_script_is_parsed():
    assert parse_dtmf_script("t=12.5:1234#, t=30:0*9#") == [
        KeyPresses(12.5, "1234#"),
        KeyPresses(30.0, "0*9#"),
    ]


@pytest.mark.parametrize("text", ["", "1234#", "t=:1#", "t=1:", "t=1:12a", "t=-1:1", "t=1:1,"])
def test_a_bad_dtmf_script_names_the_bad_part(text):
    with pytest.raises(ValueError, match="bad DTMF entry"):
        parse_dtmf_script(text)


def test_the_gate_asks_twice_then_offers_the_keypad_and_a_pass_resets_it():
    gate = ConfidenceGate({"deepgram": 0.6, "local": 0.4})
    assert [gate.judge(0.3, "local") for _ in range(3)] == ["repeat", "repeat", "keypad"]
    assert gate.judge(0.5, "deepgram") == "repeat"
    assert gate.judge(0.5, "local") == "pass" and gate.misses == 0
    assert gate.threshold("elsewhere") == 0.6


@pytest.mark.parametrize("bad", [{"local": 1.5}, {"local": -0.1}])
def test_a_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="within 0-1"):
        ConfidenceGate(bad)


def test_a_bad_confidence_setting_is_refused(monkeypatch):
    from pydantic import ValidationError

    from agent.settings import Settings

    monkeypatch.setenv("STT_MIN_CONFIDENCE", '{"local": 2}')
    with pytest.raises(ValidationError, match="stt_min_confidence"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.slow
async def test_a_caller_who_cannot_be_understood_is_heard_through_the_keypad(
    vad_model, piper_caller
):
    """Every transcript is held back (the threshold set above any confidence): the agent
    asks twice to repeat, then offers the keypad; the digits typed are the caller's turn."""
    from agent.settings import Settings
    from agent.simulate import SimulationOptions, simulate_call
    from tests.conftest import silence

    settings = Settings(_env_file=None, stt_min_confidence={"local": 1.0})  # type: ignore[call-arg]
    line = piper_caller("I have a question about my bill.")
    caller = np.concatenate([line, silence(5.0), line, silence(5.0), line, silence(20.0)])
    options = SimulationOptions(greeting=False, quiet_after_s=3.0)
    # typed once the keypad has been offered (three lines of ~2 s, 5 s apart, and the
    # offer itself, ~5 s), while the caller's audio still runs
    options.dtmf = [KeyPresses(25.0, "654321#")]
    report, _ = await simulate_call(caller, settings, vad_model, options=options)
    agent = [u.text for u in report.transcript if u.role == "agent"]
    assert agent[:3] == [REPEAT_LINE, REPEAT_LINE, KEYPAD_LINE], agent
    callers = [u.text for u in report.transcript if u.role == "caller"]
    assert callers == ["654321"], callers
    assert len(agent) == 4, "the keypad entry was answered"
