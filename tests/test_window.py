"""Event-time windowing: aggregation, duplicates, lateness, watermarks, idle partitions, offsets, rolling."""

from __future__ import annotations

import numpy as np
import pytest

from stream.ledger import Ledger
from stream.network import Network
from stream.rolling import RollingWindow
from stream.window import OPEN_CELLS, LateReading, SealedStep, Windower

STEP = 1_000
T0 = 1_700_000_000_000  # on the 1 s grid
NET = Network.simple("w", 3, ["speed", "flow"], step_ms=STEP)


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


Reading = tuple[int, int, int, float]  # (ts, sensor, feature, value)


def add_messages(w: Windower, partition: int, messages: list[tuple[int, list[Reading]]]) -> list[LateReading]:
    """Messages `(offset, readings)` of one partition, in offset order, in one `Windower.add_columns` call
    (as the ingest core windows a poll)."""
    rows = [(offset, *r) for offset, readings in messages for r in readings]
    offsets = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    cells = np.array([r[2] * w.network.n_features + r[3] for r in rows], dtype=np.int64)
    value = np.array([r[4] for r in rows], dtype=np.float64)
    return w.add_columns(partition, offsets, ts, cells, value, last_offset=messages[-1][0])


def add(w: Windower, partition: int, offset: int, *readings: Reading) -> list[LateReading]:
    """One message's readings, in arrival order."""
    return add_messages(w, partition, [(offset, list(readings))])


def windower(clock: Clock | None = None, **kw: object) -> Windower:
    opts: dict[str, object] = {"allowed_lateness_ms": 500, "idle_timeout_ms": 60_000, "now": clock or Clock()}
    opts.update(kw)
    return Windower(NET, **opts)  # type: ignore[arg-type]


def test_step_seals_only_after_watermark_passes_end_plus_lateness() -> None:
    w = windower()
    add(w, 0, 0, (T0 + 10, 0, 0, 5.0))
    add(w, 0, 1, (T0 + 1_499, 1, 0, 7.0))  # watermark = step end + lateness - 1
    assert w.seal() == []
    add(w, 0, 2, (T0 + 1_500, 1, 1, 9.0))
    (s,) = w.seal()
    assert s.step_ts == T0 and s.n_readings == 1
    assert s.values.dtype == np.float32 and s.values.shape == (3, 2)
    assert s.mask.dtype == np.uint8
    assert s.mask.tolist() == [[1, 0], [0, 0], [0, 0]]
    assert s.values[0, 0] == 5.0 and np.isnan(s.values[1, 0])
    assert w.ledger.balanced()


@pytest.mark.parametrize(
    ("agg", "expected"), [("mean", 4.0), ("last", 2.0), ("max", 9.0), ("min", 1.0), ("median", 2.0)]
)
def test_aggregations(agg: str, expected: float) -> None:
    w = windower(agg=agg)
    # arrival order differs from event order: "last" is by event time
    add(w, 0, 0, (T0 + 300, 0, 0, 2.0), (T0 + 100, 0, 0, 9.0), (T0 + 200, 0, 0, 1.0))
    (s,) = w.flush_all()
    assert s.values[0, 0] == pytest.approx(expected)
    assert s.n_readings == 3


def test_median_of_even_count_and_unknown_agg() -> None:
    w = windower(agg="median")
    add(w, 0, 0, (T0 + 1, 2, 1, 4.0), (T0 + 2, 2, 1, 1.0), (T0 + 3, 2, 1, 3.0), (T0 + 4, 2, 1, 10.0))
    assert w.flush_all()[0].values[2, 1] == 3.5
    with pytest.raises(ValueError, match="agg must be one of"):
        windower(agg="mode")


def test_exact_duplicate_counted_and_not_aggregated() -> None:
    w = windower()
    add(w, 0, 0, (T0 + 5, 0, 0, 10.0))
    add(w, 0, 1, (T0 + 5, 0, 0, 99.0), (T0 + 6, 0, 0, 20.0))  # same key, other value: first wins
    add(w, 0, 2, (T0 + 6, 0, 0, 20.0), (T0 + 6, 0, 0, 20.0))
    (s,) = w.flush_all()
    assert s.values[0, 0] == 15.0 and s.n_readings == 2
    c = w.ledger.partition(0)
    assert (c.received, c.windowed, c.duplicates) == (5, 2, 3)
    assert w.ledger.balanced()


def test_late_reading_returned_counted_and_not_aggregated() -> None:
    w = windower()
    add(w, 0, 0, (T0 + 10, 0, 0, 1.0))
    add(w, 0, 1, (T0 + 2_600, 0, 0, 2.0))
    sealed = w.seal()
    assert [s.step_ts for s in sealed] == [T0, T0 + STEP]
    late = add(w, 0, 2, (T0 + 20, 1, 1, 3.0))
    assert len(late) == 1
    r = late[0]
    assert (r.sensor, r.feature, r.ts, r.value, r.step_ts, r.partition, r.offset) == (
        1,
        1,
        T0 + 20,
        3.0,
        T0,
        0,
        2,
    )
    late = add(w, 0, 3, (T0 + 30, 2, 0, 4.0), (T0 + 1_030, 2, 0, 5.0))
    assert sorted(r.step_ts for r in late) == [T0, T0 + STEP]
    assert w.ledger.partition(0).late == 3
    assert w.ledger.balanced()


def test_empty_steps_between_are_sealed_with_last_observation_fill() -> None:
    w = windower()
    add(w, 0, 0, (T0, 0, 0, 1.0), (T0, 1, 1, 2.0))
    add(w, 0, 1, (T0 + 4_000, 0, 0, 3.0))
    add(w, 0, 2, (T0 + 5_500, 2, 0, 4.0))
    sealed = w.seal()
    assert [s.step_ts for s in sealed] == [T0 + i * STEP for i in range(5)]
    empty = sealed[2]
    assert empty.n_readings == 0 and empty.mask.sum() == 0
    assert empty.values[0, 0] == 1.0 and empty.values[1, 1] == 2.0  # carried forward
    assert np.isnan(empty.values[2, 0])  # never observed
    assert sealed[4].values[0, 0] == 3.0 and sealed[4].mask[0, 0] == 1


def test_sealed_step_ts_strictly_increase_and_never_go_back() -> None:
    w = windower()
    seen: list[int] = []
    for i, ts in enumerate([T0 + 3_000, T0 + 100, T0 + 9_000, T0 + 2_000, T0 + 15_000, T0 + 1]):
        add(w, 0, i, (ts, 0, 0, float(i)))
        seen += [s.step_ts for s in w.seal()]
    seen += [s.step_ts for s in w.flush_all()]
    assert seen == sorted(set(seen))
    assert np.all(np.diff(seen) == STEP)
    assert w.flush_all() == []


def test_network_watermark_is_min_over_partitions_and_idle_ones_are_skipped() -> None:
    clock = Clock()
    w = windower(clock, idle_timeout_ms=10_000)
    add(w, 0, 0, (T0 + 100, 0, 0, 1.0))
    add(w, 1, 0, (T0 + 5_000, 1, 0, 1.0))
    assert w.watermark() == T0 + 100
    assert w.seal() == []  # partition 0 holds the watermark back
    clock.t += 9_999
    assert w.seal() == []
    clock.t += 1  # partition 0 now idle, but so is partition 1 -> max of both
    assert w.watermark() == T0 + 5_000
    add(w, 1, 1, (T0 + 6_000, 1, 0, 2.0))  # partition 1 active again, 0 still idle
    assert w.watermark() == T0 + 6_000
    assert [s.step_ts for s in w.seal()] == [T0 + i * STEP for i in range(5)]
    add(w, 0, 1, (T0 + 6_100, 0, 0, 2.0))  # partition 0 back: the watermark never decreases
    assert w.watermark() == T0 + 6_000


def test_resume_after_step_counts_replayed_and_continues_after_it() -> None:
    resume = T0 + 2 * STEP
    w = windower(resume_after_step=resume)
    add(w, 0, 0, (T0 + 10, 0, 0, 1.0), (T0 + 2_999, 0, 0, 2.0), (T0 + 3_000, 0, 0, 3.0))
    add(w, 0, 1, (T0 + 5, 1, 0, 1.0), (T0 + 3_001, 1, 0, 2.0))
    c = w.ledger.partition(0)
    assert (c.replayed, c.windowed, c.late) == (3, 2, 0)
    sealed = w.flush_all()
    assert [s.step_ts for s in sealed] == [T0 + 3 * STEP]
    with pytest.raises(ValueError, match="grid"):
        windower(resume_after_step=T0 + 1)


def test_committable_holds_smallest_open_offset() -> None:
    w = windower()
    assert w.committable(0) is None
    add(w, 0, 10, (T0 + 10, 0, 0, 1.0))
    add(w, 0, 11)  # a message with no valid readings (dead-lettered)
    add(w, 0, 12, (T0 + 1_100, 0, 0, 1.0))
    assert w.committable(0) == 10
    add(w, 1, 5, (T0 + 1_200, 1, 0, 1.0))
    assert w.committable_all() == {0: 10, 1: 5}
    add(w, 0, 13, (T0 + 1_600, 0, 0, 1.0))
    add(w, 1, 6, (T0 + 1_700, 1, 0, 1.0))
    taken = w.seal()
    assert [s.step_ts for s in taken] == [T0]
    assert w.committable(0) == 12
    assert w.committable_all() == {0: 12, 1: 5} == {p: w.committable(p) for p in (0, 1)}
    w.flush_all()
    assert w.committable(0) == 14
    assert w.committable_all() == {0: 14, 1: 7}


def test_committable_ignores_duplicates_and_late() -> None:
    w = windower()
    add(w, 0, 0, (T0 + 10, 0, 0, 1.0))
    add(w, 0, 1, (T0 + 2_000, 0, 0, 1.0))
    w.seal()
    add(w, 0, 2, (T0 + 2_000, 0, 0, 1.0))  # duplicate of offset 1
    add(w, 0, 3, (T0 + 20, 0, 0, 1.0))  # late
    assert w.committable(0) == 1


def test_max_open_steps_forces_oldest_seals() -> None:
    clock = Clock()
    w = windower(clock, max_open_steps=3)
    add(w, 0, 0, (T0, 0, 0, 1.0))  # partition 0 stalls but is not idle
    for i in range(1, 10):
        add(w, 1, i, (T0 + i * STEP, 1, 0, float(i)))
    sealed = w.seal()
    assert [s.step_ts for s in sealed] == [T0 + i * STEP for i in range(7)]
    assert w.open_steps == [T0 + 7 * STEP, T0 + 8 * STEP, T0 + 9 * STEP]
    assert w.forced_seals == 7


def test_default_open_step_bound_is_sized_by_memory() -> None:
    """Without `max_open_steps`, unsealed steps may hold `OPEN_CELLS` grid cells: many steps for a small
    network (a backfill of weeks across unevenly read partitions seals nothing early), few for a huge one,
    never under 64."""
    clock = Clock()
    pems08 = Network.simple("pems08-like", 170, ["flow", "occupancy", "speed"])
    small = Windower(pems08, allowed_lateness_ms=0, idle_timeout_ms=60_000, now=clock)
    assert small.max_open_steps == OPEN_CELLS // (170 * 3) > 7 * 288  # over a week of 5-minute steps
    huge = Network.simple("huge", 200_000, ["speed"])
    assert Windower(huge, allowed_lateness_ms=0, idle_timeout_ms=60_000, now=clock).max_open_steps == 64


def test_a_lone_reading_far_ahead_forces_nothing() -> None:
    w = windower(max_open_steps=3)
    add(w, 0, 0, (T0, 0, 0, 1.0))
    add(w, 1, 0, (T0 + 500 * STEP, 0, 0, 1.0))  # a clock far ahead on another partition
    assert w.seal() == [] and w.forced_seals == 0
    add(w, 0, 1, (T0 + 2 * STEP, 0, 0, 1.0))
    assert [s.step_ts for s in w.seal()] == [T0]


def test_batch_with_several_steps_and_fill_values() -> None:
    fill = np.full((3, 2), 7.0, dtype=np.float32)
    w = windower(fill_values=fill)
    add(w, 3, 0, (T0 + 1, 0, 0, 1.0), (T0 + 1_001, 0, 0, 2.0), (T0 + 1_002, 1, 0, 3.0))
    a, b = w.flush_all()
    assert a.values[0, 0] == 1.0 and a.values[1, 0] == 7.0 and a.mask[1, 0] == 0
    assert b.values[0, 0] == 2.0 and b.values[1, 0] == 3.0
    assert w.partitions == [3]


def test_windower_counts_into_a_shared_ledger() -> None:
    ledger = Ledger()
    w = windower(ledger=ledger)
    add(w, 0, 0, (T0, 0, 0, 1.0))
    assert ledger.partition(0).received == 1 and ledger.partition(0).windowed == 1
    ledger.partition(0).received += 2  # what the caller rejected before windowing
    ledger.partition(0).dead("undecodable", 2)
    assert ledger.balanced()
    snap = ledger.snapshot()
    assert snap["total"]["windowed"] == 1 and snap["partitions"]["0"]["received"] == 3 and snap["balanced"]
    assert snap["total"]["dead_by_reason"] == {"undecodable": 2}


# -- the rolling window ------------------------------------------------------------------------------------


def step(i: int, value: float) -> SealedStep:
    return SealedStep(T0 + i * STEP, np.full((3, 2), value, np.float32), np.ones((3, 2), np.uint8), 6)


def test_rolling_window_keeps_last_steps_oldest_first() -> None:
    r = RollingWindow(NET, 3)
    for i in range(2):
        r.push(step(i, i))
    assert not r.ready and len(r) == 2
    for i in range(2, 5):
        r.push(step(i, i))
    assert r.ready
    assert r.values().shape == (3, 3, 2)  # [T, N, F]
    assert r.values()[:, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert r.mask().shape == (3, 3, 2)
    assert r.step_ts().tolist() == [T0 + i * STEP for i in (2, 3, 4)]


def test_rolling_window_gap_restarts_and_backwards_raises() -> None:
    r = RollingWindow(NET, 2)
    r.push(step(0, 0))
    r.push(step(1, 1))
    r.push(step(5, 5))
    assert r.gaps == 1 and not r.ready and r.step_ts().tolist() == [T0 + 5 * STEP]
    with pytest.raises(ValueError, match="not after"):
        r.push(step(5, 5))


def test_a_partition_with_unread_data_is_not_idle_after_a_stall() -> None:
    # the consumer stalled (Redis down) longer than the idle timeout; partition 1 still has unread data
    clock = Clock()
    w = windower(clock, idle_timeout_ms=10_000)
    add(w, 0, 0, (T0, 0, 0, 1.0))
    add(w, 1, 0, (T0, 1, 0, 1.0))
    assert w.seal() == []
    clock.t += 60_000
    add(w, 0, 1, (T0 + 20 * STEP, 0, 0, 2.0))  # partition 0 is ahead after the stall
    w.keep_active([1])
    assert w.seal() == [], "partition 1's watermark must still hold the network back"
    assert w.watermark() == T0
    clock.t += 60_000
    assert w.seal(), "without keep_active, a silent partition does time out"


def test_grid_rows_are_reused_clean_after_sealing() -> None:
    """Open steps' grids are rows of one pooled array: a row given back at seal time must come back empty
    (no reading of the step that held it before), also when the pool grew while steps were open."""
    w = windower(allowed_lateness_ms=0)
    rng = np.random.default_rng(3)
    expect: dict[int, np.ndarray] = {}  # step index -> [N, F] values, NaN where no reading
    sealed: list[SealedStep] = []
    for lo, hi in [(0, 20), (20, 45), (45, 50), (50, 90)]:  # 20, then 25 open steps: the pool grows
        ks = np.arange(lo, hi).repeat(NET.n_sensors * NET.n_features)
        cells = np.tile(np.arange(NET.n_sensors * NET.n_features), hi - lo)
        present = rng.random(len(cells)) < 0.4  # sparse: a leaked value would show as mask 1
        ks, cells = ks[present], cells[present]
        value = rng.integers(1, 100, len(cells)).astype(np.float64)
        for k in range(lo, hi):
            grid = np.full(NET.n_sensors * NET.n_features, np.nan)
            grid[cells[ks == k]] = value[ks == k]
            expect[k] = grid.reshape(NET.n_sensors, NET.n_features)
        offsets = np.arange(lo * 100, lo * 100 + len(cells), dtype=np.int64)
        w.add_columns(0, offsets, T0 + ks * STEP, cells, value, last_offset=hi * 100)
        w.add_columns(0, offsets, T0 + ks * STEP, cells, value + 1, last_offset=hi * 100)  # all duplicates
        sealed += w.seal()
    sealed += w.flush_all()
    assert [s.step_ts for s in sealed] == [T0 + k * STEP for k in range(90)]
    for k, s in enumerate(sealed):
        np.testing.assert_array_equal(s.mask, ~np.isnan(expect[k]))
        np.testing.assert_array_equal(s.values[s.mask == 1], expect[k][~np.isnan(expect[k])])
    c = w.ledger.partition(0)
    assert c.windowed == c.duplicates == sum(int((~np.isnan(g)).sum()) for g in expect.values())
