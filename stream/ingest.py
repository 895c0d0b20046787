"""The pure ingest core: raw message bytes in, dead letters, late readings and sealed steps out.

`Ingestor` owns the decoders, a `Windower` and a `Ledger` and is what the Kafka consumer wraps: for each
partition of a poll it calls `ingest_many(partition, records)`, produces the returned dead letters, then
calls `seal()` and archives what it gets together with `take_late()`, and then commits `committable()` —
offsets are committed only after what they carry is durable. `ingest(partition, offset, raw)` is the
same for one message.

Timestamps are checked against a moving ceiling: `max(now(), highest event ts seen) + max_future_ms`
(and never past 2100), refreshed at each `seal()`, and a floor of 2000-01-01; outside it a message is
dead-lettered as `bad_timestamp` instead of dragging the watermark with it. The hot path reads no clock.

No Kafka, no I/O: testable with plain bytes and an injected clock.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream.columnar import Singles, SinglesDecoder
from stream.ledger import Ledger
from stream.network import Network
from stream.schema import DEFAULT_MAX_FUTURE_MS, MIN_TS_MS, Decoded, Decoder, Reject
from stream.window import LateReading, SealedStep, Windower

# A dead letter carries at most this much of the rejected message: an oversized message copied whole (and
# base64-grown by a third) would exceed the producer's request limit and stop the consumer on every retry.
DEAD_LETTER_RAW_MAX = 64 * 1024

# Readings as the windower takes them: offsets, ts, cells (sensor * F + feature), value; each [n].
_Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class Message(NamedTuple):
    """One message of a partition, as `ingest_many` reads it (Kafka's records have the same fields)."""

    offset: int
    value: bytes | None


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
        self._singles = SinglesDecoder(network, max_message_bytes=max_message_bytes)
        self._n_features = network.n_features
        self._refresh_ceiling()

    def ingest(self, partition: int, offset: int, raw: bytes | None) -> list[DeadLetter]:
        """`ingest_many` of one message."""
        return self.ingest_many(partition, [Message(offset, raw)])

    def ingest_many(self, partition: int, messages: Iterable[Any]) -> list[DeadLetter]:
        """Take one partition's messages in offset order, each with `.offset` and `.value` (a poll's
        records); returns their dead letters (usually `[]`). Never raises on bad input.

        Clean single readings are decoded in bulk (`SinglesDecoder`); the messages it declines (batches,
        broken ones) go through the per-message `Decoder`, which names what it rejects. The valid
        readings of all of them are windowed in one call, in offset order, so duplicates and late
        readings come out as they would one message at a time.
        """
        msgs = messages if isinstance(messages, list) else list(messages)
        if not msgs:
            return []
        dec, n_features = self.decoder, self._n_features
        singles = self._singles.decode([m.value for m in msgs], dec.min_ts_ms, dec.ts_ceiling_ms)
        first, last = msgs[0].offset, msgs[-1].offset
        if last - first == len(msgs) - 1:  # offsets rise within a partition: these are consecutive
            offsets = np.arange(first, last + 1, dtype=np.int64)
        else:  # a gap (compaction, transaction markers)
            offsets = np.array([m.offset for m in msgs], dtype=np.int64)
        chunks: list[_Columns] = []
        dead: list[DeadLetter] = []
        start = 0
        for i in np.flatnonzero(~singles.taken).tolist():
            if i > start:
                chunks.append(_singles_columns(singles, slice(start, i), offsets, n_features))
            start = i + 1
            m = msgs[i]
            decoded = dec.decode(m.value)
            if decoded.rejects:
                dead += self._dead_letters(partition, m.offset, m.value, decoded.rejects)
            if decoded.n:
                chunks.append(_message_columns(m.offset, decoded, n_features))
        if start < len(msgs):
            chunks.append(_singles_columns(singles, slice(start, None), offsets, n_features))
        late = self.windower.add_columns(partition, *_concatenate(chunks), last_offset=last)
        if late:
            self._late.extend(late)
        return dead

    def _dead_letters(
        self, partition: int, offset: int, raw: bytes | None, rejects: list[Reject]
    ) -> list[DeadLetter]:
        """One dead letter per reject of a message, counted in the ledger (the windower never sees them)."""
        counts = self.ledger.partition(partition)
        body = (raw or b"")[:DEAD_LETTER_RAW_MAX]
        dead = []
        for r in rejects:
            counts.received += r.n_readings
            counts.dead(r.reason, r.n_readings)
            dead.append(
                DeadLetter(r.reason, r.detail, self.source_topic, partition, offset, body, r.n_readings)
            )
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


def _singles_columns(s: Singles, sel: slice, offsets: np.ndarray, n_features: int) -> _Columns:
    """Messages `sel` of a `Singles` decode, all taken; one reading per present value."""
    present = ~np.isnan(s.values[sel])  # [m, F]
    row, feature = np.nonzero(present)  # message order, then feature order
    return (
        offsets[sel][row],
        s.ts[sel][row],
        s.sensor[sel][row] * n_features + feature,
        s.values[sel][present],
    )


def _message_columns(offset: int, decoded: Decoded, n_features: int) -> _Columns:
    """The valid readings of one message decoded on its own (a batch, or one with rejects)."""
    cells = decoded.sensor.astype(np.int64) * n_features + decoded.feature
    return np.full(decoded.n, offset, np.int64), decoded.ts, cells, decoded.value


def _concatenate(chunks: list[_Columns]) -> _Columns:
    if len(chunks) == 1:
        return chunks[0]
    if not chunks:
        empty = np.empty(0, np.int64)
        return empty, empty, empty, np.empty(0, np.float64)
    offsets, ts, cells, value = zip(*chunks, strict=True)
    return np.concatenate(offsets), np.concatenate(ts), np.concatenate(cells), np.concatenate(value)
