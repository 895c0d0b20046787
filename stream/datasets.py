"""Readers for benchmark sensor-network files, all returning one `SensorDataset`.

Layouts (`load_dataset` tells them apart by the files present):

- PEMS (ASTGCN release): `PEMS08.npz` key `data` `[T, N, 3]` flow/occupancy/speed + edge list `from,to,cost`.
- T-GCN: `los_speed.csv` (header = sensor ids, one row per step) + `los_adj.csv` (N × N, no header).
- Wide CSV: a `date` column and one column per station (empty = missing) + `stations.csv` coordinates.
- METR-LA / PEMS-BAY: `.h5` pandas HDF frame (DatetimeIndex × sensor ids); needs PyTables.

Pure numpy/pandas file readers: no torch, no windowing, no scaling (those live in `training.data`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from stream.archive import NETWORK_FILE, Archive, read_network
from stream.config import StorageSettings
from stream.network import Feature, Network
from stream.storage import Location, is_uri, open_location


class DatasetError(ValueError):
    """A dataset file or folder is missing, has an unknown layout, or cannot be parsed."""


@dataclass(frozen=True)
class SensorDataset:
    """A whole recording on the network's grid of steps.

    `values [T, N, F]` float32 in original units (NaN where missing), `mask [T, N, F]` uint8 (1 = observed),
    `step_ts [T]` int64 epoch ms UTC of each step's start, `adjacency [N, N]` float32 if the files give one.
    """

    network: Network
    values: np.ndarray
    mask: np.ndarray
    step_ts: np.ndarray
    adjacency: np.ndarray | None = None
    # Traffic convention: a reading of exactly 0 means "no reading"; metrics and losses exclude zero targets.
    zero_is_missing: bool = False

    def __post_init__(self) -> None:
        t, n, f = self.values.shape
        if (n, f) != (self.network.n_sensors, self.network.n_features):
            raise DatasetError(
                f"values have {n} sensors × {f} features, network {self.network.name!r} has "
                f"{self.network.n_sensors} × {self.network.n_features}"
            )
        if self.mask.shape != self.values.shape:
            raise DatasetError(f"mask shape {self.mask.shape} differs from values shape {self.values.shape}")
        if self.step_ts.shape != (t,):
            raise DatasetError(f"step_ts shape {self.step_ts.shape}, expected ({t},)")

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])


_FIVE_MIN = 300_000
_DAY = 86_400_000

# Published start of the standard PEMS releases (the files carry no timestamps).
PEMS_START = {"PEMS03": "2018-09-01", "PEMS04": "2018-01-01", "PEMS07": "2017-05-01", "PEMS08": "2016-07-01"}
# T-GCN data sets: (start, step length).
PEMS_FEATURES = (
    Feature("flow", "veh/5min", 0.0),
    Feature("occupancy", "", 0.0, 1.0),
    Feature("speed", "mph", 0.0),
)
TGCN_START = {"los": ("2012-03-01", _FIVE_MIN), "sz": ("2015-01-01", 3 * _FIVE_MIN)}


def _ms(date: str) -> int:
    return int(datetime.fromisoformat(date).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _grid(start_ms: int, step_ms: int, steps: int) -> np.ndarray:
    return start_ms + step_ms * np.arange(steps, dtype=np.int64)


def _observed(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values).astype(np.uint8)


def _edges_from_adjacency(adj: np.ndarray) -> tuple[tuple[int, int, float], ...]:
    rows, cols = np.nonzero(adj)
    return tuple((int(a), int(b), float(adj[a, b])) for a, b in zip(rows, cols, strict=True) if a != b)


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
    features = PEMS_FEATURES[:f] if f <= 3 else tuple(Feature(f"f{i}") for i in range(f))
    key = next((k for k in PEMS_START if k in npz.stem.upper()), "PEMS08")
    edge_list: tuple[tuple[int, int, float], ...] = ()
    adjacency = None
    if edges is not None:
        frame = pd.read_csv(edges)
        if list(frame.columns[:2]) != ["from", "to"]:
            raise DatasetError(
                f"{edges}: expected an edge list with header from,to,cost; got {list(frame.columns)}"
            )
        cost = frame.iloc[:, 2] if frame.shape[1] > 2 else pd.Series(1.0, index=frame.index)
        edge_list = tuple(
            (int(a), int(b), float(c)) for a, b, c in zip(frame["from"], frame["to"], cost, strict=True)
        )
        adjacency = np.zeros((n, n), np.float32)
        for a, b, _ in edge_list:
            adjacency[a, b] = adjacency[b, a] = 1.0
    network = Network(
        name=npz.stem.split("_")[0].lower(),
        sensors=tuple(str(i) for i in range(n)),
        features=features,
        step_ms=_FIVE_MIN,
        edges=edge_list,
    )
    step_ts = _grid(_ms(start or PEMS_START[key]), _FIVE_MIN, t)
    return SensorDataset(network, data, _observed(data), step_ts, adjacency, zero_is_missing=True)


def read_tgcn(
    speed_csv: str | Path, adj_csv: str | Path | None = None, *, start: str | None = None
) -> SensorDataset:
    """T-GCN layout: `<name>_speed.csv` (header = sensor ids) and `<name>_adj.csv` (N × N, no header)."""
    speed_csv = Path(speed_csv)
    prefix = speed_csv.stem.split("_")[0].lower()
    default_start, step_ms = TGCN_START.get(prefix, TGCN_START["los"])
    frame = pd.read_csv(speed_csv)
    values = frame.to_numpy(dtype=np.float32)[..., None]  # [T, N, 1]
    adjacency = None
    edges: tuple[tuple[int, int, float], ...] = ()
    if adj_csv is not None:
        adjacency = pd.read_csv(adj_csv, header=None).to_numpy(dtype=np.float32)
        if adjacency.shape != (values.shape[1], values.shape[1]):
            raise DatasetError(
                f"{adj_csv} is {adjacency.shape}, expected {values.shape[1]} × {values.shape[1]}"
            )
        edges = _edges_from_adjacency(adjacency)
    name = {"los": "los-loop", "sz": "sz-taxi"}.get(prefix, prefix)
    network = Network(
        name=name,
        sensors=tuple(str(c) for c in frame.columns),
        features=(Feature("speed", "km/h" if prefix == "sz" else "mph", 0.0),),
        step_ms=step_ms,
        edges=edges,
    )
    step_ts = _grid(_ms(start or default_start), step_ms, values.shape[0])
    return SensorDataset(network, values, _observed(values), step_ts, adjacency, zero_is_missing=True)


_POLLUTANTS = ("pm10", "pm25", "pm2.5", "no2", "o3", "so2")


def read_wide_csv(
    csv: str | Path, stations: str | Path | None = None, *, feature: str | None = None
) -> SensorDataset:
    """A `date` column plus one column per station (empty = missing), and optional station coordinates.

    Rows are placed on a regular grid (the most common spacing of the dates); absent dates become missing.
    """
    csv = Path(csv)
    frame = pd.read_csv(csv)
    if "date" not in frame.columns:
        raise DatasetError(f"{csv} has no 'date' column; wide CSVs need one")
    index = pd.to_datetime(frame.pop("date"), utc=True)
    step = index.diff().dropna().mode()
    if step.empty:
        raise DatasetError(f"{csv}: need at least two dates to know the step length")
    step_ms = int(step.iloc[0].total_seconds() * 1000)
    frame.index = index
    grid = pd.date_range(index.min(), index.max(), freq=pd.Timedelta(milliseconds=step_ms))
    frame = frame.reindex(grid)
    values = frame.to_numpy(dtype=np.float32)[..., None]  # [T, N, 1]
    coords = None
    if stations is not None:
        st = pd.read_csv(stations)
        st = st.set_index(st.columns[0])
        x = next((c for c in ("coords.x1", "lon", "longitude", "x") if c in st.columns), st.columns[0])
        y = next((c for c in ("coords.x2", "lat", "latitude", "y") if c in st.columns), st.columns[1])
        missing = [c for c in frame.columns if c not in st.index]
        if missing:
            raise DatasetError(f"{stations} lacks coordinates for stations {missing[:5]}")
        coords = tuple((float(st.at[c, x]), float(st.at[c, y])) for c in frame.columns)
    if feature is None:
        feature = next((p for p in _POLLUTANTS if p in csv.stem.lower()), "value")
    unit = "µg/m³" if feature in _POLLUTANTS else ""
    network = Network(
        name=csv.parent.name or csv.stem,
        sensors=tuple(str(c) for c in frame.columns),
        features=(Feature(feature, unit, 0.0),),
        step_ms=step_ms,
        coords=coords,
    )
    step_ts = grid.as_unit("ms").asi8.astype(np.int64)
    return SensorDataset(network, values, _observed(values), step_ts)


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
    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    step_ms = int(pd.Series(index).diff().dropna().mode().iloc[0].total_seconds() * 1000)
    values = frame.to_numpy(dtype=np.float32)[..., None]  # [T, N, 1]
    network = Network(
        name=path.stem.lower(),
        sensors=tuple(str(c) for c in frame.columns),
        features=(Feature("speed", "mph", 0.0),),
        step_ms=step_ms,
    )
    step_ts = index.as_unit("ms").asi8.astype(np.int64)
    return SensorDataset(network, values, _observed(values), step_ts, zero_is_missing=True)


def _header(csv: Path) -> list[str]:
    with csv.open(encoding="utf-8-sig") as f:
        return [c.strip().strip('"') for c in f.readline().split(",")]


def _has_date_column(csv: Path) -> bool:
    return "date" in _header(csv)


def _is_edge_list(csv: Path) -> bool:
    return _header(csv)[:2] == ["from", "to"]


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
    zero_is_missing: bool = False,
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
    return SensorDataset(network, values, mask, step_ts, zero_is_missing=zero_is_missing)


def load_dataset(path: str | Path, storage: StorageSettings | None = None) -> SensorDataset:
    """Read a dataset folder or file, recognising its layout by the files present; a URI
    (`s3://…`) names an archive."""
    if is_uri(path):
        return read_archive(path, storage=storage)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no dataset at {path}")
    if path.is_dir() and (path / NETWORK_FILE).exists() and (path / "steps").is_dir():
        return read_archive(path)
    folder = path if path.is_dir() else path.parent
    csvs = sorted(folder.glob("*.csv"))
    if path.is_file():
        candidates = [path]
    else:
        candidates = sorted(folder.glob("*.npz")) + sorted(folder.glob("*.h5")) + csvs
    for file in candidates:
        suffix = file.suffix.lower()
        if suffix == ".npz":
            edge_csv = next((c for c in csvs if _is_edge_list(c)), None)
            return read_pems(file, edge_csv)
        if suffix in (".h5", ".hdf5"):
            return read_h5(file)
        if suffix == ".csv" and file.stem.endswith("_speed"):
            adj = folder / f"{file.stem[: -len('_speed')]}_adj.csv"
            return read_tgcn(file, adj if adj.exists() else None)
        if suffix == ".csv" and _has_date_column(file):
            stations = folder / "stations.csv"
            return read_wide_csv(file, stations if stations.exists() else None)
    raise DatasetError(
        f"{path}: unknown layout; expected a PEMS .npz (+ from,to,cost csv), a T-GCN *_speed.csv "
        "(+ *_adj.csv), a wide CSV with a 'date' column (+ stations.csv), or a METR-LA-style .h5"
    )
