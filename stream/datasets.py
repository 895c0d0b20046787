"""The dataset layouts `load_dataset` recognises, all read into one `SensorDataset`.

- Any CSV or Parquet table of readings, wide or long, times in any column(s): `stream.table`.
- A network file written by `sensorcast network init` (`net.toml` with a `[source]` table): the table it
  names, read onto that network (its sensors, features, step, valid ranges and `zero_is_missing`).
- T-GCN: `los_speed.csv` (header = sensor ids, one row per step, no times) + `los_adj.csv` (N × N, no
  header) + `los_locations.csv` (`sensor_id,latitude,longitude`) when present.
- Wide CSV: a `date` column and one column per station (empty = missing) + `stations.csv` coordinates.
- METR-LA / PEMS-BAY: `.h5` pandas HDF frame (DatetimeIndex × sensor ids); needs PyTables.
- PEMS (ASTGCN release): `PEMS08.npz` key `data` `[T, N, 3]` flow/occupancy/speed + edge list `from,to,cost`.
- A sensorcast archive (folder or URI): sealed steps in Parquet + `network.toml`.

T-GCN, wide CSV and `.h5` are specs of the generic table reader plus what their publications say (names,
units, the traffic convention that a 0 reading means none); PEMS arrays are not tables. Pure numpy/pandas
readers: no torch, no windowing, no scaling (those live in `training.data`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stream.archive import NETWORK_FILE, Archive, read_network
from stream.config import StorageSettings
from stream.network import Feature, Network, parse_definition
from stream.sensordata import DatasetError, SensorDataset
from stream.storage import Location, is_uri, open_location
from stream.table import TableSpec, read_table, table_dataset
from stream.tablefiles import columns_of, read_edges
from stream.tabletime import describe_step

__all__ = ["DatasetError", "SensorDataset", "datasets_root", "load_dataset", "read_archive", "read_h5"]

_FIVE_MIN = 300_000

# Published start of the standard PEMS releases (the files carry no timestamps).
PEMS_START = {"PEMS03": "2018-09-01", "PEMS04": "2018-01-01", "PEMS07": "2017-05-01", "PEMS08": "2016-07-01"}
PEMS_FEATURES = (
    Feature("flow", "veh/5min", 0.0),
    Feature("occupancy", "", 0.0, 1.0),
    Feature("speed", "mph", 0.0),
)
# T-GCN data sets: (start, step length).
TGCN_START = {"los": ("2012-03-01", _FIVE_MIN), "sz": ("2015-01-01", 3 * _FIVE_MIN)}
_POLLUTANTS = ("pm10", "pm25", "pm2.5", "no2", "o3", "so2")
_TABLES = (".csv", ".parquet", ".pq")


def _ms(date: str) -> int:
    return int(datetime.fromisoformat(date).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _described(ds: SensorDataset, **network: Any) -> SensorDataset:
    """`ds` with its inferred network's names, units, ranges or convention replaced by the published ones."""
    return replace(ds, network=replace(ds.network, **network))


def read_pems(npz: str | Path, edges: str | Path | None = None, *, start: str | None = None) -> SensorDataset:
    """A PEMS `.npz` (key `data` `[T, N, 3]` or `[T, N]`) and its optional `from,to,cost` edge list."""
    npz = Path(npz)
    with np.load(npz) as f:
        if "data" not in f.files:
            raise DatasetError(f"{npz} has no array 'data' (keys: {f.files}); is it a PEMS release file?")
        data = np.asarray(f["data"], dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]  # [T, N, 1]
    t, n, f = data.shape
    sensors = tuple(str(i) for i in range(n))
    edge_list: tuple[tuple[int, int, float], ...] = ()
    adjacency = None
    if edges is not None:
        edge_list, _ = read_edges(Path(edges), sensors)
        adjacency = np.zeros((n, n), np.float32)
        for a, b, _ in edge_list:
            adjacency[a, b] = adjacency[b, a] = 1.0
    network = Network(
        name=npz.stem.split("_")[0].lower(),
        sensors=sensors,
        features=PEMS_FEATURES[:f] if f <= 3 else tuple(Feature(f"f{i}") for i in range(f)),
        step_ms=_FIVE_MIN,
        edges=edge_list,
        zero_is_missing=True,
    )
    key = next((k for k in PEMS_START if k in npz.stem.upper()), "PEMS08")
    step_ts = _ms(start or PEMS_START[key]) + _FIVE_MIN * np.arange(t, dtype=np.int64)
    return SensorDataset(network, data, np.isfinite(data).astype(np.uint8), step_ts, adjacency)


def read_tgcn(
    speed_csv: str | Path, adj_csv: str | Path | None = None, *, start: str | None = None
) -> SensorDataset:
    """T-GCN layout: `<name>_speed.csv` (header = sensor ids, one row per step), `<name>_adj.csv` (N × N,
    no header) and, when present beside them, `<name>_locations.csv` (sensor ids with latitude/longitude)."""
    speed_csv = Path(speed_csv)
    prefix = speed_csv.stem.split("_")[0].lower()
    default_start, step_ms = TGCN_START.get(prefix, TGCN_START["los"])
    locations = speed_csv.with_name(f"{prefix}_locations.csv")
    spec = TableSpec(
        layout="wide",
        start=start or default_start,
        step=describe_step(step_ms),
        feature_name="speed",
        metadata=str(locations) if locations.exists() else None,
        edges=str(adj_csv) if adj_csv is not None else None,
    )
    ds = read_table(speed_csv, spec).dataset
    unit = "km/h" if prefix == "sz" else "mph"
    name = {"los": "los-loop", "sz": "sz-taxi"}.get(prefix, prefix)
    return _described(ds, name=name, features=(Feature("speed", unit, 0.0),), zero_is_missing=True)


def read_wide_csv(
    csv: str | Path, stations: str | Path | None = None, *, feature: str | None = None
) -> SensorDataset:
    """A `date` column plus one column per station (empty = missing), and optional station coordinates.

    Rows are placed on the grid of steps (the dates' usual spacing); absent dates become missing."""
    csv = Path(csv)
    feature = feature or next((p for p in _POLLUTANTS if p in csv.stem.lower()), "value")
    spec = TableSpec(
        layout="wide",
        time=("date",),
        feature_name=feature,
        metadata=str(stations) if stations is not None else None,
    )
    ds = read_table(csv, spec, name=csv.parent.name or csv.stem).dataset
    unit = ds.network.features[0].unit
    return _described(ds, features=(Feature(feature, unit, 0.0),))


def read_h5(path: str | Path, *, key: str | None = None) -> SensorDataset:
    """METR-LA / PEMS-BAY `.h5`: one frame, DatetimeIndex × sensor ids, speeds in mph, 0 = missing."""
    path = Path(path)
    try:
        import tables  # noqa: F401
    except ImportError as exc:
        raise DatasetError(f"reading {path.name} needs PyTables: pip install tables") from exc
    frame = pd.read_hdf(path, key=key)
    if not isinstance(frame, pd.DataFrame):
        raise DatasetError(f"{path} holds a {type(frame).__name__}, expected a DataFrame")
    table = frame.rename_axis("time").reset_index()
    table.columns = [str(c) for c in table.columns]
    spec = TableSpec(layout="wide", time=("time",))
    read = table_dataset(
        table, spec, None, source=str(path), where=lambda i: f"row {i + 1}", name=path.stem.lower()
    )
    return _described(read.dataset, features=(Feature("speed", "mph", 0.0),), zero_is_missing=True)


def read_network_table(path: str | Path) -> SensorDataset:
    """The table a network file's `[source]` names, read onto that network."""
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    text = path.read_text(encoding="utf-8")
    network = Network.loads(text, path, fmt)
    source = parse_definition(text, path, fmt).get("source")
    if not isinstance(source, dict):
        raise DatasetError(
            f"{path} defines a network but names no data ([source] with a path): write one with "
            f"`sensorcast network init TABLE --out {path.name}`, or pass the table itself"
        )
    try:
        table, spec = TableSpec.from_dict(source, path.parent)
    except (DatasetError, TypeError) as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    return read_table(table, spec, network).dataset


def datasets_root() -> Path | None:
    """The shared real-data folder: `$SENSORCAST_DATASETS`, else `../shared/datasets` beside the repo root."""
    env = os.environ.get("SENSORCAST_DATASETS")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    return root.resolve() if root.is_dir() else None


def read_archive(
    root: str | Path | Location,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    storage: StorageSettings | None = None,
) -> SensorDataset:
    """The stream's own archive (sealed steps in Parquet + `network.toml`), local or at a URI, as a
    dataset: what retraining reads. `start_ms`/`end_ms` bound the steps (end exclusive)."""
    loc = open_location(root, storage)
    network = read_network(loc)
    if network is None:
        raise DatasetError(f"{loc} has no {NETWORK_FILE}: not a sensorcast archive")
    step_ts, values, mask = Archive(loc, network).read(start_ms=start_ms, end_ms=end_ms)
    if len(step_ts) == 0:
        raise DatasetError(f"archive {loc} holds no sealed steps in the requested range")
    return SensorDataset(network, values, mask, step_ts)


def _columns(path: Path) -> list[str]:
    try:
        return columns_of(path)
    except (DatasetError, UnicodeDecodeError):
        return []


def _read_file(path: Path) -> SensorDataset | None:
    """The dataset in one file, or None when no layout claims it."""
    suffix, folder = path.suffix.lower(), path.parent
    if suffix in (".toml", ".json"):
        return read_network_table(path)
    if suffix == ".npz":
        edge_csv = next((c for c in sorted(folder.glob("*.csv")) if _columns(c)[:2] == ["from", "to"]), None)
        return read_pems(path, edge_csv)
    if suffix in (".h5", ".hdf5"):
        return read_h5(path)
    if suffix == ".csv" and path.stem.endswith("_speed"):
        adj = folder / f"{path.stem[: -len('_speed')]}_adj.csv"
        return read_tgcn(path, adj if adj.exists() else None)
    if suffix == ".csv" and "date" in _columns(path):
        stations = folder / "stations.csv"
        return read_wide_csv(path, stations if stations.exists() else None)
    if suffix in _TABLES:
        return read_table(path).dataset
    return None


def _is_side_file(path: Path) -> bool:
    """A folder's metadata, adjacency or edge list: not the readings table."""
    stem = path.stem.lower()
    return stem == "stations" or stem.endswith(("_adj", "_locations")) or _columns(path)[:2] == ["from", "to"]


def load_dataset(path: str | Path, storage: StorageSettings | None = None) -> SensorDataset:
    """Read a dataset file or folder, recognising its layout by the files present; a URI (`s3://…`) names
    an archive. In a folder, the shipped layouts are tried first, then its one readings table."""
    if is_uri(path):
        return read_archive(path, storage=storage)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no dataset at {path}")
    if path.is_dir() and (path / NETWORK_FILE).exists() and (path / "steps").is_dir():
        return read_archive(path)
    if path.is_file():
        candidates = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file())
        shipped = [p for p in files if p.suffix.lower() in (".npz", ".h5", ".hdf5")]
        shipped += [p for p in files if p.name.endswith("_speed.csv") or "date" in _columns(p)]
        tables = [p for p in files if p.suffix.lower() in _TABLES and not _is_side_file(p)]
        candidates = shipped or (tables if len(tables) == 1 else [])
    for file in candidates:
        ds = _read_file(file)
        if ds is not None:
            return ds
    raise DatasetError(
        f"{path}: unknown layout; expected a CSV or Parquet table of readings (wide or long), a network file "
        "from `sensorcast network init`, a PEMS .npz (+ from,to,cost csv), a T-GCN *_speed.csv (+ *_adj.csv), "
        "a wide CSV with a 'date' column (+ stations.csv), or a METR-LA-style .h5"
    )
