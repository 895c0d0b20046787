"""The times of a sensor table: which column(s) hold them, their parsing to epoch ms UTC, and the step length.

A time is one column of any name in a format pandas parses (ISO 8601, `2024-05-01 13:05`, `05/01/2024`,
Parquet timestamps, or epoch seconds / milliseconds as numbers), or several columns: `year`, `month`, `day`
[`hour`, `minute`, `second`], a date and an hour column, or a date and a time-of-day column. Times without
an offset are UTC; times with one are converted. Pure pandas/numpy, no I/O: what cannot be parsed is a
`DatasetError` naming the file, the row and the column.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from stream.sensordata import DatasetError

# Columns taken for the time when none is named, in this order of preference (compared lower-case).
TIME_NAMES = (
    "time",
    "timestamp",
    "datetime",
    "date_time",
    "date",
    "ts",
    "time_utc",
    "datetime_utc",
    "utc",
    "measured_at",
    "observed_at",
    "recorded_at",
    "period_start",
    "interval_start",
    "start_time",
)
PARTS = ("year", "month", "day", "hour", "minute", "second")

# Steps an inferred step snaps to when the median spacing lies within 20 % of one (irregular sampling).
_S, _MIN, _H = 1000, 60_000, 3_600_000
NICE_STEPS_MS = (
    *(k * _S for k in (1, 2, 5, 10, 15, 20, 30)),
    *(k * _MIN for k in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)),
    *(k * _H for k in (1, 2, 3, 4, 6, 8, 12, 24, 168)),
)
_EPOCH_MS_ABOVE = 1e11  # a numeric time this large is epoch milliseconds (1973 in ms), else seconds

Where = Callable[[int], str]  # row position -> "line 7" (CSV) or "row 6" (Parquet)


def find_time_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The column(s) holding the time: year/month/day[...] parts, a commonly named column (with a separate
    time-of-day or hour column beside a date), else the first datetime-typed or date-looking column."""
    lower = {str(c).lower(): str(c) for c in frame.columns}
    if all(p in lower for p in PARTS[:3]):
        return tuple(lower[p] for p in PARTS if p in lower)
    for name in TIME_NAMES:
        if name in lower:
            if name == "date" and ("time" in lower or "hour" in lower):
                return lower["date"], lower["time" if "time" in lower else "hour"]
            return (lower[name],)
    for c in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[c]):
            return (str(c),)
    for c in frame.columns:
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        sample = col.dropna().astype(str).head(50)
        parsed = pd.to_datetime(sample, utc=True, errors="coerce", format="mixed")
        if len(sample) and parsed.notna().mean() >= 0.9:
            return (str(c),)
    return ()


def parse_times(
    frame: pd.DataFrame, columns: Sequence[str], *, source: str, where: Where, fmt: str | None = None
) -> np.ndarray:
    """`[rows]` int64 epoch ms UTC from the time column(s); the first cell that does not parse is an error."""
    cols = list(columns)
    if len(cols) == 1:
        return _one_column(frame[cols[0]], source=source, where=where, fmt=fmt)
    lower = [c.lower() for c in cols]
    if set(lower) <= set(PARTS):
        parts = frame[cols].set_axis(lower, axis=1).apply(pd.to_numeric, errors="coerce")
        parsed = pd.to_datetime(parts, utc=True, errors="coerce")
        raw = frame[cols].astype(str).agg("/".join, axis=1)
        label = "columns " + "/".join(cols)
        return _check(parsed, raw, source, where, label, "whole numbers forming a valid date and time")
    if len(cols) == 2 and lower[1] == "hour":
        day = _one_column(frame[cols[0]], source=source, where=where, fmt=fmt)
        hour = pd.to_numeric(frame[cols[1]], errors="coerce")
        bad = hour.isna() | (hour < 0) | (hour > 24) | (hour % 1 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"{source}: {where(i)}, column {cols[1]!r}: expected a whole hour 0-24, "
                f"got {frame[cols[1]].iloc[i]!r}"
            )
        return day + hour.to_numpy(np.int64) * _H
    joined = frame[cols].astype(str).agg(" ".join, axis=1)
    return _one_column(joined.rename(" + ".join(cols)), source=source, where=where, fmt=fmt)


def _one_column(col: pd.Series, *, source: str, where: Where, fmt: str | None) -> np.ndarray:
    name = str(col.name)
    if col.isna().any():
        i = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DatasetError(f"{source}: {where(i)}, column {name!r}: expected a time, got an empty cell")
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
    elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        unit = "ms" if float(np.nanmedian(np.abs(col.to_numpy(np.float64)))) >= _EPOCH_MS_ABOVE else "s"
        parsed = pd.to_datetime(col, unit=unit, utc=True, errors="coerce")
    else:
        parsed = _parse_text(col.astype(str).str.strip(), fmt)
    what = (
        f"a time in the format {fmt!r}"
        if fmt
        else "a time pandas can parse (e.g. 2024-05-01 13:05, ISO 8601)"
    )
    return _check(parsed, col, source, where, f"column {name!r}", what)


def _parse_text(text: pd.Series, fmt: str | None) -> pd.Series:
    """Times written as text. Without a format: the first of month-first and day-first that parses every
    cell (day-first first for dotted dates, `01.03.2024`, which are day-first wherever they are written),
    else per-cell parsing when a column mixes formats; the most cells parsed wins."""
    if fmt is not None:
        return pd.to_datetime(text, utc=True, errors="coerce", format=fmt)
    dotted = bool(text.str.match(r"\d{1,2}\.\d{1,2}\.\d{2,4}").all())
    best: pd.Series | None = None
    for dayfirst in (True, False) if dotted else (False, True):
        with warnings.catch_warnings():  # pandas' hint about dayfirst: the choice is made here
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(text, utc=True, errors="coerce", dayfirst=dayfirst)
        if parsed.notna().all():
            return parsed
        best = parsed if best is None or parsed.notna().sum() > best.notna().sum() else best
    mixed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    return mixed if best is None or mixed.notna().sum() > best.notna().sum() else best


def _check(parsed: pd.Series, raw: pd.Series, source: str, where: Where, label: str, what: str) -> np.ndarray:
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        more = f" ({int(bad.sum()) - 1} more rows like it)" if bad.sum() > 1 else ""
        raise DatasetError(f"{source}: {where(i)}, {label}: expected {what}, got {raw.iloc[i]!r}{more}")
    return pd.DatetimeIndex(parsed).as_unit("ms").asi8.astype(np.int64)


def parse_step(text: str) -> int:
    """A step length as pandas writes durations (`5min`, `1h`, `1D`, `30s`) -> milliseconds."""
    try:
        ms = int(pd.Timedelta(text) / pd.Timedelta(milliseconds=1))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"step {text!r}: expected a duration such as 5min, 1h or 1D") from exc
    if ms <= 0:
        raise DatasetError(f"step {text!r}: expected a positive duration")
    return ms


def infer_step_ms(ts: np.ndarray, groups: np.ndarray | None = None, *, source: str = "") -> int:
    """The step length of readings at `ts [R]` (per sensor when `groups [R]` is given; the whole table's
    times when no sensor has two), from the spacing of consecutive distinct times: the most common spacing
    when nearly all spacings are multiples of it (a regular grid with gaps), else the median spacing
    snapped to a round step within 20 %, else whole seconds (irregular sampling)."""
    order = np.lexsort((ts,) if groups is None else (ts, groups))
    gaps = np.diff(ts[order])
    if groups is not None:
        gaps = gaps[np.diff(groups[order]) == 0]
    gaps = gaps[gaps > 0]
    if not len(gaps) and groups is not None:  # no sensor read twice: the table's times together
        return infer_step_ms(ts, source=source)
    if not len(gaps):
        raise DatasetError(
            f"{source}: need at least two distinct times per sensor to infer the step; pass --step"
        )
    spacings, counts = np.unique(gaps, return_counts=True)
    mode = int(spacings[np.argmax(counts)])  # the shortest of equally common ones
    if np.mean(gaps % mode == 0) >= 0.9:
        return mode
    median = float(np.median(gaps))
    nearest = min(NICE_STEPS_MS, key=lambda s: abs(s - median))
    if abs(nearest - median) <= 0.2 * nearest:
        return int(nearest)
    return max(_S, round(median / _S) * _S)


def describe_step(step_ms: int) -> str:
    """`300000` -> `5min`, as `parse_step` reads it back."""
    for unit, ms in (("D", 86_400_000), ("h", _H), ("min", _MIN), ("s", _S)):
        if step_ms % ms == 0:
            return f"{step_ms // ms}{unit}"
    return f"{step_ms}ms"
