"""Serving with the archive in an object store (a real S3 endpoint: moto's server) that goes away mid-stream.

The store is frozen with SIGSTOP (moto keeps its objects only in memory, so a restart would lose the
bucket; a frozen server is a dead endpoint to the client: every request times out) while readings keep
arriving. What is measured, then checked: forecasts go on during the outage, committed offsets do not move
past what the archive holds, sealed steps wait in memory and are written once the store answers again,
and in the end every step is in the archive and in Redis exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis

from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.archive import Archive
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for
from tests.faults.reliability import Reliability
from tests.faults.test_serving_faults import _committed
from tests.s3 import MotoServer

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("ray_local")]

STEP = 60_000
T0 = 1_767_225_600_000
PAUSE_S = 8.0
RATE = 10.0  # steps per second produced


def test_object_store_outage_keeps_forecasting_and_loses_nothing(
    fault_settings: Settings, moto_s3: MotoServer, reliability: Reliability
) -> None:
    s = fault_settings.model_copy(deep=True)
    s.archive.root = moto_s3.bucket(f"outage-{uuid.uuid4().hex[:10]}") + "/archive"
    s.storage = moto_s3.settings.model_copy(
        update={"connect_timeout_s": 1, "request_timeout_s": 1, "retries": 1}
    )
    network = simulated_network(12, name="s3outage", step_ms=STEP)
    sim = Simulator(network, seed=3)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="s3outage").start()
    stop, sent, produced = threading.Event(), [0], [0]

    def feed() -> None:
        with ReadingProducer(s.kafka, network) as producer:
            while not stop.wait(1 / RATE):
                ts = T0 + sent[0] * STEP
                values, present = sim.step(ts)
                producer.send_step(ts, values, present)
                producer.flush()
                produced[0] += int(present.sum())
                sent[0] += 1

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    observed: dict[str, float] = {}
    try:
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and pipe.steps_forecast >= 10,
            timeout_s=90,
            what="the first forecasts",
        )
        moto_s3.pause()
        t_pause = time.monotonic()
        try:
            wait_for(
                lambda: pipe.poll_once(100) >= 0 and pipe.ingest.unarchived,
                timeout_s=30,
                what="a sealed step waiting for the paused store",
            )
            held = _committed(pipe.settings)
            forecast_at_pause = pipe.steps_forecast
            peak = 0
            while time.monotonic() - t_pause < PAUSE_S:
                pipe.poll_once(100)
                peak = max(peak, len(pipe.ingest.unarchived))
            observed["forecast_during"] = pipe.steps_forecast - forecast_at_pause
            observed["offsets_moved"] = float(_committed(pipe.settings) != held)
            observed["waiting_peak"] = peak
            observed["failed_writes"] = pipe.ingest.archive_failures
            health = pipe.publish_health()
            observed["health_unarchived"] = health["unarchived_steps"]
        finally:
            moto_s3.resume()
        t_resume = time.monotonic()
        wait_for(
            lambda: (
                pipe.poll_once(100) >= 0 and not pipe.ingest.unarchived and _committed(pipe.settings) != held
            ),
            timeout_s=90,
            what="the waiting steps archived and the offsets committed",
        )
        observed["recovery_s"] = round(time.monotonic() - t_resume, 1)
        stop.set()
        feeder.join(10)
        total = produced[0]
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and pipe.ingest.ingestor.ledger.total().received >= total,
            timeout_s=120,
            what="every reading consumed",
        )
        pipe.drain()
    finally:
        stop.set()
        moto_s3.resume()
        pipe.close()

    want = [T0 + t * STEP for t in range(sent[0])]
    step_ts, _, mask = Archive(s.archive.root, network, s.storage).read()
    archived = [int(t) for t in step_ts]
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    got = [int(f[b"step_ts"]) for _, f in r.xrange(Keys(s.redis.key_prefix, "s3outage").stream)]
    want_forecast = want[s.window.window - 1 :]
    ledger = pipe.ingest.ingestor.ledger.total()
    missing_archive = sorted(set(want) - set(archived))
    missing_forecast = sorted(set(want_forecast) - set(got))
    doubled = len(got) - len(set(got))
    lost = produced[0] - ledger.windowed
    reliability.record(
        f"object store paused {PAUSE_S:.0f} s",
        lost=lost,
        missing=len(missing_archive) + len(missing_forecast),
        doubled=doubled,
        recovery_s=observed["recovery_s"],
        detail=f"SIGSTOP/SIGCONT of the S3 server holding the archive; {observed['forecast_during']:.0f} steps forecast "
        f"while it was down, {observed['failed_writes']:.0f} failed writes retried with backoff, up to "
        f"{observed['waiting_peak']:.0f} sealed steps waiting in memory, committed offsets moved during the "
        f"outage: {'yes' if observed['offsets_moved'] else 'no'}; afterwards {len(archived)} of {len(want)} steps "
        f"archived, {len(set(got))} of {len(want_forecast)} forecast, {doubled} doubled",
        anomalies=[
            name
            for name, on in (
                ("forecasting stopped during the outage", not observed["forecast_during"]),
                ("offsets committed past unarchived steps", observed["offsets_moved"]),
                ("ledger unbalanced", not pipe.ingest.ingestor.ledger.balanced()),
            )
            if on
        ],
    )
    print("observed:", observed, "archived", len(archived), "of", len(want), "forecast", len(got))
    assert observed["forecast_during"] > 0, "forecasting stopped while the store was down"
    assert not observed["offsets_moved"], "offsets were committed past steps the archive did not hold"
    assert observed["health_unarchived"] > 0 and observed["failed_writes"] > 0
    assert archived == want and bool(np.all(mask.sum(axis=(1, 2)) > 0)), (
        f"missing in archive: {missing_archive}"
    )
    assert got == want_forecast, f"missing {missing_forecast}, doubled {doubled}"
    assert lost == 0 and pipe.ingest.ingestor.ledger.balanced()
