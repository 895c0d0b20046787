"""The fault suite's own servers and its record.

Faults tests pause their broker and Redis (SIGSTOP), so they get an `EmbeddedRuntime` of their own
(`faults_runtime`) instead of the session one other tests share. Every scenario records what it measured
with `reliability.record(...)` before asserting. At the end of the session the record is saved as JSON
to the path in `SENSORCAST_RELIABILITY_OUT` when that is set (`python benchmarks/reliability.py` sets it
and writes `docs/RELIABILITY.md` from it), otherwise into pytest's temporary folder: a test run never
writes into the repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from tests.conftest import settings_for
from tests.faults.reliability import OUT_ENV, Reliability


@pytest.fixture(scope="session")
def reliability(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reliability]:
    record = Reliability()
    yield record
    if record.scenarios or record.inputs:
        asked = os.environ.get(OUT_ENV)
        record.save(Path(asked) if asked else tmp_path_factory.getbasetemp() / "reliability.json")


@pytest.fixture(scope="session")
def faults_runtime() -> Iterator[EmbeddedRuntime]:
    """A broker and Redis of the fault suite's own: pausing them disturbs no other test."""
    with EmbeddedRuntime() as rt:
        yield rt


@pytest.fixture
def fault_settings(faults_runtime: EmbeddedRuntime, tmp_path: Path) -> Settings:
    """Like `fresh_settings`, against the fault suite's servers."""
    return settings_for(faults_runtime, tmp_path)
