"""Property tests for the windowing: order within the allowed lateness and duplication change nothing,
the ledger always balances, sealed steps are consecutive, readings beyond the lateness are late."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.network import Network
from stream.window import SealedStep, Windower
from tests.test_window import add, add_messages

STEP = 1_000
LATENESS = 1_500
T0 = 1_700_000_000_000
NET = Network.simple("p", 4, ["a", "b"], step_ms=STEP)
BOUNDED = settings(max_examples=100, deadline=None)

Reading = tuple[int, int, int, float]  # (ts, sensor, feature, value)

readings_st = st.lists(
    st.tuples(
        st.integers(0, 8_000),  # ts offset: up to 8 steps
        st.integers(0, NET.n_sensors - 1),
        st.integers(0, NET.n_features - 1),
        st.floats(-1e6, 1e6, allow_nan=False, width=32),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda r: (r[0], r[1], r[2]),  # one value per (sensor, feature, ts)
).map(lambda rs: [(T0 + dt, s, f, float(v)) for dt, s, f, v in rs])


def new_windower(agg: str = "mean") -> Windower:
    return Windower(NET, allowed_lateness_ms=LATENESS, idle_timeout_ms=10**9, agg=agg, now=lambda: T0)


Arrivals = list[tuple[int, list[Reading]]]  # (partition, readings of one message), in arrival order


def run(w: Windower, arrivals: Arrivals, poll: int = 1) -> list[SealedStep]:
    """Feed the messages in order (message i at offset i), `poll` at a time: each partition's messages of
    a poll in one `add_columns` call, as the ingest core takes a poll, then a seal; then flush."""
    out: list[SealedStep] = []
    for start in range(0, len(arrivals), poll):
        msgs = list(enumerate(arrivals[start : start + poll], start))
        for partition in sorted({p for _, (p, _) in msgs}):
            add_messages(w, partition, [(i, batch) for i, (p, batch) in msgs if p == partition])
        out += w.seal()
        assert w.ledger.balanced()
    return out + w.flush_all()


def same(a: list[SealedStep], b: list[SealedStep]) -> None:
    assert [s.step_ts for s in a] == [s.step_ts for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.values, y.values, equal_nan=True), (x.step_ts, x.values, y.values)
        assert np.array_equal(x.mask, y.mask)
        assert x.n_readings == y.n_readings


@st.composite
def shuffled(draw: st.DrawFn) -> tuple[list[Reading], Arrivals, int, str]:
    """Readings, and an arrival schedule: each copy delayed by at most the lateness, some duplicated,
    spread over partitions, grouped into multi-reading messages and those into polls."""
    rs = draw(readings_st)
    copies = [r for r in rs for _ in range(draw(st.integers(1, 3)))]
    delays = draw(st.lists(st.integers(0, LATENESS), min_size=len(copies), max_size=len(copies)))
    order = sorted(range(len(copies)), key=lambda i: (copies[i][0] + delays[i], i))
    arrivals: list[tuple[int, list[Reading]]] = []
    i = 0
    while i < len(order):
        size = draw(st.integers(1, 4))
        arrivals.append((draw(st.integers(0, 2)), [copies[j] for j in order[i : i + size]]))
        i += size
    poll = draw(st.integers(1, 5))
    agg = draw(st.sampled_from(["mean", "last", "max", "min", "median"]))
    return rs, arrivals, poll, agg


@BOUNDED
@given(shuffled())
def test_order_within_lateness_and_duplicates_do_not_change_sealed_steps(
    case: tuple[list[Reading], Arrivals, int, str],
) -> None:
    rs, arrivals, poll, agg = case
    reference = run(new_windower(agg), [(0, [r]) for r in sorted(rs)])
    w = new_windower(agg)
    got = run(w, arrivals, poll)
    same(reference, got)
    total = w.ledger.total()
    assert total.late == 0 and total.windowed == len(rs)
    assert total.duplicates == sum(len(b) for _, b in arrivals) - len(rs)
    assert w.ledger.balanced()


@BOUNDED
@given(shuffled())
def test_sealed_steps_are_consecutive_and_cover_all_readings(
    case: tuple[list[Reading], Arrivals, int, str],
) -> None:
    rs, arrivals, poll, agg = case
    sealed = run(new_windower(agg), arrivals, poll)
    ts = [s.step_ts for s in sealed]
    assert np.all(np.diff(ts) == STEP)
    assert ts[0] == min(NET.step_of(r[0]) for r in rs) and ts[-1] == max(NET.step_of(r[0]) for r in rs)
    assert sum(s.n_readings for s in sealed) == len(rs)
    observed = {(s.step_ts, i, j) for s in sealed for i, j in zip(*np.nonzero(s.mask), strict=True)}
    assert observed == {(NET.step_of(t), si, fi) for t, si, fi, _ in rs}


@BOUNDED
@given(readings_st, st.lists(st.integers(0, 10_000), min_size=1, max_size=20), st.data())
def test_readings_beyond_lateness_are_late_and_counted(
    rs: list[Reading], extra: list[int], data: st.DataObject
) -> None:
    w = new_windower()
    for i, r in enumerate(sorted(rs)):
        add(w, 0, i, r)
        w.seal()
    sealed_through = w.sealed_through
    wm = w.watermark()
    assert wm is not None
    n_late = 0
    for k, dt in enumerate(extra):
        ts = T0 + dt
        s, f = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 1))
        late = add(w, 1 + k % 2, k, (ts, s, f, 1.0))
        if sealed_through is not None and NET.step_of(ts) <= sealed_through:
            assert [r.ts for r in late] == [ts]  # its step is sealed: late, whatever else
            n_late += 1
        else:
            assert late == []
    assert w.ledger.total().late == n_late
    assert w.ledger.balanced()
    # any step whose end + lateness the watermark passed was sealed
    if sealed_through is not None:
        assert sealed_through + STEP + LATENESS <= wm < sealed_through + 2 * STEP + LATENESS


@BOUNDED
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9),  # step: readings at their step's start (the grids)
            st.integers(0, NET.n_sensors - 1),
            st.integers(0, NET.n_features - 1),
            st.sampled_from([1.0, 2.0, 3.0]),  # few values: copies of one key often disagree
        ),
        min_size=1,
        max_size=80,
    ),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
    st.booleans(),
)
def test_columns_over_many_steps_equal_one_reading_at_a_time(
    rows: list[tuple[int, int, int, float]], chunks: list[int], sort_duplicates: bool
) -> None:
    """`add_columns` with readings of many steps at once (repeated keys, some with other values: the first
    copy wins) gives the steps, counts and held offsets of adding them one by one; also when the
    duplicates are found by sorting instead of the scratch array."""
    one = new_windower("last")
    for i, (k, s, f, v) in enumerate(rows):
        add(one, 0, i, (T0 + k * STEP, s, f, v))
    many = new_windower("last")
    if sort_duplicates:
        many.first_copies.max_scratch_cells = 1
    ts = np.array([T0 + k * STEP for k, *_ in rows], np.int64)
    cells = np.array([s * NET.n_features + f for _, s, f, _ in rows], np.int64)
    value = np.array([v for *_, v in rows], np.float64)
    offsets = np.arange(len(rows), dtype=np.int64)
    a = 0
    for size in [*chunks, len(rows)]:
        b = min(len(rows), a + size)
        if a < b:
            many.add_columns(0, offsets[a:b], ts[a:b], cells[a:b], value[a:b])
        a = b
    assert many.committable(0) == one.committable(0)
    assert many.ledger.total().as_dict() == one.ledger.total().as_dict()
    same(one.flush_all(), many.flush_all())
