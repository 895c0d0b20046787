"""`ForecastClient`: read the forecasts sensorcast writes to Redis (latest per sensor, a step's snapshot,
new-step notifications). Works against any Redis holding sensorcast keys, a single server or a Redis
Cluster (`redis+cluster://` URL or `cluster=True`); key names from `serving.keys`. `Notifications` (and
`AsyncNotifications`) is the one subscriber of the new-step channel, for the clients and the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from serving.config import RedisSettings
from serving.keys import Keys
from serving.sink import TRANSIENT_ERRORS, AsyncClient, Client, connect, connect_async


@dataclass(frozen=True)
class SensorForecast:
    sensor: str
    step_ts: int  # last input step (epoch ms); horizon h forecasts step_ts + h * step_ms
    issued_ms: int
    model_version: str
    step_ms: int
    features: tuple[str, ...]
    forecast: np.ndarray  # [H, F]

    def target_ts(self) -> np.ndarray:
        return self.step_ts + self.step_ms * np.arange(1, self.forecast.shape[0] + 1)


@dataclass(frozen=True)
class StepSnapshot:
    stream_id: str
    step_ts: int
    model_version: str
    issued_ms: int
    values: np.ndarray  # [H, N, F]


def _sensor(sensor: str, raw: bytes) -> SensorForecast:
    d = orjson.loads(raw)
    return SensorForecast(
        sensor=sensor,
        step_ts=int(d["step_ts"]),
        issued_ms=int(d["issued_ms"]),
        model_version=str(d["model_version"]),
        step_ms=int(d["step_ms"]),
        features=tuple(d["features"]),
        forecast=np.array(d["forecast"], dtype=np.float64),  # null (no data) -> nan
    )


def _snapshot(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StepSnapshot:
    shape = tuple(int(x) for x in fields[b"shape"].decode().split(","))
    return StepSnapshot(
        stream_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        step_ts=int(fields[b"step_ts"]),
        model_version=fields[b"model_version"].decode(),
        issued_ms=int(fields[b"issued_ms"]),
        values=np.frombuffer(fields[b"values"], dtype="<f4").reshape(shape),
    )


def _decode(msg: dict[str, Any] | None, sharded: bool) -> tuple[dict[str, Any] | None, bool]:
    """A pub/sub message as (the notification or None, whether the subscription was lost)."""
    if msg is None:
        return None, False
    if sharded and msg["type"] == "sunsubscribe":  # the node no longer serves the slot
        return None, True
    return (orjson.loads(msg["data"]) if msg["type"] in ("message", "smessage") else None), False


class Notifications:
    """New-step notifications of one network as they are published (`get`), JSON-decoded.

    Classic pub/sub on a single server; sharded pub/sub on a Redis Cluster, where the node that owned the
    slot unsubscribes us when a failover moves the slot (or goes away), and we subscribe again where the
    slot is served now (what is published in between is missed: notifications are hints, the forecast
    stream is the record)."""

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.sharded = isinstance(client, RedisCluster)
        self.resubscribed = 0  # times the subscription followed the slot to another node
        self._pubsub: Any = self._subscribe()

    def _subscribe(self) -> Any:
        pubsub = self.client.pubsub()
        (pubsub.ssubscribe if self.sharded else pubsub.subscribe)(self.channel)
        return pubsub

    def get(self, timeout_s: float) -> dict[str, Any] | None:
        """The next notification, or None when none came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            if self._pubsub is None:  # lost with the slot: subscribe where it is served now
                try:
                    self.client.nodes_manager.initialize()  # type: ignore[union-attr]
                    self._pubsub = self._subscribe()
                    self.resubscribed += 1
                except TRANSIENT_ERRORS:  # no master for the slot yet
                    time.sleep(min(0.1, left))
            else:
                try:
                    read = self._pubsub.get_sharded_message if self.sharded else self._pubsub.get_message
                    note, lost = _decode(read(timeout=left), self.sharded)
                except TRANSIENT_ERRORS:
                    if not self.sharded:
                        raise
                    note, lost = None, True  # the node went away
                if lost:
                    self.close()
                if note is not None:
                    return note
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None

    def __enter__(self) -> Notifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncNotifications:
    """`Notifications` on `redis.asyncio`; build it with `await AsyncNotifications.open(client, channel)`."""

    def __init__(self, client: AsyncClient, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.sharded = isinstance(client, AsyncRedisCluster)
        self.resubscribed = 0
        self._pubsub: Any = None

    @classmethod
    async def open(cls, client: AsyncClient, channel: str) -> AsyncNotifications:
        notes = cls(client, channel)
        if isinstance(client, AsyncRedisCluster):
            await client.initialize()  # the slot map, to find the channel's node
        notes._pubsub = await notes._subscribe()
        return notes

    async def _subscribe(self) -> Any:
        pubsub = self.client.pubsub()
        await (pubsub.ssubscribe if self.sharded else pubsub.subscribe)(self.channel)
        return pubsub

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        """The next notification, or None when none came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            if self._pubsub is None:
                try:
                    await self.client.nodes_manager.initialize()  # type: ignore[union-attr]
                    self._pubsub = await self._subscribe()
                    self.resubscribed += 1
                except TRANSIENT_ERRORS:
                    await asyncio.sleep(min(0.1, left))
            else:
                try:
                    read = self._pubsub.get_sharded_message if self.sharded else self._pubsub.get_message
                    note, lost = _decode(await read(timeout=left), self.sharded)
                except TRANSIENT_ERRORS:
                    if not self.sharded:
                        raise
                    note, lost = None, True
                if lost:
                    await self.aclose()
                if note is not None:
                    return note
            if time.monotonic() >= deadline:
                return None

    async def aclose(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None


class ForecastClient:
    def __init__(self, client: Client, network: str, prefix: str = "sc") -> None:
        self.redis = client
        self.keys = Keys(prefix, network)

    @classmethod
    def from_url(cls, url: str, network: str, prefix: str = "sc", *, cluster: bool = False) -> ForecastClient:
        """`url` is redis[s]://… for a single server, redis[s]+cluster://… (or `cluster=True`) for a Redis
        Cluster; checked at once (`serving.sink.RedisStartError` names what is wrong)."""
        return cls(connect(RedisSettings(cluster=cluster), url), network, prefix)

    def sensors(self) -> list[str]:
        raw = self.redis.get(self.keys.sensors)
        return [] if raw is None else list(orjson.loads(raw))

    def latest(self, sensors: Sequence[str] | None = None) -> dict[str, SensorForecast]:
        """Latest forecast per sensor (all sensors when `sensors` is None); missing sensors are absent."""
        if sensors is None:
            return {
                k.decode(): _sensor(k.decode(), v) for k, v in self.redis.hgetall(self.keys.latest).items()
            }
        values = self.redis.hmget(self.keys.latest, list(sensors)) if sensors else []
        return {s: _sensor(s, v) for s, v in zip(sensors, values, strict=True) if v is not None}

    def latest_step(self) -> dict[str, Any]:
        meta = self.redis.hgetall(self.keys.latest_meta)
        return {k.decode(): v.decode() for k, v in meta.items()}

    def snapshots(self, count: int = 10) -> list[StepSnapshot]:
        """The newest `count` step snapshots, oldest first."""
        entries = self.redis.xrevrange(self.keys.stream, count=count)
        return [_snapshot(i, f) for i, f in reversed(entries)]

    def snapshot(self, step_ts: int, model_version: str | None = None) -> StepSnapshot | None:
        """A step's snapshot from the stream (None when it was trimmed or never written)."""
        for entry_id, fields in self.redis.xrevrange(
            self.keys.stream, count=self.redis.xlen(self.keys.stream)
        ):
            if int(fields[b"step_ts"]) == step_ts and (
                model_version is None or fields[b"model_version"].decode() == model_version
            ):
                return _snapshot(entry_id, fields)
        return None

    def events(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest `count` model lifecycle events (serving, retrain_started, promoted, rejected, drift,
        retrain_failed, rollback), oldest first: `id`, `ts` (wall ms), `type`, `model_version`, `detail`."""
        return [
            {
                "id": entry_id.decode(),
                "ts": int(f[b"ts"]),
                "type": f[b"type"].decode(),
                "model_version": f[b"model_version"].decode(),
                "detail": orjson.loads(f.get(b"detail") or b"{}"),
            }
            for entry_id, f in reversed(self.redis.xrevrange(self.keys.events, count=count))
        ]

    def follow(self, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each new-step notification (`step_ts`, `model_version`, `stream_id`) as it is published;
        with `timeout_s`, stop after that long without one."""
        with Notifications(self.redis, self.keys.channel) as notes:
            while True:
                note = notes.get(timeout_s if timeout_s is not None else 1.0)
                if note is not None:
                    yield note
                elif timeout_s is not None:
                    return


class AsyncForecastClient:
    """asyncio flavour: `latest()` and `follow()` on `redis.asyncio`."""

    def __init__(self, client: AsyncClient, network: str, prefix: str = "sc") -> None:
        self.redis = client
        self.keys = Keys(prefix, network)

    @classmethod
    def from_url(
        cls, url: str, network: str, prefix: str = "sc", *, cluster: bool = False
    ) -> AsyncForecastClient:
        """As `ForecastClient.from_url`; connects on first use."""
        return cls(connect_async(RedisSettings(cluster=cluster), url), network, prefix)

    async def latest(self, sensors: Sequence[str]) -> dict[str, SensorForecast]:
        values = await self.redis.hmget(self.keys.latest, list(sensors))
        return {s: _sensor(s, v) for s, v in zip(sensors, values, strict=True) if v is not None}

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Async iterator over new-step notifications."""
        notes = await AsyncNotifications.open(self.redis, self.keys.channel)
        try:
            while True:
                note = await notes.get(1.0)
                if note is not None:
                    yield note
        finally:
            await notes.aclose()
