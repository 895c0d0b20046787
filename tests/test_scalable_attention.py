"""The STFormer's block spatial attention (`block_size`, the "blocks" preset): exact against dense attention
where the blocks cover every sensor, one block's training forward equal to the whole network's, partitions
of networks with coordinates only, edges only or neither, training on shards through `train_func`, and
serving through `Predictor` (ONNX Runtime and torch)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stream.datasets import load_dataset
from stream.network import Network
from stream.sensordata import SensorDataset
from stream.simulate import Simulator, road_network
from training.data import protocol_for, time_features
from training.model import build_model
from training.partition import Blocks, partition
from training.predictor import Predictor
from training.stformer import STFormer, STFormerConfig
from training.train import train_func

torch.set_num_threads(1)

T, H, F = 6, 3, 2
TINY = dict(input_dim=8, tod_dim=4, dow_dim=4, adaptive_dim=8, heads=2, ffn_dim=16, dropout=0.0)


def _inputs(b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, n, F, generator=g)  # [B, T, N, F]
    mask = (torch.rand(b, T, n, F, generator=g) > 0.2).float()
    step_ts = 1_330_560_000_000 + 300_000 * (np.arange(T)[None] + 50 * np.arange(b)[:, None])
    return x * mask, torch.from_numpy(time_features(step_ts)), mask


def _model(n: int, blocks: Blocks | None, **kw: object) -> STFormer:
    torch.manual_seed(0)
    extra = {} if blocks is None else {"block_size": blocks.size, "n_blocks": blocks.count}
    config = STFormerConfig(n_nodes=n, in_features=F, window=T, horizon=H, **TINY, **extra, **kw)  # type: ignore[arg-type]
    model = STFormer(config)
    return (model if blocks is None else model.set_blocks(blocks)).eval()


def _ring(n: int) -> Network:
    angle = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return Network.simple(
        "ring", n, ["speed"], coords=tuple((float(np.cos(a)), float(np.sin(a))) for a in angle)
    )


def test_blocks_that_each_hold_every_sensor_equal_dense_attention() -> None:
    """Two blocks, each a different order of all 9 sensors, homes split between them: block attention must
    give exactly what dense attention gives — forecast and maps, graph bias and two spatial layers included
    (the gather into blocks and the scatter of home slots lose or mix up nothing)."""
    n = 9
    rng = np.random.default_rng(3)
    members = np.stack([rng.permutation(n), rng.permutation(n)])  # [2, 9]
    home = np.array([int(np.flatnonzero(members[s % 2] == s)[0]) + (s % 2) * n for s in range(n)])
    edges = [(i, (i + 1) % n, 1.0 + i) for i in range(n)]
    kw = dict(spatial_layers=2, temporal_layers=1, graph_bias=True)
    dense = _model(n, None, **kw).set_graph(edges)
    blocked = _model(n, Blocks(members, home), **kw).set_graph(edges)
    x, tf, mask = _inputs(3, n)
    torch.testing.assert_close(blocked(x, tf, mask), dense(x, tf, mask), rtol=1e-5, atol=1e-5)
    got, want = blocked.attention_maps(x, tf, mask), dense.attention_maps(x, tf, mask)
    assert got["spatial"].shape == (3, T, 2, n, n)  # rows over the home block: here all n sensors
    cols = got["spatial_columns"]  # [n, n]: each row's sensors, in its home block's order
    dense_rows = want["spatial"].gather(-1, cols.expand(3, T, 2, n, n))
    torch.testing.assert_close(got["spatial"], dense_rows, rtol=1e-5, atol=1e-6)


def test_one_block_forward_equals_the_network_forward_for_its_home_sensors() -> None:
    """Training on shards computes, for a block's home sensors, exactly what serving computes."""
    n = 40
    blocks = partition(_ring(n), 16)
    assert blocks.count > 2 and blocks.size == 16
    model = _model(n, blocks, spatial_layers=1, temporal_layers=1, graph_bias=True).set_graph(
        [(i, (i + 1) % n, 1.0) for i in range(n)]
    )
    x, tf, mask = _inputs(2, n)
    full = model(x, tf, mask)  # [B, H, N, 1]
    for p in range(blocks.count):
        members = torch.from_numpy(blocks.members[p])
        own = torch.from_numpy(blocks.home_slots()[p])
        shard = model(x[:, :, members], tf, mask[:, :, members], block=p)  # [B, H, S, 1]
        assert shard.shape == (2, H, 16, 1)
        torch.testing.assert_close(shard[:, :, own], full[:, :, members[own]], rtol=1e-5, atol=1e-5)


def _network(kind: str, n: int) -> Network:
    road = road_network(n, seed=1)
    return Network(
        name=kind,
        sensors=road.sensors,
        features=road.features,
        coords=road.coords if kind in ("coords", "both") else None,
        edges=road.edges if kind in ("edges", "both") else (),
    )


@pytest.mark.parametrize("kind", ["coords", "edges", "neither", "both"])
def test_partition_gives_every_sensor_one_home_and_a_nearby_halo(kind: str) -> None:
    network = _network(kind, 300)
    blocks = partition(network, 64)
    assert blocks.size == 64 and blocks.count >= math.ceil(300 / 64)
    homes = blocks.home_slots()
    assert sorted(blocks.members[homes].tolist()) == list(range(300))  # each sensor home exactly once
    assert all(len(set(row)) == 64 for row in blocks.members.tolist())
    assert homes.sum(axis=1).min() >= 64 * 0.5  # a halo is a share, not most of a block
    if kind == "neither":  # the sensor order is the only geometry: blocks are runs of neighbours
        for row in blocks.members:
            assert row.max() - row.min() < 2 * 64
    if network.coords is not None:  # a halo lies nearer its block than the average sensor does
        xy = np.asarray(network.coords)
        for row, own in zip(blocks.members, homes, strict=True):
            centre = xy[row[own]].mean(axis=0)
            spread = np.linalg.norm(xy - centre, axis=1)
            assert np.linalg.norm(xy[row[~own]] - centre, axis=1).mean() < spread.mean()
    assert partition(network, 64).members.tolist() == blocks.members.tolist()  # deterministic
    assert partition(network, 300).count == 1


def _simulated(network: Network, steps: int, step_ms: int = 3_600_000) -> SensorDataset:
    sim = Simulator(network, seed=0)
    ts = 1_767_225_600_000 + step_ms * np.arange(steps, dtype=np.int64)
    rows = [sim.step(int(t)) for t in ts]
    values = np.stack([v for v, _ in rows]).astype(np.float32)  # [T, N, 1]
    mask = np.stack([m for _, m in rows]).astype(np.uint8)
    return SensorDataset(network, np.where(mask > 0, values, np.nan).astype(np.float32), mask, ts)


@pytest.mark.parametrize("kind", ["coords", "edges", "neither"])
def test_blocks_model_trains_on_shards_and_serves(kind: str, tmp_path: Path) -> None:
    """The "blocks" preset on a 150-sensor network (3+ blocks of 64): a few shard steps through
    `train_func`, then a checkpoint that `Predictor` serves — through ONNX Runtime (checked against
    torch on export) and through torch — with the partition it was trained with."""
    ds = _simulated(_network(kind, 150), 200)
    overrides = {**TINY, "block_size": 64, "graph_bias": kind != "neither"}
    rows: list[dict[str, object]] = []
    summary = train_func(
        {
            "dataset": kind,
            "out": str(tmp_path / "m.pt"),
            "preset": "blocks",
            "overrides": overrides,
            "epochs": 2,
            "batch_size": 4,
            "max_batches": 3,
            "threads": 1,
            "max_val_windows": 4,
        },
        log=rows.append,
        dataset=ds,
    )
    assert summary["epochs_run"] == 2 and np.isfinite(summary["val_mae"])
    per_sample = summary["sensor_windows_per_s"] / summary["samples_per_s"]
    assert per_sample == pytest.approx(64)  # a sample is one block, not the network
    p = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", backend="onnx")
    assert p.backend == "onnx" and p.model.config.n_blocks >= 3  # type: ignore[union-attr]
    expected = build_model("stformer", ds, protocol_for(ds), "blocks", overrides)
    assert torch.equal(p.model.block_members, expected.block_members)  # type: ignore[union-attr]
    values = ds.values[None, 20:32]  # [1, 12, N, 1]
    mask = ds.mask[None, 20:32]
    filled = np.where(np.isfinite(values), values, 50.0).astype(np.float32)
    onnx = p.predict(filled, mask, ds.step_ts[None, 20:32])
    torch_p = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu")
    assert onnx.shape == (1, 12, 150, 1) and np.isfinite(onnx).all()
    np.testing.assert_allclose(onnx, torch_p.predict(filled, mask, ds.step_ts[None, 20:32]), atol=1e-3)


def test_whole_network_batches_when_shards_are_off(tmp_path: Path) -> None:
    ds = _simulated(_network("both", 100), 120)
    summary = train_func(
        {
            "dataset": "both",
            "out": str(tmp_path / "m.pt"),
            "preset": "blocks",
            "overrides": {**TINY, "block_size": 48},
            "epochs": 1,
            "batch_size": 2,
            "max_batches": 2,
            "threads": 1,
            "max_val_windows": 2,
            "shard_batches": False,
        },
        dataset=ds,
    )
    assert summary["sensor_windows_per_s"] == pytest.approx(100 * summary["samples_per_s"])


def test_road_network_is_a_planar_grid_with_coordinates_at_any_size() -> None:
    for n in (2, 675, 8600):
        net = road_network(n, seed=0)
        assert net.n_sensors == n and net.coords is not None and net.edges
        a, b = np.array([(e[0], e[1]) for e in net.edges]).T
        xy = np.asarray(net.coords)
        assert np.linalg.norm(xy[a] - xy[b], axis=1).max() < 0.005 * 2.5  # neighbours only: no long chords
    assert road_network(675, seed=3) == road_network(675, seed=3) != road_network(675, seed=4)


def test_los_loop_blocks_from_its_coordinates_and_edges(datasets_dir: Path) -> None:
    ds = load_dataset(datasets_dir / "los-loop")
    assert ds.network.coords is not None and ds.network.coords[0] == pytest.approx((-118.31829, 34.15497))
    blocks = partition(ds.network, 128)
    assert blocks.count == 3 and sorted(blocks.members[blocks.home_slots()].tolist()) == list(range(207))


def test_attention_maps_of_a_large_blocks_model_stay_per_block(tmp_path: Path) -> None:
    """Explaining a 3,000-sensor blocks model: each sensor's spatial row covers its home block only (dense
    maps would be 12 x 2 x 3,000² floats, 0.9 GB; at 8,600 sensors 7 GB), its neighbours come from that
    block, and the attention plot is drawn from it."""
    from serving.cli.plots import plot_attention
    from training.explain import dense_row, spatial_rows, top_neighbours

    network = road_network(3000, step_ms=300_000)
    blocks = partition(network, 128)
    torch.manual_seed(0)
    config = STFormerConfig(
        n_nodes=3000, window=T, horizon=H, block_size=128, n_blocks=blocks.count, spatial_layers=1, **TINY
    )  # type: ignore[arg-type]
    model = STFormer(config).set_blocks(blocks).eval()
    x, tf, _ = _inputs(1, 3000)
    maps = model.attention_maps(x[..., :1], tf, torch.ones_like(x[..., :1]))
    assert maps["spatial"].shape == (1, T, 2, 3000, 128) and maps["spatial_columns"].shape == (3000, 128)
    rows, cols = spatial_rows({k: v.numpy() for k, v in maps.items()})  # type: ignore[misc]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)  # each row is one softmax
    home_block = blocks.home // 128
    for i in (0, 1234, 2999):
        assert set(cols[i]) == set(blocks.members[home_block[i]])
        row = dense_row(rows, cols, i)
        assert row.shape == (3000,) and np.count_nonzero(row) <= 128
    neighbours = top_neighbours(rows, cols, network.sensors, 3)
    block_of = {network.sensors[j]: set(blocks.members[home_block[j]]) for j in (0, 2999)}
    for j in (0, 2999):
        picked = [network.sensor_index[n["sensor"]] for n in neighbours[network.sensors[j]]]
        assert j not in picked and set(picked) <= block_of[network.sensors[j]]
    out = plot_attention(
        {k: v.numpy() for k, v in maps.items()}, network.sensors, network.coords, 5, "t", tmp_path / "a.png"
    )
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.bench
def test_scale_model_benchmark_quick_mode_reports_every_figure() -> None:
    """`benchmarks/scale_model.py` quick mode (< 2 min): every part's figures, nothing written."""
    spec = importlib.util.spec_from_file_location(
        "scale_model", Path(__file__).resolve().parents[1] / "benchmarks" / "scale_model.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.run(quick=True, parts=("forward", "train", "road"))
    assert [r["sensors"] for r in figures["forward"]] == [200, 1000]
    assert all(r["dense_ms"] > 0 and r["blocks_ms"] > 0 and r["blocks"] >= 2 for r in figures["forward"])
    train = figures["train_675"]
    assert train["samples_ratio"] > 0 and train["blocks_sensor_windows_per_s"] > 0
    assert len(figures["road_675"]["per_step"]) == 12
