"""The files of a sensor table: the table itself (CSV or Parquet), sensor metadata (coordinates) and edges.

`read_frame` reads a CSV (comma, semicolon, tab or pipe separated; the delimiter is sniffed from the header)
or a Parquet file into a DataFrame with a `Where` that names a row the way the user finds it (`line 7` of a
CSV, `row 6` of a Parquet file). `read_coords` and `read_edges` read the optional metadata and edges files
against the data's sensor ids. Every problem is one `DatasetError` naming the file, the row or column, and
what was expected. Pure pandas/pyarrow; nothing here knows layouts, steps or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stream.sensordata import DatasetError
from stream.tabletime import Where

# Column names taken for a sensor id, longitude/x and latitude/y (compared lower-case), in this order.
SENSOR_NAMES = (
    "sensor",
    "sensor_id",
    "sensorid",
    "station",
    "station_id",
    "station_code",
    "site",
    "site_id",
    "node",
    "node_id",
    "detector",
    "detector_id",
    "device",
    "device_id",
    "location_id",
    "id",
)
LON_NAMES = ("lon", "lng", "long", "longitude", "x", "coords.x1", "easting")
LAT_NAMES = ("lat", "latitude", "y", "coords.x2", "northing")
_FROM = ("from", "source", "src", "from_id", "from_sensor", "start")
_TO = ("to", "target", "dst", "to_id", "to_sensor", "end")
_WEIGHT = ("weight", "cost", "distance", "w", "value", "length")
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt")

Edges = tuple[tuple[int, int, float], ...]


def _sep(header_line: str) -> str:
    return max((",", ";", "\t", "|"), key=header_line.count)


def columns_of(path: Path) -> list[str]:
    """The header of a CSV or Parquet table, without reading its rows."""
    if not path.is_file():
        raise DatasetError(
            f"{path} is a folder: expected a table file" if path.is_dir() else f"no file at {path}"
        )
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        return [str(c) for c in pq.read_schema(path).names]
    if suffix in _CSV:
        with path.open(encoding="utf-8-sig") as f:
            line = f.readline().rstrip("\r\n")
        return [c.strip().strip('"') for c in line.split(_sep(line))]
    raise DatasetError(f"{path}: expected a .csv or .parquet table, got a {suffix or 'suffix-less'} file")


def read_frame(path: Path, text: Sequence[str] = ()) -> tuple[pd.DataFrame, Where]:
    """The table at `path` (columns in `text` kept as strings: ids, names) and how to name its rows."""
    columns = columns_of(path)
    keep = [c for c in text if c in columns]
    try:
        if path.suffix.lower() in _PARQUET:
            frame = pd.read_parquet(path)
            frame.columns = [str(c) for c in frame.columns]
            for c in keep:
                frame[c] = as_ids(frame[c])
            where = _rows("row", 1)
        else:
            with path.open(encoding="utf-8-sig") as f:
                sep = _sep(f.readline())
            frame = pd.read_csv(
                path, sep=sep, dtype={c: str for c in keep}, encoding="utf-8-sig", skipinitialspace=True
            )
            frame.columns = [str(c).strip() for c in frame.columns]
            where = _rows("line", 2)  # line 1 is the header
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: cannot read the table: {exc}") from exc
    if frame.empty:
        raise DatasetError(f"{path}: the table has no rows")
    return frame.reset_index(drop=True), where


def _rows(word: str, first: int) -> Where:
    def where(i: int) -> str:
        return f"{word} {i + first}"

    return where


def as_ids(col: pd.Series) -> pd.Series:
    """Sensor ids as strings: `773869`, never `773869.0` (integer ids in a float column with gaps)."""
    if pd.api.types.is_float_dtype(col) and (col.dropna() % 1 == 0).all():
        col = col.astype("Int64")
    return col.astype("string").str.strip().astype(object).where(col.notna(), None)


def numbers(frame: pd.DataFrame, column: str, *, source: Path | str, where: Where) -> np.ndarray:
    """`[rows]` float64 of one column; the first cell that is neither a number nor empty is an error."""
    col = frame[column]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(np.float64, na_value=np.nan)
    text = col.astype("string").str.strip()
    num = pd.to_numeric(text, errors="coerce")
    bad = (num.isna() & text.notna() & (text != "")).to_numpy(bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        more = f" ({int(bad.sum()) - 1} more cells like it in this column)" if bad.sum() > 1 else ""
        raise DatasetError(
            f"{source}: {where(i)}, column {column!r}: expected a number, got {col.iloc[i]!r}{more}"
        )
    return num.to_numpy(np.float64, na_value=np.nan)


def pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    """The first of `names` among `columns`, compared lower-case; the column as the table spells it."""
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def read_coords(path: Path, sensors: Sequence[str], data: Path | str) -> tuple[tuple[float, float], ...]:
    """One `(lon, lat)` (or `(x, y)`) per sensor of the data, in its order, from a metadata table with an id
    column and coordinate columns under common names (`sensor_id`/`station`/..., `lon`/`longitude`/`x`,
    `lat`/`latitude`/`y`). Every data sensor needs a row, and every row a data sensor."""
    columns = columns_of(path)
    frame, where = read_frame(path, text=columns)
    id_col = pick(columns, SENSOR_NAMES) or columns[0]
    x_col, y_col = pick(columns, LON_NAMES), pick(columns, LAT_NAMES)
    if x_col is None or y_col is None:
        raise DatasetError(
            f"{path}: expected coordinate columns named one of {'/'.join(LON_NAMES)} and one of "
            f"{'/'.join(LAT_NAMES)}; got {columns}"
        )
    ids = frame[id_col].fillna("")
    x = numbers(frame, x_col, source=path, where=where)
    y = numbers(frame, y_col, source=path, where=where)
    known = set(sensors)
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            raise DatasetError(f"{path}: {where(i)} repeats sensor {sid!r} of {where(seen[sid])}")
        if sid not in known:
            raise DatasetError(
                f"{path}: {where(i)}, column {id_col!r}: sensor {sid!r} is not in the data {data}; "
                f"expected only its {len(sensors)} sensors (e.g. {', '.join(sensors[:3])})"
            )
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            raise DatasetError(f"{path}: {where(i)}: sensor {sid!r} has no {x_col}/{y_col}")
        seen[sid] = i
    missing = [s for s in sensors if s not in seen]
    if missing:
        raise DatasetError(
            f"{path}: no row for {len(missing)} sensors of the data {data} (e.g. {missing[:5]}); "
            "expected one row per sensor"
        )
    return tuple((float(x[seen[s]]), float(y[seen[s]])) for s in sensors)


def read_edges(path: Path, sensors: Sequence[str]) -> tuple[Edges, np.ndarray | None]:
    """Edges from an N × N weight matrix without header (rows and columns in the data's sensor order; also
    returned as the adjacency) or an edge list with a header (`from,to[,weight]`, also `source,target`,
    `src,dst`; weight also `cost`/`distance`) naming sensor ids."""
    columns = columns_of(path)
    if all(_is_number(c) for c in columns):
        return _matrix(path, len(sensors))
    frame, where = read_frame(path, text=columns)
    a = pick(columns, _FROM) or columns[0]
    b = pick(columns, _TO) or (columns[1] if len(columns) > 1 else None)
    if b is None:
        raise DatasetError(f"{path}: expected an edge list with from,to[,weight] columns; got {columns}")
    w_col = pick(columns, _WEIGHT) or next((c for c in columns if c not in (a, b)), None)
    weight = numbers(frame, w_col, source=path, where=where) if w_col else np.ones(len(frame))
    index = {s: i for i, s in enumerate(sensors)}
    edges = []
    for i, (u, v) in enumerate(zip(frame[a], frame[b], strict=True)):
        for col, sid in ((a, u), (b, v)):
            if sid not in index:
                raise DatasetError(
                    f"{path}: {where(i)}, column {col!r}: sensor {sid!r} is not in the data; "
                    f"expected one of its {len(sensors)} sensor ids"
                )
        w = float(weight[i]) if np.isfinite(weight[i]) else 1.0
        edges.append((index[u], index[v], w))
    return tuple(edges), None


def _matrix(path: Path, n: int) -> tuple[Edges, np.ndarray]:
    with path.open(encoding="utf-8-sig") as f:
        sep = _sep(f.readline())
    frame = pd.read_csv(path, header=None, sep=sep)
    where = _rows("line", 1)
    adj = np.stack([numbers(frame, c, source=path, where=where) for c in frame.columns], axis=1)  # [N, N]
    if adj.shape != (n, n):
        raise DatasetError(
            f"{path}: a {adj.shape[0]} × {adj.shape[1]} matrix; expected {n} × {n}, one row and "
            "column per sensor of the data in its order"
        )
    adj = np.nan_to_num(adj).astype(np.float32)
    rows, cols = np.nonzero(adj)
    edges = tuple((int(i), int(j), float(adj[i, j])) for i, j in zip(rows, cols, strict=True) if i != j)
    return edges, adj


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
