"""The Redis sink: writes a micro-batch of steps' forecasts, the sealed steps' actuals and the online scores
in one round trip, atomically and idempotently; and `connect`, the one way sensorcast makes a Redis client.

Every write is one server-side script (`serving.sink_scripts`): a batch records each `(model_version,
step)` in the version's `done` set and writes nothing more of a step that was there already (a replay after
a crash is harmless), appends the new steps' snapshots to the capped stream, updates the per-sensor
`latest` hash only when the newest step is not older than what it holds, refreshes TTLs and publishes one
notification per new step. With a lease (`serving.lease`), each script first checks that the lease still
holds this sink's token (or lapsed with nobody acquiring it since: then it is taken back, as
`Lease.renew` does), and a sink that lost it writes nothing and raises `LeaseLost`. Key names come from
`serving.keys`.

A Redis Cluster works the same way: a network's keys share one hash tag, so each script and the
notification channel address one slot. There the notification is sharded pub/sub (`SPUBLISH`, Redis 7.0):
it stays within the shard that owns the slot instead of being broadcast over the cluster bus to every
node, and redis-py's cluster pub/sub follows the slot to its new master after a failover; a single server
keeps the classic `PUBLISH` every Redis version and `SUBSCRIBE` client understands.

While Redis is unreachable, or a cluster is moving the slot to another master, the write is retried with
exponential backoff up to a deadline; the caller does not commit Kafka offsets past a step whose forecast
is unwritten. A retried step that had in fact been written finds its `done` entry and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import (
    NoPermissionError,
    RedisClusterException,
)

from serving import sink_scripts as scripts
from serving.config import ConfigError, RedisSettings
from serving.keys import Keys
from serving.lease import TRANSIENT_ERRORS, Lease, LeaseLost
from serving.sink_scripts import Actual, OnlineScores, StepForecast
from stream.clock import wall_ms

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster  # what `connect` returns: one server or a Redis Cluster
AsyncClient = aioredis.Redis | AsyncRedisCluster

_CLIENT_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}


class SinkUnavailable(RuntimeError):
    """Redis cannot take the forecasts: unreachable past the retry deadline, or unusable as configured."""


class RedisStartError(SinkUnavailable):
    """At start: Redis unreachable, its credentials refused, or `redis.cluster` not the server's mode."""


def redis_target(settings: RedisSettings, url: str | None = None) -> tuple[str, bool]:
    """The URL redis-py takes and whether it is a Redis Cluster: `redis.cluster`, or a `redis+cluster://`
    (`rediss+cluster://`) URL, the scheme other Redis clients use for a cluster's startup node."""
    target = url or (settings.url.get_secret_value() if settings.url else None)
    if not target:
        raise ConfigError("no Redis URL configured — pass --redis-url redis://HOST:PORT/0 or use the demo")
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("redis+cluster", "rediss+cluster"):
        return f"{scheme[: -len('+cluster')]}://{rest}", True
    return target, settings.cluster


def redis_address(url: str) -> str:
    """`host:port` of a Redis URL, for messages (never its credentials)."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


def connect(settings: RedisSettings, url: str | None = None) -> Client:
    """A ready client for the configured Redis: `redis.Redis`, or `RedisCluster` when the settings or the URL
    say cluster. Checked at once — reachable, credentials accepted, the server's cluster mode the one
    configured — so a wrong setting fails at start with one line naming it (`RedisStartError`)."""
    target, cluster = redis_target(settings, url)
    options = {**_CLIENT_TIMEOUTS, **settings.client_options()}
    probe = redis.Redis.from_url(target, **options)
    try:
        _check_server(probe, settings, target, cluster)
    except BaseException:
        probe.close()
        raise
    if not cluster:
        return probe
    probe.close()
    try:
        return RedisCluster.from_url(target, **options)
    except (RedisClusterException, redis.RedisError) as exc:
        raise RedisStartError(
            f"Redis Cluster at {redis_address(target)} cannot be used ({exc}) — check redis.url"
        ) from exc


def _check_server(probe: redis.Redis, settings: RedisSettings, target: str, cluster: bool) -> None:
    """`RedisStartError` naming the setting to change when the server at `target` cannot be used so."""
    at = redis_address(target)
    try:
        enabled = bool(int(probe.info("cluster").get("cluster_enabled", 0)))
    except NoPermissionError:  # an ACL user without INFO: take the setting's word for the mode
        return
    except redis.AuthenticationError as exc:  # before ConnectionError, its base class
        if not (urlsplit(target).password or settings.password):
            raise RedisStartError(
                f"Redis at {at} requires a password and none is configured — put it in redis.url "
                "(redis://:PASSWORD@HOST:PORT/0, SENSORCAST_REDIS__URL) or set redis.password"
            ) from exc
        raise RedisStartError(
            f"Redis at {at} refused the credentials ({exc}) — fix the user and password in redis.url "
            "(SENSORCAST_REDIS__URL) or redis.username / redis.password"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisStartError(
            f"Redis unreachable at {at} ({exc}) — start it or fix redis.url (SENSORCAST_REDIS__URL)"
        ) from exc
    if enabled and not cluster:
        raise RedisStartError(
            f"Redis at {at} is a Redis Cluster node but redis.cluster is false — set "
            "SENSORCAST_REDIS__CLUSTER=true (or use a redis+cluster:// URL)"
        )
    if cluster and not enabled:
        raise RedisStartError(
            f"Redis at {at} is not a cluster node (cluster support disabled) but redis.cluster is true — "
            "set SENSORCAST_REDIS__CLUSTER=false and use a redis:// URL"
        )


def connect_async(settings: RedisSettings, url: str | None = None) -> AsyncClient:
    """The asyncio client for the same server (`redis.asyncio`, its cluster flavour when configured). It
    connects on first use, so it is not checked here: `connect` is the check at start."""
    target, cluster = redis_target(settings, url)
    options = {**_CLIENT_TIMEOUTS, **settings.client_options()}
    if cluster:
        return AsyncRedisCluster.from_url(target, **options)
    return aioredis.Redis.from_url(target, **options)


class RedisSink:
    """The one writer of a network's keys (layouts and scripts in `serving.sink_scripts`). With a `lease`,
    every write is fenced: it writes nothing and raises `LeaseLost` once the lease is not this sink's."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        *,
        sensors: tuple[str, ...],
        features: tuple[str, ...],
        step_ms: int,
        ttl_s: int = 86_400,
        stream_maxlen: int = 2_000,
        retry_deadline_s: float = 120.0,
        now: Callable[[], int] = wall_ms,
        on_retry: Callable[[], object] = lambda: None,
        lease: Lease | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.sensors = sensors
        self.features = list(features)
        self.step_ms = step_ms
        self.ttl_s = ttl_s
        self.stream_maxlen = stream_maxlen
        self.retry_deadline_s = retry_deadline_s
        self.now = now
        self.lease = lease
        self._ids = orjson.dumps(list(sensors))  # the network's sensor ids in order, as JSON
        self._scripts: dict[str, Any] = {
            name: client.register_script(getattr(scripts, name))
            for name in ("WRITE_BATCH", "WRITE_LATEST", "WRITE_HEALTH", "ADD_EVENT", "PUBLISH_NETWORK")
        }
        self._publish = "SPUBLISH" if isinstance(client, RedisCluster) else "PUBLISH"
        self.retries = 0
        self.on_retry = on_retry  # e.g. the service's retry counter

    def publish_network(self) -> None:
        self._call("PUBLISH_NETWORK", [self.keys.sensors], [self._ids, self.ttl_s])

    def write(self, fc: StepForecast) -> bool:
        """Write one step; returns False when this (version, step) was already written."""
        return self.write_batch([fc])[0]

    def write_batch(
        self,
        forecasts: Sequence[StepForecast] = (),
        *,
        actuals: Sequence[Actual] = (),
        online: OnlineScores | None = None,
    ) -> list[bool]:
        """Write a micro-batch in one round trip: the steps' forecasts (one model version, in step order),
        sealed steps' actuals and the online scores. Returns per step whether it was written (False: this
        (version, step) was already written, and nothing of it was written again)."""
        if len({fc.model_version for fc in forecasts}) > 1:
            raise ValueError("a batch holds the forecasts of one model version")
        for fc in forecasts:
            if fc.values.shape[1] != len(self.sensors):
                raise ValueError(
                    f"forecast covers {fc.values.shape[1]} sensors, the network has {len(self.sensors)}"
                )
        newest = max(forecasts, key=lambda fc: fc.step_ts) if forecasts else None
        keys, args = scripts.batch_call(
            self.keys,
            ttl_s=self.ttl_s,
            stream_maxlen=self.stream_maxlen,
            publish=self._publish,
            forecasts=forecasts,
            latest=self._latest(newest) if newest is not None else (b"", b"", b""),
            actuals=actuals,
            online=online,
        )
        out = self._call("WRITE_BATCH", keys, args)
        if out[1]:  # `latest` must show a step older than the newest one (that one was written before)
            fc = next(fc for fc in forecasts if fc.step_ts == int(out[1]))
            args = [self.ttl_s, fc.step_ts, fc.model_version, fc.issued_ms, fc.values.shape[0]]
            self._call("WRITE_LATEST", [self.keys.latest, self.keys.latest_meta], [*args, *self._latest(fc)])
        return [bool(w) for w in out[2:]]

    def write_health(self, health: dict[str, Any]) -> None:
        opt = orjson.OPT_NON_STR_KEYS
        fields: list[Any] = []
        for k, v in health.items():
            fields += [k, v if isinstance(v, (int, float, str)) else orjson.dumps(v, option=opt)]
        self._call("WRITE_HEALTH", [self.keys.health, self.keys.sensors], [self.ttl_s, *fields])

    def add_event(self, kind: str, model_version: str, detail: dict[str, Any] | None = None) -> None:
        """Model lifecycle events (serving, drift, retrain_*, promoted, rejected, rollback)."""
        fields = ["ts", self.now(), "type", kind, "model_version", model_version]
        fields += ["detail", orjson.dumps(detail or {}, default=str)]
        self._call("ADD_EVENT", [self.keys.events], [10_000, *fields])

    def _latest(self, fc: StepForecast) -> tuple[bytes, bytes, bytes]:
        return (self._ids, *scripts.latest_docs(fc, self.features, self.step_ms))

    def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One call of a script of `serving.sink_scripts`, retried while Redis is away. The fence's keys
        and arguments go first: the lease key and its epoch counter; the token ('' = no lease, no check),
        its epoch and the lease's TTL."""
        fence: list[Any] = ["", "", 0]
        if self.lease is not None:
            if self.lease.token is None:
                raise LeaseLost(self.lease.lost_message())
            fence = [self.lease.token, self.lease.epoch, self.lease.ttl_ms]
        run, keys = self._scripts[script], [self.keys.lease, self.keys.lease_epoch, *keys]
        out = self._retrying(lambda: run(keys=keys, args=[*fence, *args]))
        if self.lease is not None and out == scripts.LEASE_LOST:
            raise LeaseLost(self.lease.lost_message())
        return out

    def _retrying(self, op: Any) -> Any:
        """`op()`, again with exponential backoff while Redis is unreachable or a cluster moves the slot,
        up to the deadline (`SinkUnavailable`). Anything else, `LeaseLost` included, is not retried."""
        delay, deadline = 0.1, time.monotonic() + self.retry_deadline_s
        while True:
            try:
                return op()
            except TRANSIENT_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise SinkUnavailable(
                        f"Redis unreachable for {self.retry_deadline_s:.0f} s ({exc}); forecasts not written, "
                        "Kafka offsets not committed past them"
                    ) from exc
                self.retries += 1
                self.on_retry()
                log.warning("redis unavailable, retrying", extra={"delay_s": delay, "error": str(exc)})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
