"""Serving one network across several forecaster actors (`ray.shards`): a model with sensor blocks cut into
shards (`STFormer.shard`, `Predictor.shard`) forecasts exactly what the whole model forecasts; a model that
cannot be cut is served whole by the first shard; and a real pipeline (broker, Redis, Ray) with two shard
actors writes every sensor of every step, the same numbers as the whole model, through a shard actor
killed mid-stream."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import ray
import redis
import torch

from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, road_network
from tests.conftest import wait_for
from training.checkpoint import Checkpoint, save_checkpoint
from training.partition import partition
from training.predictor import Predictor, PredictorError
from training.scaler import StandardScaler
from training.stformer import STFormer, STFormerConfig

torch.set_num_threads(1)
TINY = dict(input_dim=8, tod_dim=4, dow_dim=4, adaptive_dim=8, heads=2, ffn_dim=16, dropout=0.0)
T0 = 1_767_225_600_000
STEP = 60_000


def _blocks_model(network: Network, window: int, horizon: int, block: int, **kw: object) -> STFormer:
    torch.manual_seed(0)
    blocks = partition(network, block)
    config = STFormerConfig(
        n_nodes=network.n_sensors,
        window=window,
        horizon=horizon,
        steps_per_day=24,
        block_size=block,
        n_blocks=blocks.count,
        **TINY,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    model = STFormer(config).set_blocks(blocks)
    with torch.no_grad():  # weights away from their init, so a mixed-up sensor cannot go unnoticed
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    if config.graph_bias:
        model.set_graph(network.edges)
    return model.eval()


def _checkpoint(model: STFormer, network: Network, path: Path, window: int, horizon: int) -> str:
    ckpt = Checkpoint.from_model(
        "stformer",
        model,
        scaler=StandardScaler([50.0], [10.0]),
        network=network,
        targets=("speed",),
        window=window,
        horizon=horizon,
        version="sharded-test",
    )
    return str(save_checkpoint(ckpt, path))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("count", [2, 3])
def test_shards_forecast_exactly_what_the_whole_model_forecasts(layers: int, count: int) -> None:
    network = road_network(300, step_ms=STEP)
    model = _blocks_model(network, 6, 3, 48, spatial_layers=layers, graph_bias=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 300, 1, generator=g)
    mask = (torch.rand(2, 6, 300, 1, generator=g) > 0.1).float()
    tf = torch.rand(2, 6, 3, generator=g)
    with torch.no_grad():
        whole = model(x, tf, mask)  # [2, 3, 300, 1]
        merged = torch.full_like(whole, float("nan"))
        owners = np.zeros(300, np.int64)
        reads = []
        for i in range(count):
            part, sensors, own = model.shard(i, count)
            y = part(x[:, :, sensors], tf, mask[:, :, sensors])
            merged[:, :, sensors[own]] = y[:, :, own]
            owners[sensors[own]] += 1
            reads.append(len(sensors))
    print(f"layers {layers}, {count} shards of {model.config.n_blocks} blocks: each reads {reads} of 300")
    assert (owners == 1).all()  # every sensor forecast by exactly one shard
    torch.testing.assert_close(merged, whole, rtol=1e-5, atol=1e-5)
    if layers == 1:
        assert max(reads) < 300 * (1 / count + 0.25)  # a shard reads its share plus a halo, not the network


def test_a_model_with_fewer_blocks_than_shards_is_refused() -> None:
    network = road_network(100, step_ms=STEP)
    model = _blocks_model(network, 6, 3, 64)
    blocks = model.config.n_blocks
    with pytest.raises(ValueError, match=f"with {blocks} sensor blocks: sharding needs"):
        model.shard(0, blocks + 1)


def test_predictor_shards_on_onnx_match_the_whole_predictor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    network = road_network(200, step_ms=STEP)
    path = _checkpoint(_blocks_model(network, 6, 3, 48), network, tmp_path / "m.pt", 6, 3)
    whole = Predictor.from_checkpoint(path, device="cpu")
    rng = np.random.default_rng(0)
    values = (50 + 10 * rng.standard_normal((2, 6, 200, 1))).astype(np.float32)
    mask = np.ones_like(values, np.uint8)
    values[:, :, 7] = np.nan  # never observed: NaN forecasts from whichever shard owns it
    step_ts = T0 + STEP * (np.arange(6)[None] + 6 * np.arange(2)[:, None])
    want = whole.predict(values, mask, step_ts)
    got = np.full_like(want, -1.0)
    for i in range(2):
        part = whole.shard(i, 2, backend="onnx")
        assert part is not None and part.backend == "onnx" and part.own_sensors is not None
        got[:, :, part.own_sensors] = part.predict(values, mask, step_ts)
    assert np.isnan(got[:, :, 7]).all() and np.isnan(want[:, :, 7]).all()
    np.testing.assert_allclose(got, want, atol=1e-3)
    with pytest.raises(PredictorError, match="values have shape"):
        part.predict(values[:, :, 1:], mask[:, :, 1:], step_ts)  # the whole network's windows, always

    baseline = Predictor.baseline("persistence", network, window=6, horizon=3)
    with caplog.at_level(logging.WARNING, logger="training.predictor"):
        first, second = baseline.shard(0, 2), baseline.shard(1, 2)
    assert first is not None and first.own_sensors is None and second is None
    assert "shard 0 serves the whole network" in caplog.text
    with pytest.raises(PredictorError, match="shard 2 of 2"):
        baseline.shard(2, 2)


@pytest.mark.usefixtures("ray_local")
def test_pipeline_with_two_shard_actors_writes_every_sensor_through_a_killed_shard(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    n, steps = 160, 16
    s = fresh_settings.model_copy(
        update={"ray": fresh_settings.ray.model_copy(update={"shards": 2, "actor_num_cpus": 0.25})}
    )
    window, horizon = s.window.window, s.window.horizon
    network = road_network(n, step_ms=STEP)
    path = _checkpoint(
        _blocks_model(network, window, horizon, 40), network, tmp_path / "m.pt", window, horizon
    )
    whole = Predictor.from_checkpoint(path, device="cpu")
    sim = Simulator(network, seed=3)
    frames = [sim.step(T0 + t * STEP) for t in range(steps)]
    values = np.stack([v for v, _ in frames]).astype(np.float32)  # [T, N, 1]
    present = np.ones(values.shape, bool)  # every reading sent: the expected windows need no filling
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})

    pipeline = ServePipeline(s, network, ModelSpec(path), client_id="sharded").start()
    try:
        dispatcher = pipeline.dispatcher
        placement = dispatcher.placement()
        print("placement", placement)
        assert placement["shards"] == 2 and sum(placement["sensors"]) == n and min(placement["sensors"]) > 0
        with ReadingProducer(s.kafka, network, fmt="batch") as producer:
            half = steps // 2
            for t in range(half):
                producer.send_step(T0 + t * STEP + 1_000, values[t], present[t])
            producer.flush()
            first = half - window  # steps sealed so far with a full window (the last one stays open)
            wait_for(
                lambda: pipeline.poll_once() >= 0 and pipeline.steps_forecast >= first,
                timeout_s=90,
                what=f"{first} forecast steps (got {pipeline.steps_forecast})",
            )
            ray.kill(dispatcher.groups[0][1], no_restart=False)  # shard 1: Ray restarts it without a model
            for t in range(half, steps):
                producer.send_step(T0 + t * STEP + 1_000, values[t], present[t])
            producer.send_step(T0 + steps * STEP, values[-1], present[-1])  # seals the last step
            wanted = steps - window + 1
            wait_for(
                lambda: pipeline.poll_once() >= 0 and pipeline.steps_forecast >= wanted,
                timeout_s=120,
                what=f"{wanted} forecast steps (got {pipeline.steps_forecast})",
            )
        retries = dispatcher.retries
    finally:
        pipeline.close()

    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    entries = r.xrange(Keys(s.redis.key_prefix, network.name).stream)
    got_steps = [(int(f[b"step_ts"]) - T0) // STEP for _, f in entries]
    print(f"steps in Redis {got_steps}; dispatcher re-sends after the kill: {retries}")
    assert got_steps == list(range(window - 1, steps))  # every step once, in order
    assert retries >= 1  # the killed shard's call was re-sent (after a reload), not dropped
    for _, fields in entries:
        step = (int(fields[b"step_ts"]) - T0) // STEP
        got = np.frombuffer(fields[b"values"], dtype="<f4").reshape(horizon, n, 1)
        lo = step - window + 1
        want = whole.predict(
            values[None, lo : step + 1],
            present[None, lo : step + 1],
            T0 + STEP * np.arange(lo, step + 1)[None],
        )[0]
        assert np.isfinite(got).all(), f"step {step}: a sensor without a forecast"
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=f"step {step}")
