"""Prometheus metrics of a serving process: readings in and where they went (from the ingest ledger),
steps sealed, dead letters by reason, late readings, consumer lag, watermark, inference time, seal→Redis
latency, online error by horizon and the serving model version.

Each pipeline owns its own `CollectorRegistry` (tests run several in one process); `serve()` exposes it
on an HTTP port. The ledger is read at scrape time by a custom collector, so counters cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _LedgerCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        readings = CounterMetricFamily(
            "sensorcast_readings",
            "Readings received and where they ended, per partition",
            labels=["partition", "outcome"],
        )
        dead = CounterMetricFamily(
            "sensorcast_dead_letters", "Dead-lettered readings by reason", labels=["reason"]
        )
        for part, counts in snap.get("partitions", {}).items():
            for outcome in ("received", "windowed", "dead_lettered", "late", "duplicates", "replayed"):
                readings.add_metric([str(part), outcome], counts.get(outcome, 0))
        for reason, n in snap.get("total", {}).get("dead_by_reason", {}).items():
            dead.add_metric([reason], n)
        yield readings
        yield dead


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_sealed = Counter("sensorcast_steps_sealed", "Sealed steps archived", registry=r)
        self.steps_forecast = Counter(
            "sensorcast_steps_forecast", "Steps whose forecast reached Redis", registry=r
        )
        self.inference_seconds = Histogram(
            "sensorcast_inference_seconds", "Model time per actor call", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.seal_to_redis_seconds = Histogram(
            "sensorcast_seal_to_redis_seconds",
            "From a step's sealing to its forecast written in Redis",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "sensorcast_consumer_lag", "Messages behind the high-water mark", ["partition"], registry=r
        )
        self.watermark = Gauge("sensorcast_watermark_ms", "Network watermark (epoch ms)", registry=r)
        self.last_sealed = Gauge(
            "sensorcast_last_sealed_step_ms", "Newest sealed step (epoch ms)", registry=r
        )
        self.online_mae = Gauge(
            "sensorcast_online_mae", "Rolling online MAE by horizon step", ["horizon"], registry=r
        )
        self.online_rmse = Gauge(
            "sensorcast_online_rmse", "Rolling online RMSE by horizon step", ["horizon"], registry=r
        )
        self.model_version = Gauge(
            "sensorcast_model_info", "Serving model version (value 1)", ["version"], registry=r
        )
        self.redis_retries = Counter("sensorcast_redis_retries", "Redis write retries", registry=r)
        self.actor_retries = Counter(
            "sensorcast_actor_retries", "Forecast calls re-sent after an actor failure", registry=r
        )
        self.unarchived_steps = Gauge(
            "sensorcast_unarchived_steps",
            "Sealed steps waiting for the archive (storage down); offsets are held behind them",
            registry=r,
        )
        self.archive_failures = Gauge(
            "sensorcast_archive_write_failures", "Failed archive writes since start", registry=r
        )
        self._version: str | None = None

    def attach_ledger(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_LedgerCollector(snapshot))

    def set_version(self, version: str) -> None:
        if version != self._version:
            if self._version is not None:
                self.model_version.remove(self._version)
            self.model_version.labels(version).set(1)
            self._version = version

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the port actually bound (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
