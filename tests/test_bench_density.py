"""bench.density: how a run is judged, how late caller frames are counted, and the whole
benchmark on a tiny ramp."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.density import (
    FrameLatenessProbe,
    FrameLog,
    Limits,
    RunResult,
    headline,
    per_call_mb,
)

ROOT = Path(__file__).resolve().parent.parent


def _run(
    calls: int,
    *,
    mode: str = "shared",
    e2e_s: list[float] | None = None,
    lateness_s: list[float] | None = None,
    rss_mb: float = 600.0,
) -> RunResult:
    return RunResult(
        mode,  # type: ignore[arg-type]
        "cloud",
        calls,
        expected_turns=4 * calls,
        e2e_s=[0.6] * 4 * calls if e2e_s is None else e2e_s,
        lateness_s=np.array(lateness_s or [0.001] * 1000),
        peak_rss_mb=rss_mb,
        peak_pss_mb=rss_mb / 2,
    )


def test_a_run_in_time_with_frames_on_time_holds() -> None:
    assert _run(2).verdict(Limits()) is None


def test_an_unanswered_turn_counts_as_infinitely_late() -> None:
    run = _run(1, e2e_s=[0.6, 0.6, 0.6])

    assert run.e2e_pct(95) == float("inf")
    assert run.verdict(Limits()) == "P95 above 1.5 s"


def test_late_caller_frames_fail_a_run_whose_replies_are_in_time() -> None:
    run = _run(2, lateness_s=[0.001] * 980 + [0.2] * 20)

    assert run.verdict(Limits(late_p99_s=0.1)) == "frames late (P99 above 100 ms)"


async def test_the_probe_counts_a_frame_the_session_asked_for_late() -> None:
    log = FrameLog()
    probe = FrameLatenessProbe(np.zeros(16_000, dtype=np.int16), log=log)
    for _ in range(3):
        await probe.__anext__()
    await asyncio.sleep(0.15)
    await probe.__anext__()

    assert max(log.lateness_s[:2]) < 0.03
    assert 0.1 < log.lateness_s[-1] < 0.3


async def test_the_probe_counts_a_stall_longer_than_the_pacer_catches_up_on() -> None:
    # after 0.2 s behind, the pacer starts a new schedule; the stall must still show
    log = FrameLog()
    probe = FrameLatenessProbe(np.zeros(16_000, dtype=np.int16), log=log)
    for _ in range(2):
        await probe.__anext__()
    await asyncio.sleep(0.35)
    await probe.__anext__()

    assert log.lateness_s[-1] > 0.3


def test_memory_per_call_is_what_a_call_adds_shared_and_the_whole_over_n_per_process() -> None:
    shared = [_run(1, rss_mb=600.0), _run(11, rss_mb=650.0)]
    process = _run(4, mode="process", rss_mb=2400.0)

    assert per_call_mb(shared[0], shared) is None
    assert per_call_mb(shared[1], shared) == pytest.approx((5.0, 2.5))
    assert per_call_mb(process, [process]) == pytest.approx((600.0, 300.0))


def test_the_headline_names_the_largest_ramp_step_that_held() -> None:
    shared = [_run(1, rss_mb=600.0), _run(11, rss_mb=650.0), _run(21, e2e_s=[2.0] * 84)]
    process = [_run(1, mode="process"), _run(5, mode="process", rss_mb=3000.0)]

    line = headline({("cloud", "shared"): shared, ("cloud", "process"): process}, Limits())

    assert line == (
        "headline: shared process holds 11 cloud calls within P95 ≤ 1.5 s at 5.0 MB RSS "
        "(2.5 MB PSS) per added call; process-per-job: 5 calls, 600 MB RSS (300 MB PSS) "
        "per call"
    )


@pytest.mark.slow
def test_a_tiny_ramp_prints_a_row_per_run_and_the_headline_last() -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.density", "--steps", "1,2", "--modes", "shared,process",
            "--no-embedded", "--turns", "1", "--reply-gap-s", "3", "--run-timeout-s", "120",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=True,
    ).stdout  # fmt: skip
    lines = out.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines
        if line.startswith("| cloud |")
    ]

    assert [(r["mode"], r["calls"]) for r in rows] == [
        ("shared", "1"),
        ("shared", "2"),
        ("process", "1"),
        ("process", "2"),
    ]
    for row in rows:
        assert row["turns answered"] == f"{row['calls']} / {row['calls']}"  # a reply a call
        assert 0.3 < float(row["e2e P50 s"]) <= float(row["e2e P95 s"]) < 1.5
        assert float(row["peak RSS MB"]) > 100  # a worker with its models
    pss = {(r["mode"], r["calls"]): float(r["peak PSS MB"]) for r in rows}
    assert pss["process", "2"] > pss["shared", "2"] + 100  # a second process's models
    assert lines[-1].startswith("headline: shared process holds 2 cloud calls within P95")
    assert "process-per-job: 2 calls" in lines[-1]
