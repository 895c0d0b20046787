"""What the windowing produces: the sealed step, the late reading, and how readings of one cell aggregate.

Plain data and numpy; no clock, no I/O (`stream.window` does the assigning and sealing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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


def aggregate(agg: str, cells: np.ndarray, vals: np.ndarray, starts: np.ndarray) -> np.ndarray:
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
