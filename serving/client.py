"""`ForecastClient`: read the forecasts sensorcast writes to Redis (latest per sensor, a step's snapshot,
new-step notifications). Works against any Redis holding sensorcast keys; key names from `serving.keys`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from serving.keys import Keys


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


class ForecastClient:
    def __init__(self, client: redis.Redis, network: str, prefix: str = "sc") -> None:
        self.redis = client
        self.keys = Keys(prefix, network)

    @classmethod
    def from_url(cls, url: str, network: str, prefix: str = "sc") -> ForecastClient:
        return cls(redis.Redis.from_url(url), network, prefix)

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

    def done_steps(self, model_version: str) -> list[int]:
        return [int(float(x)) for x in self.redis.zrange(self.keys.done(model_version), 0, -1)]

    def follow(self, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each new-step notification (`step_ts`, `model_version`, `stream_id`) as it is published."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.channel)
        try:
            while True:
                msg = pubsub.get_message(timeout=timeout_s if timeout_s is not None else 1.0)
                if msg is None:
                    if timeout_s is not None:
                        return
                    continue
                yield orjson.loads(msg["data"])
        finally:
            pubsub.close()


class AsyncForecastClient:
    """asyncio flavour: `latest()` and `follow()` on `redis.asyncio`."""

    def __init__(self, client: aioredis.Redis, network: str, prefix: str = "sc") -> None:
        self.redis = client
        self.keys = Keys(prefix, network)

    @classmethod
    def from_url(cls, url: str, network: str, prefix: str = "sc") -> AsyncForecastClient:
        return cls(aioredis.Redis.from_url(url), network, prefix)

    async def latest(self, sensors: Sequence[str]) -> dict[str, SensorForecast]:
        values = await self.redis.hmget(self.keys.latest, list(sensors))
        return {s: _sensor(s, v) for s, v in zip(sensors, values, strict=True) if v is not None}

    async def follow(self):  # type: ignore[no-untyped-def]
        """Async iterator over new-step notifications."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.channel)
        try:
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    yield orjson.loads(msg["data"])
        finally:
            await pubsub.aclose()
