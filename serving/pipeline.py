"""The serving loop: `stream.consume.IngestService` (Kafka → sealed, archived steps) → rolling windows →
forecaster actors → Redis, with offsets committed only once everything below them is archived *and*
forecast in Redis (the forecast runs inside the ingest service's `on_sealed` hook, before its commit).

Every newly complete window of a poll cycle goes to the actors in one micro-batch. A crash anywhere before
the commit replays harmlessly: the archive skips steps it has, and Redis writes are idempotent per (model
version, step). On start the rolling window is refilled from the archive and archived steps whose
forecast never reached Redis are forecast again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from serving.cluster import require_shared_storage
from serving.config import Settings
from serving.dispatch import Call, Dispatcher
from serving.forecaster import ModelSpec, make_actor, ship
from serving.keys import Keys
from serving.lifecycle import Follower, bootstrap, open_registry, resolve
from serving.metrics import ServeMetrics
from serving.online import OnlineEvaluator
from serving.retrain import Retrainer
from serving.sink import RedisSink, StepForecast, connect
from stream.archive import Archive
from stream.clock import wall_ms
from stream.consume import IngestService
from stream.network import Network
from stream.rolling import RollingWindow
from stream.storage import check
from stream.window import SealedStep

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """Complete windows waiting for one actor call."""

    step_ts: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)  # each [window, N, F]
    mask: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)  # each [window]
    sealed_at: list[float] = field(default_factory=list)

    def add(self, rolling: RollingWindow, step_ts: int, sealed_at: float) -> None:
        self.step_ts.append(step_ts)
        self.values.append(rolling.values())
        self.mask.append(rolling.mask())
        self.ts.append(rolling.step_ts())
        self.sealed_at.append(sealed_at)


class ServePipeline:
    """Ingest + forecast + sink for one network. `start()` connects; `run()` loops; `close()` cleans up."""

    def __init__(
        self,
        settings: Settings,
        network: Network,
        spec: ModelSpec,
        *,
        now: Callable[[], int] = wall_ms,
        client_id: str = "sensorcast-serve",
        actors: list[Any] | None = None,
    ) -> None:
        self.settings = settings
        self.network = network
        self.spec = spec
        self.window = settings.window.window
        self.horizon = settings.window.horizon
        self.keys = Keys(settings.redis.key_prefix, network.name)
        self.metrics = ServeMetrics()
        self._actors = actors
        self.archive = Archive(settings.archive.root, network, settings.storage)
        self.ingest = IngestService(
            settings.kafka, settings.window, self.archive, network, now=now, client_id=client_id
        )
        self.sink: RedisSink | None = None
        self.redis: redis.Redis | None = None
        self.dispatcher: Dispatcher | None = None
        self.rolling = RollingWindow(network, self.window)
        self.steps_forecast = 0
        self.metrics_port: int | None = None
        self.online: OnlineEvaluator | None = None
        self.latencies_s: deque[float] = deque(maxlen=10_000)  # seal→Redis per step, for benchmarks
        self.registry: Any = None  # training.registry.Registry when serving from one
        self.follower: Follower | None = None
        self.retrainer: Retrainer | None = None
        self.champion: Any = None  # the serving model as a local Predictor, for the retraining gate
        self._next_health = 0.0
        self._retries = 0  # dispatcher re-sends already reported
        self._health_mark: tuple[float, int] = (time.monotonic(), 0)

    @property
    def ingestor(self) -> Any:
        return self.ingest.ingestor

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, serve_metrics: bool = False) -> ServePipeline:
        s = self.settings
        self.redis = connect(s.redis)
        check(self.archive.root, "archive.root")
        self.spec, self.registry = resolve(self.spec.ref, s.storage)
        if s.retrain.enabled:
            if self.registry is None:
                self.registry = open_registry(s.retrain.registry, s.storage)
                check(self.registry.root, "retrain.registry")
            require_shared_storage(s)
            self.spec = bootstrap(self.registry, self.spec, self.network, self.window, self.horizon)
        if self.registry is not None:
            self.follower = Follower(self.registry, s.storage)
        shipment = ship(self.spec, s.storage)
        actors = self._actors or [
            make_actor(s.ray, shipment, self.network, self.window, self.horizon, s.storage)
            for _ in range(s.ray.replicas)
        ]
        self.dispatcher = Dispatcher(actors, shipment)
        self.metrics.set_version(self.dispatcher.start())
        self.sink = RedisSink(
            self.redis, self.keys, sensors=self.network.sensors, features=self.dispatcher.out_features,
            step_ms=self.network.step_ms, ttl_s=s.redis.ttl_s, stream_maxlen=s.redis.stream_maxlen,
        )  # fmt: skip
        self.sink.publish_network()
        self.online = OnlineEvaluator(
            horizon=self.horizon, step_ms=self.network.step_ms, targets=self.dispatcher.targets,
            rolling_steps=s.online.rolling_steps, zero_is_missing=s.online.zero_is_missing,
        )  # fmt: skip
        self.sink.add_event(
            "serving", self.dispatcher.version, {"spec": self.spec.ref, **self.dispatcher.placement()}
        )
        self.ingest.start()
        if s.retrain.enabled:
            self.retrainer = Retrainer(
                s.retrain,
                self.archive,
                self.network,
                window=self.window,
                horizon=self.horizon,
                registry=self.registry,
                storage=s.storage,
            )
            self.champion = self._local_predictor(self.spec)
        self.metrics.attach_ledger(self.ingest.ingestor.ledger.snapshot)
        self._recover(self.ingest.resumed_after)
        if serve_metrics:
            self.metrics_port = self.metrics.serve(s.metrics.port, s.metrics.host)
        log.info("serving", extra={"network": self.network.name, "version": self.dispatcher.version,
                                   "resume_after_step": self.ingest.resumed_after,
                                   "devices": self.dispatcher.devices()})  # fmt: skip
        return self

    def close(self) -> None:
        if self.retrainer is not None:
            self.retrainer.close()
        self.ingest.close()

    # -- model lifecycle -------------------------------------------------------------------------------
    def _local_predictor(self, spec: ModelSpec) -> Any:
        from serving.forecaster import build_predictor

        return build_predictor(spec, self.network, self.window, self.horizon, storage=self.settings.storage)

    def swap(self, spec: ModelSpec, why: str) -> str:
        """Hot swap between cycles: the next sealed step is forecast by the new version."""
        assert self.dispatcher is not None and self.sink is not None
        old = self.dispatcher.version
        version = self.dispatcher.load(ship(spec, self.settings.storage))
        self.spec = spec
        self.metrics.set_version(version)
        if self.retrainer is not None:
            self.champion = self._local_predictor(spec)
        detail = {"previous": old, "why": why, "spec": spec.ref, **self.dispatcher.placement()}
        self.sink.add_event("serving", version, detail)
        log.info("model swapped", extra={"from": old, "to": version, "why": why})
        return version

    def _lifecycle(self) -> None:
        assert self.sink is not None and self.dispatcher is not None
        if self.retrainer is not None:
            result = self.retrainer.poll()
            if isinstance(result, Exception):
                self.sink.add_event("retrain_failed", self.dispatcher.version, {"error": repr(result)})
            elif result is not None:
                kind = "promoted" if result.promoted else "rejected"
                self.sink.add_event(kind, result.version, {"reason": result.reason, **result.figures})
                if result.promoted:
                    record = self.registry.show(result.version)
                    self.swap(ModelSpec(record.uri, record.sha256), "promoted")
        if self.follower is not None:
            new = self.follower.changed(self.spec)
            if new is not None:
                self.swap(new, "registry champion changed")

    def _retrain_triggers(self, n_steps: int) -> None:
        assert self.retrainer is not None and self.online is not None and self.dispatcher is not None
        version = self.dispatcher.version
        rolling = self.online.rolling(version)
        full = int(rolling["steps"] or 0) >= self.settings.online.rolling_steps  # type: ignore[call-overload]
        mae = self.online.mean_rolling_mae(version)
        for _ in range(n_steps):
            trigger = self.retrainer.on_step(version, mae, full)
            if trigger is not None:
                if trigger == "drift":
                    ref = self.retrainer.reference(version)
                    assert self.sink is not None
                    self.sink.add_event("drift", version, {"rolling_mae": mae, "reference_mae": ref})
                meta = self.retrainer.launch(trigger, self.spec, self.champion)
                assert self.sink is not None
                self.sink.add_event("retrain_started", version, meta)
                break

    # -- recovery --------------------------------------------------------------------------------------
    def _recover(self, resume: int | None) -> None:
        """Refill the rolling window from the archive; forecast archived steps that never reached Redis."""
        if resume is None:
            return
        assert self.redis is not None
        raw = self.redis.hget(self.keys.latest_meta, "step_ts")
        last_done = int(raw) if raw is not None else None
        back = self.window + (
            0 if last_done is None else max(0, (resume - last_done) // self.network.step_ms)
        )
        back = min(back, self.window + self.settings.redis.stream_maxlen)
        step_ts, values, mask = self.archive.read(start_ms=resume - (back - 1) * self.network.step_ms)
        pending = _Pending()
        for i, ts in enumerate(step_ts):
            self.rolling.push(SealedStep(int(ts), values[i], mask[i], 0))
            if self.rolling.ready and (last_done is None or ts > last_done):
                pending.add(self.rolling, int(ts), time.monotonic())
        if pending.step_ts:
            log.info("re-forecasting archived steps missing in redis", extra={"steps": len(pending.step_ts)})
            self._forecast(pending)

    # -- the loop --------------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 200) -> int:
        """One cycle; returns the number of steps forecast."""
        before = self.steps_forecast
        self.ingest.poll_once(timeout_ms, on_sealed=self._on_sealed)
        self._lifecycle()
        if time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + self.settings.online.health_interval_s
            self.publish_health()
        return self.steps_forecast - before

    def publish_health(self) -> dict[str, Any]:
        """Ingest health to Prometheus and Redis (the dashboard reads it there)."""
        assert self.sink is not None and self.ingest.ingestor is not None
        snap = self.ingest.ingestor.ledger.snapshot()["total"]
        wm = self.ingest.ingestor.windower.last_watermark
        if wm is not None:
            self.metrics.watermark.set(wm)
        self.metrics.unarchived_steps.set(len(self.ingest.unarchived))
        self.metrics.archive_failures.set(self.ingest.archive_failures)
        t0, n0 = self._health_mark
        now = time.monotonic()
        rate = (snap["received"] - n0) / (now - t0) if now > t0 else 0.0
        self._health_mark = (now, snap["received"])
        health = {
            "ledger": {k: v for k, v in snap.items() if k != "dead_by_reason"},
            "dead_by_reason": snap["dead_by_reason"],
            "lag": self.lag(),
            "watermark": wm if wm is not None else -1,
            "last_sealed": self.ingest.ingestor.windower.sealed_through or -1,
            "steps_forecast": self.steps_forecast,
            "readings_per_s": round(rate, 1),
            "model_version": self.dispatcher.version if self.dispatcher else "",
            "unarchived_steps": len(self.ingest.unarchived),
            "archive_failures": self.ingest.archive_failures,
            "updated_ms": wall_ms(),
        }
        self.sink.write_health(health)
        return health

    def drain(self) -> int:
        """End of a finite stream: seal and forecast everything still open."""
        before = self.steps_forecast
        self.ingest.drain(on_sealed=self._on_sealed)
        self.publish_health()
        return self.steps_forecast - before

    def _on_sealed(self, sealed: list[SealedStep]) -> None:
        assert self.sink is not None and self.online is not None
        self.metrics.steps_sealed.inc(len(sealed))
        self.metrics.last_sealed.set(sealed[-1].step_ts)
        sealed_at = time.monotonic()
        pending = _Pending()
        for step in sealed:
            self.rolling.push(step)
            if self.rolling.ready:
                pending.add(self.rolling, step.step_ts, sealed_at)
        to_score = deque(sealed)
        scored = False
        horizon_ms = self.horizon * self.network.step_ms

        def score(through: int | None) -> None:
            """Score the sealed steps up to `through` (all: None) against the forecasts that target them.

            A step is the last target of the forecast issued H steps before it, so it is scored only once
            that forecast is recorded: while a long batch is forecast, after each call's steps are
            written (the actors compute meanwhile), and the rest at the end.
            """
            nonlocal scored
            assert self.sink is not None and self.online is not None
            ready = []
            while to_score and (through is None or to_score[0].step_ts <= through):
                ready.append(to_score.popleft())
            for st in ready:
                scored |= self.online.observe(st.step_ts, st.values, st.mask) is not None
            self.sink.write_actuals([(st.step_ts, st.values, st.mask) for st in ready])

        self._forecast(pending, on_written=lambda last_issued: score(last_issued + horizon_ms))
        score(None)
        if scored:
            self._publish_online(sealed[-1].step_ts)
        if self.retrainer is not None:
            self._retrain_triggers(len(sealed))

    def _publish_online(self, step_ts: int) -> None:
        assert self.sink is not None and self.online is not None and self.dispatcher is not None
        rolling = self.online.rolling(self.dispatcher.version)
        for h, (mae, rmse) in enumerate(zip(rolling["mae"], rolling["rmse"], strict=True), 1):  # type: ignore[arg-type]
            self.metrics.online_mae.labels(str(h)).set(mae)
            self.metrics.online_rmse.labels(str(h)).set(rmse)
        cumulative = {v: sums.scores() for v, sums in self.online.cumulative.items()}
        self.sink.write_online(
            step_ts, cumulative, rolling, self.online.mean_rolling_mae(self.dispatcher.version)
        )

    def _forecast(self, pending: _Pending, on_written: Callable[[int], None] | None = None) -> int:
        """Forecast the pending windows and write each step to Redis, in step order.

        A long backlog (catching up, replaying) goes in calls of `ray.pipeline_windows` windows per replica,
        and the next call is submitted before the previous one's steps are written, so the actors
        compute while this process writes to Redis. `on_written(step_ts)` follows each call's writes,
        with its last step, while the next call computes.
        """
        if not pending.step_ts:
            return 0
        assert self.dispatcher and self.sink
        values = np.stack(pending.values)  # [B, window, N, F]
        mask = np.stack(pending.mask)  # [B, window, N, F]
        ts = np.stack(pending.ts)  # [B, window]
        b = len(pending.step_ts)
        size = self.settings.ray.pipeline_windows * len(self.dispatcher.actors)
        calls: deque[tuple[int, Call]] = deque()
        for lo in range(0, b, size):
            hi = min(b, lo + size)
            calls.append((lo, self.dispatcher.submit(values[lo:hi], mask[lo:hi], ts[lo:hi])))
            if len(calls) > 1:
                self._write_forecasts(pending, *calls.popleft(), on_written)
        while calls:
            self._write_forecasts(pending, *calls.popleft(), on_written)
        return b

    def _write_forecasts(
        self, pending: _Pending, first: int, call: Call, on_written: Callable[[int], None] | None
    ) -> None:
        """Wait for `call` (pending windows `first`, `first + 1`, ...), write its steps, then call
        `on_written` with the last one's step."""
        assert self.dispatcher and self.sink
        out = self.dispatcher.collect(call)  # [b, H, N, out]
        self.metrics.inference_seconds.observe(self.dispatcher.last_infer_ms / 1000)
        version = self.dispatcher.version
        if self.dispatcher.retries > self._retries:  # an actor failed and was replaced (maybe elsewhere)
            self.metrics.actor_retries.inc(self.dispatcher.retries - self._retries)
            self._retries = self.dispatcher.retries
            self.sink.add_event(
                "actors_recovered", version, {"retries": self._retries, **self.dispatcher.placement()}
            )
        for k in range(out.shape[0]):
            step_ts = pending.step_ts[first + k]
            self.sink.write(StepForecast(step_ts, version, out[k], wall_ms()))
            if self.online is not None:
                self.online.record_forecast(step_ts, version, out[k])
            latency = time.monotonic() - pending.sealed_at[first + k]
            self.metrics.seal_to_redis_seconds.observe(latency)
            self.latencies_s.append(latency)
        self.metrics.steps_forecast.inc(out.shape[0])
        self.steps_forecast += out.shape[0]
        if on_written is not None:
            on_written(pending.step_ts[first + out.shape[0] - 1])

    def run(
        self,
        *,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        on_cycle: Callable[[ServePipeline], None] | None = None,
    ) -> None:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not (stop is not None and stop.is_set()) and (deadline is None or time.monotonic() < deadline):
            self.poll_once()
            if on_cycle is not None:
                on_cycle(self)

    def lag(self) -> dict[int, int]:
        lag = self.ingest.lag()
        for part, value in lag.items():
            self.metrics.consumer_lag.labels(str(part)).set(value)
        return lag
