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
from stream.schema import Decoded
from stream.step import AGGS, LateReading, SealedStep, aggregate

__all__ = ["AGGS", "OPEN_CELLS", "LateReading", "SealedStep", "Windower", "message_columns"]

OPEN_CELLS = 8_000_000  # grid cells (sensor x feature x step, float64) unsealed steps may hold by default


def message_columns(decoded: Decoded, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(ts, cells, value)` of a message's valid readings (rows or columns), cell = sensor * F + feature,
    the form `Windower.add_columns` takes."""
    ts, sensor, feature, value = decoded.columns()
    return ts, sensor.astype(np.int64) * n_features + feature, value


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
    reading given to `add()`, and `windowed`, `late`, `duplicates` or `replayed` for each of them. A
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

    def add(self, partition: int, offset: int, decoded: Decoded) -> list[LateReading]:
        """Window the valid readings of one message; returns its late readings (usually `[]`).

        Call it for every message, even one with no valid readings, so that `committable()` moves past it.
        """
        ts, cells, value = message_columns(decoded, self._n_features)
        offsets = np.full(len(ts), offset, dtype=np.int64)
        return self.add_columns(partition, offsets, ts, cells, value, last_offset=offset)

    def add_rows(
        self, partition: int, offset: int, rows: list[tuple[int, int, int, float]]
    ) -> list[LateReading]:
        """`add()` for readings as `(ts, sensor, feature, value)` rows (`Decoder.decode_rows`)."""
        return self.add(partition, offset, Decoded(rows))

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
        """The windowing core: readings of one partition as columns in arrival order — `offsets`, `ts`
        (int64 epoch ms), `cells` (int64 `sensor * F + feature`), `value` (float64, finite), each `[n]`.

        `last_offset` (default: the largest of `offsets`) is the last message these readings came from,
        counting messages that brought none. The same steps, counts and late readings as adding the
        readings one by one in this order: the first copy of a duplicate wins.
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
        step_ms = self._step_ms
        dt = ts % step_ms
        steps = ts - dt
        late: list[LateReading] = []
        lo, hi = int(steps.min()), int(steps.max())
        if lo == hi:  # one step
            self._add_step(p, partition, lo, offsets, dt, cells, value, late)
        elif lo > self._sealed and not np.count_nonzero(dt):  # the hot path: on the grid, steps all open
            self._add_on_grid(p, partition, steps, offsets, cells, value)
        else:  # group by step, arrival order kept within each (a stable sort)
            order = np.argsort(steps, kind="stable")
            steps, offsets, dt, cells, value = (
                steps[order],
                offsets[order],
                dt[order],
                cells[order],
                value[order],
            )
            bounds = np.flatnonzero(steps[1:] != steps[:-1]) + 1
            for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), n], strict=True):
                self._add_step(
                    p, partition, int(steps[a]), offsets[a:b], dt[a:b], cells[a:b], value[a:b], late
                )
        high = int(ts.max())
        if high > p.watermark:
            p.watermark = high
        p.touched = True
        p.counts.received += n
        p.counts.late += len(late)
        return late

    def _add_step(
        self,
        p: _Partition,
        partition: int,
        step: int,
        offsets: np.ndarray,
        dt: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
        late: list[LateReading],
    ) -> None:
        """Readings of one step (columns as in `add_columns`, `dt = ts - step`); late ones go to `late`."""
        if step <= self._sealed:
            if step <= self._replay_through:
                p.counts.replayed += len(cells)
                return
            n_feat = self._n_features
            for o, d, c, v in zip(offsets.tolist(), dt.tolist(), cells.tolist(), value.tolist(), strict=True):
                late.append(LateReading(c // n_feat, c % n_feat, step + d, v, step, partition, o))
            return
        st = self._open.get(step)
        if st is None:
            st = self._open[step] = OpenStep(self._grids)
        on_grid = dt == 0
        if on_grid.all():
            windowed, held = st.add_grid(offsets, cells, value, self.first_copies(cells, 1))
            duplicates = len(cells) - windowed
        else:
            off = ~on_grid
            grid_cells = cells[on_grid]
            first = self.first_copies(grid_cells, 1)
            windowed, held = st.add_grid(offsets[on_grid], grid_cells, value[on_grid], first)
            w, h = st.add_keyed(offsets[off], cells[off] * self._step_ms + dt[off], value[off])
            duplicates = len(cells) - windowed - w
            windowed += w
            held = h if held is None or (h is not None and h < held) else held
        p.counts.duplicates += duplicates
        if windowed:
            assert held is not None
            st.hold(partition, held)
            p.counts.windowed += windowed

    def _add_on_grid(
        self,
        p: _Partition,
        partition: int,
        steps: np.ndarray,
        offsets: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
    ) -> None:
        """`add_columns` for readings of several steps, all at their step's start, in steps not sealed yet:
        duplicates are found for all the steps at once, and the readings of all the steps go into their
        grids (rows of one `GridPool` array) in one operation."""
        n = len(cells)
        open_steps, pool = self._open, self._grids
        order = np.argsort(steps, kind="stable")  # group by step, arrival order kept within each
        steps, offsets, cells, value = steps[order], offsets[order], cells[order], value[order]
        change = steps[1:] != steps[:-1]
        starts = np.flatnonzero(np.r_[True, change])
        rank = np.zeros(n, dtype=np.int64)
        rank[1:] = np.cumsum(change)
        first = self.first_copies(rank * self._n_cells + cells, len(starts))  # keys: (step, cell)
        sts = []
        for step in steps[starts].tolist():
            st = open_steps.get(step)
            if st is None:
                st = open_steps[step] = OpenStep(pool)
            sts.append(st)
        windowed = pool.add_many(sts, partition, starts, rank, offsets, cells, value, first)
        p.counts.windowed += windowed
        p.counts.duplicates += n - windowed

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
