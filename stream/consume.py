"""The ingest service: Kafka readings → `Ingestor` → dead-letter topic, late log and Parquet archive, with
offsets committed only once everything below them is durable.

One `poll_once()` cycle: decode and window every polled record; produce the dead letters and wait for
their acknowledgement; write late readings to the late log and sealed steps to the archive; hand the
sealed steps to `on_sealed` (the serving side forecasts them there — its work must be durable when it
returns); then commit what the ingest core allows. A crash anywhere before the commit replays harmlessly:
the archive resumes after its last step and readings for archived steps count as `replayed`.

`sensorcast ingest` runs it alone (archive only); `serving.pipeline` runs it with forecasting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.archive import Archive
from stream.config import KafkaSettings, WindowSettings
from stream.datasets import ARCHIVE_NETWORK_FILE
from stream.ingest import Ingestor
from stream.kafka_io import DeadLetterProducer, IngestConsumer, ensure_topics
from stream.network import Network
from stream.window import SealedStep

log = logging.getLogger(__name__)

OnSealed = Callable[[list[SealedStep]], Any]


class ArchiveMismatch(RuntimeError):
    """The archive folder holds another network's steps."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestService:
    def __init__(
        self,
        kafka: KafkaSettings,
        window: WindowSettings,
        archive: Archive,
        network: Network,
        *,
        now: Callable[[], int] = wall_ms,
        client_id: str = "sensorcast-ingest",
    ) -> None:
        self.kafka = kafka
        self.window = window
        self.archive = archive
        self.network = network
        self.now = now
        self.client_id = client_id
        self.ingestor: Ingestor | None = None
        self.consumer: IngestConsumer | None = None
        self.dead_letters: DeadLetterProducer | None = None
        self.resumed_after: int | None = None
        self.steps_sealed = 0
        self._assigned_at: dict[int, int] = {}

    def start(self) -> IngestService:
        self._claim_archive()
        ensure_topics(
            self.kafka, {self.kafka.readings_topic: self.kafka.partitions, self.kafka.dead_letter_topic: 1}
        )
        self.resumed_after = self.archive.last_step()
        self.ingestor = Ingestor(
            self.network,
            allowed_lateness_ms=self.window.allowed_lateness_ms,
            idle_timeout_ms=self.window.idle_timeout_ms,
            agg=self.window.agg,
            now=self.now,
            max_open_steps=self.window.max_open_steps,
            resume_after_step=self.resumed_after,
            source_topic=self.kafka.readings_topic,
        )
        self.dead_letters = DeadLetterProducer(self.kafka).start()
        self.consumer = IngestConsumer(self.kafka, client_id=self.client_id).start()
        log.info(
            "ingest started",
            extra={"topic": self.kafka.readings_topic, "resume_after_step": self.resumed_after},
        )
        return self

    def _claim_archive(self) -> None:
        """Record the network beside the archive (retraining reads it); refuse another network's archive."""
        path = Path(self.archive.root) / ARCHIVE_NETWORK_FILE
        if path.exists():
            theirs = Network.load(path)
            if theirs.fingerprint() != self.network.fingerprint():
                raise ArchiveMismatch(
                    f"archive {self.archive.root} belongs to network {theirs.name!r} ({theirs.n_sensors} sensors), "
                    f"not {self.network.name!r} ({self.network.n_sensors}): use another --archive folder"
                )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.network.save(path)

    def poll_once(self, timeout_ms: int = 200, on_sealed: OnSealed | None = None) -> list[SealedStep]:
        """One cycle; returns the steps sealed (and archived) in it."""
        assert self.consumer and self.ingestor and self.dead_letters, "start() first"
        dead = []
        for partition, messages in self.consumer.poll_batches(timeout_ms):
            dead += self.ingestor.ingest_many(partition, messages)
        self.ingestor.windower.keep_active(p for p, lag in self.consumer.lag().items() if lag != 0)
        sealed = [] if self._silent_partitions() else self.ingestor.seal()
        self._make_durable(dead, sealed, on_sealed)
        return sealed

    def _silent_partitions(self) -> list[int]:
        """Assigned partitions that have sent nothing yet and are not idle-timed-out.

        The windower's watermark only knows partitions it has seen; an assigned partition whose first
        fetch is still on its way would otherwise let a faster partition seal steps it has readings for.
        """
        assert self.consumer is not None and self.ingestor is not None
        now = self.now()
        seen = set(self.ingestor.windower.partitions)
        silent = []
        for p in self.consumer.assigned():
            since = self._assigned_at.setdefault(p, now)
            if p not in seen and now - since < self.window.idle_timeout_ms:
                silent.append(p)
        return silent

    def drain(self, on_sealed: OnSealed | None = None) -> list[SealedStep]:
        """End of stream: seal every open step, make it durable, commit everything consumed."""
        assert self.ingestor is not None, "start() first"
        sealed = self.ingestor.flush_all()
        self._make_durable([], sealed, on_sealed)
        return sealed

    def _make_durable(self, dead: list[Any], sealed: list[SealedStep], on_sealed: OnSealed | None) -> None:
        assert self.consumer and self.ingestor and self.dead_letters
        offsets = self.ingestor.committable()  # valid once what was just taken is durable
        if dead:
            self.dead_letters.send(dead)
            self.dead_letters.flush()
        late = self.ingestor.take_late()
        if late:
            self.archive.append_late(late)
        if sealed:
            self.archive.append(sealed)
            self.steps_sealed += len(sealed)
            if on_sealed is not None:
                on_sealed(sealed)
        if offsets:
            self.consumer.commit(offsets)

    def lag(self) -> dict[int, int]:
        assert self.consumer is not None
        return self.consumer.lag()

    def close(self) -> None:
        for closer in (self.consumer, self.dead_letters):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # closing must not hide the error that brought us here
                    log.exception("error while closing")
        self.consumer = self.dead_letters = None
