"""The generic sensor table reader: any CSV or Parquet table of readings -> a `SensorDataset`.

Layouts: **wide** (a time and one column per sensor) or **long** (one row per sensor and time: a sensor
column, the time, and either one column per feature or a feature-name column and a value column). Times
are one column of any name or several (`stream.tabletime`). Readings go on the grid of steps as the stream
puts them (`Network.step_of`: the step containing the time); several readings of one sensor and feature in
one step are averaged (the windower's default), and a step without one is missing (mask 0). An exact
duplicate (same sensor, feature and time) is an error, never a silent pick.

A `TableSpec` says what the reader cannot see for itself; what it leaves unset is detected, and
`read_table` returns the resolved spec so that `sensorcast network init` writes it into the network file
(`[source]`) and later reads are exact. Given a `Network`, the table is read onto it: its sensor order,
features, step and valid ranges (readings outside are dropped, as the stream rejects them; sensors it does
not list are dropped). Without one, a network is inferred: ids, features (units from names such as
`speed (mph)`), ranges, step; coordinates and edges from the metadata and edges files.

Pure pandas/pyarrow/numpy: no torch, no Ray, no Kafka.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stream.network import Feature, Network
from stream.sensordata import DatasetError, SensorDataset
from stream.tablefiles import SENSOR_NAMES, columns_of, numbers, pick, read_coords, read_edges, read_frame
from stream.tabletime import Where, describe_step, find_time_columns, infer_step_ms, parse_step, parse_times

FEATURE_NAMES = ("feature", "variable", "quantity", "measure", "metric", "parameter", "pollutant", "channel")
VALUE_NAMES = ("value", "reading", "measurement", "val", "obs", "observation")
MAX_CELLS = 500_000_000  # steps × sensors × features: beyond this the step is almost surely wrong


@dataclass(frozen=True)
class TableSpec:
    """How to read a table; every field left at its default is detected.

    `time`: one column or several (year/month/day[/hour...], date + hour, date + time of day);
    `start` instead: rows are consecutive steps from this time (needs `step`). `step`: a duration such as
    `5min` (default: inferred). `sensor`/`feature`: the long layout's id and feature-name columns.
    `values`: the value columns (wide: the sensors' columns, default every other column; long: one per
    feature, or the value column beside `feature`). `feature_name`: the wide layout's one feature. `metadata`/`edges`: optional files.
    """

    layout: str = "auto"  # wide | long | auto
    time: tuple[str, ...] = ()
    time_format: str | None = None
    start: str | None = None
    step: str | None = None
    sensor: str | None = None
    feature: str | None = None
    values: tuple[str, ...] = ()
    feature_name: str | None = None
    metadata: str | None = None
    edges: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "wide", "long"):
            raise DatasetError(f"layout {self.layout!r}: expected wide, long or auto")
        if self.start is not None and self.time:
            raise DatasetError("give either time columns or a start time for consecutive rows, not both")
        if self.start is not None and self.step is None:
            raise DatasetError(f"start {self.start!r} needs a step (e.g. 5min): rows are consecutive steps")
        object.__setattr__(self, "time", tuple(self.time))
        object.__setattr__(self, "values", tuple(self.values))

    def to_dict(self, table: Path, base: Path) -> dict[str, Any]:
        """The `[source]` table of a network file in folder `base`: the table's path and what is set."""
        out: dict[str, Any] = {"path": _relative(table, base)}
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in (f.default, (), None):
                out[f.name] = _relative(Path(value), base) if f.name in ("metadata", "edges") else value
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path) -> tuple[Path, TableSpec]:
        """The table path and spec of a `[source]` table (relative paths are from `base`)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"path"})
        if "path" not in data or unknown:
            raise DatasetError(f"[source] needs a path and takes {sorted(known)}; got {sorted(data)}")
        kw: dict[str, Any] = {k: v for k, v in data.items() if k != "path"}
        for k in ("metadata", "edges"):
            if k in kw:
                kw[k] = str(base / kw[k])
        for k in ("time", "values"):
            if k in kw:
                kw[k] = (kw[k],) if isinstance(kw[k], str) else tuple(kw[k])
        return base / str(data["path"]), cls(**kw)


@dataclass(frozen=True)
class TableRead:
    """A table read onto a network, with what reading it did."""

    dataset: SensorDataset
    spec: TableSpec  # resolved: the layout and every column named
    readings: int  # placed on the grid (not empty cells, dropped sensors or values out of range)
    off_grid: int  # readings whose time is not a step start, put on the step that contains it
    merged: int  # readings averaged with others of the same sensor, feature and step
    out_of_range: int  # dropped: outside the network's valid range for the feature
    dropped_sensors: tuple[str, ...]  # in the table but not in the network


def read_table(
    path: str | Path,
    spec: TableSpec | None = None,
    network: Network | None = None,
    *,
    name: str | None = None,
) -> TableRead:
    """Read the CSV/Parquet table at `path` by `spec` onto `network` (inferred when None, named `name` or
    after the file)."""
    path = Path(path)
    spec = spec or TableSpec()
    columns = columns_of(path)
    sensor = spec.sensor or (pick(columns, SENSOR_NAMES) if spec.layout != "wide" else None)
    text = [c for c in (sensor, spec.feature or pick(columns, FEATURE_NAMES)) if c]
    frame, where = read_frame(path, text=text)
    return table_dataset(frame, spec, network, source=str(path), where=where, name=name or path.stem)


def table_dataset(
    frame: pd.DataFrame,
    spec: TableSpec,
    network: Network | None,
    *,
    source: str,
    where: Where,
    name: str,
) -> TableRead:
    """`read_table` on a table already in memory; `source` and `where` name its file and rows in errors."""
    spec = _resolve(spec, frame, source)
    if spec.start is not None:
        stamp = pd.Timestamp(spec.start)
        stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
        row_ts = stamp.value // 1_000_000 + parse_step(str(spec.step)) * np.arange(len(frame), dtype=np.int64)
    else:
        row_ts = parse_times(frame, spec.time, source=source, where=where, fmt=spec.time_format)
    got = (_wide if spec.layout == "wide" else _long)(frame, spec, row_ts, source, where)
    if network is None:
        step_ms = parse_step(spec.step) if spec.step else infer_step_ms(row_ts, got.row_sensor, source=source)
        network, adjacency = _infer_network(name, got, step_ms, spec, source)
        dropped: tuple[str, ...] = ()
        out_of_range = 0
    else:  # the network file holds the coordinates and edges
        adjacency = None
        got, dropped, out_of_range = _onto(network, got, source)
    return _place(network, adjacency, row_ts, got, spec, source, dropped, out_of_range)


@dataclass(frozen=True)
class _Readings:
    """The non-empty value cells of a table: `row`, `sensor`, `feature` codes and `value`, each `[readings]`."""

    sensors: list[str]  # sensor code -> id
    features: list[str]  # feature code -> column or feature name
    row: np.ndarray
    sensor: np.ndarray
    feature: np.ndarray
    value: np.ndarray
    row_sensor: np.ndarray | None = None  # long layout: each row's sensor code (the step is per sensor)

    def keep(self, ok: np.ndarray, sensor: np.ndarray, feature: np.ndarray) -> _Readings:
        return replace(self, row=self.row[ok], sensor=sensor[ok], feature=feature[ok], value=self.value[ok])


def _block(frame: pd.DataFrame, columns: tuple[str, ...], source: str, where: Where) -> np.ndarray:
    return np.stack([numbers(frame, c, source=source, where=where) for c in columns], axis=1)  # [R, K]


def _wide(frame: pd.DataFrame, spec: TableSpec, row_ts: np.ndarray, source: str, where: Where) -> _Readings:
    expected = (
        "one row per time in a wide table (one row per sensor and time is a long table: "
        "pass --layout long --sensor-column COLUMN)"
    )
    _no_duplicates(frame, spec, source, where, [row_ts], expected)
    columns = spec.values or tuple(
        str(c) for c in frame.columns if c not in spec.time and not str(c).startswith("Unnamed:")
    )
    block = _block(frame, columns, source, where)  # [R, N]
    r, s = np.nonzero(np.isfinite(block))
    return _Readings(list(columns), [spec.feature_name or "value"], r, s, np.zeros_like(r), block[r, s])


def _long(frame: pd.DataFrame, spec: TableSpec, row_ts: np.ndarray, source: str, where: Where) -> _Readings:
    ids = frame[str(spec.sensor)]
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DatasetError(
            f"{source}: {where(i)}, column {spec.sensor!r}: expected a sensor id, got an empty cell"
        )
    row_sensor, sensors = pd.factorize(ids.astype(str).str.strip())
    if spec.feature is None:  # one value column per feature
        _no_duplicates(frame, spec, source, where, [row_sensor, row_ts], "one row per sensor and time")
        block = _block(frame, spec.values, source, where)  # [R, F]
        r, f = np.nonzero(np.isfinite(block))
        return _Readings(list(sensors), list(spec.values), r, row_sensor[r], f, block[r, f], row_sensor)
    row_feature, names = pd.factorize(frame[spec.feature].astype(str).str.strip())
    expected = "one row per sensor, feature and time"
    _no_duplicates(frame, spec, source, where, [row_sensor, row_feature, row_ts], expected)
    vals = numbers(frame, spec.values[0], source=source, where=where)
    r = np.flatnonzero(np.isfinite(vals))
    return _Readings(list(sensors), list(names), r, row_sensor[r], row_feature[r], vals[r], row_sensor)


def _resolve(spec: TableSpec, frame: pd.DataFrame, source: str) -> TableSpec:
    columns = [str(c) for c in frame.columns]
    named = [c for c in (*spec.time, spec.sensor, spec.feature, *spec.values) if c]
    absent = [c for c in named if c not in columns]
    if absent:
        raise DatasetError(f"{source}: no column {absent[0]!r}; the columns are {columns}")
    time = spec.time or (() if spec.start else find_time_columns(frame))
    if not time and spec.start is None:
        raise DatasetError(
            f"{source}: no time column among {columns[:10]}: expected a column of times (--time-column NAME), "
            "year/month/day columns, or --start and --step when rows are consecutive steps"
        )
    rest = [c for c in columns if c not in time and not c.startswith("Unnamed:")]
    sensor = spec.sensor or (pick(rest, SENSOR_NAMES) if spec.layout != "wide" else None)
    if spec.layout == "long" and sensor is None:
        raise DatasetError(
            f"{source}: a long table needs a sensor id column, named one of {', '.join(SENSOR_NAMES)}; "
            f"pass --sensor-column (columns: {columns})"
        )
    if sensor is None:  # the sensors' columns stay implicit (every other column) unless named
        return replace(spec, layout="wide", time=tuple(time))
    rest.remove(sensor)
    feature = spec.feature or pick(rest, FEATURE_NAMES)
    values = spec.values
    if feature is not None:
        rest.remove(feature)
        value = pick(rest, VALUE_NAMES) or (rest[0] if len(rest) == 1 else None)
        values = values or ((value,) if value else ())
        if len(values) != 1:
            raise DatasetError(
                f"{source}: beside the feature column {feature!r}, expected one value column; pass "
                f"--value-column (candidates: {rest})"
            )
    values = values or tuple(rest)
    if not values:
        raise DatasetError(f"{source}: no value columns beside the time and sensor columns ({columns})")
    return replace(
        spec, layout="long", time=tuple(time), sensor=sensor, feature=feature, values=tuple(values)
    )


def _no_duplicates(
    frame: pd.DataFrame, spec: TableSpec, source: str, where: Where, keys: list[np.ndarray], expected: str
) -> None:
    order = np.lexsort(keys[::-1])  # stable: equal keys keep row order
    same = np.ones(len(order) - 1, bool)
    for k in keys:
        same &= k[order[1:]] == k[order[:-1]]
    if same.any():
        pairs = np.stack([order[:-1][same], order[1:][same]], axis=1)  # [D, 2] earlier row, later row
        i, j = (int(x) for x in pairs[np.argmin(pairs[:, 1])])
        shown = ", ".join(f"{c}={frame[c].iloc[j]!r}" for c in (*spec.time, spec.sensor, spec.feature) if c)
        raise DatasetError(
            f"{source}: {where(i)} and {where(j)} are duplicates ({shown}): expected {expected}"
        )


_UNIT = re.compile(r"^\s*(.+?)\s*[\(\[]\s*(.*?)\s*[\)\]]\s*$")
_KNOWN_UNITS = {
    "pm10": "µg/m³",
    "pm25": "µg/m³",
    "pm2.5": "µg/m³",
    "no2": "µg/m³",
    "o3": "µg/m³",
    "so2": "µg/m³",
}


def _feature_name(column: str) -> tuple[str, str]:
    """`speed (mph)` / `speed [mph]` -> (`speed`, `mph`); a known pollutant gets its usual unit."""
    m = _UNIT.match(column)
    return (m.group(1), m.group(2)) if m else (column, _KNOWN_UNITS.get(column.lower(), ""))


def _nice(x: float, up: bool) -> float:
    if x == 0:
        return 0.0
    mag = 10 ** (math.floor(math.log10(abs(x))) - 1)  # two significant digits
    return float(round((math.ceil(x / mag) if up else math.floor(x / mag)) * mag, 12))


def _range(v: np.ndarray) -> tuple[float, float]:
    """Valid range inferred from the observed values: each bound pushed out by the larger of the observed
    width and its own size (53 -> 106), rounded outward; 0 stays the floor of non-negative data (counts,
    speeds, concentrations)."""
    if not len(v):
        return -math.inf, math.inf
    lo, hi = float(v.min()), float(v.max())
    width = hi - lo
    low = 0.0 if lo >= 0 else _nice(lo - max(width, abs(lo)), up=False)
    return low, _nice(hi + max(width, abs(hi), 1.0), up=True)


def _infer_network(
    name: str, got: _Readings, step_ms: int, spec: TableSpec, source: str
) -> tuple[Network, np.ndarray | None]:
    feats = []
    for k, column in enumerate(got.features):
        fname, unit = _feature_name(column)
        feats.append(Feature(fname, unit, *_range(got.value[got.feature == k])))
    coords = read_coords(Path(spec.metadata), got.sensors, source) if spec.metadata else None
    edges, adjacency = read_edges(Path(spec.edges), got.sensors) if spec.edges else ((), None)
    network = Network(name, tuple(got.sensors), tuple(feats), step_ms, coords=coords, edges=edges)
    return network, adjacency


def _onto(network: Network, got: _Readings, source: str) -> tuple[_Readings, tuple[str, ...], int]:
    """Readings mapped to `network`'s sensor and feature indices: sensors it does not list and values
    outside its ranges dropped (with their counts), a network sensor or feature the table lacks refused."""
    present = set(got.sensors)
    absent = [x for x in network.sensors if x not in present]
    if absent:
        raise DatasetError(
            f"{source}: no readings for {len(absent)} sensors of network {network.name!r} "
            f"(e.g. {absent[:5]}); expected every sensor the network lists"
        )
    if network.n_features == 1 and len(got.features) == 1:  # a wide table's one feature, however named
        f_map = np.zeros(1, np.int64)
    else:
        names = [_feature_name(c)[0] for c in got.features]
        lacking = [x for x in network.feature_names if x not in names]
        if lacking:
            raise DatasetError(
                f"{source}: no values for feature {lacking[0]!r} of network {network.name!r} "
                f"(the table has {names})"
            )
        f_map = np.array([network.feature_index.get(n, -1) for n in names], np.int64)
    s = np.array([network.sensor_index.get(x, -1) for x in got.sensors], np.int64)[got.sensor]
    f = f_map[got.feature]
    known = (s >= 0) & (f >= 0)
    lo = np.array([x.min for x in network.features])[np.maximum(f, 0)]
    hi = np.array([x.max for x in network.features])[np.maximum(f, 0)]
    inside = (got.value >= lo) & (got.value <= hi)
    dropped = tuple(x for x in got.sensors if x not in network.sensor_index)
    return got.keep(known & inside, s, f), dropped, int((known & ~inside).sum())


def _place(
    network: Network,
    adjacency: np.ndarray | None,
    row_ts: np.ndarray,
    got: _Readings,
    spec: TableSpec,
    source: str,
    dropped: tuple[str, ...],
    out_of_range: int,
) -> TableRead:
    step = network.step_ms
    row_step = row_ts - row_ts % step  # Network.step_of, vectorised
    first = int(row_step.min())
    t = int((row_step.max() - first) // step) + 1
    n, nf = network.n_sensors, network.n_features
    if t * n * nf > MAX_CELLS:
        raise DatasetError(
            f"{source}: {t} steps of {describe_step(step)} × {n} sensors × {nf} features is too large a "
            "grid; is the step right? (pass --step)"
        )
    cell = (((row_step[got.row] - first) // step) * n + got.sensor) * nf + got.feature  # [readings]
    counts = np.bincount(cell, minlength=t * n * nf)
    sums = np.bincount(cell, weights=got.value, minlength=t * n * nf)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / counts, np.nan).astype(np.float32).reshape(t, n, nf)  # [T, N, F]
    mask = (counts > 0).astype(np.uint8).reshape(t, n, nf)  # [T, N, F]
    step_ts = first + step * np.arange(t, dtype=np.int64)
    ds = SensorDataset(network, values, mask, step_ts, adjacency)
    return TableRead(
        dataset=ds,
        spec=spec,
        readings=len(got.value),
        off_grid=int((row_ts[got.row] != row_step[got.row]).sum()),
        merged=int(len(got.value) - mask.sum()),
        out_of_range=out_of_range,
        dropped_sensors=dropped,
    )


def _relative(path: Path, base: Path) -> str:
    """`path` from folder `base` when it lies within `base` or beside it (the pair moves together), else
    absolute."""
    try:
        rel = os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive
        return str(path.resolve())
    return str(path.resolve()) if rel.startswith(os.path.join(os.pardir, os.pardir)) else rel
