"""Replay a recorded dataset as real timestamped readings, optionally made as messy as real networks are:
shuffled within the lateness bound, with duplicates, malformed messages and readings later than allowed.

`plan()` is pure: it returns the messages in send order with the exact counts a consumer must report
(`Expectation`), so tests and the fault suite can check the ledger to the reading. `send()` publishes a
plan through a `ReadingProducer`, paced by event time when `speed` > 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stream.datasets import SensorDataset
from stream.kafka_io import ReadingProducer, partition_of
from stream.schema import encode_batch, encode_reading

# Malformed messages a replay can inject, with the dead-letter reason each must get.
GARBAGE: tuple[tuple[str, Callable[[str, int, str], bytes]], ...] = (
    ("undecodable", lambda s, ts, f: b'{"v": 1, "sensor": "' + s.encode() + b'", "ts": '),
    ("not_utf8", lambda s, ts, f: b"\xff\xfe\x00garbage\x80"),
    ("bad_schema_version", lambda s, ts, f: encode_reading(s, ts, {f: 1.0}).replace(b'"v":1', b'"v":99')),
    ("unknown_sensor", lambda s, ts, f: encode_reading("no-such-sensor", ts, {f: 1.0})),
    ("unknown_feature", lambda s, ts, f: encode_reading(s, ts, {"no_such_feature": 1.0})),
    (
        "not_finite",
        lambda s, ts, f: (
            b'{"v":1,"sensor":"%s","ts":%d,"values":{"%s":1e999}}' % (s.encode(), ts, f.encode())
        ),
    ),
    (
        "missing_field",
        lambda s, ts, f: b'{"v":1,"sensor":"%s","values":{"%s":1.0}}' % (s.encode(), f.encode()),
    ),
    (
        "wrong_type",
        lambda s, ts, f: (
            b'{"v":1,"sensor":"%s","ts":%d,"values":{"%s":"fast"}}' % (s.encode(), ts, f.encode())
        ),
    ),
)


@dataclass
class Expectation:
    """What a consumer of the plan must count."""

    readings: int = 0  # valid readings sent on time (each exactly once before duplication)
    duplicates: int = 0  # readings repeated by duplicated messages
    late: int = 0  # readings sent after their step can no longer be open
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    late_cells: list[tuple[int, int, int]] = field(default_factory=list)  # (step index, sensor, feature)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_by_reason.values())

    @property
    def received(self) -> int:
        return self.readings + self.duplicates + self.late + self.dead_lettered


@dataclass
class Message:
    send_ts: int  # event-time position in the send order
    partition: int
    key: bytes | None
    value: bytes
    late: bool = False  # held back until after every on-time message


def plan(
    ds: SensorDataset,
    *,
    n_partitions: int,
    start_step: int = 0,
    n_steps: int | None = None,
    fmt: str = "single",
    shuffle_ms: int = 0,
    duplicate_rate: float = 0.0,
    garbage_rate: float = 0.0,
    late_readings: int = 0,
    allowed_lateness_ms: int = 0,
    seed: int = 0,
) -> tuple[list[Message], Expectation]:
    """Messages in send order. Shuffling moves each message by less than `shuffle_ms` of event time, so
    with `shuffle_ms <= allowed_lateness_ms` nothing on time becomes late; `late_readings` single readings
    go last, after every on-time message (their steps lie at least 4 steps before the end), so a consumer
    that has read and sealed everything before them must count them late. With several partitions, send
    them only once the on-time part is consumed: partitions are read at different speeds, so "late" is
    only well defined after the slowest one has passed their steps."""
    if fmt not in ("single", "batch"):
        raise ValueError(f"fmt must be 'single' or 'batch', not {fmt!r}")
    rng = np.random.default_rng(seed)
    net = ds.network
    stop = ds.values.shape[0] if n_steps is None else min(ds.values.shape[0], start_step + n_steps)
    steps = range(start_step, stop)
    feats = net.feature_names
    exp = Expectation()
    owner = [partition_of(i, n_partitions) for i in range(net.n_sensors)]
    mask = ds.mask.astype(bool).copy()  # [T, N, F]
    # choose the late readings first (not in the last steps: the stream must move on past them)
    candidates = np.argwhere(
        mask[start_step : max(start_step, stop - 4 - allowed_lateness_ms // net.step_ms)]
    )
    late_idx = candidates[
        rng.choice(len(candidates), size=min(late_readings, len(candidates)), replace=False)
    ]
    msgs: list[Message] = []
    for t_rel, i, k in late_idx:
        t = int(t_rel) + start_step
        ts = int(ds.step_ts[t])
        mask[t, i, k] = False
        exp.late += 1
        exp.late_cells.append((t, int(i), int(k)))
        value = encode_reading(net.sensors[i], ts, {feats[k]: float(ds.values[t, i, k])})
        msgs.append(Message(ts, owner[i], net.sensors[i].encode(), value, late=True))
    for t in steps:
        ts = int(ds.step_ts[t])
        if fmt == "single":
            for i in np.flatnonzero(mask[t].any(axis=1)):
                vals = {feats[k]: float(ds.values[t, i, k]) for k in range(len(feats)) if mask[t, i, k]}
                msgs.append(
                    Message(ts, owner[i], net.sensors[i].encode(), encode_reading(net.sensors[i], ts, vals))
                )
                exp.readings += len(vals)
        else:
            for p in range(n_partitions):
                idx = [i for i in range(net.n_sensors) if owner[i] == p and mask[t, i].any()]
                if not idx:
                    continue
                cols = {
                    feats[k]: [float(ds.values[t, i, k]) if mask[t, i, k] else None for i in idx]
                    for k in range(len(feats))
                }
                msgs.append(Message(ts, p, None, encode_batch(ts, [net.sensors[i] for i in idx], cols)))
                exp.readings += int(mask[t, idx].sum())
    pool = msgs[len(late_idx) :]  # the on-time messages: duplicates and garbage are drawn from these
    n_on_time = len(pool)
    for m in [pool[j] for j in rng.choice(n_on_time, size=round(duplicate_rate * n_on_time), replace=False)]:
        msgs.append(Message(m.send_ts, m.partition, m.key, m.value))
        exp.duplicates += _count_readings(m.value)
    for j in rng.choice(n_on_time, size=round(garbage_rate * n_on_time), replace=True):
        m = pool[int(j)]
        reason, make = GARBAGE[int(rng.integers(len(GARBAGE)))]
        sensor = net.sensors[int(rng.integers(net.n_sensors))]
        msgs.append(Message(m.send_ts, m.partition, sensor.encode(), make(sensor, m.send_ts, feats[0])))
        exp.dead_by_reason[reason] = exp.dead_by_reason.get(reason, 0) + 1
    # shuffle within the bound: sort by event time plus a random delay below shuffle_ms
    delay = (
        rng.integers(0, max(1, shuffle_ms), size=len(msgs)) if shuffle_ms > 0 else np.zeros(len(msgs), int)
    )
    order = np.argsort(np.array([m.send_ts for m in msgs]) + delay, kind="stable")
    return [msgs[i] for i in order], exp


def _count_readings(value: bytes) -> int:
    import orjson

    doc = orjson.loads(value)
    vals = doc["values"]
    if "sensors" in doc:
        return sum(1 for col in vals.values() for v in col if v is not None)
    return len(vals)


def send(
    messages: list[Message],
    producer: ReadingProducer,
    *,
    step_ms: int,
    speed: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Publish a plan; with `speed` > 0, pace it at `speed` × real time by the messages' event time."""
    t0_wall = time.monotonic()
    t0_event = messages[0].send_ts if messages else 0
    for n, m in enumerate(messages, 1):
        if speed > 0:
            due = t0_wall + (m.send_ts - t0_event) / 1000 / speed
            wait = due - time.monotonic()
            if wait > 0:
                producer.flush()
                time.sleep(wait)
        producer.send_raw(m.value, key=m.key, partition=m.partition)
        if on_progress is not None and n % 10_000 == 0:
            on_progress(n)
    producer.flush()
