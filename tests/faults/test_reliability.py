"""The reliability record can report failure: a scenario that lost readings, missed or doubled steps, or
stalled reads so in the table, and an expected scenario that never recorded is listed as not recorded.
Plain data: no servers."""

from __future__ import annotations

from pathlib import Path

from tests.faults.reliability import SCENARIOS, Reliability


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {name} |"))


def test_failing_scenario_shows_its_losses_in_the_table(tmp_path: Path) -> None:
    rel = Reliability()
    stalled = ["loop stalled 29.8 s"]
    rel.record(
        "broker paused 30 s", lost=7, missing=2, doubled=1, recovery_s=3.25, detail="a | b", anomalies=stalled
    )
    rel.record("redis paused 5 s", lost=0, recovery_s=0.4, detail="fine")
    rel.record_input(
        "plain text", expected="undecodable", reason="", readings=1, dead_lettered=False, detail=""
    )

    table = Reliability.load(_saved(rel, tmp_path)).markdown()

    row = _row(table, "broker paused 30 s")
    assert "| lost 7; missing 2; doubled 1; loop stalled 29.8 s | 7 | 2 | 1 | 3.25 |" in row
    assert "a \\| b" in row  # a detail cannot break the table
    assert "| survived |" in _row(table, "redis paused 5 s")
    assert "not recorded" in _row(table, "ingest SIGKILL mid-stream + restart")
    assert "got `nothing`, expected `undecodable`" in _row(table, "plain text")
    failures = rel.failures()
    assert "broker paused 30 s: lost 7; missing 2; doubled 1; loop stalled 29.8 s" in failures
    assert "plain text: got `nothing`, expected `undecodable`" in failures
    # the two bad rows, and every expected scenario but the two recorded ones as not recorded
    assert len(failures) == 2 + (len(SCENARIOS) - 2)


def test_a_clean_scenario_reads_survived() -> None:
    rel = Reliability()
    scenario = rel.record("forecaster actor killed", lost=0, recovery_s=1.0, detail="28 of 28 steps")
    assert scenario.outcome == "survived" and "forecaster actor killed: survived" not in rel.failures()


def _saved(rel: Reliability, tmp_path: Path) -> Path:
    path = tmp_path / "reliability.json"
    rel.save(path)
    return path
