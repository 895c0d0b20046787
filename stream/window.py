"""Event-time windowing: readings in, **sealed steps** out, on the network's grid of steps.

A reading belongs to the step `network.step_of(ts)`. Several readings of one (sensor, feature) in one
step are aggregated (`mean`, `last` by event time, `max`, `min`, `median`); an exact duplicate (same
sensor, feature and ts) is counted and dropped, the first copy wins.

Watermarks: each partition's watermark is the highest event ts seen on it; the network watermark is the
minimum over partitions that are not idle (a partition is idle when it brought no valid reading for
`idle_timeout_ms` of the injected clock; when every partition is idle the maximum is used, so a stream
that went quiet still seals). A step `[s, s + step_ms)` is sealed once `watermark >= s + step_ms +
allowed_lateness_ms`. Steps seal in order and never backwards, and empty steps in between seal too
(mask all 0), so once the first step is seen the sealed grid has no holes. Readings for an already
sealed step are **late**: counted and returned, never aggregated. After a restart, `resume_after_step`
(the archive's last step) makes readings for steps at or before it count as `replayed`.

Memory is bounded by `max_open_steps`: when the open steps span more than that (one partition racing
ahead of a stalled one), the oldest are sealed early and `forced_seals` counts them.

Pure Python/numpy with an injected clock: no Kafka, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stream.ledger import Ledger
from stream.network import Network
from stream.schema import Decoded

AGGS = ("mean", "last", "max", "min", "median")


@dataclass(frozen=True, eq=False)
class SealedStep:
    """One grid step that accepts no more on-time readings.

    `values` float32 `[N, F]` holds the aggregate where `mask` (uint8 `[N, F]`, 1 = observed in this step)
    is 1 and elsewhere the last sealed aggregate of that sensor/feature (NaN if never observed).
    `n_readings` counts the windowed readings aggregated into it.
    """

    step_ts: int
    values: np.ndarray
    mask: np.ndarray
    n_readings: int


class LateReading(NamedTuple):
    """A reading that arrived for an already-sealed step; `sensor`/`feature` are network indices."""

    sensor: int
    feature: int
    ts: int
    value: float
    step_ts: int
    partition: int
    offset: int


class _OpenStep:
    """Readings of one unsealed step keyed by `cell * step_ms + (ts - step_ts)`, cell = sensor * F + feature.

    The key is unique per (sensor, feature, ts), so the dict both drops duplicates and, sorted at seal
    time, gives a canonical order: the aggregate does not depend on arrival order, to the last bit.
    """

    __slots__ = ("first_offset", "readings")

    def __init__(self) -> None:
        self.readings: dict[int, float] = {}
        self.first_offset: dict[int, int] = {}  # partition -> smallest offset holding a reading here

    def hold(self, partition: int, offset: int) -> None:
        first = self.first_offset.get(partition)
        if first is None or offset < first:
            self.first_offset[partition] = offset


class Windower:
    """Assigns readings to steps and seals them as the watermark passes; see the module docstring.

    Counting goes to `ledger` (per partition): `windowed`, `late`, `duplicates`, `replayed`. When no
    ledger is passed the windower keeps its own and also counts `received`, so it balances on its own;
    a caller that passes its ledger counts `received` (and dead letters) itself.
    """

    def __init__(
        self,
        network: Network,
        *,
        allowed_lateness_ms: int,
        idle_timeout_ms: int,
        agg: str = "mean",
        now: Callable[[], int],
        max_open_steps: int = 1024,
        resume_after_step: int | None = None,
        ledger: Ledger | None = None,
        fill_values: np.ndarray | None = None,
    ) -> None:
        if agg not in AGGS:
            raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
        if allowed_lateness_ms < 0 or idle_timeout_ms < 0 or max_open_steps < 1:
            raise ValueError("allowed_lateness_ms and idle_timeout_ms must be >= 0, max_open_steps >= 1")
        if resume_after_step is not None and resume_after_step % network.step_ms:
            raise ValueError(f"resume_after_step {resume_after_step} is not on the {network.step_ms} ms grid")
        self.network = network
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.agg = agg
        self.max_open_steps = max_open_steps
        self.resume_after_step = resume_after_step
        self._now = now
        self._step_ms = network.step_ms
        self._n_features = network.n_features
        self._shape = (network.n_sensors, network.n_features)
        self._count_received = ledger is None
        self.ledger = ledger if ledger is not None else Ledger()
        self._open: dict[int, _OpenStep] = {}
        self._sealed_through = resume_after_step  # last sealed step_ts (or the resume point)
        self._partition_wm: dict[int, int] = {}
        self._partition_active: dict[int, int] = {}
        self._last_offset: dict[int, int] = {}
        self._watermark: int | None = None
        self.max_event_ts: int | None = None  # highest event ts seen anywhere (for the decoder's ceiling)
        self.forced_seals = 0
        self._last = np.full(self._shape, np.nan, dtype=np.float32)  # [N, F] last observed aggregate
        if fill_values is not None:
            self._last[...] = fill_values

    # -- adding readings -------------------------------------------------------------------------------

    def add(
        self, partition: int, offset: int, decoded: Decoded, *, now_ms: int | None = None
    ) -> list[LateReading]:
        """Window the valid readings of one message; returns its late readings (usually `[]`).

        Call it for every message, even one with no valid readings, so that `committable()` moves past it.
        `now_ms` saves a clock call when the caller already read it.
        """
        last = self._last_offset.get(partition)
        if last is None or offset > last:
            self._last_offset[partition] = offset
        if decoded.rows is None:
            if decoded.n == 0:
                return []
            return self._add_columns(partition, offset, decoded, now_ms)
        rows = decoded.rows
        if not rows:
            return []
        step_ms = self._step_ms
        n_feat = self._n_features
        sealed = self._sealed_through
        open_steps = self._open
        late: list[LateReading] = []
        windowed = dups = replayed = 0
        high = -1
        for ts, s, f, v in rows:
            if ts > high:
                high = ts
            step = ts - ts % step_ms
            if sealed is not None and step <= sealed:
                if self.resume_after_step is not None and step <= self.resume_after_step:
                    replayed += 1
                else:
                    late.append(LateReading(s, f, ts, v, step, partition, offset))
                continue
            st = open_steps.get(step)
            if st is None:
                st = open_steps[step] = _OpenStep()
            key = (s * n_feat + f) * step_ms + (ts - step)
            if key in st.readings:
                dups += 1
                continue
            st.readings[key] = v
            st.hold(partition, offset)
            windowed += 1
        self._saw(partition, high, now_ms)
        self._count(partition, len(rows), windowed, dups, replayed, len(late))
        return late

    def _add_columns(
        self, partition: int, offset: int, decoded: Decoded, now_ms: int | None
    ) -> list[LateReading]:
        ts, sensor, feature, value = decoded.columns()
        step_ms = self._step_ms
        steps = ts - ts % step_ms  # [n]
        keys = (sensor.astype(np.int64) * self._n_features + feature) * step_ms + (ts - steps)  # [n]
        late: list[LateReading] = []
        lo, hi = int(steps.min()), int(steps.max())
        if lo == hi:  # the usual batch: one ts
            counts = self._add_group(partition, offset, lo, keys, value, late)
        else:
            counts = [0, 0, 0]
            for step in np.unique(steps).tolist():
                sel = steps == step
                group = self._add_group(partition, offset, step, keys[sel], value[sel], late)
                counts = [a + b for a, b in zip(counts, group, strict=True)]
        self._saw(partition, int(ts.max()), now_ms)
        self._count(partition, len(ts), counts[0], counts[1], counts[2], len(late))
        return late

    def _add_group(
        self,
        partition: int,
        offset: int,
        step: int,
        keys: np.ndarray,
        value: np.ndarray,
        late: list[LateReading],
    ) -> list[int]:
        """Readings of one step: returns `[windowed, duplicates, replayed]`, appends late ones to `late`."""
        if self._sealed_through is not None and step <= self._sealed_through:
            if self.resume_after_step is not None and step <= self.resume_after_step:
                return [0, 0, len(keys)]
            step_ms, n_feat = self._step_ms, self._n_features
            for key, v in zip(keys.tolist(), value.tolist(), strict=True):
                cell, dt = divmod(key, step_ms)
                late.append(LateReading(cell // n_feat, cell % n_feat, step + dt, v, step, partition, offset))
            return [0, 0, 0]
        st = self._open.get(step)
        if st is None:
            st = self._open[step] = _OpenStep()
        k = keys.tolist()
        fresh = dict(zip(reversed(k), reversed(value.tolist()), strict=True))  # reversed: first copy wins
        readings = st.readings
        if len(fresh) == len(k) and readings.keys().isdisjoint(fresh):
            readings.update(fresh)
            windowed, dups = len(k), 0
        else:
            windowed = dups = 0
            for key in k:
                if key in readings:
                    dups += 1
                else:
                    readings[key] = fresh[key]
                    windowed += 1
        if windowed:
            st.hold(partition, offset)
        return [windowed, dups, 0]

    def _saw(self, partition: int, high: int, now_ms: int | None) -> None:
        wm = self._partition_wm.get(partition)
        if wm is None or high > wm:
            self._partition_wm[partition] = high
        if self.max_event_ts is None or high > self.max_event_ts:
            self.max_event_ts = high
        self._partition_active[partition] = self._now() if now_ms is None else now_ms

    def _count(self, partition: int, n: int, windowed: int, dups: int, replayed: int, late: int) -> None:
        c = self.ledger.partition(partition)
        if self._count_received:
            c.received += n
        c.windowed += windowed
        c.duplicates += dups
        c.replayed += replayed
        c.late += late

    # -- watermark and sealing -------------------------------------------------------------------------

    def watermark(self) -> int | None:
        """The network watermark (never decreases); None before the first reading."""
        if not self._partition_wm:
            return self._watermark
        t = self._now()
        active = [
            wm for p, wm in self._partition_wm.items() if t - self._partition_active[p] < self.idle_timeout_ms
        ]
        wm = min(active) if active else max(self._partition_wm.values())
        if self._watermark is None or wm > self._watermark:
            self._watermark = wm
        return self._watermark

    @property
    def sealed_through(self) -> int | None:
        """step_ts of the last sealed step (or `resume_after_step`); None before the first seal."""
        return self._sealed_through

    def seal(self) -> list[SealedStep]:
        """Seal, in order, every step the watermark allows (plus forced ones); call after each poll."""
        wm = self.watermark()
        if wm is None:
            return []
        step_ms = self._step_ms
        limit = wm - step_ms - self.allowed_lateness_ms  # steps with step_ts <= limit are complete
        if self._open:
            floor = max(self._open) - self.max_open_steps * step_ms  # sealing through it leaves the cap open
            if floor > limit:
                already = max(limit, (self._next_step() or floor) - step_ms)
                self.forced_seals += max(0, (floor - (already - already % step_ms)) // step_ms)
                limit = floor
        return self._seal_through(limit)

    def flush_all(self) -> list[SealedStep]:
        """End of stream: seal every open step (and the empty ones between)."""
        if not self._open:
            return []
        return self._seal_through(max(self._open))

    def _next_step(self) -> int | None:
        if self._sealed_through is not None:
            return self._sealed_through + self._step_ms
        return min(self._open) if self._open else None

    def _seal_through(self, limit: int) -> list[SealedStep]:
        out: list[SealedStep] = []
        step = self._next_step()
        while step is not None and step <= limit:
            out.append(self._seal_one(step))
            self._sealed_through = step
            step += self._step_ms
        return out

    def _seal_one(self, step: int) -> SealedStep:
        st = self._open.pop(step, None)
        mask = np.zeros(self._shape, dtype=np.uint8)  # [N, F]
        if st is None or not st.readings:
            return SealedStep(step, self._last.copy(), mask, 0)
        n = len(st.readings)
        keys = np.fromiter(st.readings.keys(), dtype=np.int64, count=n)
        vals = np.fromiter(st.readings.values(), dtype=np.float64, count=n)
        order = np.argsort(keys, kind="stable")  # by cell, then by ts
        keys, vals = keys[order], vals[order]
        cells = keys // self._step_ms
        starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
        agg = _aggregate(self.agg, cells, vals, starts)
        flat_last = self._last.reshape(-1)  # [N * F] view
        flat_last[cells[starts]] = agg
        mask.reshape(-1)[cells[starts]] = 1
        return SealedStep(step, self._last.copy(), mask, n)

    # -- offsets -----------------------------------------------------------------------------------------

    def committable(self, partition: int) -> int | None:
        """Next offset safe to commit on `partition` once every step taken from `seal()` is durable.

        The smallest offset holding a reading in a still-open step, else last seen offset + 1; None for a
        partition never seen.
        """
        last = self._last_offset.get(partition)
        if last is None:
            return None
        held = [o for st in self._open.values() if (o := st.first_offset.get(partition)) is not None]
        return min(held) if held else last + 1

    @property
    def partitions(self) -> list[int]:
        return sorted(self._last_offset)

    @property
    def open_steps(self) -> list[int]:
        return sorted(self._open)


def _aggregate(agg: str, cells: np.ndarray, vals: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-cell aggregate of `vals` sorted by (cell, ts); `starts` are the first index of each cell."""
    ends = np.r_[starts[1:], len(vals)]
    if agg == "mean":
        return np.add.reduceat(vals, starts) / (ends - starts)
    if agg == "last":
        return vals[ends - 1]
    if agg == "max":
        return np.maximum.reduceat(vals, starts)
    if agg == "min":
        return np.minimum.reduceat(vals, starts)
    order = np.lexsort((vals, cells))  # median: sort values within each cell
    v = vals[order]
    count = ends - starts
    return (v[starts + (count - 1) // 2] + v[starts + count // 2]) / 2
