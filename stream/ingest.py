"""The pure ingest core: raw message bytes in, dead letters, late readings and sealed steps out.

`Ingestor` owns a `Decoder`, a `Windower` and a `Ledger` and is what the Kafka consumer wraps: for each
message it calls `ingest(partition, offset, raw)`, produces the returned dead letters, after each poll
calls `seal()` and archives what it gets together with `take_late()`, and then commits
`committable()` — offsets are committed only after what they carry is durable.

Timestamps are checked against a moving ceiling: `max(now(), highest event ts seen) + max_future_ms`
(and never past 2100), refreshed at each `seal()`, and a floor of 2000-01-01; outside it a message is
dead-lettered as `bad_timestamp` instead of dragging the watermark with it. The hot path reads no clock.

No Kafka, no I/O: testable with plain bytes and an injected clock.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.columnar import Singles, SinglesDecoder
from stream.ledger import Ledger
from stream.network import Network
from stream.schema import DEFAULT_MAX_FUTURE_MS, MIN_TS_MS, Decoded, Decoder
from stream.window import LateReading, SealedStep, Windower, message_columns

# A dead letter carries at most this much of the rejected message: an oversized message copied whole (and
# base64-grown by a third) would exceed the producer's request limit and stop the consumer on every retry.
DEAD_LETTER_RAW_MAX = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """One rejected message (or the rejected readings of one message, one record per reason); `raw` is its
    first `DEAD_LETTER_RAW_MAX` bytes."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    raw: bytes
    n_readings: int

    def to_json(self) -> bytes:
        """`{reason, detail, topic, partition, offset, n_readings, raw_b64}` as JSON bytes."""
        return orjson.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "n_readings": self.n_readings,
                "raw_b64": base64.b64encode(self.raw).decode("ascii"),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        d = orjson.loads(data)
        return cls(
            reason=d["reason"],
            detail=d["detail"],
            topic=d["topic"],
            partition=d["partition"],
            offset=d["offset"],
            raw=base64.b64decode(d["raw_b64"]),
            n_readings=d["n_readings"],
        )


class Ingestor:
    """Decode → validate → window, with every reading accounted for in `ledger`."""

    def __init__(
        self,
        network: Network,
        *,
        allowed_lateness_ms: int,
        idle_timeout_ms: int,
        agg: str = "mean",
        now: Callable[[], int],
        resume_after_step: int | None = None,
        source_topic: str = "readings",
        max_message_bytes: int = 1_048_576,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        min_ts_ms: int = MIN_TS_MS,
        max_open_steps: int | None = None,
    ) -> None:
        self.network = network
        self.source_topic = source_topic
        self.ledger = Ledger()
        self.decoder = Decoder(
            network, max_message_bytes=max_message_bytes, max_future_ms=max_future_ms, min_ts_ms=min_ts_ms
        )
        self.windower = Windower(
            network,
            allowed_lateness_ms=allowed_lateness_ms,
            idle_timeout_ms=idle_timeout_ms,
            agg=agg,
            now=now,
            max_open_steps=max_open_steps,
            resume_after_step=resume_after_step,
            ledger=self.ledger,
        )
        self._now = now
        self._late: list[LateReading] = []
        self._decode_rows = self.decoder.decode_rows
        self._add_rows = self.windower.add_rows
        self._singles = SinglesDecoder(network, max_message_bytes=max_message_bytes)
        self._n_features = network.n_features
        self._refresh_ceiling()

    def ingest(self, partition: int, offset: int, raw: bytes | None) -> list[DeadLetter]:
        """Take one message; returns its dead letters (usually `[]`). Never raises on bad input."""
        decoded = self._decode_rows(raw)
        if isinstance(decoded, list):  # the hot path: a clean single reading
            late = self._add_rows(partition, offset, decoded)
            if late:
                self._late.extend(late)
            return []
        return self._ingest_decoded(partition, offset, raw, decoded)

    def ingest_many(self, partition: int, messages: Iterable[Any]) -> list[DeadLetter]:
        """`ingest()` for one partition's messages in offset order, each with `.offset` and `.value` (a
        poll's records); the same outcome as one `ingest()` per message, with far less work per message.

        Clean single readings are decoded in bulk (`SinglesDecoder`); the rest one by one as in
        `ingest()`. Runs of clean messages (single or batch) are windowed as one set of columns, in
        offset order, so duplicates and late readings come out as they would one by one.
        """
        msgs = messages if isinstance(messages, list) else list(messages)
        if not msgs:
            return []
        dec = self.decoder
        singles = self._singles.decode([x.value for x in msgs], dec.min_ts_ms, dec.ts_ceiling_ms)
        first, last = msgs[0].offset, msgs[-1].offset
        if last - first == len(msgs) - 1:  # offsets rise within a partition: these are consecutive
            offsets = np.arange(first, last + 1, dtype=np.int64)
        else:  # a gap (compaction, transaction markers)
            offsets = np.array([x.offset for x in msgs], dtype=np.int64)
        run = _Run(self._n_features)
        dead: list[DeadLetter] = []
        start = 0
        for i in np.flatnonzero(~singles.taken).tolist():
            if i > start:
                run.singles(offsets[start:i], singles, slice(start, i))
            start = i + 1
            m = msgs[i]
            decoded = self._decode_rows(m.value)
            if isinstance(decoded, list):
                run.message(m.offset, Decoded(decoded))
            elif not decoded.rejects:
                run.message(m.offset, decoded)
            else:
                self._flush(partition, run)
                dead += self._ingest_decoded(partition, m.offset, m.value, decoded)
        if start < len(msgs):
            run.singles(offsets[start:], singles, slice(start, None))
        self._flush(partition, run)
        return dead

    def _flush(self, partition: int, run: _Run) -> None:
        if run.last_offset < 0:
            return
        late = self.windower.add_columns(partition, *run.columns(), last_offset=run.last_offset)
        if late:
            self._late.extend(late)
        run.clear()

    def _ingest_decoded(
        self, partition: int, offset: int, raw: bytes | None, decoded: Decoded
    ) -> list[DeadLetter]:
        """A batch message or one with rejects: dead letters for the rejects, the rest windowed."""
        dead: list[DeadLetter] = []
        if decoded.rejects:
            counts = self.ledger.partition(partition)
            body = (raw or b"")[:DEAD_LETTER_RAW_MAX]
            for r in decoded.rejects:
                counts.received += r.n_readings
                counts.dead(r.reason, r.n_readings)
                dead.append(
                    DeadLetter(r.reason, r.detail, self.source_topic, partition, offset, body, r.n_readings)
                )
        late = self.windower.add(partition, offset, decoded)
        if late:
            self._late.extend(late)
        return dead

    def _refresh_ceiling(self) -> None:
        """Timestamps up to max(clock, highest event ts) + max_future_ms are accepted from now on."""
        t = self._now()
        high = self.windower.max_event_ts
        self.decoder.set_reference(t if high is None or t > high else high)

    def take_late(self) -> list[LateReading]:
        """Late readings since the last call (for the archive's late log), in arrival order."""
        late, self._late = self._late, []
        return late

    def seal(self) -> list[SealedStep]:
        """Steps the watermark now allows to seal, in order; archive them before committing.

        Call it after every poll: it also moves the timestamp ceiling (once per poll, not per message).
        """
        self._refresh_ceiling()
        return self.windower.seal()

    def flush_all(self) -> list[SealedStep]:
        """End of stream: seal every open step."""
        return self.windower.flush_all()

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset safe to commit once the steps taken from `seal()` are archived,
        the late readings from `take_late()` are logged and the dead letters are produced."""
        return self.windower.committable_all()


class _Run:
    """Columns gathered from consecutive clean messages of one partition, windowed in one call."""

    __slots__ = ("chunks", "last_offset", "n_features")

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.last_offset = -1

    def clear(self) -> None:
        self.chunks = []
        self.last_offset = -1

    def singles(self, offsets: np.ndarray, s: Singles, sel: slice) -> None:
        """Messages `sel` of a `Singles` decode, all taken; one reading per present value."""
        present = ~np.isnan(s.values[sel])  # [m, F]
        row, feature = np.nonzero(present)  # message order, then feature order
        self.chunks.append(
            (
                offsets[row],
                s.ts[sel][row],
                s.sensor[sel][row] * self.n_features + feature,
                s.values[sel][present],
            )
        )
        self.last_offset = max(self.last_offset, int(offsets[-1]))

    def message(self, offset: int, decoded: Decoded) -> None:
        """One clean message decoded the per-message way (rows or batch columns)."""
        ts, cells, value = message_columns(decoded, self.n_features)
        if len(ts):
            self.chunks.append((np.full(len(ts), offset, np.int64), ts, cells, value))
        self.last_offset = max(self.last_offset, offset)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if len(self.chunks) == 1:
            return self.chunks[0]
        if not self.chunks:
            empty = np.empty(0, np.int64)
            return empty, empty, empty, np.empty(0, np.float64)
        offsets, ts, cells, value = zip(*self.chunks, strict=True)
        return np.concatenate(offsets), np.concatenate(ts), np.concatenate(cells), np.concatenate(value)
