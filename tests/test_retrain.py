"""Continuous retraining against real Kafka, Redis and Ray: a drift scenario end to end (schedule promotes
an attention model over the persistence seed; a regime change drives its online MAE up; drift triggers a
Ray Train job; the challenger is promoted and MAE comes back), plus the two ways a challenger must fail:
worse than the champion, or a crashing job — the champion stays and serving goes on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from serving.config import RetrainSettings, Settings
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import RunningPipeline, ServePipeline
from serving.retrain import Retrainer, gate
from stream.archive import Archive
from stream.config import StorageSettings
from stream.datasets import read_archive
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, SimulatorConfig, simulated_network
from training.predictor import Predictor
from training.registry import Registry

pytestmark = pytest.mark.usefixtures("ray_local")

STEP = 1_800_000  # 30 min: a day is 48 steps, so a short run holds several daily cycles
T0 = 1_767_225_600_000


class Feed:
    """Publishes the simulator at `rate` steps/s until stopped; `regime` switches the data's regime."""

    def __init__(self, s: Settings, network: Any, rate: float, regime_sector: float = 0.3) -> None:
        self.s, self.network, self.rate = s, network, rate
        cfg = SimulatorConfig(noise=1.0, dropout=0.01, incident_rate=0.0, regime_sector=regime_sector)
        self.sim = Simulator(network, seed=5, config=cfg)
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with ReadingProducer(self.s.kafka, self.network) as producer:
                while not self.stop.wait(1 / self.rate):
                    ts = T0 + self.sent * STEP
                    producer.send_step(ts, *self.sim.step(ts))
                    producer.flush()
                    self.sent += 1
        except BaseException as exc:
            self.error = exc


def _settings(base: Settings, tmp_path: Path, **retrain: Any) -> Settings:
    s = base.model_copy(deep=True)
    s.window.window, s.window.horizon = 12, 6
    s.online.rolling_steps = 48  # a whole day: rolling MAEs compared across times of day stay comparable
    s.online.health_interval_s = 0.5
    defaults = {
        "enabled": True,
        "registry": str(tmp_path / "registry"),
        "min_steps": 120,
        "holdout_steps": 30,
        "history_steps": 160,
        "epochs": 30,
        "time_budget_s": 60,
        "workers": 0,
        "promote_margin": 0.02,
        "drift_margin": 0.3,
        "drift_patience": 30,
        "backoff_s": 5,
    }
    s.retrain = s.retrain.model_copy(update={**defaults, **retrain})
    return s


def _events(s: Settings, net: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    out = []
    for _, f in r.xrange(Keys(s.redis.key_prefix, net).events):
        out.append({k.decode(): v.decode() for k, v in f.items()})
    return out


def _run_until(pipe: RunningPipeline, feed: Feed, cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if feed.error:
            raise feed.error
        if time.monotonic() > deadline:
            seen = [e["type"] + ":" + e["model_version"] for e in _events(pipe.settings, pipe.network.name)]
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; events: {seen}")
        pipe.poll_once(100)


def _score_after_swap(
    s: Settings, network: Any, reg: Registry, adapted: str, replaced: str, *, from_step: int, to_step: int
) -> dict[str, float]:
    """MAE of the adapted model, the model it replaced and persistence on the same archived steps after
    the swap (forecasts issued from `from_step` on), scored like the retraining gate scores a holdout."""
    window, horizon = s.window.window, s.window.horizon
    steps = read_archive(
        s.archive.root, start_ms=T0 + (from_step - window) * STEP, end_ms=T0 + to_step * STEP
    )
    model = {
        v: Predictor.from_checkpoint(reg.show(v).uri, network=network, device="cpu")
        for v in (adapted, replaced)
    }
    persistence = Predictor.baseline("persistence", network, window=window, horizon=horizon)
    mae = gate(model[adapted], model[replaced], persistence, steps, margin=0.0).figures["mae"]
    return {"adapted": mae["challenger"], "replaced": mae["champion"], "persistence": mae["persistence"]}


@pytest.mark.slow
def test_drift_triggers_retraining_and_promotion(
    fresh_settings: Settings, tmp_path: Path, artifacts_dir: Path
) -> None:
    # A model learns this network's daily cycle from ~10 days of steps; after the switch it needs about as
    # much of the new regime to come back to its old error. So drift must persist for 10 days (480 steps)
    # before it triggers, and the drift job trains on the newest 10 days only; the gate's holdout is a day.
    s = _settings(
        fresh_settings,
        tmp_path,
        every_steps=528,
        workers=2,
        min_steps=480,
        history_steps=480,
        holdout_steps=48,
        drift_patience=480,
        drift_history_steps=480,
        time_budget_s=90,
    )
    # the checks below read every step's entry: the stream must hold the whole run (20 steps/s for up to
    # ~20 minutes on a loaded machine), not the default cap of 2,000
    s.redis.stream_maxlen = 100_000
    # Rolling MAEs over a whole week: over a day, a reference taken on a weekend (rush hours damped) and one
    # taken on a weekday differ by up to 2.7x, so which day the reference fell on decided whether a weekend
    # after the switch broke the 480 drifting steps in a row (and drift never fired).
    s.online.rolling_steps = 7 * 48
    network = simulated_network(8, name="drift", step_ms=STEP)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="drift").start()
    retrainer = pipe.lifecycle.retrainer
    feed = Feed(s, network, rate=20.0)
    feed.thread.start()
    reg = Registry(s.retrain.registry)
    try:
        seed = reg.champion().version
        _run_until(
            pipe, feed, lambda: reg.champion().version != seed, 300, "the first promotion over the seed"
        )
        retrainer.settings.every_steps = 0  # from here on only drift may trigger
        # a scheduled job already in flight may still promote: the regime switches under its result
        _run_until(pipe, feed, lambda: not retrainer.busy, 300, "the scheduled job in flight")
        learned = reg.champion().version
        _run_until(pipe, feed, lambda: retrainer.reference(learned) is not None, 120, "a reference MAE")
        ref = retrainer.reference(learned)
        feed.sim.set_regime(1)
        switch_step = feed.sent
        _run_until(pipe, feed, lambda: any(e["type"] == "drift" for e in _events(s, "drift")), 200, "drift")
        _run_until(pipe, feed, lambda: reg.champion().version != learned, 300, "promotion after drift")
        adapted = reg.champion().version
        swap_step = feed.sent
        _run_until(pipe, feed, lambda: feed.sent >= swap_step + 96, 60, "96 steps served by the new model")
        mae_after = pipe.online.mean_rolling_mae(adapted)
    finally:
        feed.stop.set()
        feed.thread.join(10)
        pipe.close()
    # What the product promises after a regime change: the drift-triggered model is better on the new
    # regime than the model it replaced, scored on the same steps after the swap (from the archive), and
    # the online error comes down from the level that triggered the job. Getting all the way back to the
    # pre-drift reference depends on how much of the new regime the job had to learn from: reported, not
    # promised.
    events = _events(s, "drift")
    drift_mae = orjson.loads(next(e for e in events if e["type"] == "drift")["detail"])["rolling_mae"]
    post = _score_after_swap(s, network, reg, adapted, learned, from_step=swap_step, to_step=feed.sent)
    figures = {
        "reference_mae": ref,
        "drift_mae": drift_mae,
        "online_mae_after": mae_after,
        "back_to_reference": mae_after < ref * (1 + s.retrain.drift_margin),
        "offline_mae_after_swap": post,
        "regime_switch_step": switch_step,
        "swap_step": swap_step,
        "steps_sent": feed.sent,
    }
    drift_ms = min(int(e["ts"]) for e in events if e["type"] == "drift")
    promoted_ms = max(
        int(e["ts"]) for e in events if e["type"] == "promoted" and e["model_version"] == adapted
    )
    figures["drift_to_promotion_s"] = (promoted_ms - drift_ms) / 1000
    print("drift figures:", orjson.dumps(figures).decode())
    (artifacts_dir / "retrain_drift.json").write_bytes(orjson.dumps(figures))
    assert post["adapted"] < post["replaced"], figures
    assert mae_after < drift_mae, figures
    types = [(e["type"], e["model_version"]) for e in events]
    assert ("promoted", learned) in types and ("promoted", adapted) in types
    assert [t for t, _ in types].index("drift") < max(
        i for i, t in enumerate(types) if t == ("promoted", adapted)
    )
    record = reg.show(adapted)
    assert record.parent == learned and record.metrics["gate"]["trigger"] == "drift"
    assert record.metrics["gate"]["holdout"][0] > T0 + switch_step * STEP - 50 * STEP
    # every step across both swaps has exactly one forecast, tagged old then new version
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    entries = [
        (int(f[b"step_ts"]), f[b"model_version"].decode())
        for _, f in r.xrange(Keys(s.redis.key_prefix, "drift").stream)
    ]
    steps = [t for t, _ in entries]
    assert steps == sorted(set(steps)), "a step was forecast twice or out of order"
    assert np.all(np.diff(steps) == STEP), "a step is missing in the forecast stream"
    assert len(entries) < s.redis.stream_maxlen, "the forecast stream was trimmed: raise the cap"
    versions = [v for _, v in entries]
    first = {v: versions.index(v) for v in set(versions)}
    assert {seed, learned, adapted} <= set(first), (seed, learned, adapted, sorted(first))
    assert first[seed] < first[learned] < first[adapted]
    assert versions[first[adapted] :] == [adapted] * (len(versions) - first[adapted])


def test_worse_challenger_is_rejected_with_figures(fresh_settings: Settings, tmp_path: Path) -> None:
    # a challenger trained for one batch of one epoch cannot beat persistence by 50 %
    s = _settings(fresh_settings, tmp_path, every_steps=150, epochs=1, promote_margin=0.5)
    network = simulated_network(6, name="worse", step_ms=STEP)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="worse").start()
    retrainer = pipe.lifecycle.retrainer
    feed = Feed(s, network, rate=30.0)
    feed.thread.start()
    reg = Registry(s.retrain.registry)
    try:
        seed = reg.champion().version
        _run_until(pipe, feed, lambda: bool(retrainer.decisions), 240, "a gate decision")
    finally:
        feed.stop.set()
        feed.thread.join(10)
        pipe.close()
    decision = retrainer.decisions[0]
    assert not decision.promoted
    assert reg.champion().version == seed and pipe.dispatcher.version == seed
    rejected = reg.show(decision.version)
    assert rejected.reason.startswith("rejected: ")
    gate = rejected.metrics["gate"]
    assert set(gate["mae"]) == {"challenger", "champion", "persistence"} and gate["windows"] > 0
    assert any(e["type"] == "rejected" and orjson.loads(e["detail"])["mae"] for e in _events(s, "worse"))


def test_training_crash_leaves_serving_unaffected(fresh_settings: Settings, tmp_path: Path) -> None:
    s = _settings(fresh_settings, tmp_path, every_steps=150, model="no-such-model", backoff_s=60)
    network = simulated_network(6, name="crash", step_ms=STEP)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="crash").start()
    feed = Feed(s, network, rate=30.0)
    feed.thread.start()
    reg = Registry(s.retrain.registry)
    try:
        seed = reg.champion().version
        _run_until(
            pipe,
            feed,
            lambda: any(e["type"] == "retrain_failed" for e in _events(s, "crash")),
            240,
            "the failed job's report",
        )
        forecast_before = pipe.steps_forecast
        _run_until(pipe, feed, lambda: pipe.steps_forecast >= forecast_before + 20, 60, "20 more forecasts")
    finally:
        feed.stop.set()
        feed.thread.join(10)
        pipe.close()
    assert reg.champion().version == seed and len(reg.list()) == 1
    failed = [e for e in _events(s, "crash") if e["type"] == "retrain_failed"]
    assert "no-such-model" in failed[0]["detail"]


def test_triggers_count_every_step_of_a_cycle(tmp_path: Path) -> None:
    """`on_steps(n)`: a cycle's sealed steps count at once towards the archive's size, the schedule and the
    drift streak (no Ray, no job: the triggers alone)."""
    network = simulated_network(3, name="triggers", step_ms=STEP)
    rs = RetrainSettings(min_steps=10, holdout_steps=5, every_steps=20, drift_margin=0.3, drift_patience=6)
    archive = Archive(tmp_path / "archive", network)
    r = Retrainer(
        rs, archive, network, window=12, horizon=6, registry=None, storage=StorageSettings(), archived=10
    )
    try:
        assert r.on_steps(4, "v1", 1.0, True) is None  # 14 steps archived, a job needs 15
        assert r.reference("v1") == 1.0  # the rolling window was full: its MAE is the reference
        assert r.on_steps(1, "v1", 1.0, True) is None  # enough archived; 5 steps since, no drift
        assert r.on_steps(6, "v1", 1.5, True) == "drift"  # 6 drifting steps in one cycle: the patience
        assert r.on_steps(9, "v1", 1.0, True) == "schedule"  # 20 steps since the start, drift over
        assert r.on_steps(1, "v2", 9.0, False) == "schedule" and r.reference("v2") is None
    finally:
        r.close()
