"""Evaluation protocol checks: persistence on Los-loop must reproduce the published T-GCN figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.datasets import datasets_root, load_dataset
from training.data import protocol_for
from training.evaluate import DayOfYearClimatology, evaluate, render_table, write_json
from training.metrics import HorizonMetrics
from training.predictor import Predictor

ROOT = datasets_root()
needs_data = pytest.mark.skipif(
    ROOT is None, reason="real datasets absent: expected ../shared/datasets or $SENSORCAST_DATASETS"
)


@needs_data
def test_persistence_on_los_loop_matches_tgcn_protocol(tmp_path: Path) -> None:
    assert ROOT is not None
    ds = load_dataset(ROOT / "los-loop")
    report = evaluate(Predictor.baseline("persistence", ds.network, device="cpu"), ds)
    assert report["windows"] == 381
    traj = report["trajectory"]
    assert list(traj) == ["15 min", "30 min", "45 min", "60 min"]
    rmse = [round(traj[k]["rmse"], 2) for k in traj]
    mae = [round(traj[k]["mae"], 2) for k in traj]
    assert rmse == [5.57, 6.73, 7.64, 8.45]
    assert mae == [3.16, 3.64, 4.05, 4.43]
    single = [round(report["per_step"][k - 1]["rmse"], 2) for k in (3, 6, 9, 12)]
    assert single == [6.47, 8.24, 9.65, 10.90]
    out = write_json(report, tmp_path / "r.json")
    assert json.loads(out.read_text())["trajectory"]["15 min"]["steps"] == "1-3"
    assert render_table(report).row_count == 12 + 4 + 1


@needs_data
def test_de_pm10_baselines_score_on_observed_targets_only() -> None:
    assert ROOT is not None
    ds = load_dataset(ROOT / "de-pm10")
    protocol = protocol_for(ds)
    persistence = evaluate(Predictor.baseline("persistence", ds.network, horizon=7, device="cpu"), ds)
    climatology = evaluate(DayOfYearClimatology(ds, protocol), ds)
    assert persistence["horizon"] == climatology["horizon"] == 7
    assert 0 < persistence["per_step"][0]["count"] < 859 * 70
    # Persistence wins at 1 day, climatology by day 7: the seasonal baseline is a real bar to beat.
    assert persistence["per_step"][0]["rmse"] < climatology["per_step"][0]["rmse"]
    assert persistence["per_step"][6]["rmse"] > climatology["per_step"][6]["rmse"]


def test_metrics_exclude_missing_and_zero_targets_for_mape() -> None:
    pred = np.array([[[[2.0]], [[5.0]]]])  # [B=1, H=2, N=1, out=1]
    target = np.array([[[[1.0]], [[0.0]]]])
    mask = np.array([[[[1.0]], [[1.0]]]])
    m = HorizonMetrics(2)
    m.update(pred, target, mask)
    steps = m.per_step()
    assert steps[0]["mae"] == 1.0 and steps[0]["mape"] == 100.0
    assert steps[1]["mae"] == 5.0 and np.isnan(steps[1]["mape"])
    m2 = HorizonMetrics(2)
    m2.update(pred, target, np.array([[[[1.0]], [[0.0]]]]))
    assert m2.average()["count"] == 1 and m2.average()["rmse"] == 1.0


def test_explain_writes_attention_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="explain needs matplotlib")
    import torch

    from stream.datasets import SensorDataset
    from stream.network import Network
    from training.explain import explain
    from training.scaler import StandardScaler
    from training.stformer import STFormer, STFormerConfig

    torch.manual_seed(0)
    net = Network.simple("grid", 5, ["speed"], coords=tuple((float(i), float(i % 2)) for i in range(5)))
    t = 200
    values = np.random.default_rng(0).random((t, 5, 1)).astype(np.float32)
    ds = SensorDataset(
        net, values, np.ones_like(values, np.uint8), 1_330_560_000_000 + 300_000 * np.arange(t)
    )
    model = STFormer(
        STFormerConfig(n_nodes=5, input_dim=8, tod_dim=4, dow_dim=4, adaptive_dim=8, heads=2, ffn_dim=8)
    )
    p = Predictor(
        model,
        network=net,
        scaler=StandardScaler.identity(1),
        targets=(0,),
        window=12,
        horizon=12,
        version="tiny",
        device="cpu",
    )
    summary = explain(p, ds, tmp_path, window_index=3, sensor="s0002", top_k=2)
    assert (tmp_path / "temporal.png").stat().st_size > 1000 and (tmp_path / "spatial.png").exists()
    neighbours = json.loads((tmp_path / "neighbours.json").read_text())
    assert len(neighbours) == 5 and [n["sensor"] for n in summary["neighbours"]] != ["s0002"]
    assert all(len(v) == 2 and all(n["sensor"] != k for n in v) for k, v in neighbours.items())
