"""Serving against real Kafka, Redis and Ray: online evaluation equals an independent computation, and the
`forecasts` command reads what consumers read. (A killed forecaster actor is a fault scenario:
`tests/faults/test_serving_faults.py`.)"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis
from typer.testing import CliRunner

from serving.cli import app
from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Feature, Network
from tests.conftest import wait_for
from tests.test_e2e import STEP, T0, _expected_persistence, _known_readings

pytestmark = pytest.mark.usefixtures("ray_local")


def _produce(s: Settings, network: Network, values: np.ndarray, present: np.ndarray) -> None:
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    with ReadingProducer(s.kafka, network, fmt="batch") as producer:
        for t in range(values.shape[0]):
            producer.send_step(T0 + t * STEP, values[t], present[t])


def test_online_mae_per_horizon_matches_independent_computation(fresh_settings: Settings) -> None:
    s = fresh_settings
    n, steps = 6, 20
    network = Network.simple("online", n, [Feature("speed", "mph", 0, 500)], step_ms=STEP)
    vals, pres = _known_readings(n, steps)
    vals = vals + np.sin(np.arange(steps))[:, None] * 3  # not a straight line, so errors differ by horizon
    pipeline = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="online").start()
    try:
        _produce(s, network, vals[:, :, None], pres[:, :, None])
        wait_for(
            lambda: (
                pipeline.poll_once() >= 0
                and pipeline.ingest.ingestor.ledger.total().received >= int(pres.sum())
            ),
            timeout_s=90,
            what="all readings consumed",
        )
        pipeline.drain()
    finally:
        pipeline.close()

    window, horizon = s.window.window, s.window.horizon
    abs_sum, n_sum = np.zeros(horizon), np.zeros(horizon)
    # a forecast is scored once complete: issued after each step with a full window and all H targets sealed
    for issued in range(window - 1, steps - horizon):
        pred = _expected_persistence(vals, pres, issued)
        for h in range(1, horizon + 1):
            target = issued + h
            ok = pres[target] & np.isfinite(pred)
            abs_sum[h - 1] += np.abs(pred[ok] - vals[target][ok]).sum()
            n_sum[h - 1] += ok.sum()
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    keys = Keys(s.redis.key_prefix, network.name)
    got = orjson.loads(r.get(keys.online("baseline-persistence")))
    np.testing.assert_allclose(got["mae"], abs_sum / n_sum, rtol=1e-6)  # float32 forecasts
    assert got["n"] == n_sum.astype(int).tolist()
    rolling = orjson.loads(r.get(keys.online_rolling))
    assert rolling["model_version"] == "baseline-persistence" and len(rolling["mae"]) == horizon
    assert r.xlen(keys.actuals) == steps
    health = r.hgetall(keys.health)
    assert orjson.loads(health[b"ledger"])["received"] == int(pres.sum())

    sensor = network.sensors[3]
    out = CliRunner().invoke(
        app,
        [
            "forecasts",
            "--redis-url",
            s.redis.url.get_secret_value(),
            "--network",
            network.name,
            "--sensor",
            sensor,
        ],
        env={"SENSORCAST_REDIS__KEY_PREFIX": s.redis.key_prefix},
    )
    assert out.exit_code == 0, out.output
    assert sensor in out.output and "baseline-persistence" in out.output
