"""Redis Cluster against a real one (`tests/redis_cluster.py`: three masters, three replicas on loopback):
a network's keys share one slot; the sink's scripts (a micro-batch in one call, fenced by the lease), the
sharded notifications, the clients and the dashboard's reads work there; and the start errors (unreachable,
wrong password, the other cluster mode) are one line naming the setting. Failovers:
`tests/test_redis_failover.py`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from serving.client import AsyncForecastClient, AsyncNotifications, ForecastClient, Notifications
from serving.config import RedisSettings, Settings
from serving.dashboard.reader import DashboardReader
from serving.keys import Keys
from serving.lease import Lease, LeaseLost
from serving.sink import RedisSink, RedisStartError, StepForecast, connect
from serving.sink_scripts import OnlineScores
from stream.network import Feature, Network
from tests.redis_cluster import LocalCluster, standalone

STEP = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
H = 3


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"t{tag}", f"net{tag}"


def _cluster_settings(cluster: LocalCluster, prefix: str) -> RedisSettings:
    return RedisSettings(url=cluster.url, cluster=True, key_prefix=prefix)


def _forecast(i: int, n: int) -> np.ndarray:
    return np.full((H, n, 1), float(i), dtype=np.float32)  # [H, N, 1]


def test_every_key_and_the_channel_of_a_network_share_one_slot() -> None:
    keys = Keys("sc", "sim")
    named = [getattr(keys, name) for name, v in vars(Keys).items() if isinstance(v, property)]
    named += [keys.done("v1"), keys.online("v1"), keys.done("baseline-persistence")]
    assert len(named) >= 13, named  # every property of Keys, the channel included
    assert {key_slot(k.encode()) for k in named} == {key_slot(b"sim")}
    for bad in (("sc", "a}b"), ("s{c", "sim")):
        with pytest.raises(ValueError, match="hash tag"):
            Keys(*bad)


def test_sink_scripts_notifications_and_readers_on_a_cluster(redis_cluster: LocalCluster) -> None:
    prefix, name = _names()
    sensors = ("a", "b", "c")
    client = connect(_cluster_settings(redis_cluster, prefix))
    assert isinstance(client, RedisCluster)
    keys = Keys(prefix, name)
    sink = RedisSink(client, keys, sensors=sensors, features=("speed",), step_ms=STEP)
    sink.publish_network()
    reader = ForecastClient.from_url(redis_cluster.url.replace("redis://", "redis+cluster://"), name, prefix)
    assert isinstance(reader.redis, RedisCluster)
    with Notifications(reader.redis, keys.channel) as notes:
        assert sink.write(StepForecast(T0, "v1", _forecast(1, 3), 11))  # the script, on the slot's master
        assert not sink.write(StepForecast(T0, "v1", _forecast(1, 3), 12))  # a replay writes nothing
        note = notes.get(5.0)
    assert note is not None and note["step_ts"] == T0 and note["model_version"] == "v1"
    values, mask = np.ones((3, 1), np.float32), np.ones((3, 1), bool)
    scores = {"mae": [1.0] * H, "rmse": [1.0] * H, "mape": [0.1] * H, "n": [3] * H}
    written = sink.write_batch(  # one script call on the slot's master: steps, actuals, scores
        [StepForecast(T0 + i * STEP, "v2", _forecast(i, 3), 20 + i) for i in range(3)],
        actuals=[(T0, values, mask), (T0 + STEP, values, mask)],
        online=OnlineScores(T0, {"v1": scores}, {**scores, "model_version": "v1", "steps": 1}, 1.0),
    )
    assert written == [True] * 3
    sink.write_health({"watermark": T0, "lag": {0: 1}, "ledger": {"received": 3}})
    sink.add_event("serving", "v1", {"spec": "test"})

    assert reader.sensors() == list(sensors)
    assert set(reader.latest()) == set(sensors) and reader.latest(["b"])["b"].forecast.shape == (H, 1)
    assert reader.latest_step()["step_ts"] == str(T0 + 2 * STEP)
    snap = reader.snapshot(T0)
    assert snap is not None and snap.values.shape == (H, 3, 1) and len(reader.snapshots()) == 4
    network = Network.simple(name, list(sensors), [Feature("speed", "mph", 0, 100)], step_ms=STEP)
    dash = DashboardReader(client, network, prefix=prefix)
    assert dash.online()["versions"] and dash.events() and dash.health()["available"]
    # every key written lives in the network's one slot, on the node serving it
    written = [keys.sensors, keys.latest, keys.latest_meta, keys.stream, keys.done("v1"), keys.actuals]
    written += [keys.online("v1"), keys.online_rolling, keys.online_history, keys.health, keys.events]
    with redis_cluster.master_of(keys.stream).client() as direct:
        assert direct.exists(*written) == len(written)

    async def asynchronous() -> tuple[Any, Any]:
        aclient = AsyncForecastClient.from_url(redis_cluster.url, name, prefix, cluster=True)
        try:
            latest = await aclient.latest(["a", "c"])
            notes = await AsyncNotifications.open(aclient.redis, keys.channel)
            sink.write(StepForecast(T0 + STEP, "v1", _forecast(2, 3), 13))
            note = await notes.get(5.0)
            await notes.aclose()
            return latest, note
        finally:
            await aclient.redis.aclose()

    latest, note = asyncio.run(asynchronous())
    assert set(latest) == {"a", "c"} and note is not None and note["step_ts"] == T0 + STEP

    lease = Lease(client, keys, ttl_s=30, owner="pipe")
    lease.acquire()
    fenced = RedisSink(client, keys, sensors=sensors, features=("speed",), step_ms=STEP, lease=lease)
    assert fenced.write(StepForecast(T0 + 3 * STEP, "v1", _forecast(3, 3), 14))  # holding the lease
    Lease(client, keys, ttl_s=30, owner="pipe").acquire()  # a restarted pipeline takes it over
    with pytest.raises(LeaseLost):
        fenced.write(StepForecast(T0 + 4 * STEP, "v1", _forecast(4, 3), 15))
    assert reader.snapshot(T0 + 4 * STEP) is None and reader.snapshot(T0 + 3 * STEP) is not None


def _one_line(exc: pytest.ExceptionInfo[RedisStartError], *words: str) -> str:
    text = str(exc.value)
    assert "\n" not in text and all(w in text for w in words), text
    return text


def test_start_errors_are_one_line_naming_the_setting(
    redis_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = standalone(tmp_path)
    closed.stop()
    with pytest.raises(RedisStartError) as exc:
        connect(RedisSettings(url=f"redis://127.0.0.1:{closed.port}/0"))
    _one_line(exc, "unreachable", f"127.0.0.1:{closed.port}", "redis.url")

    guarded = standalone(tmp_path, "--requirepass", "right-Secret")
    try:
        with pytest.raises(RedisStartError) as exc:
            connect(RedisSettings(url=f"redis://:wrong-Secret@127.0.0.1:{guarded.port}/0"))
        text = _one_line(exc, "refused the credentials", "redis.url", "redis.password")
        assert "wrong-Secret" not in text
        with pytest.raises(RedisStartError) as exc:
            connect(RedisSettings(url=f"redis://127.0.0.1:{guarded.port}/0"))
        _one_line(exc, "requires a password and none is configured", "redis.url", "redis.password")
        right = RedisSettings(url=f"redis://:right-Secret@127.0.0.1:{guarded.port}/0")
        assert connect(right).ping()
        with pytest.raises(RedisStartError) as exc:
            connect(right.model_copy(update={"cluster": True}))
        _one_line(exc, "not a cluster node", "SENSORCAST_REDIS__CLUSTER=false")
    finally:
        guarded.stop()

    with pytest.raises(RedisStartError) as exc:
        connect(RedisSettings(url=redis_cluster.url))
    _one_line(exc, "is a Redis Cluster node", "SENSORCAST_REDIS__CLUSTER=true")
    monkeypatch.setenv("SENSORCAST_REDIS__CLUSTER", "true")
    monkeypatch.setenv("SENSORCAST_REDIS__URL", redis_cluster.url)
    assert isinstance(connect(Settings().redis), RedisCluster)  # the variable the message names works

    from serving.cli import main  # deferred: the whole CLI (torch included) only for this check

    monkeypatch.delenv("SENSORCAST_REDIS__CLUSTER")  # and the CLI prints the error as one line
    monkeypatch.setattr(sys, "argv", ["sensorcast", "forecasts", "--redis-url", redis_cluster.url])
    with pytest.raises(SystemExit) as exit_:
        main()
    printed = capsys.readouterr().out.strip()
    assert (
        exit_.value.code == 2 and "RedisStartError" in printed and "SENSORCAST_REDIS__CLUSTER=true" in printed
    )
