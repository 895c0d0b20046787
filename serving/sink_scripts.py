"""The Redis sink's server-side scripts and the argument layouts they read; `serving.sink` runs them. This
module builds arguments and holds no connection.

Every script starts with the **fence**: given a lease token, it compares it with the network's lease key
(`serving.lease`) and, when the lease no longer holds that token, returns `LEASE_LOST` having written
nothing — unless the lease lapsed and nobody acquired it since (the epoch counter still at the token's
epoch): then it takes the lease back, as `Lease.renew` does. An empty token skips the check (a sink
without a lease).

`WRITE_BATCH` writes a micro-batch of steps in one call: each step's forecast is recorded in its version's
`done` set and, only when it was not there already (a replay writes nothing twice), appended to the
forecast stream and announced on the channel; `latest`/`latest:meta` are written once, for the newest step
written — each step overwrites every sensor's field, so the states in between need not be made, and only
that step's per-sensor JSON travels; the sealed steps' actuals and the online scores go in the same call.
Steps seal in order, so an actual not newer than the actuals stream's newest is a replay and is skipped.
Every key of a network shares its hash tag (`serving.keys`), so the one call is legal on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.keys import Keys

LEASE_LOST = -1  # what a script returns when the fence does not hold

Actual = tuple[int, np.ndarray, np.ndarray]  # a sealed step: step_ts, values [N, F], mask [N, F]


@dataclass
class StepForecast:
    """One step's forecast for the whole network."""

    step_ts: int  # start of the last input step (epoch ms)
    model_version: str
    values: np.ndarray  # [H, N, F_out] float32, original units
    issued_ms: int


@dataclass(frozen=True)
class OnlineScores:
    """The online scores as of `step_ts`: all-time per version, the serving model's rolling scores and
    their MAE pooled over the horizons (`serving.online`)."""

    step_ts: int
    cumulative: dict[str, dict[str, Any]]
    rolling: dict[str, Any]
    mean_mae: float


# KEYS[1], KEYS[2]: the lease and its epoch counter; ARGV[1..3]: the token ('' = no check), its epoch
# and the lease's TTL ms. A lease that lapsed while nobody acquired it since (the counter still at its
# epoch) is taken back, as `Lease.renew` does: this sink is still the only writer.
_FENCE = """
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    if holder or redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  end
end
"""
# HSET `latest` from a JSON list of sensor ids, the documents' common head and each sensor's forecast, one
# per line (JSON holds no raw newline), in chunks (a Lua call takes at most ~8000 arguments); returns the
# number of sensors. Three arguments instead of a pair per sensor: packing and parsing 17,200 arguments
# cost more than this split, and the head travels once.
_HSET_LATEST = """
local function hset_latest(key, ids_json, head, forecasts)
  local ids, args, k, from = cjson.decode(ids_json), {}, 0, 1
  for i = 1, #ids do
    local to = string.find(forecasts, '\\n', from, true) or (#forecasts + 1)
    args[k + 1] = ids[i]
    args[k + 2] = head .. string.sub(forecasts, from, to - 1) .. ']]}'
    k, from = k + 2, to + 1
    if k == 1000 or i == #ids then
      redis.call('HSET', key, unpack(args, 1, k))
      k = 0
    end
  end
  return #ids
end
"""

# KEYS: lease, lease epoch, forecast stream, latest, latest meta, actuals, online rolling, online
# history, one online:<version> key per all-time score, and last the steps' version's done set (when
# there are steps). ARGV: token, epoch, lease TTL ms, TTL s, stream cap, publish command (PUBLISH, or
# SPUBLISH on a cluster), channel, then
#   actuals: count, then (step_ts, shape "N,F", values, mask) each;
#   online:  count of all-time scores, or -1 for no online scores; when >= 0: rolling JSON, history
#            step_ts, history model version, history MAE JSON, mean MAE, then each all-time score's JSON;
#   steps:   count; when > 0: model version, horizon, shape "H,N,F", the step whose `latest` documents
#            follow, then (step_ts, issued_ms, values) each, in step order, then that step's `latest`:
#            the JSON list of sensor ids, the documents' head, each sensor's forecast one per line.
# Returns {1, newer, written...}: `written` is 1 per step written, 0 per step already written; `newer` is
# '' or, rarely, the step `latest` must show when it is not the one whose documents came along.
WRITE_BATCH = (
    _HSET_LATEST
    + _FENCE
    + """
local ttl, cap, publish, channel = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local a = 8
local n_actuals = tonumber(ARGV[a])
a = a + 1
if n_actuals > 0 then
  local top = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)[1]
  local sealed = top and tonumber(top[2][2]) or -1  -- its first field is step_ts
  for _ = 1, n_actuals do
    if tonumber(ARGV[a]) > sealed then  -- steps seal in order: an older one is a replay
      sealed = tonumber(ARGV[a])
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', cap, '*',
        'step_ts', ARGV[a], 'shape', ARGV[a + 1], 'values', ARGV[a + 2], 'mask', ARGV[a + 3])
    end
    a = a + 4
  end
  redis.call('EXPIRE', KEYS[6], ttl)
end
local n_scores = tonumber(ARGV[a])
a = a + 1
if n_scores >= 0 then
  for i = 1, n_scores do redis.call('SET', KEYS[8 + i], ARGV[a + 4 + i], 'EX', ttl) end
  redis.call('SET', KEYS[7], ARGV[a], 'EX', ttl)
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', cap, '*',
    'step_ts', ARGV[a + 1], 'model_version', ARGV[a + 2], 'mae', ARGV[a + 3], 'mean_mae', ARGV[a + 4])
  redis.call('EXPIRE', KEYS[8], ttl)
  a = a + 5 + n_scores
end
local out = {1, ''}
local n_steps = tonumber(ARGV[a])
if n_steps == 0 then return out end
local version, horizon, shape, attached = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
a = a + 5
local latest_from = a + 3 * n_steps
local done = KEYS[#KEYS]
local cur = tonumber(redis.call('HGET', KEYS[5], 'step_ts') or '-1')
local newest, top, top_issued, notes = nil, nil, nil, {}
for _ = 1, n_steps do
  local step, issued = ARGV[a], ARGV[a + 1]
  if redis.call('ZADD', done, 'NX', step, step) == 1 then
    local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', 'step_ts', step, 'model_version',
      version, 'issued_ms', issued, 'shape', shape, 'dtype', 'float32le', 'values', ARGV[a + 2])
    local t = tonumber(step)
    if t >= cur then cur, top, top_issued = t, step, issued end
    newest = math.max(newest or t, t)
    notes[#notes + 1] = cjson.encode({step_ts = t, model_version = version, stream_id = id})
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 3
end
if newest == nil then return out end
if top == attached then
  local n = hset_latest(KEYS[4], ARGV[latest_from], ARGV[latest_from + 1], ARGV[latest_from + 2])
  redis.call('HSET', KEYS[5], 'step_ts', top, 'model_version', version, 'issued_ms', top_issued,
    'horizon', horizon, 'n_sensors', n)
elseif top then
  out[2] = top
end
redis.call('ZREMRANGEBYSCORE', done, '-inf', '(' .. (newest - ttl * 1000))
for _, k in ipairs({done, KEYS[3], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', k, ttl) end
for _, note in ipairs(notes) do redis.call(publish, channel, note) end
return out
"""
)

# The rare second call of a batch (see WRITE_BATCH's `newer`). KEYS: lease, lease epoch, latest, latest
# meta. ARGV: token, epoch, lease TTL ms, TTL s, step, model version, issued ms, horizon, then `latest`
# as in WRITE_BATCH (ids, head, forecasts).
WRITE_LATEST = (
    _HSET_LATEST
    + _FENCE
    + """
if tonumber(ARGV[5]) < tonumber(redis.call('HGET', KEYS[4], 'step_ts') or '-1') then return 0 end
local n = hset_latest(KEYS[3], ARGV[9], ARGV[10], ARGV[11])
redis.call('HSET', KEYS[4], 'step_ts', ARGV[5], 'model_version', ARGV[6], 'issued_ms', ARGV[7],
  'horizon', ARGV[8], 'n_sensors', n)
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
"""
)

# KEYS: lease, lease epoch, health, sensors. ARGV: token, epoch, lease TTL ms, TTL s, then field/value
# pairs.
WRITE_HEALTH = (
    _FENCE
    + """
redis.call('HSET', KEYS[3], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4]) -- written once at start: kept while serving
return 1
"""
)

# KEYS: lease, lease epoch, events. ARGV: token, epoch, lease TTL ms, stream cap, then field/value pairs.
ADD_EVENT = (
    _FENCE
    + """
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
return 1
"""
)

# KEYS: lease, lease epoch, sensors. ARGV: token, epoch, lease TTL ms, JSON list of sensor ids, TTL s.
PUBLISH_NETWORK = (
    _FENCE
    + """
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
return 1
"""
)


def latest_docs(fc: StepForecast, features: list[str], step_ms: int) -> tuple[bytes, bytes]:
    """One step's `latest` documents (the JSON documented in `serving.keys`) as their common head and each
    sensor's forecast, one per line: a sensor's document is `head + forecast + b"]]}"`."""
    head = {
        "step_ts": fc.step_ts,
        "issued_ms": fc.issued_ms,
        "model_version": fc.model_version,
        "step_ms": step_ms,
        "features": features,
    }
    per_sensor = np.ascontiguousarray(fc.values.transpose(1, 0, 2), dtype=np.float32)  # [N, H, F]
    # The same bytes as one `dumps` per sensor, made by one `dumps` of all sensors cut apart: in
    # `[[[a],[b]],[[c],[d]]]` only a sensor boundary reads `]],[[`. One feature goes as [N, H] (orjson
    # writes it 4x faster than [N, H, 1]), `[[a,b],[c,d]]`, whose rows' brackets are put back.
    numpy, (n, h, f) = orjson.OPT_SERIALIZE_NUMPY, per_sensor.shape
    if f == 1:
        rows = orjson.dumps(per_sensor.reshape(n, h), option=numpy)[2:-2]  # `a,b],[c,d`
        forecasts = rows.replace(b"],[", b"\n").replace(b",", b"],[")  # `a],[b` `c],[d`
    else:
        forecasts = orjson.dumps(per_sensor, option=numpy)[3:-3].replace(b"]],[[", b"\n")
    return orjson.dumps(head)[:-1] + b',"forecast":[[', forecasts


def batch_call(
    keys: Keys,
    *,
    ttl_s: int,
    stream_maxlen: int,
    publish: str,
    forecasts: Sequence[StepForecast],
    latest: tuple[bytes, bytes, bytes],
    actuals: Sequence[Actual],
    online: OnlineScores | None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one `WRITE_BATCH` call after the fence's (lease key and epoch counter; token, epoch
    and lease TTL); `latest` is the newest forecast's `latest` (ids JSON, head, forecasts: `latest_docs`)."""
    names = [keys.stream, keys.latest, keys.latest_meta, keys.actuals, keys.online_rolling]
    names.append(keys.online_history)
    args: list[Any] = [ttl_s, stream_maxlen, publish, keys.channel, len(actuals)]
    for step_ts, values, mask in actuals:
        args.append(step_ts)
        args.append(f"{values.shape[0]},{values.shape[1]}")
        args.append(np.ascontiguousarray(values, dtype="<f4").tobytes())
        args.append(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    if online is None:
        args.append(-1)
    else:
        rolling = online.rolling
        args.append(len(online.cumulative))
        args.append(orjson.dumps({**rolling, "step_ts": online.step_ts}))
        args += [online.step_ts, str(rolling.get("model_version")), orjson.dumps(rolling.get("mae", []))]
        args.append(online.mean_mae)
        for version, scores in online.cumulative.items():
            names.append(keys.online(version))
            args.append(orjson.dumps({**scores, "last_step": online.step_ts}))
    args.append(len(forecasts))
    if forecasts:
        version = forecasts[0].model_version
        h, n, f = forecasts[0].values.shape  # [H, N, F]
        names.append(keys.done(version))
        args += [version, h, f"{h},{n},{f}", max(fc.step_ts for fc in forecasts)]
        for fc in forecasts:
            args += [fc.step_ts, fc.issued_ms, np.ascontiguousarray(fc.values, dtype="<f4").tobytes()]
        args += latest
    return names, args
