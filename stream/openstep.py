"""The readings of one unsealed step, as the windower (`stream.window`) collects them.

Two stores that never hold the same key:

* `grid`: float64 `[N * F]` by cell (`sensor * F + feature`), the readings stamped exactly at the step's
  start (the usual case for sensors on a schedule), NaN where none arrived yet; a row of the windower's
  `GridPool`, taken on first use and given back at seal time. Validated readings are finite, so NaN means
  "empty" and a slot is written once. All open steps' grids are rows of one array, so the readings of
  many steps are written in one operation.
* `readings`: the others, keyed by `cell * step_ms + (ts - step_ts)`, `ts - step_ts > 0`.

A key is unique per (sensor, feature, ts), so the stores both drop duplicates (the first copy wins) and,
merged and sorted at seal time, give a canonical order: the aggregate does not depend on arrival order,
to the last bit. `GridPool.add` is the one writer of the grids, for the readings of any number of steps
at once; `FirstCopies` finds the duplicates among them first. Pure numpy; no clock, no I/O.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FirstCopies", "GridPool", "OpenStep"]


class GridPool:
    """The open steps' dense grids: rows of one float64 `[rows, N * F]` array, NaN where empty. A row is
    taken for a step's first reading on its grid and given back, reset to NaN, when the step seals.

    The array grows by half when no row is free (copied, so rows are addressed by index and never held as
    views) and keeps its size: at most about 1.5 times the most steps open at once, which the windower's
    `max_open_steps` bounds."""

    __slots__ = ("_free", "rows", "size")

    def __init__(self, size: int) -> None:
        self.size = size  # N * F cells
        self.rows = np.empty((0, size))
        self._free: list[int] = []

    def take(self) -> int:
        if not self._free:
            old = len(self.rows)
            grown = np.full((max(8, old + old // 2), self.size), np.nan)
            grown[:old] = self.rows
            self.rows = grown
            self._free = list(range(len(grown) - 1, old - 1, -1))  # lowest rows first
        return self._free.pop()

    def give_back(self, row: int) -> None:
        self.rows[row] = np.nan
        self._free.append(row)

    def add(
        self,
        steps: list[OpenStep],
        partition: int,
        starts: np.ndarray,
        rank: np.ndarray,
        offsets: np.ndarray,
        cells: np.ndarray,
        value: np.ndarray,
        first: np.ndarray | None,
    ) -> int:
        """Readings of `partition` at their step's start into the grids of `steps`, in one operation:
        grouped by step (`starts [s]`: where each of `steps` begins; `rank [n]`: each reading's index into
        `steps`), in arrival order within a step. `first [n]` marks the first copy of each (step, cell)
        among these readings (None: none repeats; `FirstCopies` finds them); a copy of a cell already
        filled is a duplicate too. Returns how many were windowed."""
        rows = np.array([st.ensure_row() for st in steps], dtype=np.int64)  # first: may grow self.rows
        flat = self.rows.reshape(-1)  # a view: rows of one C-ordered array
        where = rows[rank] * self.size + cells
        keep = np.isnan(flat[where])  # the cell was empty before these readings
        if first is not None:
            keep &= first
        n, windowed = len(cells), int(np.count_nonzero(keep))
        if windowed == n:  # the usual case: every reading is new
            flat[where] = value
            kept = np.diff(starts, append=n).tolist()
            held = np.minimum.reduceat(offsets, starts).tolist()
        else:
            flat[where[keep]] = value[keep]
            kept = np.add.reduceat(keep.astype(np.int64), starts).tolist()
            held = np.minimum.reduceat(np.where(keep, offsets, np.iinfo(np.int64).max), starts).tolist()
        for st, k, h in zip(steps, kept, held, strict=True):
            if k:
                st.n_grid += k
                st.hold(partition, h)
        return windowed


class OpenStep:
    """One unsealed step's readings (see the module docstring) and, per partition, the smallest offset
    holding one of them (what must not be committed before the step is archived)."""

    __slots__ = ("first_offset", "n_grid", "pool", "readings", "row")

    def __init__(self, pool: GridPool) -> None:
        self.pool = pool
        self.row = -1  # this step's row of `pool.rows`, -1 before its first reading on the grid
        self.n_grid = 0
        self.readings: dict[int, float] = {}
        self.first_offset: dict[int, int] = {}  # partition -> smallest offset holding a reading here

    def __len__(self) -> int:
        return self.n_grid + len(self.readings)

    @property
    def grid(self) -> np.ndarray | None:
        """This step's `[N * F]` grid (a view of the pool, valid until the pool next grows), or None."""
        return None if self.row < 0 else self.pool.rows[self.row]

    def ensure_row(self) -> int:
        if self.row < 0:
            self.row = self.pool.take()
        return self.row

    def release(self) -> None:
        """Give the grid back to the pool (at seal time, once the readings are read out)."""
        if self.row >= 0:
            self.pool.give_back(self.row)
            self.row = -1

    def hold(self, partition: int, offset: int) -> None:
        first = self.first_offset.get(partition)
        if first is None or offset < first:
            self.first_offset[partition] = offset

    def add_keyed(self, partition: int, offsets: np.ndarray, keys: np.ndarray, value: np.ndarray) -> int:
        """Readings of `partition` off the step's start, in arrival order, into the keyed store; returns
        how many were windowed, the rest are duplicates."""
        k = keys.tolist()
        v = value.tolist()
        readings = self.readings
        fresh = dict(zip(reversed(k), reversed(v), strict=True))  # reversed: the first copy wins
        if len(fresh) == len(k) and readings.keys().isdisjoint(fresh):
            readings.update(fresh)
            self.hold(partition, int(offsets.min()))
            return len(k)
        windowed, held = 0, None
        for key, x, o in zip(k, v, offsets.tolist(), strict=True):
            if key not in readings:
                readings[key] = x
                windowed += 1
                held = o if held is None or o < held else held
        if held is not None:
            self.hold(partition, held)
        return windowed

    def readings_by_cell(self, step_ms: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """`(cells, values, one_each)`: every reading, sorted by cell and then by ts; `one_each` when each
        cell has exactly one (only on-grid readings), so the values are the aggregates."""
        grid = self.grid
        grid_cells = np.flatnonzero(~np.isnan(grid)) if grid is not None else np.empty(0, np.int64)
        if not self.readings:  # already in cell order
            vals = grid[grid_cells] if grid is not None else np.empty(0)
            return grid_cells, vals, True
        m = len(self.readings)
        keys = np.fromiter(self.readings.keys(), dtype=np.int64, count=m)
        vals = np.fromiter(self.readings.values(), dtype=np.float64, count=m)
        if len(grid_cells):
            assert grid is not None
            keys = np.concatenate([grid_cells * step_ms, keys])
            vals = np.concatenate([grid[grid_cells], vals])
        order = np.argsort(keys, kind="stable")  # by cell, then by ts
        return keys[order] // step_ms, vals[order], False


class FirstCopies:
    """Finds duplicates among readings added together, with a reusable int64 scratch array."""

    max_scratch_cells = 1 << 22  # scratch for many steps at once (32 MB); past it, a sort

    def __init__(self, n_cells: int) -> None:
        self.n_cells = n_cells  # N * F
        self._scratch = np.empty(n_cells, dtype=np.int64)  # grows to [steps * N * F]

    def __call__(self, keys: np.ndarray, n_steps: int) -> np.ndarray | None:
        """Marks the first of equal `keys` (`step rank * N * F + cell`, `n_steps` ranks) in arrival order;
        None when no key repeats (the usual case, found in three operations)."""
        n = len(keys)
        if n < 2:
            return None
        size = n_steps * self.n_cells
        if n_steps > 1 and size > self.max_scratch_cells:  # sort instead
            first = np.zeros(n, dtype=bool)
            first[np.unique(keys, return_index=True)[1]] = True  # a stable sort: first occurrences
            return None if first.all() else first
        if self._scratch.size < size:
            self._scratch = np.empty(size, dtype=np.int64)
        stamp, idx = self._scratch, np.arange(n)
        stamp[keys] = idx  # every key keeps one of its positions: all kept iff no key repeats
        if np.count_nonzero(stamp[keys] == idx) == n:
            return None
        stamp[keys] = n
        np.minimum.at(stamp, keys, idx)
        return stamp[keys] == idx
