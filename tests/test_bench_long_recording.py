"""bench.long_recording: its arguments, and one tiny run end to end (a sealed recording
read, diarized and transcribed in fresh processes, the table and the headline)."""

from __future__ import annotations

import pytest

from bench import long_recording


@pytest.mark.parametrize("text", ["", "four", "4,,x", "0", "-3", "nan", "inf"])
def test_bad_minutes_are_refused(text):
    with pytest.raises(ValueError, match="minutes"):
        long_recording.parse_minutes(text)


def test_minutes_are_read():
    assert long_recording.parse_minutes("4, 30,120") == [4.0, 30.0, 120.0]


def test_a_bad_flag_stops_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        long_recording.main(["--minutes", "soon"])
    assert stopped.value.code == 2
    assert "minutes must be numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_run_prints_the_table_and_the_headline(capsys):
    assert long_recording.main(["--minutes", "0.5,1", "--transcribe-minutes", "0.5,1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in out if line.startswith("| ") and "min |" in line]
    assert len(rows) == 6  # per length: diarized; transcribed from the whole file and blocks
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[7] == "2"  # the corpus call's two speakers, found in every run
        assert cells[1] == "diarize" or int(cells[8]) > 50  # the call's words
    assert out[-1].startswith("peak RSS above the loaded models: diarize, blocks:")
