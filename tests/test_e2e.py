"""End to end against the real broker, real Redis and real Ray: a known sequence of readings goes in, and
Redis must hold, for every sensor and every sealed step, the forecast the persistence baseline must make
for that window — computed here independently from the readings sent.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis

from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Feature, Network
from tests.conftest import wait_for

STEP = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def _known_readings(n_sensors: int, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([[10.0 * i + t + 0.25 for i in range(n_sensors)] for t in range(n_steps)])  # [T, N]
    present = np.ones((n_steps, n_sensors), dtype=bool)
    present[5, 2] = present[6, 2] = False  # sensor 2 silent for two steps: forecasts carry its last value
    present[9, 4] = False
    return values, present


def _expected_persistence(values: np.ndarray, present: np.ndarray, step: int) -> np.ndarray:
    """Last observed value of each sensor at or before `step` (NaN if never)."""
    out = np.full(values.shape[1], np.nan)
    for i in range(values.shape[1]):
        seen = np.flatnonzero(present[: step + 1, i])
        if seen.size:
            out[i] = values[seen[-1], i]
    return out


@pytest.mark.usefixtures("ray_local")
def test_known_readings_reach_redis_as_persistence_forecasts(fresh_settings: Settings) -> None:
    s = fresh_settings
    n_sensors, n_steps = 6, 14
    network = Network.simple("e2e", n_sensors, [Feature("speed", "mph", 0, 200)], step_ms=STEP)
    values, present = _known_readings(n_sensors, n_steps)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})

    pipeline = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="e2e").start()
    try:
        with ReadingProducer(s.kafka, network, fmt="batch") as producer:
            for t in range(n_steps):
                producer.send_step(T0 + t * STEP + 1_000, values[t][:, None], present[t][:, None])
            # one reading past the end on every partition moves the watermark so the last step seals
            producer.send_step(
                T0 + n_steps * STEP, np.full((n_sensors, 1), 1.0), np.ones((n_sensors, 1), bool)
            )
        sealed_steps = n_steps  # steps 0..n_steps-1; the tick step stays open
        window = s.window.window
        expected_forecasts = sealed_steps - window + 1
        wait_for(
            lambda: pipeline.poll_once() >= 0 and pipeline.steps_forecast >= expected_forecasts,
            timeout_s=90,
            what=f"{expected_forecasts} forecast steps (got {pipeline.steps_forecast})",
        )
        ledger = pipeline.ingestor.ledger
        assert ledger.balanced()
    finally:
        pipeline.close()

    # Check Redis with raw redis-py, not through the project's client.
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    keys = Keys(s.redis.key_prefix, "e2e")
    version = "baseline-persistence"
    done = sorted(int(float(x)) for x in r.zrange(keys.done(version), 0, -1))
    want_steps = [T0 + t * STEP for t in range(window - 1, sealed_steps)]
    assert done == want_steps

    entries = r.xrange(keys.stream)
    assert [int(f[b"step_ts"]) for _, f in entries] == want_steps
    for _, fields in entries:
        step = (int(fields[b"step_ts"]) - T0) // STEP
        h, n, f = (int(x) for x in fields[b"shape"].split(b","))
        assert (h, n, f) == (s.window.horizon, n_sensors, 1)
        got = np.frombuffer(fields[b"values"], dtype="<f4").reshape(h, n, f)
        want = _expected_persistence(values, present, step)
        for k in range(h):
            np.testing.assert_allclose(got[k, :, 0], want, rtol=1e-6, err_msg=f"step {step} horizon {k + 1}")
        assert fields[b"model_version"].decode() == version

    last = sealed_steps - 1
    want_last = _expected_persistence(values, present, last)
    for i, sensor in enumerate(network.sensors):
        doc = orjson.loads(r.hget(keys.latest, sensor))
        assert doc["step_ts"] == T0 + last * STEP
        assert doc["model_version"] == version
        assert np.allclose(np.array(doc["forecast"])[:, 0], want_last[i])
    assert r.ttl(keys.latest) > 0
