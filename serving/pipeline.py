"""The serving loop: `stream.consume.IngestService` (Kafka → sealed, archived steps) → rolling windows →
forecaster actors → Redis, with offsets committed only once everything below them is archived *and*
forecast in Redis (the forecast runs inside the ingest service's `on_sealed` hook, before its commit).

`ServePipeline` is what to serve (settings, network, the model asked for); its `start()` connects Redis,
the actors and Kafka and returns a `RunningPipeline`, whose parts are all live: ingest, the step forecasts
(`serving.forecasting`), the online evaluator and the model lifecycle (`serving.lifecycle`: hot swaps,
following the registry, retraining). A crash anywhere before the commit replays harmlessly: the archive
skips steps it has, and Redis writes are idempotent per (model version, step). On start the rolling window
is refilled from the archive and archived steps whose forecast never reached Redis are forecast again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.config import Settings
from serving.dispatch import Dispatcher
from serving.forecaster import ModelSpec, make_actors, ship
from serving.forecasting import StepForecasts
from serving.keys import Keys
from serving.lease import Lease
from serving.lifecycle import Follower, ModelLifecycle, serving_model
from serving.metrics import ServeMetrics
from serving.online import OnlineEvaluator
from serving.retrain import Retrainer, archived_steps
from serving.sink import RedisSink, connect
from stream.archive import Archive
from stream.clock import wall_ms
from stream.consume import IngestService
from stream.ingest import Ingestor
from stream.network import Network
from stream.storage import check
from stream.window import SealedStep

if TYPE_CHECKING:
    from serving.sink import Client

log = logging.getLogger(__name__)


class ServePipeline:
    """Ingest + forecast + sink for one network, not yet connected: `start()` returns the running one."""

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
        self.actors = (
            actors  # forecaster actors to use instead of starting `ray.replicas` × `ray.shards` new ones
        )

    def start(self, *, serve_metrics: bool = False) -> RunningPipeline:
        """Connect Redis, resolve the model, start the actors and ingest, recover from the archive and
        Redis; a failure once ingest has started closes it again."""
        s, network = self.settings, self.network
        client = connect(s.redis)
        keys = Keys(s.redis.key_prefix, network.name)
        lease = Lease(client, keys, ttl_s=s.redis.lease_ttl_s)  # owner: this process, or its Ray actor
        lease.acquire()  # before anything is written or consumed: one pipeline per network
        try:
            return self._start(client, lease, serve_metrics)
        except BaseException:
            lease.release()
            raise

    def _start(self, client: Client, lease: Lease, serve_metrics: bool) -> RunningPipeline:
        s, network = self.settings, self.network
        window, horizon = s.window.window, s.window.horizon
        # the actors start without a model: their processes come up while the model is resolved here
        actors = self.actors or make_actors(s.ray, window, horizon, s.storage)
        archive = Archive(s.archive.root, network, s.storage)
        check(archive.root, "archive.root")
        spec, registry = serving_model(s, self.spec, network)
        dispatcher = Dispatcher(actors, ship(spec, s.storage), network, shards=s.ray.shards)
        metrics = ServeMetrics()
        metrics.set_version(dispatcher.start())
        sink = RedisSink(
            client,
            Keys(s.redis.key_prefix, network.name),
            sensors=network.sensors,
            features=dispatcher.out_features,
            step_ms=network.step_ms,
            ttl_s=s.redis.ttl_s,
            stream_maxlen=s.redis.stream_maxlen,
            on_retry=metrics.redis_retries.inc,
            lease=lease,  # every write checks the fencing token
        )
        sink.publish_network()
        online = OnlineEvaluator(
            horizon=horizon,
            step_ms=network.step_ms,
            targets=dispatcher.targets,
            rolling_steps=s.online.rolling_steps,
            zero_is_missing=s.online.zero_is_missing or network.zero_is_missing,
        )
        sink.add_event("serving", dispatcher.version, {"spec": spec.ref, **dispatcher.placement()})
        ingest = IngestService(s.kafka, s.window, archive, network, now=self.now, client_id=self.client_id)
        ingest.start()
        try:
            if ingest.ingestor is None:
                raise RuntimeError("the ingest service started without its ingestor")
            retrainer = None
            if s.retrain.enabled:
                retrainer = Retrainer(
                    s.retrain,
                    archive,
                    network,
                    window=window,
                    horizon=horizon,
                    registry=registry,
                    storage=s.storage,
                    archived=archived_steps(archive, s.retrain, network.step_ms),
                )
            lifecycle = ModelLifecycle(
                spec,
                dispatcher,
                sink,
                metrics,
                online,
                storage=s.storage,
                rolling_steps=s.online.rolling_steps,
                follower=Follower(registry, s.storage) if registry is not None else None,
                retrainer=retrainer,
            )
            metrics.attach_ledger(ingest.ingestor.ledger.snapshot)
            running = RunningPipeline(
                settings=s,
                network=network,
                redis=client,
                ingest=ingest,
                ingestor=ingest.ingestor,
                dispatcher=dispatcher,
                sink=sink,
                online=online,
                forecasts=StepForecasts(
                    network,
                    window,
                    dispatcher,
                    sink,
                    online,
                    metrics,
                    pipeline_windows=s.ray.pipeline_windows,
                ),
                lifecycle=lifecycle,
                metrics=metrics,
                lease=lease,
            )
            running.recover(ingest.resumed_after)
            if serve_metrics:
                running.metrics_port = metrics.serve(s.metrics.port, s.metrics.host)
        except BaseException:
            ingest.close()
            raise
        log.info(
            "serving",
            extra={
                "network": network.name,
                "version": dispatcher.version,
                "resume_after_step": ingest.resumed_after,
                "devices": dispatcher.devices(),
            },
        )
        return running


@dataclass(eq=False, kw_only=True)
class RunningPipeline:
    """A started pipeline; every part is live. `poll_once()`/`run()` serve, `drain()` ends a finite stream,
    `close()` (or leaving a `with` block) stops ingest and retraining."""

    settings: Settings
    network: Network
    redis: Client  # what `serving.sink.connect` returned
    ingest: IngestService
    ingestor: Ingestor  # the ingest service's: ledger and windower
    dispatcher: Dispatcher
    sink: RedisSink
    online: OnlineEvaluator
    forecasts: StepForecasts
    lifecycle: ModelLifecycle
    metrics: ServeMetrics
    lease: Lease  # this pipeline's right to write the network's keys; renewed every cycle
    metrics_port: int | None = None  # where /metrics is served, when it is
    health: dict[str, Any] = field(
        default_factory=dict, init=False
    )  # as last published (other threads read it)
    _next_health: float = field(default=0.0, init=False)
    _health_mark: tuple[float, int] = field(init=False, default_factory=lambda: (time.monotonic(), 0))

    @property
    def keys(self) -> Keys:
        return self.sink.keys

    @property
    def steps_forecast(self) -> int:
        return self.forecasts.steps_forecast

    @property
    def latencies_s(self) -> deque[float]:
        """Seal→Redis latency of the latest steps (s), for benchmarks."""
        return self.forecasts.latencies_s

    @property
    def inference_ms(self) -> deque[float]:
        """The forecaster actors' compute time of the latest calls (ms; the slowest shard's), for
        benchmarks."""
        return self.forecasts.inference_ms

    def __enter__(self) -> RunningPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lifecycle.close()
        self.ingest.close()
        self.lease.release()

    # -- recovery --------------------------------------------------------------------------------------
    def recover(self, resume: int | None) -> None:
        """Refill the rolling window from the archive; forecast archived steps that never reached Redis."""
        if resume is None:
            return
        raw = self.redis.hget(self.keys.latest_meta, "step_ts")
        last_done = int(raw) if raw is not None else None
        step_ms, window = self.network.step_ms, self.settings.window.window
        back = window + (0 if last_done is None else max(0, (resume - last_done) // step_ms))
        back = min(back, window + self.settings.redis.stream_maxlen)
        step_ts, values, mask = self.ingest.archive.read(start_ms=resume - (back - 1) * step_ms)
        self.forecasts.refill(step_ts, values, mask, last_done)

    # -- the loop --------------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 200) -> int:
        """One cycle; returns the number of steps forecast."""
        before = self.steps_forecast
        self.lease.renew()  # LeaseLost: another pipeline took the network over; stop here
        self.ingest.poll_once(timeout_ms, on_sealed=self._on_sealed)
        self.lifecycle.poll()
        if time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + self.settings.online.health_interval_s
            self.publish_health()
        return self.steps_forecast - before

    def run(
        self,
        *,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        on_cycle: Callable[[RunningPipeline], None] | None = None,
    ) -> None:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not (stop is not None and stop.is_set()) and (deadline is None or time.monotonic() < deadline):
            self.poll_once()
            if on_cycle is not None:
                on_cycle(self)

    def drain(self) -> int:
        """End of a finite stream: seal and forecast everything still open."""
        before = self.steps_forecast
        self.ingest.drain(on_sealed=self._on_sealed)
        self.publish_health()
        return self.steps_forecast - before

    def _on_sealed(self, sealed: list[SealedStep]) -> None:
        self.metrics.steps_sealed.inc(len(sealed))
        self.metrics.last_sealed.set(sealed[-1].step_ts)
        self.forecasts.on_sealed(sealed)
        self.lifecycle.on_steps(len(sealed))

    # -- health ----------------------------------------------------------------------------------------
    def publish_health(self) -> dict[str, Any]:
        """Ingest health to Prometheus and Redis (the dashboard reads it there)."""
        snap = self.ingestor.ledger.snapshot()["total"]
        wm = self.ingestor.windower.last_watermark
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
            "last_sealed": self.ingestor.windower.sealed_through or -1,
            "steps_forecast": self.steps_forecast,
            "readings_per_s": round(rate, 1),
            "model_version": self.dispatcher.version,
            "unarchived_steps": len(self.ingest.unarchived),
            "archive_failures": self.ingest.archive_failures,
            "updated_ms": wall_ms(),
        }
        self.sink.write_health(health)
        self.health = health
        return health

    def lag(self) -> dict[int, int]:
        lag = self.ingest.lag()
        for part, value in lag.items():
            self.metrics.consumer_lag.labels(str(part)).set(value)
        return lag
