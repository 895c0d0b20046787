"""Model faults: a tampered, truncated or foreign checkpoint given to `sensorcast serve --model` or made
the registry's champion under a running pipeline is refused with a clear error and the serving model stays;
a training job that crashes or diverges (NaN loss) leaves the champion and serving untouched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from typer.testing import CliRunner

from serving.cli import app
from serving.config import Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for
from tests.faults.reliability import Reliability
from training.checkpoint import Checkpoint, save_checkpoint
from training.registry import Registry

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("ray_local")]

STEP = 60_000
T0 = 1_767_225_600_000


def _good(network: Network, path: Path, window: int, horizon: int) -> str:
    ckpt = Checkpoint.persistence(network, window=window, horizon=horizon, version="good-persistence")
    return save_checkpoint(ckpt, path)


def _spoil(kind: str, good: str, out: Path) -> Path:
    if kind == "tampered":
        payload = torch.load(good, weights_only=True)
        payload["scaler"]["mean"][0] += 1.0
        torch.save(payload, out)
    elif kind == "truncated":
        out.write_bytes(Path(good).read_bytes()[:600])
    else:
        torch.save({"weight": torch.zeros(3)}, out)
    return out


WHY = {
    "tampered": "integrity check",
    "truncated": "truncated or corrupt",
    "foreign": "not a sensorcast checkpoint",
}


@pytest.mark.parametrize("kind", ["tampered", "truncated", "foreign"])
def test_serve_refuses_bad_checkpoint(
    kind: str, fault_settings: Settings, tmp_path: Path, reliability: Reliability
) -> None:
    s = fault_settings
    network = simulated_network(6, name=f"ck{kind}", step_ms=STEP)
    net_file = tmp_path / "net.toml"
    network.save(net_file)
    bad = _spoil(
        kind, _good(network, tmp_path / "good.pt", s.window.window, s.window.horizon), tmp_path / "bad.pt"
    )
    env = {
        "SENSORCAST_REDIS__KEY_PREFIX": s.redis.key_prefix,
        "SENSORCAST_KAFKA__READINGS_TOPIC": s.kafka.readings_topic,
        "SENSORCAST_ARCHIVE__ROOT": s.archive.root,
    }
    t0 = time.monotonic()
    args = ["serve", "--model", str(bad), "--network", str(net_file), "--duration", "1"]
    args += ["--bootstrap", str(s.kafka.bootstrap), "--redis-url", s.redis.url.get_secret_value()]
    out = CliRunner().invoke(app, args, env=env)
    took = time.monotonic() - t0
    text = out.output + (repr(out.exception) if out.exception else "")
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    served = bool(r.exists(Keys(s.redis.key_prefix, network.name).stream))
    refused, says_why = out.exit_code != 0, WHY[kind] in text
    reliability.record(
        f"{kind} checkpoint",
        lost=None,
        recovery_s=None,
        detail=f"`serve --model` {'refused it' if refused else 'STARTED with it'} (exit {out.exit_code}) in "
        f"{took:.1f} s; the error {'names' if says_why else 'does NOT name'} the cause ('{WHY[kind]}'); "
        f"forecasts written: {'yes' if served else 'none'}",
        anomalies=[
            name
            for name, on in (
                ("not refused", not refused),
                ("error does not say why", not says_why),
                ("bad checkpoint served", served),
            )
            if on
        ],
    )
    assert refused, out.output
    assert says_why, text[-2000:]
    assert not served, "a bad checkpoint served"


def test_registry_follower_refuses_spoiled_champion(
    fault_settings: Settings, tmp_path: Path, reliability: Reliability
) -> None:
    s = fault_settings
    network = simulated_network(6, name="follow", step_ms=STEP)
    reg = Registry(tmp_path / "registry")
    good = _good(network, tmp_path / "good.pt", s.window.window, s.window.horizon)
    v1 = reg.register(good, parent=None, reason="seed")
    reg.promote(v1.version, reason="seed")
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    sim = Simulator(network, seed=4)
    pipe = ServePipeline(s, network, ModelSpec(str(reg.root)), client_id="follow").start()
    pipe.lifecycle.follower.follow_s = 0.0
    serving_after: dict[str, str] = {}  # spoiled kind -> the version serving once 4 more steps were forecast
    kinds = ("tampered", "truncated", "foreign")
    steps = 10 + 5 * len(kinds)
    try:
        with ReadingProducer(s.kafka, network) as producer:
            for t in range(10):
                producer.send_step(T0 + t * STEP, *sim.step(T0 + t * STEP))
            producer.flush()
            wait_for(
                lambda: pipe.poll_once(100) >= 0 and pipe.steps_forecast >= 5, timeout_s=60, what="forecasts"
            )
            for i, kind in enumerate(kinds):
                v = reg.register(good, reason=f"to be {kind}")
                _spoil(kind, good, Path(v.uri))  # spoiled after registration: only the follower can notice
                reg.promote(v.version, reason="spoiled champion")
                before = pipe.steps_forecast
                for t in range(10 + 5 * i, 15 + 5 * i):
                    producer.send_step(T0 + t * STEP, *sim.step(T0 + t * STEP))
                producer.flush()
                wait_for(
                    lambda b=before: pipe.poll_once(100) >= 0 and pipe.steps_forecast >= b + 4,
                    timeout_s=60,
                    what=f"serving to go on after a {kind} champion",
                )
                serving_after[kind] = pipe.dispatcher.version
            produced = producer.sent
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and pipe.ingest.ingestor.ledger.total().received >= produced,
            timeout_s=60,
            what="every reading consumed",
        )
        pipe.drain()
    finally:
        pipe.close()
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    got = [int(f[b"step_ts"]) for _, f in r.xrange(Keys(s.redis.key_prefix, network.name).stream)]
    want = [T0 + t * STEP for t in range(s.window.window - 1, steps)]
    loaded = [kind for kind, version in serving_after.items() if version != v1.version]
    reliability.record(
        "spoiled registry champion",
        lost=produced - pipe.ingest.ingestor.ledger.total().windowed,
        missing=len(set(want) - set(got)),
        doubled=len(got) - len(set(got)),
        detail=f"a tampered, a truncated and a foreign checkpoint promoted in turn under a running pipeline; "
        f"serving version after each: {', '.join(f'{k} → {v}' for k, v in serving_after.items())} (seed "
        f"{v1.version}); {len(set(got))} of {len(want)} steps forecast",
        anomalies=[f"{kind} champion loaded" for kind in loaded],
    )
    assert not loaded, f"spoiled champions loaded: {loaded}"
    assert got == want


# -- training faults (slow: each needs an archive deep enough to train on) --------------------------------


def _retrain_settings(base: Settings, tmp_path: Path, **retrain: Any) -> Settings:
    s = base.model_copy(deep=True)
    s.window.window, s.window.horizon = 12, 6
    s.online.rolling_steps = 24
    s.retrain = s.retrain.model_copy(
        update={
            "enabled": True,
            "registry": str(tmp_path / "registry"),
            "min_steps": 120,
            "holdout_steps": 30,
            "history_steps": 90,
            "epochs": 2,
            "time_budget_s": 30,
            "workers": 0,
            "every_steps": 130,
            "backoff_s": 600,
            "model": "stformer",
            "preset": "small",
            **retrain,
        }
    )
    return s


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "nan"])
def test_training_fault_leaves_champion_and_serving(
    fault: str,
    fault_settings: Settings,
    tmp_path: Path,
    reliability: Reliability,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import training.train as train_mod

    real = train_mod.train_func
    if fault == "crash":

        def job(config: dict[str, Any], log: Any = None, **kw: Any) -> dict[str, Any]:
            raise MemoryError("simulated: the training worker died mid-epoch")
    else:  # a diverging job: the real training loop with a learning rate of 1e9

        def job(config: dict[str, Any], log: Any = None, **kw: Any) -> dict[str, Any]:
            return real({**config, "lr": 1e9, "warmup_epochs": 0}, log, **kw)

    monkeypatch.setattr(train_mod, "train_func", job)

    s = _retrain_settings(fault_settings, tmp_path)
    network = simulated_network(6, name=f"train{fault}", step_ms=STEP)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id=fault).start()
    reg = Registry(s.retrain.registry)
    seed = reg.champion().version
    sim = Simulator(network, seed=6)
    steps = 200
    failed: list[Any] = []
    try:
        with ReadingProducer(s.kafka, network) as producer:
            for t in range(steps):
                producer.send_step(T0 + t * STEP, *sim.step(T0 + t * STEP))
            produced = producer.sent
        r = redis.Redis.from_url(s.redis.url.get_secret_value())
        keys = Keys(s.redis.key_prefix, network.name)

        def failed_event() -> bool:
            failed[:] = [f for _, f in r.xrange(keys.events) if f[b"type"] == b"retrain_failed"]
            return bool(failed)

        t0 = time.monotonic()
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and failed_event(), timeout_s=300, what="the failed job's report"
        )
        took = time.monotonic() - t0
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and pipe.ingest.ingestor.ledger.total().received >= produced,
            timeout_s=120,
            what="serving to consume every reading",
        )
        pipe.drain()
    finally:
        pipe.close()
    champion, registered, serving = reg.champion().version, len(reg.list()), pipe.dispatcher.version
    detail = failed[0][b"detail"].decode()
    why = "MemoryError" if fault == "crash" else "non-finite"
    got = [int(f[b"step_ts"]) for _, f in r.xrange(keys.stream)]
    want = [T0 + t * STEP for t in range(s.window.window - 1, steps)]
    reliability.record(
        "training job crash" if fault == "crash" else "training NaN loss",
        lost=produced - pipe.ingest.ingestor.ledger.total().windowed,
        missing=len(set(want) - set(got)),
        doubled=len(got) - len(set(got)),
        detail=f"job reported failed after {took:.0f} s ({detail[:70]}); champion {champion} (seed {seed}), "
        f"{registered} version(s) registered, serving {serving}; {len(set(got))} of {len(want)} steps forecast",
        anomalies=[
            name
            for name, on in (
                ("champion replaced", champion != seed),
                ("failed job registered a version", registered != 1),
                ("serving model replaced", serving != seed),
                (f"failure report does not name {why!r}", why not in detail),
            )
            if on
        ],
    )
    assert champion == seed and registered == 1 and serving == seed
    assert why in detail, detail
    assert got == want
