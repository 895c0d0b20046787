"""The ingest core end to end on plain bytes: dead letters, timestamps, late log, offsets, ledger, restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from stream.archive import Archive
from stream.ingest import DeadLetter, Ingestor
from stream.network import Feature, Network
from stream.schema import encode_batch, encode_reading

STEP = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % STEP
NET = Network.simple("ing", 5, [Feature("speed", min=0.0, max=150.0), "flow"], step_ms=STEP)
SENSORS = list(NET.sensors)


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def ingestor(clock: Clock, **kw: object) -> Ingestor:
    opts: dict[str, object] = {"allowed_lateness_ms": 10_000, "idle_timeout_ms": 30_000, "now": clock}
    opts.update(kw)
    return Ingestor(NET, **opts)  # type: ignore[arg-type]


def test_good_and_bad_messages_all_accounted_for() -> None:
    ing = ingestor(Clock(T0))
    msgs = [
        encode_reading("s0000", T0 + 1, {"speed": 50.0, "flow": 10}),
        b"\xff\xfe garbage",
        None,
        encode_batch(T0 + 2, SENSORS, {"speed": [1.0, 2.0, None, -4.0, 5.0], "flow": [1, 2, 3, 4, 5]}),
        encode_reading("nobody", T0 + 3, {"speed": 1.0}),
        encode_reading("s0001", T0 + 4, {"speed": 50.0, "flow": 10}),
        encode_reading("s0001", T0 + 4, {"speed": 50.0, "flow": 10}),  # duplicate
    ]
    dead: list[DeadLetter] = []
    for offset, raw in enumerate(msgs):
        dead += ing.ingest(0, offset, raw)
    assert [(d.reason, d.offset, d.n_readings) for d in dead] == [
        ("not_utf8", 1, 1),
        ("empty", 2, 1),
        ("out_of_range", 3, 1),
        ("unknown_sensor", 4, 1),
    ]
    c = ing.ledger.partition(0)
    assert (c.received, c.windowed, c.dead_lettered, c.duplicates) == (18, 12, 4, 2)
    assert c.dead_by_reason == {"not_utf8": 1, "empty": 1, "out_of_range": 1, "unknown_sensor": 1}
    assert ing.ledger.balanced()
    (step,) = ing.flush_all()
    assert step.n_readings == 12 and step.mask[:, 0].tolist() == [1, 1, 0, 0, 1]


def test_dead_letter_json_carries_raw_bytes() -> None:
    ing = ingestor(Clock(T0), source_topic="sensors.raw")
    (d,) = ing.ingest(3, 42, b"\x00\x01not json")
    record = orjson.loads(d.to_json())
    assert set(record) == {"reason", "detail", "topic", "partition", "offset", "n_readings", "raw_b64"}
    assert (record["topic"], record["partition"], record["offset"]) == ("sensors.raw", 3, 42)
    assert DeadLetter.from_json(d.to_json()) == d
    (tomb,) = ing.ingest(3, 43, None)
    assert tomb.raw == b"" and DeadLetter.from_json(tomb.to_json()).raw == b""


def test_timestamps_far_ahead_of_clock_and_watermark_are_dead_lettered() -> None:
    clock = Clock(T0)
    ing = ingestor(clock, max_future_ms=3_600_000)
    assert ing.ingest(0, 0, encode_reading("s0000", T0 + 3_600_000, {"speed": 1.0})) == []
    (d,) = ing.ingest(0, 1, encode_reading("s0000", T0 + 7_000_000, {"speed": 1.0}))
    assert d.reason == "bad_timestamp"
    # at each seal (poll) the ceiling follows the highest event ts, so a simulator ahead of the clock works
    ing.seal()
    assert ing.ingest(0, 1, encode_reading("s0000", T0 + 7_000_000, {"speed": 1.0})) == []
    (d,) = ing.ingest(0, 2, encode_reading("s0000", T0 + 50_000_000, {"speed": 1.0}))
    assert d.reason == "bad_timestamp"
    (d,) = ing.ingest(0, 3, encode_batch(T0 + 10**12, SENSORS, {"speed": [1.0] * 5}))
    assert d.reason == "bad_timestamp" and d.n_readings == 5
    (d,) = ing.ingest(0, 4, encode_reading("s0000", 1_000, {"speed": 1.0}))
    assert d.reason == "bad_timestamp"
    # historical data replayed under a real clock is fine
    assert ing.ingest(1, 0, encode_reading("s0000", T0 - 10**11, {"speed": 1.0})) == []
    assert ing.ledger.balanced()


def test_late_readings_are_buffered_for_the_late_log() -> None:
    ing = ingestor(Clock(T0))
    ing.ingest(0, 0, encode_reading("s0000", T0 + 5, {"speed": 1.0}))
    ing.ingest(0, 1, encode_reading("s0000", T0 + 2 * STEP + 10_000, {"speed": 2.0}))
    assert [s.step_ts for s in ing.seal()] == [T0, T0 + STEP]
    assert ing.ingest(0, 2, encode_reading("s0003", T0 + 6, {"speed": 3.0, "flow": 4})) == []
    late = ing.take_late()
    assert [(r.sensor, r.feature, r.value, r.offset) for r in late] == [(3, 0, 3.0, 2), (3, 1, 4.0, 2)]
    assert ing.take_late() == []
    assert ing.ledger.total().late == 2 and ing.ledger.balanced()


def test_committable_per_partition() -> None:
    ing = ingestor(Clock(T0))
    ing.ingest(0, 100, encode_reading("s0000", T0 + 5, {"speed": 1.0}))
    ing.ingest(0, 101, b"junk")
    ing.ingest(1, 7, b"junk")
    assert ing.committable() == {0: 100, 1: 8}
    ing.ingest(0, 102, encode_reading("s0000", T0 + STEP + 10_001, {"speed": 1.0}))
    ing.ingest(1, 8, encode_reading("s0001", T0 + STEP + 10_001, {"speed": 1.0}))
    assert [s.step_ts for s in ing.seal()] == [T0]
    assert ing.committable() == {0: 102, 1: 8}


def test_restart_replays_without_duplicating_the_archive(tmp_path: Path) -> None:
    """Crash after archiving some steps but before committing: the replay is harmless."""
    rng = np.random.default_rng(1)
    msgs = [
        encode_batch(
            T0 + i * 20_000, SENSORS, {"speed": rng.uniform(0, 100, 5), "flow": rng.uniform(0, 9, 5)}
        )
        for i in range(30)
    ]
    archive = Archive(tmp_path, NET)
    first = ingestor(Clock(T0))
    for offset, raw in enumerate(msgs[:20]):
        first.ingest(0, offset, raw)
        archive.append(first.seal())
    archived_before = archive.last_step()
    assert archived_before is not None
    # restart: nothing was committed, so everything is consumed again from offset 0
    archive = Archive(tmp_path, NET)
    second = ingestor(Clock(T0), resume_after_step=archive.last_step())
    for offset, raw in enumerate(msgs):
        second.ingest(0, offset, raw)
        archive.append(second.seal())
    archive.append(second.flush_all())
    assert second.ledger.total().replayed > 0 and second.ledger.balanced()
    # the same stream without a crash gives the same archive
    clean = ingestor(Clock(T0))
    steps = []
    for offset, raw in enumerate(msgs):
        clean.ingest(0, offset, raw)
        steps += clean.seal()
    steps += clean.flush_all()
    ts, values, mask = archive.read()
    assert ts.tolist() == [s.step_ts for s in steps]
    assert np.array_equal(values, np.stack([s.values for s in steps]), equal_nan=True)
    assert np.array_equal(mask, np.stack([s.mask for s in steps]))


def test_single_and_batch_paths_seal_the_same_steps() -> None:
    rng = np.random.default_rng(3)
    ts = [T0 + i * 7_000 for i in range(40)]
    speed = rng.uniform(0, 100, (40, 5))
    singles, batches = ingestor(Clock(T0)), ingestor(Clock(T0))
    offset = 0
    for i, t in enumerate(ts):
        batches.ingest(1, i, encode_batch(t, SENSORS, {"speed": speed[i], "flow": speed[i] / 2}))
        for j, s in enumerate(SENSORS):
            singles.ingest(1, offset, encode_reading(s, t, {"speed": speed[i, j], "flow": speed[i, j] / 2}))
            offset += 1
    a, b = singles.flush_all(), batches.flush_all()
    assert [s.step_ts for s in a] == [s.step_ts for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.values, y.values) and np.array_equal(x.mask, y.mask)
    assert singles.ledger.total().windowed == batches.ledger.total().windowed == 40 * 5 * 2
