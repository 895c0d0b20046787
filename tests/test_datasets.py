"""Dataset readers on the real shared files (skipped when ../shared/datasets is absent) and small fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.datasets import DatasetError, datasets_root, load_dataset, read_h5
from stream.network import Network
from training.data import fill_forward, protocol_for

ROOT = datasets_root()
needs_data = pytest.mark.skipif(
    ROOT is None, reason="real datasets absent: expected ../shared/datasets or $SENSORCAST_DATASETS"
)


@needs_data
def test_los_loop_tgcn_layout() -> None:
    assert ROOT is not None
    ds = load_dataset(ROOT / "los-loop")
    assert ds.values.shape == (2016, 207, 1) and ds.values.dtype == np.float32
    assert ds.mask.dtype == np.uint8 and ds.mask.all()
    assert ds.step_ts[0] == 1_330_560_000_000 and np.all(np.diff(ds.step_ts) == 300_000)  # 2012-03-01 UTC
    assert ds.network.sensors[0] == "773869" and ds.network.feature_names == ("speed",)
    assert ds.adjacency is not None and ds.adjacency.shape == (207, 207) and ds.network.edges
    assert ds.zero_is_missing
    p = protocol_for(ds)
    assert (p.train, p.val, p.test) == ((0, 1289), (1289, 1612), (1612, 2016))
    assert len(p.starts("test")) == 381


@needs_data
def test_de_pm10_wide_csv_with_real_gaps() -> None:
    assert ROOT is not None
    ds = load_dataset(ROOT / "de-pm10")
    assert ds.values.shape == (4383, 70, 1) and ds.network.step_ms == 86_400_000
    assert ds.step_ts[0] == 883_612_800_000  # 1998-01-01 UTC
    missing = 1 - ds.mask.mean()
    assert 0.50 < missing < 0.53 and np.isnan(ds.values[ds.mask == 0]).all()
    assert ds.network.coords is not None and ds.network.coords[0] == pytest.approx((9.585911, 53.670571))
    assert ds.network.feature_names == ("pm10",) and not ds.zero_is_missing
    assert protocol_for(ds).horizon == 7


@needs_data
@pytest.mark.parametrize("target", ["pems08-head", "pems08-head/PEMS08_head.npz"])
def test_pems_npz_with_edge_list(target: str) -> None:
    assert ROOT is not None
    ds = load_dataset(ROOT / target)
    assert ds.values.shape == (1282, 170, 3)
    assert ds.network.feature_names == ("flow", "occupancy", "speed")
    assert ds.step_ts[0] == 1_467_331_200_000  # 2016-07-01 UTC
    assert len(ds.network.edges) == 295 and ds.network.edges[0] == (9, 153, 310.6)
    assert protocol_for(ds).targets == (0,)


def test_unknown_layout_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_dataset(tmp_path)


def test_h5_without_pytables_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    try:
        import tables  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetError, match="pip install tables"):
            read_h5(tmp_path / "metr-la.h5")
    else:
        pytest.skip("PyTables is installed")


def test_wide_csv_fills_absent_dates_as_missing(tmp_path: Path) -> None:
    (tmp_path / "obs.csv").write_text('"date","A","B"\n"2020-01-01",1,\n"2020-01-02",2,3\n"2020-01-04",4,5\n')
    (tmp_path / "stations.csv").write_text('"station","coords.x1","coords.x2"\n"B",1,2\n"A",3,4\n')
    ds = load_dataset(tmp_path)
    assert ds.values.shape == (4, 2, 1) and ds.network.coords == ((3.0, 4.0), (1.0, 2.0))
    assert ds.mask[:, :, 0].tolist() == [[1, 0], [1, 1], [0, 0], [1, 1]]
    filled = fill_forward(ds.values, ds.mask)
    assert np.isnan(filled[0, 1, 0]) and filled[2, 0, 0] == 2 and filled[2, 1, 0] == 3


def test_a_folder_with_one_readings_table_beside_its_side_files(tmp_path: Path) -> None:
    (tmp_path / "readings.csv").write_text("sensor,time,value\na,2024-03-01 00:00,1\nb,2024-03-01 01:00,0\n")
    (tmp_path / "stations.csv").write_text("sensor,lat,lon\na,1,2\nb,3,4\n")
    (tmp_path / "links.csv").write_text("from,to\na,b\n")
    ds = load_dataset(tmp_path)
    assert ds.network.sensors == ("a", "b") and ds.n_steps == 2 and not ds.zero_is_missing


def test_a_network_file_without_source_says_how_to_write_one(tmp_path: Path) -> None:
    Network.simple("n", 2).save(tmp_path / "net.toml")
    with pytest.raises(DatasetError, match=r"names no data .*sensorcast network init TABLE --out net.toml"):
        load_dataset(tmp_path / "net.toml")
    (tmp_path / "bad.toml").write_text(
        Network.simple("n", 2).dumps() + '[source]\npath = "x.csv"\nlayout = "diagonal"\n'
    )
    with pytest.raises(DatasetError, match=r"bad.toml: layout 'diagonal': expected wide, long or auto"):
        load_dataset(tmp_path / "bad.toml")
