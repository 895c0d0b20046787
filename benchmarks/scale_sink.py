"""The Redis sink at scale (issue #20): sink time per step at 8,600 sensors x 1 feature, horizon 12, with
persistence-sized forecasts (each sensor's last value, 0.1 resolution, ~3 % missing), in micro-batches of
1, 4 and 16 steps — each batch with its steps' forecasts, their actuals and the online scores, as the
serving loop writes them.

Two paths on the same real `redis-server` (started here), batch by batch in turn:
- `batch`: `RedisSink.write_batch` with a lease, one fenced script call per micro-batch;
- `per_step`: the path it replaced, kept here as the baseline (`LegacySink`, its code as it was): one
  script call per step, then a pipeline for the actuals and one for the online scores.
Round trips are counted at the client (requests sent). The same on a local 3+3 Redis Cluster
(`tests/redis_cluster.py`) for 1 and 16 steps, unless `--quick` or `--no-cluster`, or without redis-cli.

    python benchmarks/scale_sink.py [--quick] [--no-cluster]

Prints a table and merges its figures into benchmarks/results/scale.json under "sink".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection

from serving.config import RedisSettings
from serving.embedded import EmbeddedRedis
from serving.keys import Keys
from serving.lease import Lease
from serving.sink import RedisSink, connect
from serving.sink_scripts import Actual, OnlineScores, StepForecast

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000
STEP = 300_000
SENSORS, HORIZON = 8_600, 12
BATCH_STEPS = (1, 4, 16)

# The per-step path's script, as it was before the batch write (serving/sink.py at a25f890).
_WRITE_STEP = """
local step = ARGV[1]
if redis.call('ZADD', KEYS[1], 'NX', step, step) == 0 then return 0 end
local ttl = tonumber(ARGV[4])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'step_ts', step, 'model_version', ARGV[2], 'issued_ms', ARGV[3], 'shape', ARGV[6],
  'dtype', 'float32le', 'values', ARGV[7])
local cur = tonumber(redis.call('HGET', KEYS[4], 'step_ts') or '-1')
if tonumber(step) >= cur then
  local n = (#ARGV - 10) / 2
  local chunk = 500
  local i = 0
  while i < n do
    local args = {}
    local last = math.min(i + chunk, n)
    for j = i, last - 1 do
      args[#args + 1] = ARGV[11 + 2 * j]
      args[#args + 1] = ARGV[12 + 2 * j]
    end
    redis.call('HSET', KEYS[3], unpack(args))
    i = last
  end
  redis.call('HSET', KEYS[4], 'step_ts', step, 'model_version', ARGV[2], 'issued_ms', ARGV[3],
    'horizon', ARGV[9], 'n_sensors', n)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(step) - ttl * 1000))
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ttl) end
redis.call(ARGV[10], ARGV[8], cjson.encode({step_ts = tonumber(step), model_version = ARGV[2], stream_id = id}))
return 1
"""


class LegacySink:
    """The per-step write path before the batch write (the baseline, and the reference the tests compare
    the batch write with): `write` per step, `write_actuals` and `write_online` as pipelines."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        *,
        sensors: tuple[str, ...],
        features: tuple[str, ...],
        step_ms: int,
        ttl_s: int = 86_400,
        stream_maxlen: int = 2_000,
    ) -> None:
        self.client, self.keys, self.sensors, self.features = client, keys, sensors, list(features)
        self.step_ms, self.ttl_s, self.stream_maxlen = step_ms, ttl_s, stream_maxlen
        self._script = client.register_script(_WRITE_STEP)
        self._publish = "SPUBLISH" if isinstance(client, RedisCluster) else "PUBLISH"

    def write_batch(
        self, forecasts: Sequence[StepForecast], actuals: Sequence[Actual], online: OnlineScores | None
    ) -> list[bool]:
        """What the serving loop did per actor call: each step, then the actuals, then the scores."""
        written = [self.write(fc) for fc in forecasts]
        self.write_actuals(actuals)
        if online is not None:
            self.write_online(online.step_ts, online.cumulative, online.rolling, online.mean_mae)
        return written

    def write(self, fc: StepForecast) -> bool:
        h, n, f = fc.values.shape  # [H, N, F]
        per_sensor = np.ascontiguousarray(fc.values.transpose(1, 0, 2), dtype=np.float32)  # [N, H, F]
        argv: list[Any] = [fc.step_ts, fc.model_version, fc.issued_ms, self.ttl_s, self.stream_maxlen]
        argv += [f"{h},{n},{f}", np.ascontiguousarray(fc.values, dtype="<f4").tobytes()]
        argv += [self.keys.channel, h, self._publish]
        head = {
            "step_ts": fc.step_ts,
            "issued_ms": fc.issued_ms,
            "model_version": fc.model_version,
            "step_ms": self.step_ms,
            "features": self.features,
        }
        prefix = orjson.dumps(head)[:-1] + b',"forecast":'
        dumps, numpy_opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        for sensor, forecast in zip(self.sensors, per_sensor, strict=True):
            argv.append(sensor)
            argv.append(b"%s%s}" % (prefix, dumps(forecast, option=numpy_opt)))
        keys = [self.keys.done(fc.model_version), self.keys.stream, self.keys.latest, self.keys.latest_meta]
        return bool(self._script(keys=keys, args=argv))

    def write_actuals(self, steps: Sequence[Actual]) -> None:
        if not steps:
            return
        pipe = self.client.pipeline(transaction=False)
        for step_ts, values, mask in steps:
            fields = {
                "step_ts": step_ts,
                "shape": f"{values.shape[0]},{values.shape[1]}",
                "values": np.ascontiguousarray(values, dtype="<f4").tobytes(),
                "mask": np.ascontiguousarray(mask, dtype=np.uint8).tobytes(),
            }
            pipe.xadd(self.keys.actuals, fields, maxlen=self.stream_maxlen, approximate=True)
        pipe.expire(self.keys.actuals, self.ttl_s)
        pipe.execute()

    def write_online(
        self, step_ts: int, cumulative: dict[str, dict[str, Any]], rolling: dict[str, Any], mean_mae: float
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        for version, scores in cumulative.items():
            pipe.set(self.keys.online(version), orjson.dumps({**scores, "last_step": step_ts}), ex=self.ttl_s)
        pipe.set(self.keys.online_rolling, orjson.dumps({**rolling, "step_ts": step_ts}), ex=self.ttl_s)
        entry = {
            "step_ts": step_ts,
            "model_version": str(rolling.get("model_version")),
            "mae": orjson.dumps(rolling.get("mae", [])),
            "mean_mae": mean_mae,
        }
        pipe.xadd(self.keys.online_history, entry, maxlen=self.stream_maxlen, approximate=True)
        pipe.expire(self.keys.online_history, self.ttl_s)
        pipe.execute()


@contextmanager
def requests_sent() -> Iterator[list[int]]:
    """Count the requests this process sends to Redis meanwhile, every client and node (a pipeline is
    one): `[n]`, read it as it grows."""
    sent = [0]
    original = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


class Steps:
    """Persistence-sized steps of one network: forecasts (each sensor's last value over the horizon),
    actuals and online scores, `batch` steps at a time along one timeline."""

    def __init__(self, n: int, horizon: int, version: str, seed: int = 0) -> None:
        self.n, self.horizon, self.version = n, horizon, version
        self.rng = np.random.default_rng(seed)
        self.next_ts = T0

    def batch(self, steps: int) -> tuple[list[StepForecast], list[Actual], OnlineScores]:
        forecasts, actuals = [], []
        for _ in range(steps):
            ts, self.next_ts = self.next_ts, self.next_ts + STEP
            values = np.round(self.rng.uniform(0, 80, (self.n, 1)), 1).astype(np.float32)  # [N, F]
            mask = self.rng.random((self.n, 1)) > 0.03  # [N, F]
            last = np.where(mask, values, np.nan).astype(np.float32)
            forecast = np.repeat(last[None], self.horizon, axis=0)  # [H, N, F]
            forecasts.append(StepForecast(ts, self.version, forecast, int(time.time() * 1000)))
            actuals.append((ts, values, mask))
        scores = [float(x) for x in self.rng.uniform(1, 5, self.horizon)]
        per_version = {"mae": scores, "rmse": scores, "mape": scores, "n": [self.n] * self.horizon}
        rolling = {"mae": scores, "rmse": scores, "n": [self.n] * self.horizon, "steps": 288}
        online = OnlineScores(
            forecasts[-1].step_ts,
            {self.version: per_version},
            {**rolling, "model_version": self.version},
            float(np.mean(scores)),
        )
        return forecasts, actuals, online


def compare(
    connect_client: Callable[[], Any], *, batches: int, sizes: Sequence[int] = BATCH_STEPS
) -> list[dict[str, Any]]:
    """Per batch size: the per-step path and the batch path in turn, `batches` micro-batches each."""
    rows = []
    for size in sizes:
        timed: dict[str, list[float]] = {"per_step": [], "batch": []}
        trips: dict[str, list[int]] = {"per_step": [], "batch": []}
        clients = {path: connect_client() for path in timed}
        network = f"scale{uuid.uuid4().hex[:6]}"
        keys = {path: Keys(f"b{path}", network) for path in timed}
        lease = Lease(clients["batch"], keys["batch"], ttl_s=600, owner="bench")
        lease.acquire()
        sensors = tuple(f"s{i:05d}" for i in range(SENSORS))
        common: dict[str, Any] = {"sensors": sensors, "features": ("speed",), "step_ms": STEP}
        sinks: dict[str, Any] = {
            "per_step": LegacySink(clients["per_step"], keys["per_step"], **common),
            "batch": RedisSink(clients["batch"], keys["batch"], lease=lease, **common),
        }
        data = {path: Steps(SENSORS, HORIZON, "v1") for path in timed}
        with requests_sent() as sent:
            for i in range(batches + 1):  # the first batch of each path loads its scripts: not timed
                for path, sink in sinks.items():
                    forecasts, actuals, online = data[path].batch(size)
                    before = sent[0]
                    t = time.perf_counter()
                    written = sink.write_batch(forecasts, actuals=actuals, online=online)
                    elapsed = time.perf_counter() - t
                    assert all(written), f"{path}: a new step was not written"
                    if i:
                        timed[path].append(1000 * elapsed / size)
                        trips[path].append(sent[0] - before)
        clients["batch"].flushall()  # every primary of a cluster: the next size starts empty
        for c in clients.values():
            c.close()
        row: dict[str, Any] = {"batch_steps": size, "batches": batches}
        for path, per_step in timed.items():
            row[f"{path}_p50_ms"] = round(statistics.median(per_step), 2)
            row[f"{path}_p99_ms"] = round(float(np.percentile(per_step, 99)), 2)
            row[f"{path}_round_trips"] = max(trips[path])
        row["per_step_over_batch_ratio"] = round(row["per_step_p50_ms"] / row["batch_p50_ms"], 2)
        rows.append(row)
    return rows


def run(quick: bool = False, cluster: bool | None = None) -> dict[str, Any]:
    """The figures, on a fresh redis-server and (`cluster`, by default unless `quick`) a fresh 3+3 Redis
    Cluster when redis-cli is installed to create it."""
    batches = 4 if quick else 16
    out: dict[str, Any] = {
        "params": {
            "sensors": SENSORS,
            "features": 1,
            "horizon": HORIZON,
            "batches_per_size": batches,
            "stream_maxlen": 2_000,
            "timing": "ms per step: a micro-batch's write (forecasts, actuals, scores) / its steps",
        },
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "versions": {
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "numpy": np.__version__,
            "orjson": orjson.__version__,
        },
    }
    with tempfile.TemporaryDirectory(prefix="scale-sink-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        server.start()
        try:
            with redis.Redis.from_url(server.url) as probe:
                out["versions"]["redis_server"] = probe.info("server")["redis_version"]
            out["single_node"] = compare(lambda: redis.Redis.from_url(server.url), batches=batches)
        finally:
            server.stop()
        if (not quick if cluster is None else cluster) and shutil.which("redis-cli"):
            sys.path.insert(0, str(REPO))
            from tests.redis_cluster import LocalCluster

            nodes = LocalCluster.start(Path(tmp) / "cluster")
            try:
                settings = RedisSettings(cluster=True)
                out["cluster_3x2"] = compare(
                    lambda: connect(settings, nodes.url), batches=batches, sizes=(1, 16)
                )
            finally:
                nodes.stop()
    out["machine"]["load_avg_end"] = os.getloadavg()  # a shared machine: what else ran meanwhile
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'steps/batch':>11} {'per-step p50':>12} {'p99':>7} {'trips':>5} "
        f"{'batch p50':>10} {'p99':>7} {'trips':>5} {'ratio':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r['batch_steps']:>11} {r['per_step_p50_ms']:>10.1f}ms {r['per_step_p99_ms']:>7.1f} "
            f"{r['per_step_round_trips']:>5} {r['batch_p50_ms']:>8.1f}ms {r['batch_p99_ms']:>7.1f} "
            f"{r['batch_round_trips']:>5} {r['per_step_over_batch_ratio']:>5.1f}x"
        )
    return "\n".join(lines)


def main() -> None:
    from scale import merge  # benchmarks/scale.py: this folder is first on sys.path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 batches per size instead of 16")
    ap.add_argument("--no-cluster", action="store_true", help="not on a local 3+3 Redis Cluster")
    args = ap.parse_args()
    result = run(args.quick, False if args.no_cluster else None)
    print(f"sink time per step, {SENSORS} sensors x 1 feature, horizon {HORIZON} (ms)")
    print("single redis-server:\n" + _table(result["single_node"]))
    if "cluster_3x2" in result:
        print("3+3 Redis Cluster:\n" + _table(result["cluster_3x2"]))
    merge("sink", result)


if __name__ == "__main__":
    main()
