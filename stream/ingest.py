"""The pure ingest core: raw message bytes in, dead letters, late readings and sealed steps out.

`Ingestor` owns a `Decoder`, a `Windower` and a `Ledger` and is what the Kafka consumer wraps: for each
message it calls `ingest(partition, offset, raw)`, produces the returned dead letters, after each poll
calls `seal()` and archives what it gets together with `take_late()`, and then commits
`committable()` — offsets are committed only after what they carry is durable.

Timestamps are checked against a moving ceiling: `max(now(), highest event ts seen) + max_future_ms`
(and never past 2100), and a floor of 2000-01-01; outside it a message is dead-lettered as
`bad_timestamp` instead of dragging the watermark with it.

No Kafka, no I/O: testable with plain bytes and an injected clock.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from stream.ledger import Ledger
from stream.network import Network
from stream.schema import DEFAULT_MAX_FUTURE_MS, MIN_TS_MS, Decoder
from stream.window import LateReading, SealedStep, Windower


@dataclass(frozen=True)
class DeadLetter:
    """One rejected message (or the rejected readings of one message, one record per reason)."""

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
        max_open_steps: int = 1024,
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
        self._max_future_ms = max_future_ms
        self.decoder.set_reference(now())

    def ingest(self, partition: int, offset: int, raw: bytes | None) -> list[DeadLetter]:
        """Take one message; returns its dead letters (usually `[]`). Never raises on bad input."""
        t = self._now()
        decoder = self.decoder
        high = self.windower.max_event_ts
        ceiling = (t if high is None or t > high else high) + self._max_future_ms
        decoder.ts_ceiling_ms = ceiling if ceiling < decoder.max_ts_ms else decoder.max_ts_ms
        decoded = decoder.decode(raw)
        counts = self.ledger.partition(partition)
        counts.received += decoded.n
        dead: list[DeadLetter] = []
        if decoded.rejects:
            body = raw or b""
            for r in decoded.rejects:
                counts.received += r.n_readings
                counts.dead(r.reason, r.n_readings)
                dead.append(
                    DeadLetter(r.reason, r.detail, self.source_topic, partition, offset, body, r.n_readings)
                )
        late = self.windower.add(partition, offset, decoded, now_ms=t)
        if late:
            self._late.extend(late)
        return dead

    def take_late(self) -> list[LateReading]:
        """Late readings since the last call (for the archive's late log), oldest first."""
        late, self._late = self._late, []
        return late

    def seal(self) -> list[SealedStep]:
        """Steps the watermark now allows to seal, in order; archive them before committing."""
        return self.windower.seal()

    def flush_all(self) -> list[SealedStep]:
        """End of stream: seal every open step."""
        return self.windower.flush_all()

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset safe to commit once the steps taken from `seal()` are archived,
        the late readings from `take_late()` are logged and the dead letters are produced."""
        out: dict[int, int] = {}
        for p in self.windower.partitions:
            o = self.windower.committable(p)
            if o is not None:
                out[p] = o
        return out
