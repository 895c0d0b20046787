"""The reading message format, version 1, and its decoder: bytes from Kafka in, columnar readings out.

Two message kinds, JSON objects encoded as UTF-8 (orjson):

* single reading (Kafka key = sensor id)::

    {"v": 1, "sensor": "s0001", "ts": 1700000000000, "values": {"speed": 61.2, "flow": 300}}

* batch, many sensors at one timestamp (the fast path); arrays are aligned with `sensors`::

    {"v": 1, "ts": 1700000000000, "sensors": ["s0001", "s0002"],
     "values": {"speed": [61.2, null], "flow": [300, 280]}}

`ts` is UTC epoch milliseconds (an integer). `null` means "not measured": it is simply absent, not an
error. A reading is one (sensor, feature, ts, value).

The `Decoder` never raises on input. Decoding failure is data: a `Reject(reason, detail, n_readings)`
with a stable snake_case reason (see `REASONS`). A structurally broken message is rejected whole
(`n_readings` = what it claimed, at least 1; an undecodable message counts as one reading); in a
well-formed message individually bad values (unknown sensor or feature, wrong type, out of range) are
rejected per reading and the rest accepted.

This module knows nothing about Kafka, windows or dead-letter topics (see `stream.ingest`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream.network import Network
from stream.validate import Columns, validate_batch

SCHEMA_VERSION = 1
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything earlier is a broken sensor clock
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: the absolute ceiling, whatever the reference says
DEFAULT_MAX_FUTURE_MS = 86_400_000  # one day ahead of the reference time

REASONS: dict[str, str] = {
    "empty": "the message is empty (a tombstone or zero bytes) or carries no readings",
    "oversized": "the message is larger than max_message_bytes",
    "not_utf8": "the bytes are not valid UTF-8",
    "undecodable": "the bytes are not valid JSON",
    "too_deep": "the JSON nests deeper than the parser allows",
    "not_finite": "a number is infinite (e.g. 1e999) or NaN",
    "not_json_object": "the JSON is valid but not an object",
    "bad_schema_version": "the schema version `v` is not one this decoder knows",
    "missing_field": "a required field (v, ts, values, sensor or sensors) is absent",
    "wrong_type": "a field or value has the wrong JSON type (e.g. a string or bool where a number belongs)",
    "ambiguous_kind": "the message has both `sensor` and `sensors`",
    "length_mismatch": "a batch value array is not as long as `sensors`",
    "bad_timestamp": "ts lies before min_ts_ms or too far ahead of the reference time",
    "unknown_sensor": "the sensor id is not in the network",
    "unknown_feature": "the feature name is not in the network",
    "out_of_range": "the value lies outside the feature's [min, max]",
}


class Reject(NamedTuple):
    """Readings the decoder refused: a reason code from `REASONS`, a sentence, and how many readings."""

    reason: str
    detail: str
    n_readings: int


_loads = orjson.loads


class Decoded:
    """The valid readings of one message as columns, and its rejects.

    `ts` int64, `sensor` int32 (index in the network), `feature` int16 and `value` float64 (finite), each
    `[n]`.
    """

    __slots__ = ("feature", "rejects", "sensor", "ts", "value")

    def __init__(self, cols: Columns | None = None, rejects: list[Reject] | None = None) -> None:
        if cols is None:  # no valid readings
            cols = (
                np.empty(0, np.int64),
                np.empty(0, np.int32),
                np.empty(0, np.int16),
                np.empty(0, np.float64),
            )
        self.ts, self.sensor, self.feature, self.value = cols
        self.rejects: list[Reject] = rejects if rejects is not None else []

    @property
    def n(self) -> int:
        """Number of valid readings."""
        return len(self.ts)

    @property
    def n_rejected(self) -> int:
        return sum(r.n_readings for r in self.rejects)

    def columns(self) -> Columns:
        """`(ts, sensor, feature, value)`."""
        return self.ts, self.sensor, self.feature, self.value


def encode_reading(sensor: str, ts: int, values: Mapping[str, float]) -> bytes:
    """One sensor's readings at `ts` (epoch ms) as a v1 message; numpy scalars welcome, NaN becomes null."""
    msg = {"v": SCHEMA_VERSION, "sensor": sensor, "ts": int(ts), "values": dict(values)}
    return orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_batch(ts: int, sensors: Sequence[str], values: Mapping[str, Sequence[float | None]]) -> bytes:
    """Many sensors at one `ts` as a v1 batch; each `values[feature]` is aligned with `sensors`.

    NaN (e.g. from a numpy array) is written as null (not measured). Arrays are converted with
    `.tolist()` so numpy input costs no per-element Python work.
    """
    cols: dict[str, list[float | None]] = {}
    for name, col in values.items():
        if isinstance(col, np.ndarray):
            arr = col.astype(np.float64, copy=False)
            out: list[Any] = arr.tolist()
            if np.isnan(arr).any():
                out = [None if x != x else x for x in out]
        else:
            out = [None if x is None or x != x else x for x in col]
        if len(out) != len(sensors):
            raise ValueError(f"values[{name!r}] has {len(out)} entries for {len(sensors)} sensors")
        cols[name] = out
    return orjson.dumps({"v": SCHEMA_VERSION, "ts": int(ts), "sensors": list(sensors), "values": cols})


class Decoder:
    """Decodes and validates v1 messages against a `Network`. `decode()` never raises on input.

    Timestamps must satisfy `min_ts_ms <= ts <= ts_ceiling_ms`. The ceiling starts at `max_ts_ms`;
    `set_reference(ms)` lowers it to `ms + max_future_ms` (the ingest core passes the larger of the clock
    and the highest event time seen), so one reading from a clock in 2099 cannot drag the watermark there.
    """

    def __init__(
        self,
        network: Network,
        *,
        max_message_bytes: int = 1_048_576,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        min_ts_ms: int = MIN_TS_MS,
        max_ts_ms: int = MAX_TS_MS,
    ) -> None:
        self.network = network
        self.max_message_bytes = max_message_bytes
        self.max_future_ms = max_future_ms
        self.min_ts_ms = min_ts_ms
        self.max_ts_ms = max_ts_ms
        self.ts_ceiling_ms = max_ts_ms
        self._sensor_index = network.sensor_index
        self._features: dict[str, tuple[int, float, float]] = {
            f.name: (i, f.min, f.max) for i, f in enumerate(network.features)
        }

    def set_reference(self, reference_ms: int) -> None:
        """Accept timestamps up to `reference_ms + max_future_ms` (never above `max_ts_ms`)."""
        self.ts_ceiling_ms = min(self.max_ts_ms, reference_ms + self.max_future_ms)

    def decode(self, raw: bytes | None) -> Decoded:
        """Valid readings of `raw` plus rejects; see the module docstring for the policy.

        The per-message path: the ingest core decodes clean single readings in bulk
        (`stream.columnar`) and sends here what that declines, batches and broken messages, for their
        readings or the reason they are rejected.
        """
        if not raw:
            return _whole("empty", "the message has no bytes (a tombstone or an empty value)", 1)
        if len(raw) > self.max_message_bytes:
            return _whole(
                "oversized", f"{len(raw)} bytes exceed max_message_bytes={self.max_message_bytes}", 1
            )
        try:
            msg = _loads(raw)
        except orjson.JSONDecodeError as exc:
            return _undecodable(raw, exc)
        if type(msg) is not dict:
            return _whole("not_json_object", f"top-level JSON is a {type(msg).__name__}, not an object", 1)
        ts = msg.get("ts")
        values = msg.get("values")
        if msg.get("v") != 1 or type(ts) is not int or type(values) is not dict or type(msg["v"]) is not int:
            return self._bad_header(msg)
        if ts < self.min_ts_ms or ts > self.ts_ceiling_ms:
            return _whole("bad_timestamp", self._ts_detail(ts), _claimed(msg))
        sensor = msg.get("sensor")
        if type(sensor) is not str or "sensors" in msg or not values:
            return self._not_single(msg, sensor, ts, values)
        si = self._sensor_index.get(sensor)
        feature: list[int] = []
        value: list[float] = []
        bad: list[tuple[str, str]] = []
        for name, x in values.items():
            if x is None:  # not measured
                continue
            spec = self._features.get(name)
            if type(x) in (float, int) and spec is not None and si is not None and spec[1] <= x <= spec[2]:
                feature.append(spec[0])
                value.append(float(x))
            else:
                bad.append(self._why(sensor, si, name, spec, x))
        cols = None
        if feature:
            k = len(feature)
            cols = (
                np.full(k, ts, np.int64),
                np.full(k, si, np.int32),
                np.array(feature, np.int16),
                np.array(value, np.float64),
            )
        return Decoded(cols, _group(bad))

    def _not_single(self, msg: dict[str, Any], sensor: Any, ts: int, values: dict[str, Any]) -> Decoded:
        """The batch path, and the ways a single reading can be malformed as a whole."""
        if sensor is not None:
            if "sensors" in msg:
                return _whole("ambiguous_kind", "the message has both 'sensor' and 'sensors'", _claimed(msg))
            if type(sensor) is not str:
                detail = f"'sensor' is a {type(sensor).__name__}, not a string"
                return _whole("wrong_type", detail, _claimed_single(values))
            return _whole("empty", "'values' is an empty object", 1)
        sensors = msg.get("sensors")
        if sensors is None:
            return _whole("missing_field", "neither 'sensor' nor 'sensors' is present", _claimed(msg))
        cols, problems = validate_batch(
            self.network.name, self._sensor_index, self._features, ts, sensors, values
        )
        return Decoded(cols=cols, rejects=[Reject(*p) for p in problems])

    def _why(self, sensor: str, si: int | None, name: str, spec: Any, x: Any) -> tuple[str, str]:
        if type(x) is not float and type(x) is not int:
            return "wrong_type", f"{sensor}/{name}: value {_short(x)} is a {type(x).__name__}, not a number"
        if si is None:
            return "unknown_sensor", f"sensor {_short(sensor)} is not in network {self.network.name!r}"
        if spec is None:
            return "unknown_feature", f"feature {_short(name)} is not in network {self.network.name!r}"
        _, lo, hi = spec
        return "out_of_range", f"{sensor}/{name}: value {x} is outside [{lo}, {hi}]"

    def _bad_header(self, msg: dict[str, Any]) -> Decoded:
        n = _claimed(msg)
        for key in ("v", "ts", "values"):
            if key not in msg or msg[key] is None:
                return _whole("missing_field", f"required field {key!r} is absent", n)
        v, ts = msg["v"], msg["ts"]
        if type(v) is not int:
            return _whole("wrong_type", f"'v' is a {type(v).__name__}, not an integer", n)
        if v != SCHEMA_VERSION:
            return _whole(
                "bad_schema_version", f"schema version {v}; this decoder reads v{SCHEMA_VERSION}", n
            )
        if type(ts) is not int:
            return _whole(
                "wrong_type", f"'ts' is a {type(ts).__name__} ({_short(ts)}), not integer epoch ms", n
            )
        return _whole("wrong_type", f"'values' is a {type(msg['values']).__name__}, not an object", n)

    def _ts_detail(self, ts: int) -> str:
        if ts < self.min_ts_ms:
            return f"ts {ts} is before min_ts_ms={self.min_ts_ms} (a sensor clock reset?)"
        return f"ts {ts} is after the ceiling {self.ts_ceiling_ms} (reference + max_future_ms or max_ts_ms)"


def _whole(reason: str, detail: str, n_readings: int) -> Decoded:
    return Decoded(rejects=[Reject(reason, detail, max(1, n_readings))])


def _undecodable(raw: bytes, exc: orjson.JSONDecodeError) -> Decoded:
    msg = str(exc)
    if "UTF-8" in msg:
        return _whole("not_utf8", f"the bytes are not valid UTF-8: {msg}", 1)
    if "depth limit" in msg or "recursion" in msg.lower():
        return _whole("too_deep", f"JSON nests too deep: {msg}", 1)
    if "infinity" in msg or "NaN" in msg:
        return _whole("not_finite", f"a number is not finite: {msg}", 1)
    return _whole("undecodable", f"not valid JSON ({len(raw)} bytes): {msg}", 1)


def _claimed_single(values: Any) -> int:
    return len(values) if type(values) is dict else 1


def _claimed(msg: dict[str, Any]) -> int:
    """How many readings a (possibly broken) message claims to carry, for the ledger."""
    values = msg.get("values")
    sensors = msg.get("sensors")
    if type(sensors) is list and type(values) is dict:
        return len(sensors) * max(1, len(values))
    if type(sensors) is list:
        return len(sensors)
    return _claimed_single(values)


def _group(bad: list[tuple[str, str]]) -> list[Reject]:
    """One Reject per reason, with the first detail and a count of the others."""
    out: dict[str, list[Any]] = {}
    for reason, detail in bad:
        entry = out.get(reason)
        if entry is None:
            out[reason] = [detail, 1]
        else:
            entry[1] += 1
    return [
        Reject(reason, detail if n == 1 else f"{detail} (and {n - 1} more)", n)
        for reason, (detail, n) in out.items()
    ]


def _short(x: Any, limit: int = 40) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."
