"""Event-time windowing: readings in, **sealed steps** out, on the network's grid of steps.

A reading belongs to the step `network.step_of(ts)`. Several readings of one (sensor, feature) in one
step are aggregated (`mean`, `last` by event time, `max`, `min`, `median`); an exact duplicate (same
sensor, feature and ts) is counted and dropped, the first copy wins.

Watermarks: each partition's watermark is the highest event ts seen on it; the network watermark is the
minimum over partitions that are not idle (a partition is idle when it brought no valid reading for
`idle_timeout_ms` of the injected clock, read once per `seal()` rather than per reading; when every
partition is idle the maximum is used, so a stream that went quiet still seals). A step `[s, s + step_ms)` is sealed once `watermark >= s + step_ms +
allowed_lateness_ms`. Steps seal in order and never backwards, and empty steps in between seal too
(mask all 0), so once the first step is seen the sealed grid has no holes. Readings for an already
sealed step are **late**: counted and returned, never aggregated. After a restart, `resume_after_step`
(the archive's last step) makes readings for steps at or before it count as `replayed`.

Memory is bounded by `max_open_steps` (default: as many steps as `OPEN_CELLS` grid cells allow, 64 MB; at
least 64): when more unsealed steps than that hold readings (one partition racing ahead of a stalled
one), the oldest are sealed early and `forced_seals` counts them. A lone reading far ahead opens one
step, not a span, so it cannot force anything. The grids share one pooled array (`openstep.GridPool`).

Pure Python/numpy with an injected clock: no Kafka, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from stream.ledger import Ledger, PartitionCounts
from stream.network import Network
from stream.openstep import FirstCopies, GridPool, OpenStep
from stream.step import AGGS, LateReading, SealedStep, aggregate

__all__ = ["AGGS", "OPEN_CELLS", "LateReading", "SealedStep", "Windower"]

OPEN_CELLS = 8_000_000  # grid cells (sensor x feature x step, float64) unsealed steps may hold by default


class _Partition:
    """What the windower knows about one source partition."""

    __slots__ = ("active_ms", "counts", "last_offset", "touched", "watermark")

    def __init__(self, counts: PartitionCounts) -> None:
        self.counts = counts
        self.last_offset = -1
        self.watermark = -1  # highest event ts seen, -1 before the first reading
        self.active_ms = 0  # clock time of the last seal() after a reading arrived
        self.touched = False  # a reading arrived since the last watermark() call


class Windower:
    """Assigns readings to steps and seals them as the watermark passes; see the module docstring.

    Counting goes to `ledger` (its own unless one is passed), per partition: `received` for every
    reading given to `add_columns()`, and `windowed`, `late`, `duplicates` or `replayed` for each of them. A
    caller sharing the ledger counts what it rejects before the windower (`received` + `dead_lettered`).
    """

    def __init__(
        self,
        network: Network,
        *,
        allowed_lateness_ms: int,
        idle_timeout_ms: int,
        agg: str = "mean",
        now: Callable[[], int],
        max_open_steps: int | None = None,
        resume_after_step: int | None = None,
        ledger: Ledger | None = None,
        fill_values: np.ndarray | None = None,
    ) -> None:
        if agg not in AGGS:
            raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
        if max_open_steps is None:
            max_open_steps = max(64, OPEN_CELLS // (network.n_sensors * network.n_features))
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
        self.ledger = ledger if ledger is not None else Ledger()
        self._open: dict[int, OpenStep] = {}
        self._sealed = -1 if resume_after_step is None else resume_after_step  # last sealed step_ts, -1: none
        self._replay_through = -1 if resume_after_step is None else resume_after_step
        self._parts: dict[int, _Partition] = {}
        self._watermark: int | None = None
        self.forced_seals = 0
        self._last = np.full(self._shape, np.nan, dtype=np.float32)  # [N, F] last observed aggregate
        self._n_cells = network.n_sensors * network.n_features
        self.first_copies = FirstCopies(self._n_cells)  # duplicates among readings added together
        self._grids = GridPool(self._n_cells)  # the open steps' dense grids
        if fill_values is not None:
            self._last[...] = fill_values

    # -- adding readings -------------------------------------------------------------------------------

    def add_columns(
        self,
        partition: int,
        offsets: np.ndarray,
        ts: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
        *,
        last_offset: int | None = None,
    ) -> list[LateReading]:
        """Window readings of one partition, as columns in arrival order — `offsets`, `ts` (int64 epoch
        ms), `cells` (int64 `sensor * F + feature`), `value` (float64, finite), each `[n]`; returns the
        late ones (usually `[]`) in arrival order.

        `last_offset` (default: the largest of `offsets`) is the last message these readings came from,
        counting messages that brought none: pass it for those too, so that `committable()` moves past
        them. The same steps, counts and late readings as adding the readings one by one in this order:
        the first copy of a duplicate wins.
        """
        p = self._parts.get(partition)
        if p is None:
            p = self._parts[partition] = _Partition(self.ledger.partition(partition))
        n = len(ts)
        if last_offset is None:
            last_offset = int(offsets.max()) if n else -1
        if last_offset > p.last_offset:
            p.last_offset = last_offset
        if not n:
            return []
        dt = ts % self._step_ms
        steps = ts - dt
        late: list[LateReading] = []
        if int(steps.min()) <= self._sealed:  # readings for sealed steps: replayed or late, never windowed
            sealed = steps <= self._sealed
            replayed = sealed & (steps <= self._replay_through)
            p.counts.replayed += int(np.count_nonzero(replayed))
            is_late = np.flatnonzero(sealed & ~replayed)
            if len(is_late):
                late = self._late_readings(partition, is_late, offsets, ts, steps, cells, value)
            fresh = ~sealed
            steps, offsets, dt, cells, value = (x[fresh] for x in (steps, offsets, dt, cells, value))
        if len(steps):
            self._add_open(p, partition, steps, offsets, dt, cells, value)
        high = int(ts.max())
        if high > p.watermark:
            p.watermark = high
        p.touched = True
        p.counts.received += n
        p.counts.late += len(late)
        return late

    def _late_readings(
        self,
        partition: int,
        idx: np.ndarray,
        offsets: np.ndarray,
        ts: np.ndarray,
        steps: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
    ) -> list[LateReading]:
        n_feat = self._n_features
        return [
            LateReading(c // n_feat, c % n_feat, t, v, s, partition, o)
            for o, t, s, c, v in zip(
                offsets[idx].tolist(),
                ts[idx].tolist(),
                steps[idx].tolist(),
                cells[idx].tolist(),
                value[idx].tolist(),
                strict=True,
            )
        ]

    def _add_open(
        self,
        p: _Partition,
        partition: int,
        steps: np.ndarray,
        offsets: np.ndarray,
        dt: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
    ) -> None:
        """Readings of steps not sealed yet (columns as in `add_columns`, `dt = ts - step`), grouped by
        step: those at their step's start into the grids (all steps in one operation), the others into
        the steps' keyed stores. What neither keeps is a duplicate."""
        n = len(steps)
        if int(steps.min()) != int(steps.max()):  # group by step, arrival order kept within each
            order = np.argsort(steps, kind="stable")
            steps, offsets, dt, cells, value = (x[order] for x in (steps, offsets, dt, cells, value))
        windowed = 0
        if np.count_nonzero(dt):  # readings off their step's start: keyed by cell and ts
            off = dt != 0
            windowed += self._add_keyed(
                partition, steps[off], offsets[off], cells[off] * self._step_ms + dt[off], value[off]
            )
            on = ~off
            steps, offsets, cells, value = steps[on], offsets[on], cells[on], value[on]
        if len(steps):
            windowed += self._add_grid(partition, steps, offsets, cells, value)
        p.counts.windowed += windowed
        p.counts.duplicates += n - windowed

    def _add_grid(
        self, partition: int, steps: np.ndarray, offsets: np.ndarray, cells: np.ndarray, value: np.ndarray
    ) -> int:
        """Readings at their step's start, grouped by step: duplicates are found for all the steps at
        once, and the readings go into their steps' grids (rows of one `GridPool` array) in one
        operation. Returns how many were windowed."""
        change = steps[1:] != steps[:-1]
        starts = np.flatnonzero(np.concatenate(([True], change)))  # np.r_ would cost more than all the rest
        rank = np.zeros(len(steps), dtype=np.int64)  # each reading's step, 0 .. len(starts) - 1
        rank[1:] = np.cumsum(change)
        first = self.first_copies(rank * self._n_cells + cells, len(starts))  # keys: (step, cell)
        sts = [self._open_step(step) for step in steps[starts].tolist()]
        return self._grids.add(sts, partition, starts, rank, offsets, cells, value, first)

    def _add_keyed(
        self, partition: int, steps: np.ndarray, offsets: np.ndarray, keys: np.ndarray, value: np.ndarray
    ) -> int:
        """Readings off their step's start, grouped by step, into each step's keyed store; returns how
        many were windowed."""
        bounds = (np.flatnonzero(steps[1:] != steps[:-1]) + 1).tolist()
        windowed = 0
        for a, b in zip([0, *bounds], [*bounds, len(steps)], strict=True):
            st = self._open_step(int(steps[a]))
            windowed += st.add_keyed(partition, offsets[a:b], keys[a:b], value[a:b])
        return windowed

    def _open_step(self, step: int) -> OpenStep:
        st = self._open.get(step)
        if st is None:
            st = self._open[step] = OpenStep(self._grids)
        return st

    # -- watermark and sealing -------------------------------------------------------------------------

    def keep_active(self, partitions: Iterable[int]) -> None:
        """Partitions with unread data are not idle, however long since their last reading was processed:
        a stalled consumer (a slow forecast, Redis down) must not make a lagging partition look silent
        and let the others seal steps it still holds readings for."""
        for partition in partitions:
            p = self._parts.get(partition)
            if p is not None:
                p.touched = True

    def watermark(self) -> int | None:
        """The network watermark (never decreases); None before the first reading.

        Activity is stamped here, not per reading (one clock call per poll, not per message): a partition
        counts as active since the last `watermark()`/`seal()` call after one of its readings arrived.
        """
        parts = [p for p in self._parts.values() if p.watermark >= 0]
        if not parts:
            return self._watermark
        t = self._now()
        for p in parts:
            if p.touched:
                p.active_ms, p.touched = t, False
        active = [p.watermark for p in parts if t - p.active_ms < self.idle_timeout_ms]
        wm = min(active) if active else max(p.watermark for p in parts)
        if self._watermark is None or wm > self._watermark:
            self._watermark = wm
        return self._watermark

    @property
    def max_event_ts(self) -> int | None:
        """Highest event ts seen on any partition (the decoder's timestamp ceiling follows it)."""
        return max((p.watermark for p in self._parts.values() if p.watermark >= 0), default=None)

    @property
    def last_watermark(self) -> int | None:
        """The watermark as of the last `watermark()`/`seal()` call, without moving it: what health and
        metrics read (moving it there would let a seal run ahead of a partition not heard from yet)."""
        return self._watermark

    @property
    def sealed_through(self) -> int | None:
        """step_ts of the last sealed step (or `resume_after_step`); None before the first seal."""
        return None if self._sealed < 0 else self._sealed

    def seal(self) -> list[SealedStep]:
        """Seal, in order, every step the watermark allows (plus forced ones); call after each poll."""
        wm = self.watermark()
        if wm is None:
            return []
        step_ms = self._step_ms
        limit = wm - step_ms - self.allowed_lateness_ms  # steps with step_ts <= limit are complete
        if len(self._open) > self.max_open_steps:
            floor = sorted(self._open)[-self.max_open_steps] - step_ms  # seal up to the newest max_open_steps
            if floor > limit:
                first = min(self._open) if self._sealed < 0 else self._sealed + step_ms
                normal = max(limit - limit % step_ms, first - step_ms)  # last step sealed anyway
                self.forced_seals += max(0, (floor - normal) // step_ms)
                limit = floor
        return self._seal_through(limit)

    def flush_all(self) -> list[SealedStep]:
        """End of stream: seal every open step (and the empty ones between)."""
        if not self._open:
            return []
        return self._seal_through(max(self._open))

    def _next_step(self) -> int | None:
        if self._sealed >= 0:
            return self._sealed + self._step_ms
        return min(self._open) if self._open else None

    def _seal_through(self, limit: int) -> list[SealedStep]:
        out: list[SealedStep] = []
        step = self._next_step()
        while step is not None and step <= limit:
            out.append(self._seal_one(step))
            self._sealed = step
            step += self._step_ms
        return out

    def _seal_one(self, step: int) -> SealedStep:
        st = self._open.pop(step, None)
        mask = np.zeros(self._shape, dtype=np.uint8)  # [N, F]
        if st is None or not len(st):
            if st is not None:
                st.release()
            return SealedStep(step, self._last.copy(), mask, 0)
        n = len(st)
        flat_last = self._last.reshape(-1)  # [N * F] view
        flat_mask = mask.reshape(-1)
        cells, vals, one_each = st.readings_by_cell(self._step_ms)  # copies: the grid row can go back
        st.release()
        if one_each:  # one reading per cell: it is the aggregate
            flat_last[cells] = vals
            flat_mask[cells] = 1
            return SealedStep(step, self._last.copy(), mask, n)
        starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
        agg = aggregate(self.agg, cells, vals, starts)
        flat_last[cells[starts]] = agg
        flat_mask[cells[starts]] = 1
        return SealedStep(step, self._last.copy(), mask, n)

    # -- offsets -----------------------------------------------------------------------------------------

    def committable(self, partition: int) -> int | None:
        """Next offset safe to commit on `partition` once every step taken from `seal()` is durable.

        The smallest offset holding a reading in a still-open step, else last seen offset + 1; None for a
        partition never seen.
        """
        return self.committable_all().get(partition)

    def committable_all(self) -> dict[int, int]:
        """`committable()` of every partition seen, in one pass over the open steps."""
        out = {k: p.last_offset + 1 for k, p in self._parts.items()}
        for st in self._open.values():
            for k, o in st.first_offset.items():
                if o < out[k]:
                    out[k] = o
        return out

    @property
    def partitions(self) -> list[int]:
        return sorted(self._parts)

    @property
    def open_steps(self) -> list[int]:
        return sorted(self._open)
