"""The Parquet archive: round trip, idempotent appends, restart, crash safety, the late log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stream.archive import Archive
from stream.network import Network
from stream.window import LateReading, SealedStep

STEP = 300_000
DAY = 86_400_000
T0 = 1_700_000_000_000 // DAY * DAY + DAY - 10 * STEP  # ten steps before a UTC midnight
NET = Network.simple("arch", 4, ["speed", "flow"], step_ms=STEP)


def steps(n: int, start: int = T0, seed: int = 0) -> list[SealedStep]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = rng.normal(50, 10, (4, 2)).astype(np.float32)  # [N, F]
        values[0, 1] = np.nan  # never observed
        mask = (rng.random((4, 2)) > 0.3).astype(np.uint8)
        mask[0, 1] = 0
        out.append(SealedStep(start + i * STEP, values, mask, int(mask.sum())))
    return out


def test_round_trip_in_network_order_and_day_partitions(tmp_path: Path) -> None:
    archive = Archive(tmp_path, NET)
    assert archive.last_step() is None
    data = steps(25)
    archive.append(data)
    ts, values, mask = archive.read()
    assert ts.dtype == np.int64 and values.dtype == np.float32 and mask.dtype == np.uint8
    assert ts.tolist() == [s.step_ts for s in data]
    assert values.shape == (25, 4, 2)  # [T, N, F]
    assert np.array_equal(values, np.stack([s.values for s in data]), equal_nan=True)
    assert np.array_equal(mask, np.stack([s.mask for s in data]))
    days = sorted(p.parent.name for p in (tmp_path / "steps").rglob("part-*.parquet"))
    assert len(days) == 2 and days[0] < days[1] and all(d.startswith("date=") for d in days)
    # a time range, end exclusive
    ts, values, _ = archive.read(data[5].step_ts, data[12].step_ts)
    assert ts.tolist() == [s.step_ts for s in data[5:12]]
    assert np.array_equal(values, np.stack([s.values for s in data[5:12]]), equal_nan=True)
    assert archive.read(0, 1)[0].shape == (0,)


def test_pandas_reads_the_long_format(tmp_path: Path) -> None:
    archive = Archive(tmp_path, NET)
    data = steps(3)
    archive.append(data)
    frame = pd.read_parquet(tmp_path / "steps")
    assert len(frame) == 3 * 4 * 2
    assert {"step_ts", "sensor", "feature", "value", "observed"} <= set(frame.columns)
    assert frame["step_ts"].dtype == np.int64 and frame["value"].dtype == np.float32
    assert frame["observed"].dtype == bool
    row = frame[(frame.step_ts == data[1].step_ts) & (frame.sensor == "s0002") & (frame.feature == "flow")]
    assert row["value"].item() == data[1].values[2, 1]
    assert row["observed"].item() == bool(data[1].mask[2, 1])


def test_append_is_idempotent_and_last_step_survives_restart(tmp_path: Path) -> None:
    archive = Archive(tmp_path, NET)
    data = steps(12)
    archive.append(data[:8])
    archive.append(data[:8])  # replayed after a crash
    archive.append(data[5:12])  # overlapping: only 8..11 are new
    archive.append([])
    files = sorted((tmp_path / "steps").rglob("*.parquet"))
    reopened = Archive(tmp_path, NET)
    assert reopened.last_step() == data[-1].step_ts
    reopened.append(data)
    assert sorted((tmp_path / "steps").rglob("*.parquet")) == files
    ts, values, _ = reopened.read()
    assert ts.tolist() == [s.step_ts for s in data]
    assert np.array_equal(values, np.stack([s.values for s in data]), equal_nan=True)


def test_network_changes_are_tolerated_on_read(tmp_path: Path) -> None:
    Archive(tmp_path, NET).append(steps(2))
    grown = Network.simple("arch", ["s0003", "s0000", "new"], ["flow", "speed", "occ"], step_ms=STEP)
    _, values, mask = Archive(tmp_path, grown).read()
    original = np.stack([s.values for s in steps(2)])
    assert values.shape == (2, 3, 3)
    assert np.array_equal(values[:, 0, 1], original[:, 3, 0])  # s0003 speed
    assert np.isnan(values[:, 2]).all() and mask[:, 2].sum() == 0


def test_leftover_temp_file_is_invisible_and_cleaned(tmp_path: Path) -> None:
    archive = Archive(tmp_path, NET)
    archive.append(steps(3))
    day = next((tmp_path / "steps").iterdir())
    tmp = day / ".part-1-2.parquet.dead.tmp"
    tmp.write_bytes(b"PAR1 half a file")  # what a crash mid-write leaves
    assert len(pd.read_parquet(tmp_path / "steps")) == 3 * 8
    reopened = Archive(tmp_path, NET)
    assert tmp.exists(), "a reader must not delete temp files: they may be a live writer's"
    assert reopened.last_step() == steps(3)[-1].step_ts
    reopened.append([])  # the next writer cleans up before its first write
    assert not tmp.exists()


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from stream.archive import Archive
    from stream.network import Network
    from stream.window import SealedStep
    net = Network.simple("arch", 200, ["speed", "flow"], step_ms=300_000)
    archive = Archive(sys.argv[1], net)
    t = 1_700_000_000_000 // 300_000 * 300_000
    print("ready", flush=True)
    for i in range(100_000):
        s = SealedStep(t + i * 300_000, np.full((200, 2), i, np.float32), np.ones((200, 2), np.uint8), 400)
        archive.append([s])
    """
)


def test_crash_mid_append_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """SIGKILL a writer at random moments; every visible file must be whole and consistent."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for path in (tmp_path / "steps").rglob("part-*.parquet"):
            assert pq.read_table(path).num_rows % 400 == 0  # readable, whole steps
        archive = Archive(tmp_path, Network.simple("arch", 200, ["speed", "flow"], step_ms=STEP))
        archive.append([])  # a restarted writer removes what the killed one left
        assert not list((tmp_path / "steps").rglob(".*.tmp"))
        ts, values, _ = archive.read()
        if len(ts):
            assert np.all(np.diff(ts) == STEP)  # restarts resumed after last_step: no holes, no repeats
            assert np.array_equal(values[:, 0, 0], np.arange(len(ts), dtype=np.float32))


def test_late_log_round_trip(tmp_path: Path) -> None:
    archive = Archive(tmp_path, NET)
    assert list(archive.read_late().columns) == [
        "sensor",
        "feature",
        "ts",
        "value",
        "step_ts",
        "partition",
        "offset",
    ]
    late = [
        LateReading(1, 0, T0 + 5, 3.5, T0, 0, 11),
        LateReading(3, 1, T0 + 11 * STEP + 1, 7.0, T0 + 11 * STEP, 2, 12),  # next UTC day
    ]
    archive.append_late(late)
    archive.append_late([LateReading(0, 0, T0 + 7, 1.0, T0, 1, 5)])
    archive.append_late([])
    frame = archive.read_late()
    assert frame["sensor"].tolist() == ["s0001", "s0000", "s0003"]
    assert frame["feature"].tolist() == ["speed", "speed", "flow"]
    assert frame["ts"].tolist() == [T0 + 5, T0 + 7, T0 + 11 * STEP + 1]
    assert frame["value"].tolist() == [3.5, 1.0, 7.0]
    assert frame["offset"].tolist() == [11, 5, 12]
    assert frame["partition"].tolist() == [0, 1, 2]


def test_closed_days_are_compacted_into_one_file_and_read_the_same(tmp_path: Path) -> None:
    day = 86_400_000
    start = 1_767_225_600_000  # a UTC midnight
    sealed = [
        SealedStep(
            start + i * day // 8,
            np.full((NET.n_sensors, NET.n_features), i, np.float32),
            np.ones((NET.n_sensors, NET.n_features), np.uint8),
            0,
        )
        for i in range(20)
    ]
    archive = Archive(tmp_path, NET)
    for step in sealed:  # one file per step, as live serving writes
        archive.append([step])
    before = archive.read()
    files_before = len(list((tmp_path / "steps").rglob("*.parquet")))
    removed = archive.compact()
    files_after = sorted(p.name for p in (tmp_path / "steps").rglob("*.parquet"))
    print(f"{files_before} files -> {len(files_after)} ({removed} removed): {files_after}")
    assert files_before == 20 and removed == 16  # days 1 and 2 (8 files each) merged; day 3 is open
    assert len(files_after) == 6
    for got, want in zip(Archive(tmp_path, NET).read(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert archive.compact() == 0
    # a crash between writing the merged file and deleting its parts: the parts are deleted next time
    archive.append([SealedStep(start + 3 * day, sealed[0].values, sealed[0].mask, 0)])  # closes day 3
    parts = sorted((tmp_path / "steps" / "date=2026-01-03").glob("*.parquet"))
    stale = tmp_path / "stale.parquet"
    shutil.copy(parts[0], stale)
    archive.compact()
    shutil.copy(stale, parts[0])  # the part is back beside the merged file
    reopened = Archive(tmp_path, NET)
    for got, want in zip(reopened.read(end_ms=start + 3 * day), before, strict=True):
        np.testing.assert_array_equal(got, want)  # read tolerates the duplicate rows
    assert reopened.compact() == 1 and len(list((tmp_path / "steps" / "date=2026-01-03").glob("*"))) == 1


def test_a_reader_lists_again_each_time_a_compaction_removes_its_files(tmp_path: Path) -> None:
    day, start = 86_400_000, 1_767_225_600_000
    ones = np.ones((NET.n_sensors, NET.n_features), np.uint8)
    writer = Archive(tmp_path, NET)
    for i in range(24):  # three UTC days, one file per step
        writer.append([SealedStep(start + i * day // 8, np.full(ones.shape, i, np.float32), ones, 0)])
    reader = Archive(tmp_path, NET)  # lists all 24 files
    want = reader.read()
    real, calls = reader._read_table, []

    def racing(lo: int, hi: int) -> object:
        # another process's compactions land while the reader works: before its first read, and again
        # between its re-listing and its second read
        calls.append(lo)
        if len(calls) == 2:
            writer.append([SealedStep(start + 3 * day, want[1][0], ones, 0)])  # closes day 3
            assert writer.compact() == 8
        return real(lo, hi)

    assert writer.compact() == 16  # days 1 and 2
    reader._read_table = racing  # type: ignore[method-assign]
    got = reader.read(end_ms=start + 3 * day)
    print(f"read attempts: {len(calls)}")
    assert len(calls) == 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_ingest_service_compacts_closed_days_in_the_background(tmp_path: Path) -> None:
    from stream.config import KafkaSettings, WindowSettings
    from stream.consume import IngestService

    day = 86_400_000
    start = 1_767_225_600_000
    archive = Archive(tmp_path, NET)
    values = np.ones((NET.n_sensors, NET.n_features), np.float32)
    for i in range(12):  # 1.5 days, one file per step
        archive.append([SealedStep(start + i * day // 8, values * i, np.ones_like(values, np.uint8), 0)])
    before = archive.read()
    svc = IngestService(KafkaSettings(), WindowSettings(), archive, NET)  # no I/O until start()
    assert archive.needs_compaction()
    svc._compact()  # submits the job and returns at once
    job = svc._compaction
    assert job is not None
    job.result(timeout=30)
    svc._compact()  # collects it: the service's archive lists the merged files
    svc.close()
    files = sorted(p.name for p in (tmp_path / "steps").rglob("*.parquet"))
    print(files)
    assert len(files) == 5 and not archive.needs_compaction()  # day 1 merged, 4 open-day files
    for got, want in zip(archive.read(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_open_day_is_merged_once_it_has_many_files(tmp_path: Path) -> None:
    from stream.archive import OPEN_DAY_PARTS

    midnight = T0 + 10 * STEP
    archive = Archive(tmp_path, NET)
    values = np.ones((NET.n_sensors, NET.n_features), np.float32)
    for i in range(OPEN_DAY_PARTS + 2):
        if i == OPEN_DAY_PARTS - 1:
            assert not archive.needs_compaction()
        archive.append([SealedStep(midnight + i * STEP, values * i, np.ones_like(values, np.uint8), 0)])
    before = archive.read()
    assert archive.needs_compaction() and archive.compact() == OPEN_DAY_PARTS + 2
    archive.append(
        [SealedStep(midnight + (OPEN_DAY_PARTS + 2) * STEP, values, np.ones_like(values, np.uint8), 0)]
    )
    files = sorted(p.name for p in (tmp_path / "steps").rglob("*.parquet"))
    assert len(files) == 2 and not archive.needs_compaction()  # the merged file and the newest step's
    _, got, _ = Archive(tmp_path, NET).read(end_ms=midnight + (OPEN_DAY_PARTS + 2) * STEP)
    np.testing.assert_array_equal(got, before[1])
