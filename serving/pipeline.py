"""The serving loop: Kafka readings → sealed steps (archived) → rolling windows → forecaster actors →
Redis, with offsets committed only once everything below them is durable and forecast.

One poll cycle: decode and window every record polled, dead-letter the bad ones (flushed), write late
readings to the late log and sealed steps to the archive, forecast every newly complete window in one
micro-batch, write each step's forecast to Redis, then commit the offsets the ingest core allows.
A crash anywhere before the commit replays harmlessly: the archive skips steps it has, and Redis writes
are idempotent per (model version, step). On start the rolling window is refilled from the archive and
archived steps that never reached Redis are forecast again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from serving.config import Settings
from serving.dispatch import Dispatcher
from serving.forecaster import ModelSpec, make_actor
from serving.keys import Keys
from serving.metrics import ServeMetrics
from serving.sink import RedisSink, StepForecast, connect
from stream.archive import Archive
from stream.ingest import Ingestor
from stream.kafka_io import DeadLetterProducer, IngestConsumer, ensure_topics
from stream.network import Network
from stream.rolling import RollingWindow
from stream.window import SealedStep

log = logging.getLogger(__name__)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.now = now
        self.client_id = client_id
        self.window = settings.window.window
        self.horizon = settings.window.horizon
        self.keys = Keys(settings.redis.key_prefix, network.name)
        self.metrics = ServeMetrics()
        self._actors = actors
        self.consumer: IngestConsumer | None = None
        self.dead_letters: DeadLetterProducer | None = None
        self.sink: RedisSink | None = None
        self.redis: redis.Redis | None = None
        self.dispatcher: Dispatcher | None = None
        self.ingestor: Ingestor | None = None
        self.archive = Archive(settings.archive.root, network)
        self.rolling = RollingWindow(network, self.window)
        self.steps_forecast = 0
        self.metrics_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, serve_metrics: bool = False) -> ServePipeline:
        s = self.settings
        ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
        self.redis = connect(s.redis)
        self.sink = RedisSink(
            self.redis, self.keys, sensors=self.network.sensors, features=self._out_features(),
            step_ms=self.network.step_ms, ttl_s=s.redis.ttl_s, stream_maxlen=s.redis.stream_maxlen,
        )  # fmt: skip
        self.sink.publish_network()
        actors = self._actors or [
            make_actor(s.ray, self.spec, self.network, self.window, self.horizon)
            for _ in range(s.ray.replicas)
        ]
        self.dispatcher = Dispatcher(actors, self.spec)
        self.metrics.set_version(self.dispatcher.start())
        resume = self.archive.last_step()
        self.ingestor = Ingestor(
            self.network,
            allowed_lateness_ms=s.window.allowed_lateness_ms,
            idle_timeout_ms=s.window.idle_timeout_ms,
            agg=s.window.agg,
            now=self.now,
            resume_after_step=resume,
            source_topic=s.kafka.readings_topic,
        )
        self.metrics.attach_ledger(self.ingestor.ledger.snapshot)
        self._recover(resume)
        self.dead_letters = DeadLetterProducer(s.kafka).start()
        self.consumer = IngestConsumer(s.kafka, client_id=self.client_id).start()
        if serve_metrics:
            self.metrics_port = self.metrics.serve(s.metrics.port, s.metrics.host)
        log.info("serving", extra={"network": self.network.name, "version": self.dispatcher.version,
                                   "resume_after_step": resume, "devices": self.dispatcher.devices()})  # fmt: skip
        return self

    def close(self) -> None:
        for closer in (self.consumer, self.dead_letters):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # closing must not hide the error that brought us here
                    log.exception("error while closing")
        self.consumer = self.dead_letters = None

    def _out_features(self) -> tuple[str, ...]:
        return self.network.feature_names  # baselines and models forecast every feature by default

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
        assert self.consumer and self.ingestor and self.dead_letters
        dead = []
        for rec in self.consumer.poll(timeout_ms):
            dead.extend(self.ingestor.ingest(rec.partition, rec.offset, rec.value))
        sealed = self.ingestor.seal()
        offsets = self.ingestor.committable()
        if dead:
            self.dead_letters.send(dead)
            self.dead_letters.flush()
        late = self.ingestor.take_late()
        if len(late):
            self.archive.append_late(late)
        n = 0
        if sealed:
            self.archive.append(sealed)
            self.metrics.steps_sealed.inc(len(sealed))
            self.metrics.last_sealed.set(sealed[-1].step_ts)
            sealed_at = time.monotonic()
            pending = _Pending()
            for step in sealed:
                self.rolling.push(step)
                if self.rolling.ready:
                    pending.add(self.rolling, step.step_ts, sealed_at)
            n = self._forecast(pending)
        if offsets:
            self.consumer.commit(offsets)
        wm = self.ingestor.windower.watermark()
        if wm is not None:
            self.metrics.watermark.set(wm)
        return n

    def _forecast(self, pending: _Pending) -> int:
        if not pending.step_ts:
            return 0
        assert self.dispatcher and self.sink
        values = np.stack(pending.values)  # [B, window, N, F]
        mask = np.stack(pending.mask)  # [B, window, N, F]
        ts = np.stack(pending.ts)  # [B, window]
        out = self.dispatcher.forecast(values, mask, ts)  # [B, H, N, out]
        self.metrics.inference_seconds.observe(self.dispatcher.last_infer_ms / 1000)
        version = self.dispatcher.version
        for b, step_ts in enumerate(pending.step_ts):
            self.sink.write(StepForecast(step_ts, version, out[b], wall_ms()))
            self.metrics.seal_to_redis_seconds.observe(time.monotonic() - pending.sealed_at[b])
        self.metrics.steps_forecast.inc(len(pending.step_ts))
        self.steps_forecast += len(pending.step_ts)
        return len(pending.step_ts)

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
        assert self.consumer is not None
        lag = self.consumer.lag()
        for part, value in lag.items():
            self.metrics.consumer_lag.labels(str(part)).set(value)
        return lag
