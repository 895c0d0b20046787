"""The Redis key schema — the one place that names keys. Readers (client, dashboard, redis-cli users) and
the writer (`serving.sink`) both go through `Keys`.

Every key starts with `<prefix>:{<network>}:` — the braces are a Redis Cluster hash tag, so one network's
keys (and its notification channel) live in one slot and a micro-batch's write can be one atomic script; the
prefix and the network name may not contain braces themselves. With the defaults (`sc`, network `sim`):

| key | type | content |
|---|---|---|
| `sc:{sim}:latest` | hash | field = sensor id, value = JSON `{"step_ts", "issued_ms", "model_version", "step_ms", "features", "forecast": [[h1 f1, ...], [h2 ...], ...]}`; `forecast[h-1][f]` is the forecast for step `step_ts + h * step_ms` |
| `sc:{sim}:latest:meta` | hash | `step_ts`, `model_version`, `issued_ms`, `horizon`, `n_sensors` of the newest step in `latest` |
| `sc:{sim}:forecasts` | stream | one entry per (model version, step): `step_ts`, `model_version`, `issued_ms`, `shape` ("H,N,F"), `dtype` ("float32le"), `values` (raw little-endian float32, C order `[H, N, F]`); capped by `stream_maxlen` |
| `sc:{sim}:done:<model_version>` | sorted set | member = score = step_ts of every step this version has forecast (the idempotency record) |
| `sc:{sim}:steps` | pub/sub channel | JSON `{"step_ts", "model_version", "stream_id"}` after each step's write; sharded pub/sub (`SSUBSCRIBE`) on a Redis Cluster |
| `sc:{sim}:actuals` | stream | one entry per sealed step: `step_ts`, `shape` ("N,F"), `values` (float32le `[N, F]`, last-observation filled), `mask` (uint8 `[N, F]`); capped by `stream_maxlen` |
| `sc:{sim}:online:<model_version>` | string | JSON all-time online scores of a version: `{"mae": [H], "rmse": [H], "mape": [H], "n": [H], "last_step"}` |
| `sc:{sim}:online:rolling` | string | JSON rolling scores of the serving model over the last steps: `{"mae": [H], "rmse": [H], "n": [H], "steps", "model_version", "step_ts"}` |
| `sc:{sim}:online:history` | stream | per update of the online scores: `step_ts`, `model_version`, `mae` (JSON `[H]` rolling MAE), `mean_mae` |
| `sc:{sim}:health` | hash | ingest health, refreshed about once a second: `ledger` (JSON totals), `dead_by_reason` (JSON), `lag` (JSON per partition), `watermark`, `last_sealed`, `steps_forecast`, `readings_per_s`, `model_version`, `unarchived_steps`, `archive_failures`, `updated_ms` |
| `sc:{sim}:events` | stream | model lifecycle: `ts`, `type` (serving — also after a rollback or promotion, with the actors' Ray nodes —, actors_recovered, drift, retrain_started, retrain_failed, promoted, rejected), `model_version`, `detail` (JSON); capped, no TTL |
| `sc:{sim}:sensors` | string | JSON list of sensor ids in network order (the N axis of `values`) |
| `sc:{sim}:lease` | string | `<epoch>:<owner>` of the one pipeline allowed to write this network's keys (`serving.lease`); expires unless renewed |
| `sc:{sim}:lease:epoch` | string | the fencing counter: incremented by every acquisition, never expires |

Everything but `events` expires after `ttl_s` (refreshed on each write; `sensors` with each health
update), the streams are capped, and the idempotency record is trimmed to the TTL window. Plain redis-cli
(`redis-cli -c` on a cluster): `HGET 'sc:{sim}:latest' s0001`, `XREVRANGE 'sc:{sim}:forecasts' + - COUNT 1`,
`SUBSCRIBE 'sc:{sim}:steps'` (`SSUBSCRIBE` on a cluster, at a node of the slot's shard).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str
    network: str

    def __post_init__(self) -> None:
        if any(c in self.prefix + self.network for c in "{}"):
            raise ValueError(
                f"key prefix {self.prefix!r} and network name {self.network!r} may not contain braces: "
                "they would change the Redis Cluster hash tag that keeps a network's keys in one slot"
            )

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.network}}}"

    @property
    def latest(self) -> str:
        return f"{self.base}:latest"

    @property
    def latest_meta(self) -> str:
        return f"{self.base}:latest:meta"

    @property
    def stream(self) -> str:
        return f"{self.base}:forecasts"

    @property
    def channel(self) -> str:
        return f"{self.base}:steps"

    @property
    def sensors(self) -> str:
        return f"{self.base}:sensors"

    def done(self, model_version: str) -> str:
        return f"{self.base}:done:{model_version}"

    def online(self, model_version: str) -> str:
        return f"{self.base}:online:{model_version}"

    @property
    def online_rolling(self) -> str:
        return f"{self.base}:online:rolling"

    @property
    def online_history(self) -> str:
        return f"{self.base}:online:history"

    @property
    def actuals(self) -> str:
        return f"{self.base}:actuals"

    @property
    def health(self) -> str:
        return f"{self.base}:health"

    @property
    def events(self) -> str:
        return f"{self.base}:events"

    @property
    def lease(self) -> str:
        return f"{self.base}:lease"

    @property
    def lease_epoch(self) -> str:
        return f"{self.base}:lease:epoch"
