"""The sink's batch write against a real Redis: a micro-batch is one round trip; readers see exactly what the
per-step path showed them (that path, the baseline `LegacySink` of benchmarks/scale_sink.py, is the
reference); a replayed batch doubles nothing; and the fence: a sink whose lease was taken over or never
acquired raises `LeaseLost` at once and writes nothing, while one holding the lease writes, and one whose
lease lapsed takes it back unless another pipeline acquired it since."""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from serving.client import ForecastClient
from serving.embedded import EmbeddedRuntime
from serving.keys import Keys
from serving.lease import Lease, LeaseLost
from serving.sink import RedisSink
from serving.sink_scripts import Actual, OnlineScores, StepForecast, latest_docs
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[1]
STEP = 300_000
T0 = 1_767_225_600_000
N, H = 5, 3
SENSORS = ("s0", "1234", 'q"uote\\', "new\nline", "ünï")  # ids the scripts must pass through as they are
FEATURES = ("speed", "flow")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_sink", REPO / "benchmarks" / "scale_sink.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def url(embedded: EmbeddedRuntime) -> str:
    return str(embedded.redis_url)


def _keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:10]}", "net")


def _sink(client: Any, keys: Keys, lease: Lease | None = None) -> RedisSink:
    return RedisSink(client, keys, sensors=SENSORS, features=FEATURES, step_ms=STEP, lease=lease)


def _steps(first: int, count: int, version: str = "v1") -> tuple[list[StepForecast], list[Actual]]:
    """`count` steps from step index `first`: forecasts [H, N, F] with a missing value, actuals [N, F]."""
    forecasts, actuals = [], []
    for i in range(first, first + count):
        ts = T0 + i * STEP
        values = (np.arange(N * 2).reshape(N, 2) + i / 10 + (version == "v2")).astype(np.float32)  # [N, F]
        mask = np.ones((N, 2), bool)
        mask[i % N, 0] = False
        forecast = np.stack([values + h for h in range(1, H + 1)])  # [H, N, F]
        forecast[0, i % N, 1] = np.nan
        forecasts.append(StepForecast(ts, version, forecast, 1_000 + i))
        actuals.append((ts, values, mask))
    return forecasts, actuals


def _online(step_ts: int, version: str = "v1") -> OnlineScores:
    scores = {"mae": [1.0, 2.0, float("nan")], "rmse": [1.5] * H, "mape": [0.1] * H, "n": [N] * H}
    rolling = {"mae": [1.0, 2.0, 3.0], "rmse": [1.5] * H, "n": [N] * H, "steps": 4, "model_version": version}
    return OnlineScores(step_ts, {version: scores, "v0": scores}, rolling, 2.0)


def _subscribe(url: str, keys: Keys) -> Any:
    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.subscribe(keys.channel)
    return pubsub


def _notes(pubsub: Any) -> list[dict[str, Any]]:
    """Every notification published so far (none more within 0.3 s)."""
    got = []
    while (msg := pubsub.get_message(timeout=0.3)) is not None:
        if msg["type"] == "message":
            got.append(orjson.loads(msg["data"]))
    return got


def _dump(r: redis.Redis, keys: Keys) -> dict[bytes, bytes | None]:
    """Every key of the network (by its prefix) with its serialized value."""
    return {k: r.dump(k) for k in r.scan_iter(match=f"{keys.prefix}:*", count=1000)}


def test_a_micro_batch_is_one_round_trip(url: str, bench: ModuleType) -> None:
    keys = _keys()
    client = redis.Redis.from_url(url)
    lease = Lease(redis.Redis.from_url(url), keys, ttl_s=30, owner="pipe")
    lease.acquire()
    sink = _sink(client, keys, lease)
    sink.write_batch(*_steps(0, 1)[:1])  # loads the script
    admin = redis.Redis.from_url(url)
    observed, first = {}, 1
    for size in (1, 4, 16):
        forecasts, actuals = _steps(first, size)
        first += size
        evalsha = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
        with bench.requests_sent() as sent:
            written = sink.write_batch(forecasts, actuals=actuals, online=_online(forecasts[-1].step_ts))
        observed[size] = {
            "requests": sent[0],
            "evalsha": admin.info("commandstats")["cmdstat_evalsha"]["calls"] - evalsha,
            "written": sum(written),
        }
    admin.close()
    # the per-step path for comparison: one request per step, one for the actuals, one for the scores
    legacy = bench.LegacySink(client, _keys(), sensors=SENSORS, features=FEATURES, step_ms=STEP)
    forecasts, actuals = _steps(0, 4)
    legacy.write(forecasts[0])  # loads its script
    with bench.requests_sent() as sent:
        legacy.write_batch(forecasts[1:], actuals, _online(forecasts[-1].step_ts))
    legacy_requests = sent[0]
    assert observed == {size: {"requests": 1, "evalsha": 1, "written": size} for size in (1, 4, 16)}, observed
    assert legacy_requests == 3 + 2


def test_readers_see_what_the_per_step_path_showed(url: str, bench: ModuleType) -> None:
    """The same batches through both paths; after each, every key of the two networks is compared."""
    keys = {"old": _keys(), "new": _keys()}
    r = redis.Redis.from_url(url)
    ttl = 900  # the done sets keep the last 4 steps: their trimming is compared too
    common: dict[str, Any] = {"sensors": SENSORS, "features": FEATURES, "step_ms": STEP, "ttl_s": ttl}
    old = bench.LegacySink(r, keys["old"], **common)
    new = RedisSink(r, keys["new"], **common)
    subs = {path: _subscribe(url, k) for path, k in keys.items()}

    def view(k: Keys) -> dict[str, Any]:
        entries = {n: [f for _, f in r.xrange(n)] for n in (k.stream, k.actuals, k.online_history)}
        names = {n.decode()[len(k.prefix) :] for n in r.scan_iter(match=f"{k.prefix}:*")}
        return {
            "keys": sorted(names),
            "ttl_set": sorted(n for n in names if 0 < r.ttl(k.prefix + n) <= ttl),
            "latest": r.hgetall(k.latest),
            "meta": r.hgetall(k.latest_meta),
            "done": [r.zrange(k.done(v), 0, -1, withscores=True) for v in ("v1", "v2")],
            "entries": [entries[n] for n in sorted(entries)],
            "online": [r.get(n) for n in (k.online("v1"), k.online("v0"), k.online_rolling)],
        }

    seen: dict[str, list[Any]] = {"old": [], "new": []}

    def both(forecasts: list[StepForecast], actuals: Sequence[Actual] = (), online: bool = False) -> None:
        scores = _online(forecasts[-1].step_ts if forecasts else actuals[-1][0]) if online else None
        seen["old"].append((old.write_batch(forecasts, actuals, scores), view(keys["old"])))
        seen["new"].append((new.write_batch(forecasts, actuals=actuals, online=scores), view(keys["new"])))

    both(*_steps(0, 4), online=True)  # a micro-batch as the serving loop writes it
    both(*_steps(4, 1))  # one step, no scores
    both(_steps(2, 4)[0])  # a replay of two steps and a new one (recovery re-forecasts without actuals)
    both(_steps(5, 1, "v2")[0])  # a new version's step equal to `latest`'s: it replaces it
    both(_steps(5, 3, "v2")[0], online=True)  # one of them written already
    both(_steps(6, 1)[0])  # an old version's late step: in the stream, not in `latest`
    for k in keys.values():  # `latest` lost and one step of v2 forgotten: a replay writes that one again
        r.delete(k.latest, k.latest_meta)
        r.zrem(k.done("v2"), T0 + 6 * STEP)
    both(_steps(5, 3, "v2")[0])  # the newest was written before: `latest` shows the one written now
    both([], _steps(8, 2)[1], online=True)  # actuals and scores without forecasts

    notes = {path: _notes(pubsub) for path, pubsub in subs.items()}
    stream_ids = {
        path: {i.decode(): int(f[b"step_ts"]) for i, f in r.xrange(k.stream)} for path, k in keys.items()
    }
    readers = {path: ForecastClient(r, "net", k.prefix) for path, k in keys.items()}
    latest = {path: reader.latest() for path, reader in readers.items()}

    for i, (got, want) in enumerate(zip(seen["new"], seen["old"], strict=True)):
        assert got == want, f"batch {i}: the batch path differs from the per-step path"
    assert len(notes["old"]) == 11  # one per step written
    assert [(n["step_ts"], n["model_version"]) for n in notes["new"]] == [
        (n["step_ts"], n["model_version"]) for n in notes["old"]
    ]
    for path in keys:  # each notification names its step's stream entry
        assert all(stream_ids[path][n["stream_id"]] == n["step_ts"] for n in notes[path])
    assert seen["new"][-1][1]["meta"][b"step_ts"] == str(T0 + 6 * STEP).encode()
    assert readers["new"].latest_step() == readers["old"].latest_step()
    for sensor in SENSORS:
        np.testing.assert_array_equal(latest["new"][sensor].forecast, latest["old"][sensor].forecast)


def test_a_replayed_batch_doubles_nothing(url: str) -> None:
    keys = _keys()
    r = redis.Redis.from_url(url)
    sink = _sink(r, keys)
    subscription = _subscribe(url, keys)
    forecasts, actuals = _steps(0, 8)
    first = sink.write_batch(forecasts, actuals=actuals, online=_online(forecasts[-1].step_ts))
    state = (r.hgetall(keys.latest), r.hgetall(keys.latest_meta), r.zrange(keys.done("v1"), 0, -1))
    again = sink.write_batch(forecasts, actuals=actuals)  # the same batch after a crash before the commit
    replayed_state = (r.hgetall(keys.latest), r.hgetall(keys.latest_meta), r.zrange(keys.done("v1"), 0, -1))
    overlap = sink.write_batch(*_steps(4, 8)[:1], actuals=_steps(4, 8)[1])  # half old, half new
    notes = _notes(subscription)
    observed = {
        "first": sum(first),
        "again": sum(again),
        "overlap": overlap,
        "forecast_entries": r.xlen(keys.stream),
        "actual_entries": r.xlen(keys.actuals),
        "actual_steps": [int(f[b"step_ts"]) for _, f in r.xrange(keys.actuals)],
        "notes": len(notes),
    }
    assert observed == {
        "first": 8,
        "again": 0,
        "overlap": [False] * 4 + [True] * 4,
        "forecast_entries": 12,
        "actual_entries": 12,
        "actual_steps": [T0 + i * STEP for i in range(12)],
        "notes": 12,
    }, observed
    assert replayed_state == state


def test_a_sink_whose_lease_was_taken_over_writes_nothing(url: str, bench: ModuleType) -> None:
    keys = _keys()
    r = redis.Redis.from_url(url)
    mine = Lease(redis.Redis.from_url(url), keys, ttl_s=30, owner="pipe")
    mine.acquire()
    client = redis.Redis.from_url(url)
    sink = _sink(client, keys, mine)
    forecasts, actuals = _steps(0, 2)
    sink.publish_network()
    assert sink.write_batch(forecasts, actuals=actuals, online=_online(forecasts[-1].step_ts)) == [True] * 2
    sink.write_health({"watermark": T0, "lag": {0: 1}})
    sink.add_event("serving", "v1", {"spec": "test"})
    # the pipeline restarted (same owner: it takes its lease over at once, with a new epoch)
    theirs = Lease(redis.Redis.from_url(url), keys, ttl_s=30, owner="pipe")
    theirs.acquire()
    before = _dump(r, keys)
    subscription = _subscribe(url, keys)
    forecasts, actuals = _steps(2, 3)
    attempts = {
        "batch": lambda: sink.write_batch(forecasts, actuals=actuals, online=_online(forecasts[-1].step_ts)),
        "step": lambda: sink.write(_steps(6, 1)[0][0]),
        "actuals": lambda: sink.write_batch(actuals=_steps(7, 1)[1]),
        "network": sink.publish_network,
        "health": lambda: sink.write_health({"watermark": T0 + STEP}),
        "event": lambda: sink.add_event("drift", "v1"),
    }
    raised = {}
    with bench.requests_sent() as sent:
        for name, attempt in attempts.items():
            t = time.monotonic()
            try:
                attempt()
                raised[name] = "wrote"
            except LeaseLost as exc:
                ok = "taken over" in str(exc) and time.monotonic() - t < 1
                raised[name] = "LeaseLost" if ok else str(exc)
    after = _dump(r, keys)
    observed = {
        "raised": raised,
        "requests": sent[0],
        "changed": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
        "notes": len(_notes(subscription)),
        "retries": sink.retries,
    }
    assert observed == {
        "raised": dict.fromkeys(attempts, "LeaseLost"),
        "requests": len(attempts),  # one fenced script call each, none retried
        "changed": [],
        "notes": 0,
        "retries": 0,
    }, observed
    # the holder's sink writes
    assert _sink(r, keys, theirs).write_batch(forecasts, actuals=actuals) == [True] * 3
    assert r.xlen(keys.stream) == 5 and r.xlen(keys.actuals) == 5


def test_a_lapsed_lease_is_taken_back_unless_acquired_since(url: str, bench: ModuleType) -> None:
    """As `Lease.renew`: a lease that expired (a long Redis outage) while nobody acquired it is still this
    sink's; once another pipeline acquired it, even if that one let it go again, it is lost."""
    keys = _keys()
    r = redis.Redis.from_url(url)
    client = redis.Redis.from_url(url)
    unacquired = _sink(client, keys, Lease(r, keys, ttl_s=30, owner="other"))
    with bench.requests_sent() as sent, pytest.raises(LeaseLost):
        unacquired.write_batch(*_steps(0, 1)[:1])
    assert sent[0] == 0  # refused before asking Redis
    lease = Lease(r, keys, ttl_s=0.3, owner="pipe")
    lease.acquire()
    sink = _sink(client, keys, lease)
    assert sink.write_batch(*_steps(0, 1)[:1]) == [True]
    wait_for(lambda: r.get(keys.lease) is None, timeout_s=5, what="the lease to expire")
    assert sink.write_batch(*_steps(1, 1)[:1]) == [True]  # nobody acquired it meanwhile: taken back
    taken_back = (r.get(keys.lease), r.pttl(keys.lease) > 0)
    wait_for(lambda: r.get(keys.lease) is None, timeout_s=5, what="the lease to expire again")
    other = Lease(r, keys, ttl_s=30, owner="other")
    other.acquire()
    other.release()
    with pytest.raises(LeaseLost, match="expired or was taken over"):
        sink.write_batch(*_steps(2, 1)[:1])
    assert taken_back == (lease.token.encode() if lease.token else None, True)
    assert r.xlen(keys.stream) == 2 and r.get(keys.lease) is None and sink.retries == 0


@pytest.mark.parametrize("shape", [(1, 1, 1), (12, 1, 1), (1, 7, 1), (2, 7, 3), (12, 300, 1)])
def test_latest_docs_are_one_dumps_per_sensor(shape: tuple[int, int, int]) -> None:
    """The `latest` documents cut out of one `dumps` of all sensors equal one `dumps` per sensor."""
    values = np.random.default_rng(0).normal(0, 1e3, shape).astype(np.float32)  # [H, N, F]
    values.flat[::5] = np.nan
    values.flat[1::7] = np.inf
    values.flat[2::11] = 1e-39  # subnormal
    features = ["a", "b", "c"][: shape[2]]
    head = {"step_ts": T0, "issued_ms": 7, "model_version": "v\n1", "step_ms": STEP, "features": features}
    head_bytes, forecasts = latest_docs(StepForecast(T0, "v\n1", values, 7), features, STEP)
    docs = [head_bytes + forecast + b"]]}" for forecast in forecasts.split(b"\n")]
    want = [
        orjson.dumps(
            {**head, "forecast": np.ascontiguousarray(values[:, i])}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        for i in range(shape[1])
    ]
    assert docs == want
