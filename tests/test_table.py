"""Your own data: the generic table reader (`stream.table`) — layouts, times, the step grid and its masks,
metadata and edges, bad input, reading onto an edited network. The commands are in test_network_init.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stream.datasets import DatasetError, load_dataset
from stream.network import Feature, Network, NetworkError
from stream.sensordata import gaps
from stream.table import TableSpec, read_table
from stream.tabletime import infer_step_ms

H = 3_600_000
T0 = 1_709_251_200_000  # 2024-03-01 00:00 UTC


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def counts_table(steps: int = 150, seed: int = 0) -> pd.DataFrame:
    """A long table laid out unlike any shipped dataset: one row per station and reading, the time split
    into Year/Month/Day/Hour/Minute columns, irregular minutes, a few hours missing or read twice, and
    counts where zero is a real value."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, station in enumerate(("north-1", "north-2", "east-7", "ring-3")):
        for h in range(steps):
            if rng.random() < 0.08:
                continue
            level = 20 + 15 * math.sin(2 * math.pi * (h + 3 * k) / 24)
            for minute in sorted(rng.choice(60, size=2 if rng.random() < 0.05 else 1, replace=False)):
                t = pd.Timestamp(T0 + h * H + int(minute) * 60_000, unit="ms")
                count = float(max(0, round(level + rng.normal(0, 2)))) if h % 24 != 4 else 0.0
                rows.append((station, t.year, t.month, t.day, t.hour, int(minute), count))
    return pd.DataFrame(rows, columns=["Station", "Year", "Month", "Day", "Hour", "Minute", "cars (veh/h)"])


# --- layouts and times -----------------------------------------------------------------------------------


def test_wide_csv_any_time_column_name_semicolons_and_gaps(tmp_path: Path) -> None:
    csv = write_file(
        tmp_path / "levels.csv",
        "Zeitpunkt;P1;P2\n2024-03-01 00:00;1.5;2\n2024-03-01 00:10;;3\n2024-03-01 00:30;4;\n",
    )
    read = read_table(csv)
    ds = read.dataset
    assert read.spec.layout == "wide" and read.spec.time == ("Zeitpunkt",)
    assert ds.network.sensors == ("P1", "P2") and ds.network.step_ms == 600_000
    assert ds.step_ts.tolist() == [T0 + k * 600_000 for k in range(4)]
    assert ds.mask[:, :, 0].tolist() == [[1, 1], [0, 1], [0, 0], [1, 0]]
    assert np.isnan(ds.values[2]).all() and ds.values[3, 0, 0] == 4
    assert not ds.zero_is_missing


def test_long_table_irregular_times_go_on_the_step_that_contains_them(tmp_path: Path) -> None:
    csv = write_file(
        tmp_path / "r.csv",
        "sensor,timestamp,value\n"
        "a,2024-03-01T00:04:00Z,1\n"
        "a,2024-03-01T00:07:00+00:00,3\n"  # same step as the one above: averaged
        "b,2024-03-01T00:01:00Z,5\n"
        "a,2024-03-01T00:13:00Z,6\n"
        "b,2024-03-01T00:26:00Z,7\n"
        "a,2024-03-01T00:30:00Z,8\n",
    )
    read = read_table(csv, TableSpec(step="10min"))
    ds = read.dataset
    assert read.spec.layout == "long" and read.spec.sensor == "sensor" and read.spec.values == ("value",)
    assert ds.step_ts[0] == T0 and ds.n_steps == 4
    assert ds.values[:, 0, 0].tolist() == [2.0, 6.0, pytest.approx(np.nan, nan_ok=True), 8.0]
    assert ds.mask[:, 1, 0].tolist() == [1, 0, 1, 0]
    assert (read.readings, read.off_grid, read.merged) == (6, 5, 1)


def test_long_table_with_a_feature_column(tmp_path: Path) -> None:
    csv = write_file(
        tmp_path / "air.csv",
        "site,date,pollutant,value\nX,2024-03-01,pm10,12\nX,2024-03-01,no2,30\nY,2024-03-02,pm10,8\n",
    )
    ds = read_table(csv).dataset
    assert ds.network.sensors == ("X", "Y") and ds.network.feature_names == ("pm10", "no2")
    assert ds.network.features[0].unit == "µg/m³" and ds.network.step_ms == 86_400_000
    assert ds.mask.sum() == 3 and ds.values[1, 1, 0] == 8


def test_year_month_day_hour_columns_in_parquet(tmp_path: Path) -> None:
    frame = counts_table(steps=48)
    frame.to_parquet(tmp_path / "counts.parquet")
    read = read_table(tmp_path / "counts.parquet")
    ds = read.dataset
    assert read.spec.time == ("Year", "Month", "Day", "Hour", "Minute")
    assert read.spec.sensor == "Station" and ds.network.step_ms == H  # inferred from irregular minutes
    assert ds.network.features == (Feature("cars", "veh/h", 0.0, ds.network.features[0].max),)
    assert ds.step_ts[0] == T0 and ds.n_steps == 48 and read.off_grid > 0 and read.merged > 0
    assert 0.05 < gaps(ds)["missing_share"] < 0.15


def test_date_plus_hour_epoch_seconds_and_rows_without_times(tmp_path: Path) -> None:
    a = read_table(
        write_file(tmp_path / "a.csv", "date,hour,s1\n2024-03-01,0,1\n2024-03-01,1,2\n2024-03-01,3,4\n")
    )
    assert a.spec.time == ("date", "hour") and a.dataset.step_ts.tolist() == [T0 + k * H for k in range(4)]
    b = read_table(write_file(tmp_path / "b.csv", f"ts,s1\n{T0 // 1000},1\n{T0 // 1000 + 3600},2\n"))
    assert b.dataset.step_ts.tolist() == [T0, T0 + H]
    c = read_table(
        write_file(tmp_path / "c.csv", "s1,s2\n1,2\n3,4\n"), TableSpec(start="2024-03-01", step="1h")
    )
    assert c.dataset.step_ts.tolist() == [T0, T0 + H] and c.dataset.network.sensors == ("s1", "s2")


def test_day_first_dates_when_only_day_first_parses_or_dotted(tmp_path: Path) -> None:
    dotted = read_table(write_file(tmp_path / "d.csv", "Datum,S1\n01.03.2024 00:00,1\n01.03.2024 01:00,2\n"))
    assert dotted.dataset.step_ts.tolist() == [T0, T0 + H]  # 1 March, not 3 January
    slashed = read_table(write_file(tmp_path / "s.csv", "date,S1\n29/02/2024,1\n01/03/2024,2\n"))
    assert slashed.dataset.step_ts.tolist() == [T0 - 86_400_000, T0]


def test_step_inference_regular_with_gaps_and_jittered() -> None:
    gappy = T0 + 300_000 * np.array([0, 1, 2, 5, 6, 9, 10, 11, 30])
    assert infer_step_ms(gappy) == 300_000
    jitter = T0 + np.cumsum(np.random.default_rng(1).integers(240_000, 360_000, size=200))
    assert infer_step_ms(jitter) == 300_000
    per_sensor = np.array([T0, T0 + H, T0, T0 + H])  # two sensors, each hourly
    assert infer_step_ms(per_sensor, np.array([0, 0, 1, 1])) == H


# --- metadata and edges ----------------------------------------------------------------------------------


def test_metadata_coordinates_and_edges_by_list_or_matrix(tmp_path: Path) -> None:
    csv = write_file(tmp_path / "w.csv", "time,A,B,C\n2024-03-01 00:00,1,2,3\n2024-03-01 01:00,1,2,3\n")
    meta = write_file(
        tmp_path / "m.csv", "name,sensor_id,Latitude,Longitude\nc,C,50,7\na,A,52,13\nb,B,48,11\n"
    )
    edges = write_file(tmp_path / "e.csv", "source,target,distance\nA,B,2.5\nB,C,1\n")
    net = read_table(csv, TableSpec(metadata=str(meta), edges=str(edges))).dataset.network
    assert net.coords == ((13.0, 52.0), (11.0, 48.0), (7.0, 50.0))
    assert net.edges == ((0, 1, 2.5), (1, 2, 1.0))
    matrix = write_file(tmp_path / "adj.csv", "0,1,0\n1,0,0.5\n0,0.5,0\n")
    ds = read_table(csv, TableSpec(edges=str(matrix))).dataset
    assert ds.network.edges == ((0, 1, 1.0), (1, 0, 1.0), (1, 2, 0.5), (2, 1, 0.5))
    assert ds.adjacency is not None and ds.adjacency.shape == (3, 3)


def test_los_loop_coordinates_from_its_locations_file(datasets_dir: Path) -> None:
    ds = load_dataset(datasets_dir / "los-loop")
    if not (datasets_dir / "los-loop" / "los_locations.csv").exists():
        pytest.skip("los_locations.csv absent from the shared datasets")
    assert ds.network.coords is not None and len(ds.network.coords) == 207
    assert ds.network.coords[0] == (-118.31829, 34.15497)  # sensor 773869: (longitude, latitude)
    assert ds.network.edges and ds.adjacency is not None


# --- bad input: one error naming the file, the row or column, and what was expected ------------------


@pytest.mark.parametrize(
    ("name", "text", "spec", "message"),
    [
        (
            "num.csv",
            "time,A,B\n2024-03-01,1,2\n2024-03-02,3,x7\n",
            {},
            r"num.csv: line 3, column 'B': expected a number, got 'x7'",
        ),
        (
            "dup.csv",
            "time,A\n2024-03-01,1\n2024-03-02,2\n2024-03-02,3\n",
            {},
            r"dup.csv: line 3 and line 4 are duplicates \(time='2024-03-02'\): expected one row per time",
        ),
        (
            "duplong.csv",
            "sensor,time,value\na,2024-03-01,1\nb,2024-03-01,1\na,2024-03-01,2\n",
            {},
            r"line 2 and line 4 are duplicates \(time='2024-03-01', sensor='a'\): expected one row per sensor and time",
        ),
        (
            "when.csv",
            "when,A\n2024-03-01,1\nlast tuesday,2\n",
            {"time": ("when",)},
            r"when.csv: line 3, column 'when': expected a time pandas can parse .*got 'last tuesday'",
        ),
        (
            "ymd.csv",
            "year,month,day,A\n2024,2,28,1\n2024,2,30,2\n",
            {},
            r"line 3, columns year/month/day: expected whole numbers forming a valid date",
        ),
        ("notime.csv", "A,B\n1,2\n", {}, r"notime.csv: no time column among \['A', 'B'\]"),
        ("col.csv", "time,A\n2024-03-01,1\n", {"sensor": "station"}, r"col.csv: no column 'station'"),
        (
            "empty.csv",
            "sensor,time,value\n,2024-03-01,1\n",
            {},
            r"line 2, column 'sensor': expected a sensor id, got an empty cell",
        ),
    ],
)
def test_bad_tables_name_file_row_column_and_expectation(
    tmp_path: Path, name: str, text: str, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        read_table(write_file(tmp_path / name, text), TableSpec(**spec))  # type: ignore[arg-type]


def test_bad_parquet_cell_is_named_by_row(tmp_path: Path) -> None:
    pd.DataFrame({"time": ["2024-03-01", "2024-03-02"], "A": ["1", "n.a."]}).to_parquet(
        tmp_path / "p.parquet"
    )
    with pytest.raises(DatasetError, match=r"p.parquet: row 2, column 'A': expected a number, got 'n.a.'"):
        read_table(tmp_path / "p.parquet")


def test_metadata_and_edges_must_match_the_data(tmp_path: Path) -> None:
    csv = write_file(tmp_path / "w.csv", "time,A,B\n2024-03-01 00:00,1,2\n2024-03-01 01:00,1,2\n")
    extra = write_file(tmp_path / "m1.csv", "station,lat,lon\nA,1,2\nB,3,4\nZ,5,6\n")
    with pytest.raises(
        DatasetError, match=r"m1.csv: line 4, column 'station': sensor 'Z' is not in the data"
    ):
        read_table(csv, TableSpec(metadata=str(extra)))
    short = write_file(tmp_path / "m2.csv", "station,lat,lon\nA,1,2\n")
    with pytest.raises(DatasetError, match=r"m2.csv: no row for 1 sensors of the data .*\['B'\]"):
        read_table(csv, TableSpec(metadata=str(short)))
    nocoords = write_file(tmp_path / "m3.csv", "station,height\nA,1\nB,2\n")
    with pytest.raises(DatasetError, match=r"m3.csv: expected coordinate columns"):
        read_table(csv, TableSpec(metadata=str(nocoords)))
    edges = write_file(tmp_path / "e.csv", "from,to\nA,Q\n")
    with pytest.raises(DatasetError, match=r"e.csv: line 2, column 'to': sensor 'Q' is not in the data"):
        read_table(csv, TableSpec(edges=str(edges)))


# --- the network: inferred, edited, read back ------------------------------------------------------------


def test_network_file_round_trip_and_zero_is_missing_per_network(tmp_path: Path) -> None:
    net = Network.simple("counts", 2, ["cars"], zero_is_missing=True)
    again = Network.loads(net.dumps(), "mem")
    assert again.zero_is_missing and again == net and again.fingerprint() == net.fingerprint()
    assert not Network.loads(Network.simple("c", 2).dumps(), "mem").zero_is_missing
    # unset, the field is not written: older definitions and the checkpoint hashes over them are unchanged
    assert "zero_is_missing" not in Network.simple("c", 2).to_dict()
    with pytest.raises(NetworkError, match="zero_is_missing must be true or false"):
        Network.from_dict({**net.to_dict(), "zero_is_missing": "yes"})


def test_table_read_onto_an_edited_network(tmp_path: Path) -> None:
    csv = write_file(tmp_path / "w.csv", "time,A,B,C\n2024-03-01 00:00,1,2,300\n2024-03-01 01:00,0,2,3\n")
    net = Network("mine", ("C", "A"), (Feature("flow", "", 0.0, 100.0),), step_ms=H, zero_is_missing=True)
    read = read_table(csv, network=net)
    assert read.dropped_sensors == ("B",) and read.out_of_range == 1
    assert read.dataset.values[:, :, 0].tolist() == [[pytest.approx(np.nan, nan_ok=True), 1.0], [3.0, 0.0]]
    assert read.dataset.zero_is_missing
    with pytest.raises(DatasetError, match=r"no readings for 1 sensors of network 'mine' \(e.g. \['D'\]\)"):
        read_table(csv, network=Network("mine", ("A", "D"), (Feature("flow"),), step_ms=H))
