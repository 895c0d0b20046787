"""What the dashboard shows, read from what the serving pipeline wrote: Redis keys (names from
`serving.keys` via `ForecastClient`) and, optionally, the model registry (a folder or an s3:// / gs:// URI).

Every method returns plain JSON-ready data (non-finite numbers become `None`). This module only reads: it
never writes to Redis or the registry, and knows nothing about HTTP.
"""

from __future__ import annotations

import math
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving.client import ForecastClient, StepSnapshot
from serving.dashboard.layout import positions
from serving.sink import Client
from stream.config import StorageSettings
from stream.network import Network
from stream.storage import Location, StorageError
from training.registry import Registry


def clean(obj: Any) -> Any:
    """JSON-ready copy of `obj`: NaN/inf -> None, numpy -> Python, tuples -> lists, recursively."""
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _number(raw: bytes | str | None) -> float | None:
    try:
        value = float(_text(raw) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class DashboardReader:
    """Reads one network's keys. `registry` is a registry root (folder or URI), or None when none is
    configured; `storage` says how an `s3://` root is reached."""

    def __init__(
        self,
        client: Client,
        network: Network,
        *,
        prefix: str = "sc",
        registry: str | Path | Location | None = None,
        storage: StorageSettings | None = None,
    ) -> None:
        self.client = ForecastClient(client, network.name, prefix)
        self.redis = client
        self.keys = self.client.keys
        self.network = network
        # no I/O here: a Registry only opens its location; it reads when asked
        self.registry = None if registry is None else Registry(registry, storage)

    @cached_property
    def _layout(self) -> tuple[np.ndarray, bool]:
        return positions(self.network)

    def _out_features(self) -> list[str]:
        """The forecast's features (a subset of the network's, in forecast order)."""
        for raw in self.redis.hscan_iter(self.keys.latest, count=1):
            return list(orjson.loads(raw[1])["features"])
        return [self.network.features[0].name]

    # -- network and forecasts -------------------------------------------------------------------------
    def network_view(self) -> dict[str, Any]:
        xy, real = self._layout
        in_redis = self.client.sensors()
        return {
            "name": self.network.name,
            "step_ms": self.network.step_ms,
            "features": [{"name": f.name, "unit": f.unit} for f in self.network.features],
            "forecast_features": self._out_features(),
            "coordinates": real,
            "sensors": [
                {"id": s, "x": float(xy[i, 0]), "y": float(xy[i, 1])}
                for i, s in enumerate(self.network.sensors)
            ],
            "edges": [{"source": a, "target": b, "weight": clean(w)} for a, b, w in self.network.edges],
            "matches_redis": None if not in_redis else in_redis == list(self.network.sensors),
        }

    def latest(self) -> dict[str, Any]:
        meta = self.client.latest_step()
        forecasts = self.client.latest()
        return {
            "meta": {
                k: (int(v) if k in ("step_ts", "issued_ms", "horizon", "n_sensors") else v)
                for k, v in meta.items()
            },
            "forecasts": [
                {
                    "sensor": s,
                    "step_ts": f.step_ts,
                    "issued_ms": f.issued_ms,
                    "model_version": f.model_version,
                    "step_ms": f.step_ms,
                    "features": list(f.features),
                    "forecast": clean(f.forecast),
                }
                for s, f in sorted(forecasts.items(), key=lambda kv: self.network.sensor_index.get(kv[0], 0))
            ],
        }

    def actuals(self, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The newest `count` sealed steps `(step_ts, values [N, F], mask [N, F])`, oldest first."""
        out = []
        for _, fields in reversed(self.redis.xrevrange(self.keys.actuals, count=count)):
            n, f = (int(x) for x in fields[b"shape"].decode().split(","))
            values = np.frombuffer(fields[b"values"], dtype="<f4").reshape(n, f)  # [N, F]
            mask = np.frombuffer(fields[b"mask"], dtype=np.uint8).reshape(n, f)  # [N, F]
            out.append((int(fields[b"step_ts"]), values, mask))
        return out

    def _feature(self, feature: str | None) -> tuple[str, int, int | None]:
        """(name, index in the actuals, index in the forecast or None) of `feature` (default: first forecast)."""
        out = self._out_features()
        name = feature or out[0]
        if name not in self.network.feature_index:
            raise KeyError(
                f"unknown feature {name!r}; the network has {[f.name for f in self.network.features]}"
            )
        return name, self.network.feature_index[name], out.index(name) if name in out else None

    def sensor_view(
        self, sensor: str, *, feature: str | None = None, steps: int = 36, fan: int = 6
    ) -> dict[str, Any]:
        """Recent actuals of one sensor and the forecasts of the newest `fan` steps (the fan), all horizons."""
        if sensor not in self.network.sensor_index:
            raise KeyError(f"unknown sensor {sensor!r}")
        i = self.network.sensor_index[sensor]
        name, fa, ff = self._feature(feature)
        actuals = [
            {"ts": ts, "value": clean(float(v[i, fa])), "observed": bool(m[i, fa])}
            for ts, v, m in self.actuals(steps)
        ]
        forecasts = []
        if ff is not None:
            for snap in self.client.snapshots(count=fan):
                if snap.values.shape[1] == self.network.n_sensors:
                    forecasts.append(
                        {
                            "step_ts": snap.step_ts,
                            "model_version": snap.model_version,
                            "issued_ms": snap.issued_ms,
                            "values": clean(snap.values[:, i, ff]),
                        }
                    )
        unit = self.network.features[fa].unit
        return {
            "sensor": sensor,
            "index": i,
            "feature": name,
            "unit": unit,
            "step_ms": self.network.step_ms,
            "model_version": forecasts[-1]["model_version"] if forecasts else None,
            "actuals": actuals,
            "forecasts": forecasts,
        }

    def map_state(self, feature: str | None = None) -> dict[str, Any]:
        """Per sensor: newest actual, next-step forecast, and the error of the 1-step forecast of that actual."""
        name, fa, ff = self._feature(feature)
        last = self.actuals(1)
        snaps = self.client.snapshots(count=4) if ff is not None else []
        newest: StepSnapshot | None = snaps[-1] if snaps else None
        scored: StepSnapshot | None = None
        if last:
            target = last[0][0] - self.network.step_ms
            scored = next((s for s in reversed(snaps) if s.step_ts == target), None)
        rows = []
        for i, sensor in enumerate(self.network.sensors):
            actual = float(last[0][1][i, fa]) if last else math.nan
            observed = bool(last[0][2][i, fa]) if last else False
            forecast = float(newest.values[0, i, ff]) if newest is not None and ff is not None else math.nan
            error = (
                abs(float(scored.values[0, i, ff]) - actual)
                if scored is not None and ff is not None and observed
                else math.nan
            )
            rows.append(
                {"id": sensor, "actual": actual, "observed": observed, "forecast": forecast, "error": error}
            )
        return clean(
            {
                "feature": name,
                "step_ts": last[0][0] if last else None,
                "forecast_step_ts": newest.step_ts if newest else None,
                "sensors": rows,
            }
        )

    # -- metrics, events, health -----------------------------------------------------------------------
    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return [{**e, "detail": clean(e["detail"])} for e in self.client.events(limit)]

    def online(self, limit: int = 500) -> dict[str, Any]:
        """Rolling MAE per horizon over time (`history`), all-time scores per version, lifecycle events."""
        history = [
            {
                "step_ts": int(f[b"step_ts"]),
                "model_version": f[b"model_version"].decode(),
                "mae": orjson.loads(f[b"mae"]),
                "mean_mae": _number(f[b"mean_mae"]),
                "written_ms": int(entry_id.split(b"-")[0]),
            }  # a stream id starts with its wall-clock ms
            for entry_id, f in reversed(self.redis.xrevrange(self.keys.online_history, count=limit))
        ]
        events = self.events()
        for event in events:  # events happen in wall-clock time; the chart's axis is step time
            at_ms = int(event["id"].split("-")[0])  # the Redis clock, as `written_ms`
            after = [h["step_ts"] for h in history if h["written_ms"] >= at_ms]
            event["at_step_ts"] = after[0] if after else (history[-1]["step_ts"] if history else None)
        raw = self.redis.get(self.keys.online_rolling)
        versions = {h["model_version"] for h in history} | {e["model_version"] for e in events}
        current = self.client.latest_step().get("model_version")
        if current:
            versions.add(current)
        scores = {}
        for version, doc in zip(
            sorted(versions),
            self.redis.mget([self.keys.online(v) for v in sorted(versions)]) if versions else [],
            strict=True,
        ):
            if doc is not None:
                scores[version] = orjson.loads(doc)
        return clean(
            {
                "rolling": orjson.loads(raw) if raw else None,
                "versions": scores,
                "history": history,
                "events": events,
            }
        )

    def health(self) -> dict[str, Any]:
        h = {k.decode(): v for k, v in self.redis.hgetall(self.keys.health).items()}
        if not h:
            return {"available": False}

        def js(key: str) -> Any:
            return orjson.loads(h[key]) if key in h else {}

        updated = _number(h.get("updated_ms"))
        lag = {str(k): int(v) for k, v in js("lag").items()}
        watermark, last_sealed = _number(h.get("watermark")), _number(h.get("last_sealed"))
        return clean(
            {
                "available": True,
                "updated_ms": updated,
                "age_s": None if updated is None else round(time.time() - updated / 1000, 1),
                "readings_per_s": _number(h.get("readings_per_s")),
                "watermark": watermark if watermark is not None and watermark >= 0 else None,
                "last_sealed": last_sealed if last_sealed is not None and last_sealed >= 0 else None,
                "steps_forecast": _number(h.get("steps_forecast")),
                "model_version": _text(h.get("model_version")),
                "ledger": js("ledger"),
                "dead_by_reason": js("dead_by_reason"),
                "lag": lag,
                "lag_total": sum(lag.values()),
                "unarchived_steps": int(_number(h.get("unarchived_steps")) or 0),
                "archive_failures": int(_number(h.get("archive_failures")) or 0),
            }
        )

    # -- registry --------------------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """Champion, challengers (never promoted), former champions, with their gate figures."""
        if self.registry is None:
            return {
                "configured": False,
                "message": "no registry configured (start with --registry DIR)",
                "root": None,
                "champion": None,
                "versions": [],
                "history": [],
            }
        reg = self.registry
        root = reg.root.uri
        try:
            champion = reg.champion()
            history = reg.history()
            records = reg.list()
        except StorageError as exc:  # shown on the page; the rest of the dashboard goes on
            return {
                "configured": True,
                "message": f"cannot read the registry: {exc}",
                "root": root,
                "champion": None,
                "versions": [],
                "history": [],
            }
        promoted = {h["version"] for h in history}
        versions = []
        for r in reversed(records):  # newest first
            role = (
                "champion"
                if champion and r.version == champion.version
                else "former champion"
                if r.version in promoted
                else "challenger"
            )
            versions.append(
                {
                    "version": r.version,
                    "kind": r.kind,
                    "role": role,
                    "parent": r.parent,
                    "created_ms": r.created_ms,
                    "metrics": r.metrics,
                    "reason": r.reason,
                    "data_range": r.data_range,
                }
            )
        message = f"{len(versions)} versions in {root}" if versions else f"registry {root} is empty"
        return clean(
            {
                "configured": True,
                "message": message,
                "root": root,
                "champion": champion.version if champion else None,
                "versions": versions,
                "history": history,
            }
        )
