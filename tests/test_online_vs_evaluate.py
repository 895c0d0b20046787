"""Issue 6's acceptance on real data: replay the Los-loop test split through Kafka with the committed
trained checkpoint; the online per-horizon MAE the system reports in Redis must equal what offline
evaluation reports for the same checkpoint and split (within 0.5 %), and every step must get exactly one
forecast from the version. On a CPU the actors serve through ONNX Runtime, evaluation runs eager torch:
the test also holds the two engines to the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
import torch

from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.datasets import load_dataset
from stream.kafka_io import ReadingProducer, ensure_topics
from tests.conftest import REPO, wait_for
from training.data import protocol_for
from training.evaluate import evaluate
from training.predictor import Predictor

CHECKPOINT = REPO / "benchmarks" / "results" / "stformer-los-loop.pt"


@pytest.mark.usefixtures("ray_local")
def test_los_loop_test_split_online_mae_equals_offline_evaluation(
    fresh_settings: Settings, datasets_dir: Path
) -> None:
    if not CHECKPOINT.exists():
        pytest.skip(f"no trained checkpoint at {CHECKPOINT}")
    ds = load_dataset(datasets_dir / "los-loop")
    predictor = Predictor.from_checkpoint(CHECKPOINT, device="cpu")
    report = evaluate(predictor, ds)
    offline = [row["mae"] for row in report["per_step"]]

    s = fresh_settings.model_copy(deep=True)
    s.window.window, s.window.horizon = predictor.window, predictor.horizon
    s.online.zero_is_missing = ds.zero_is_missing
    s.online.rolling_steps = 10_000
    protocol = protocol_for(ds, window=predictor.window, horizon=predictor.horizon)
    start, end = protocol.test
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, ds.network, ModelSpec(str(CHECKPOINT)), client_id="los-loop").start()
    try:
        if not torch.cuda.is_available():  # the served engine is ONNX Runtime; evaluation's is torch
            assert pipe.dispatcher.devices() == ["cpu (onnx)"] * s.ray.replicas
        with ReadingProducer(s.kafka, ds.network) as producer:
            for t in range(start, end):
                producer.send_step(int(ds.step_ts[t]), ds.values[t], ds.mask[t].astype(bool))
        n = int(ds.mask[start:end].sum())
        wait_for(
            lambda: pipe.poll_once(300) >= 0 and pipe.ingest.ingestor.ledger.total().received >= n,
            timeout_s=240,
            what=f"{n} readings of the test split",
        )
        pipe.drain()
    finally:
        pipe.close()

    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    keys = Keys(s.redis.key_prefix, ds.network.name)
    online = orjson.loads(r.get(keys.online(predictor.version)))["mae"]
    np.testing.assert_allclose(online, offline, rtol=0.005, err_msg="online vs offline MAE per horizon")
    steps = [int(f[b"step_ts"]) for _, f in r.xrange(keys.stream)]
    want = [int(t) for t in ds.step_ts[start + predictor.window - 1 : end]]
    assert steps == want, "every step of the split exactly once"
